"""The Consul adapter: every call the sidecar makes to its local agent, with timeouts.

Built on python-consul2's requests transport, with what that library leaves out: a timeout
on every call (blocking queries get their wait plus a margin), the token sent as a header
and re-read from its file so rotation works, TLS settings including the server name, and
agent answers turned into typed errors that keep the agent's own message.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import consul.std
import requests
import urllib3
from requests.adapters import HTTPAdapter

from sidecar.config import ConsulSettings, load_ca_dir
from sidecar.errors import (
    ConsulError,
    ConsulForbidden,
    ConsulNotFound,
    ConsulRejected,
    ConsulServerError,
    ConsulTimeout,
    ConsulTLSError,
    ConsulUnavailable,
)

log = logging.getLogger("katalog.consul")

_MAX_MESSAGE = 300  # agent messages are echoed into logs and the gate; keep them short
_REDACTED = "[redacted]"
# Set by the agent on reads it answered with fewer results than exist because the token may
# not see them; only sent to requests that carry a token. An ACL-filtered read is empty, not 403.
_FILTERED_HEADER = "X-Consul-Results-Filtered-By-ACLs"
_NOT_REFUSED = object()


class TokenProvider:
    """The ACL token: from the file when one is set (re-read when it changes), else the env."""

    def __init__(self, token: str | None, token_file: Path | None) -> None:
        self._token = token
        self._file = token_file
        self._file_stamp: tuple[int, int, int, int] | None = None
        self._file_token: str | None = None
        self._file_problem: str | None = None

    def get(self) -> str | None:
        if self._file is None:
            return self._token
        try:
            # os.stat follows symlinks: a Secret volume swaps its `..data` link on update, so
            # the inode changes even when the new token has the same size and mtime second.
            stat = os.stat(self._file)
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_dev)
            if stamp != self._file_stamp:
                self._file_token = self._file.read_text().strip() or None
                self._file_stamp = stamp
            if self._file_problem is not None:
                log.info("CONSUL_HTTP_TOKEN_FILE %s is readable again", self._file)
                self._file_problem = None
        except OSError as exc:
            # Keep the last token we had: a rotation in progress must not drop auth. Said once
            # per problem: this runs before every call.
            problem = str(exc.strerror or exc)
            if problem != self._file_problem:
                log.warning("cannot read CONSUL_HTTP_TOKEN_FILE %s: %s (keeping the last token read)", self._file, problem)
                self._file_problem = problem
        return self._file_token


class _AgentTLSAdapter(HTTPAdapter):
    """TLS to the agent beyond what `verify=` can say: CONSUL_TLS_SERVER_NAME (verified and sent
    as SNI) and the certificates of a CONSUL_CAPATH directory (trusted instead of the system's)."""

    def __init__(self, server_name: str | None, ca_data: str | None) -> None:
        self._server_name = server_name
        self._ca_data = ca_data
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        # server_hostname alone: the ssl module then checks the certificate against it (and
        # sends it as SNI). assert_hostname would make urllib3 check it instead, and log the
        # whole peer certificate at WARNING on every failed attempt.
        if self._server_name:
            kwargs["server_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)

    def build_connection_pool_key_attributes(self, request: Any, verify: Any, cert: Any = None) -> Any:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        kwargs: dict[str, Any] = dict(pool_kwargs)
        if self._ca_data is not None and verify is True:
            kwargs["ca_cert_data"] = self._ca_data
        return host_params, kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        cast(Any, super()).cert_verify(conn, url, verify, cert)
        if self._ca_data is not None and verify is True:
            # requests would add its own CA bundle; the directory's CAs are the only trusted ones.
            conn.ca_certs = conn.ca_cert_dir = None
            conn.ca_cert_data = self._ca_data


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: str

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except (ValueError, RecursionError) as exc:
            # Not the agent, or not a healthy one: a typed error the callers retry, not a crash.
            raise ConsulError(f"the answer is not JSON (HTTP {self.status}, {len(self.body)} bytes)",
                              status=self.status) from exc

    @property
    def index(self) -> int:
        try:
            return int(self.headers.get("X-Consul-Index", "0"))
        except ValueError:
            return 0


class _Transport(consul.std.HTTPClient):  # type: ignore[misc]
    """python-consul2's requests client, with per-call timeouts, token header and typed errors."""

    def __init__(self, settings: ConsulSettings, tokens: TokenProvider) -> None:
        verify: bool | str = settings.verify
        if settings.verify and settings.ca_cert is not None:
            verify = str(settings.ca_cert)
        cert = None
        if settings.client_cert is not None and settings.client_key is not None:
            cert = (str(settings.client_cert), str(settings.client_key))
        super().__init__(settings.host, settings.port, settings.scheme, verify, cert, settings.timeout)
        # The agent is on this node and the API server in this cluster: proxy variables meant
        # for the app must not route our token through a proxy, and reading them from the
        # environment on every call was a quarter of the sidecar's idle CPU.
        self.session.trust_env = False
        # CONSUL_CACERT wins over CONSUL_CAPATH, as in Consul's own client.
        ca_data = load_ca_dir(settings.ca_path) if settings.ca_path and not settings.ca_cert and settings.verify else None
        if settings.scheme == "https" and (settings.tls_server_name or ca_data is not None):
            self.session.mount("https://", _AgentTLSAdapter(settings.tls_server_name, ca_data))
        self._secrets: list[str] = []
        if settings.auth is not None:
            self.session.auth = settings.auth
            user_pass = ":".join(settings.auth)
            self._secrets = [s for s in (user_pass, settings.auth[1],
                                         base64.b64encode(user_pass.encode("latin-1")).decode()) if len(s) >= 4]
        # Consul Enterprise: every call names the namespace and partition, as Consul's client does.
        self._scope = [(k, v) for k, v in (("ns", settings.namespace), ("partition", settings.partition)) if v]
        self._settings = settings
        self._tokens = tokens
        self._address = settings.address
        # Once the agent has answered plain HTTP on this port, a reset is an agent going away
        # (a restart), not a port that serves HTTPS: the hint below would mislead.
        self._answered = False

    def call(self, method: str, path: str, params: list[tuple[str, str]] | None = None,
             body: Any = None, timeout: float | None = None, token: str | None = None) -> Reply:
        headers = {}
        if token:
            headers["X-Consul-Token"] = token
        data = "" if body is None else json.dumps(body)
        uri = self.uri(path, (params or []) + self._scope)
        try:
            # No redirects: the agent API never redirects, and requests would carry the
            # X-Consul-Token header along to whatever host a redirect names.
            response = self.session.request(
                method, uri, data=data, headers=headers, verify=self.verify, cert=self.cert,
                timeout=timeout if timeout is not None else self.timeout, allow_redirects=False,
            )
        except requests.exceptions.SSLError as exc:
            raise ConsulTLSError(f"TLS with the agent at {self._address} failed: {_tls_reason(exc, self._settings)}") from exc
        except requests.exceptions.Timeout as exc:
            raise ConsulTimeout(f"the agent at {self._address} did not answer in time") from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            if not _caused_by(exc, ConnectionResetError):
                raise ConsulUnavailable(f"cannot connect to the agent at {self._address}") from exc
            # A reset before the answer: what an HTTPS port does to a plain HTTP request with a
            # body (it answers 400 and closes without reading the rest), and what a dying agent does.
            fits = self._settings.scheme == "http" and not self._answered
            hint = " (if this port serves HTTPS, use https:// in CONSUL_HTTP_ADDR)" if fits else ""
            raise ConsulUnavailable(f"the agent at {self._address} reset the connection{hint}") from exc
        except requests.exceptions.RequestException as exc:
            # Anything else requests can raise (a malformed answer, ...): still a typed error.
            raise ConsulError(f"the agent at {self._address} sent an answer that cannot be read "
                              f"({type(exc).__name__})") from exc
        except OSError as exc:
            # requests checks the CA and client certificate paths before connecting (a file
            # removed or half-rotated since start-up): a TLS setting to fix, not an outage.
            raise ConsulTLSError(f"TLS with the agent at {self._address} failed: {exc}") from exc
        self._answered = True
        reply = Reply(response.status_code, response.headers, response.text)
        _raise_for_status(reply, method, path, [token, *self._secrets] if token else self._secrets, self._address)
        return reply


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and everything it wraps (args, urllib3's `reason`, causes, contexts)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    found: list[BaseException] = []
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        todo += [a for a in current.args if isinstance(a, BaseException)]
        for linked in (getattr(current, "reason", None), current.__cause__, current.__context__):
            if isinstance(linked, BaseException):
                todo.append(linked)
    return found


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    return any(isinstance(e, kind) for e in _chain(exc))


def _ssl_detail(exc: BaseException) -> str:
    """The innermost TLS error text, without urllib3's pool and retry wrapping."""
    found = str(exc)
    for current in _chain(exc):
        if isinstance(current, (ssl.SSLError, ssl.CertificateError)) or type(current).__name__ == "CertificateError":
            found = str(current)
    return found.split(" (_ssl.c:")[0]


def _tls_reason(exc: BaseException, settings: ConsulSettings) -> str:
    """What failed in the handshake, in words that name the setting to fix."""
    detail = _ssl_detail(exc)
    low = detail.lower()
    name = settings.tls_server_name or settings.host
    ca = ("the CA in CONSUL_CACERT" if settings.ca_cert else "a CA in CONSUL_CAPATH" if settings.ca_path
          else "a CA of the system bundle (CONSUL_CACERT is not set)")
    has_client_cert = settings.client_cert is not None
    if "key values mismatch" in low or "[pem" in low or "[x509" in low or "pem lib" in low:
        return f"cannot use CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY: {detail}"
    if "hostname mismatch" in low or "ip address mismatch" in low or "doesn't match" in low:
        return (f"the agent's certificate is not valid for {name!r} (set CONSUL_TLS_SERVER_NAME to a name "
                "the certificate carries, e.g. server.<datacenter>.consul)")
    if "certificate_verify_failed" in low or "certificate verify failed" in low:
        if "expired" in low:
            return "certificate verification failed: the agent's certificate has expired"
        return f"certificate verification failed: the agent's certificate is not signed by {ca}"
    if "wrong version number" in low or "record layer failure" in low or "packet length too long" in low:
        return "the agent does not speak TLS on this port (use http:// in CONSUL_HTTP_ADDR, or the agent's HTTPS port)"
    # With TLS 1.3 the client finishes its handshake before the agent has checked the client
    # certificate: the verdict comes with the first read, as an alert, or (when the agent closes
    # with a request body still unread, as for every PUT) as a bare EOF. Same cause, same words,
    # so the gate line does not flip between two texts from one attempt to the next.
    eof = "eof occurred in violation of protocol" in low or "unexpected eof" in low
    if ("alert" in low or eof) and ("certificate required" in low or not has_client_cert):
        return "the agent requires a client certificate (set CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY)"
    if eof or ("alert" in low and ("unknown ca" in low or "certificate" in low)):
        return ("the agent rejected the client certificate in CONSUL_CLIENT_CERT "
                "(it must be signed by a CA in the agent's tls ca_file)")
    return detail[:_MAX_MESSAGE]


def _raise_for_status(reply: Reply, method: str, path: str, secrets: Sequence[str] = (), address: str = "") -> None:
    if reply.status < 300:
        return
    if reply.status < 400:
        # Redirects are not followed (see call); the agent API has none, so one here means
        # something else answers at CONSUL_HTTP_ADDR. Never count it as success.
        raise ConsulError(f"{method} {path}: unexpected redirect (HTTP {reply.status}) from {address}; "
                          "not followed (check CONSUL_HTTP_ADDR)", status=reply.status)
    message = " ".join(reply.body.split())
    for secret in secrets:
        # Consul never echoes a token (or basic auth), but a proxy or a misbehaving agent
        # might; this text reaches logs, the status file and the gate.
        message = message.replace(secret, _REDACTED)
    message = message[:_MAX_MESSAGE] or f"HTTP {reply.status}"
    what = f"{method} {path}: {message}"
    if reply.status == 400 and "HTTP request to an HTTPS server" in message:
        raise ConsulTLSError(f"the agent at {address} serves HTTPS on this port: use https:// in CONSUL_HTTP_ADDR "
                             "or set CONSUL_HTTP_SSL=true", status=400)
    if reply.status == 400:
        raise ConsulRejected(what, status=400)
    if reply.status in (401, 403):
        raise ConsulForbidden(what, status=reply.status)
    if reply.status == 404:
        raise ConsulNotFound(what, status=404)
    if reply.status == 429 or reply.status >= 500:
        raise ConsulServerError(what, status=reply.status)
    raise ConsulError(what, status=reply.status)


def blocking_timeout(request_timeout: float, wait: float) -> float:
    """A blocking query may legally take wait + wait/16 (Consul's jitter); add a margin."""
    return wait + max(wait / 16, 1.0) + request_timeout


def _wait_param(wait: float) -> str:
    return f"{max(int(wait * 1000), 1)}ms"


@dataclass(frozen=True)
class ServersRead:
    index: int  # X-Consul-Index; 0 when missing or not a number
    data: Any
    filtered: bool  # X-Consul-Results-Filtered-By-ACLs: the token may not see everything


class ConsulAgent:
    """The calls the sidecar makes. Only health/catalog reads reach the servers."""

    def __init__(self, settings: ConsulSettings, on_error: Callable[[ConsulError], None] | None = None,
                 on_request: Callable[[str, int], None] | None = None) -> None:
        """`on_request(target, +1/-1)` brackets every call: target is "agent" or "servers"."""
        self._settings = settings
        self._tokens = TokenProvider(settings.token, settings.token_file)
        self._transport = _Transport(settings, self._tokens)
        self._on_error = on_error
        self._on_request = on_request
        self._refused_token: object = _NOT_REFUSED
        if settings.scheme == "https" and not settings.verify:
            log.warning("CONSUL_HTTP_SSL_VERIFY=false: the agent's certificate is not verified")
            # Said once, here, in the log format; urllib3 would repeat it outside of it.
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    @property
    def address(self) -> str:
        return self._settings.address

    def _call(self, method: str, path: str, params: list[tuple[str, str]] | None = None,
              body: Any = None, timeout: float | None = None) -> Reply:
        # Only /v1/health and /v1/catalog reach the servers; /v1/agent stays on the node.
        target = "agent" if path.startswith("/v1/agent/") else "servers"
        if self._on_request is not None:
            self._on_request(target, +1)
        token = self._tokens.get()
        try:
            return self._transport.call(method, path, params, body, timeout, token)
        except ConsulError as exc:
            if isinstance(exc, ConsulForbidden):
                self._refused_token = token
            self._failed(exc)
            raise
        finally:
            if self._on_request is not None:
                self._on_request(target, -1)

    def _failed(self, exc: ConsulError) -> None:
        if self._on_error is not None:
            self._on_error(exc)

    def token_rotated(self) -> bool:
        """True, once, when the token differs from the one the agent last refused (401/403).

        The caller waits long after a refusal (retrying cannot help), but a rewritten
        CONSUL_HTTP_TOKEN_FILE can: this lets it retry at once. Costs a stat of the file.
        """
        refused = self._refused_token
        if refused is _NOT_REFUSED or self._tokens.get() == refused:
            return False
        self._refused_token = _NOT_REFUSED
        return True

    def register_service(self, registration: Mapping[str, Any], timeout: float | None = None) -> None:
        # replace-existing-checks: a sidecar restarted with other settings leaves no stale check.
        self._call("PUT", "/v1/agent/service/register", [("replace-existing-checks", "true")], registration,
                   timeout=timeout)

    def update_ttl_check(self, check_id: str, status: str, output: str, timeout: float | None = None) -> None:
        """`timeout` replaces KATALOG_CONSUL_TIMEOUT, e.g. to keep a drain inside its deadline."""
        self._call("PUT", f"/v1/agent/check/update/{check_id}", body={"Status": status, "Output": output},
                   timeout=timeout)

    def deregister_service(self, service_id: str, timeout: float | None = None) -> None:
        self._call("PUT", f"/v1/agent/service/deregister/{service_id}", timeout=timeout)

    def service_checks(self, service_id: str, timeout: float | None = None) -> dict[str, dict[str, Any]]:
        """The agent's checks of one instance, by check ID (local state, never forwarded)."""
        data = self._call("GET", "/v1/agent/checks", [("filter", f'ServiceID == "{service_id}"')],
                          timeout=timeout).json() or {}
        if not isinstance(data, dict):
            raise ConsulError("GET /v1/agent/checks: the answer is not a map of checks")
        return {str(k): v for k, v in data.items() if isinstance(v, dict)}

    def agent_service(self, service_id: str, content_hash: str = "", wait: float = 0.0,
                      timeout: float | None = None) -> tuple[str, dict[str, Any] | None]:
        """The agent's view of one instance; a hash-blocking query when `content_hash` is set.

        `timeout`, when set, caps the call's own timeout (a drain keeps its deadline).
        """
        params: list[tuple[str, str]] = []
        own = self._settings.timeout
        if content_hash and wait > 0:
            params = [("hash", content_hash), ("wait", _wait_param(wait))]
            own = blocking_timeout(self._settings.timeout, wait)
        try:
            reply = self._call("GET", f"/v1/agent/service/{service_id}", params,
                               timeout=own if timeout is None else min(own, timeout))
        except ConsulNotFound:
            return "", None
        return reply.headers.get("X-Consul-ContentHash", ""), reply.json()

    def node_of_service(self, service_id: str, timeout: float | None = None) -> str | None:
        """This agent's node name, as its own copy of one of the instance's checks states it.

        Everything confirmation and removal look at is scoped to this node. /v1/agent/self
        would need agent:read, which the least-privilege policy does not grant; a service
        check names its node and needs only service:read. None when the agent lacks the instance.
        """
        data = self._call("GET", "/v1/agent/checks", [("filter", f'ServiceID == "{service_id}"')],
                          timeout=timeout).json()
        if not isinstance(data, dict):
            raise ConsulError("GET /v1/agent/checks: the answer is not a map of checks")
        for check in data.values():
            node = check.get("Node") if isinstance(check, dict) else None
            if isinstance(node, str) and node:
                return node
        return None

    def read_servers(self, path: str, params: list[tuple[str, str]], index: int = 0,
                     wait: float = 0.0, timeout: float | None = None) -> ServersRead:
        """One server-bound read (/v1/health, /v1/catalog): blocking when index and wait are set.

        The caller keeps the blocking-query hygiene (sidecar.consul.blocking): this sends what it is
        given. `timeout`, when set, caps the call's own timeout (a drain keeps its deadline).
        """
        params = list(params)
        own = self._settings.timeout
        if index > 0 and wait > 0:
            params += [("index", str(index)), ("wait", _wait_param(wait))]
            own = blocking_timeout(self._settings.timeout, wait)
        reply = self._call("GET", path, params, timeout=own if timeout is None else min(own, timeout))
        return ServersRead(reply.index, reply.json(), reply.headers.get(_FILTERED_HEADER, "").lower() == "true")

    def node_instance(self, node: str, service_name: str, service_id: str, index: int = 0,
                      wait: float = 0.0, timeout: float | None = None) -> tuple[int, list[dict[str, Any]]]:
        """The servers' catalog entries with this ID on this node (address, port, meta).

        Node-scoped: a blocking read wakes only for service changes on this node (not for a
        check status change: that is what node_checks is for).
        """
        path = f"/v1/catalog/node-services/{quote(node, safe='')}"
        try:
            read = self.read_servers(path, [("filter", f'ID == "{service_id}"')], index, wait, timeout)
        except ConsulNotFound:
            return 0, []  # the servers do not know the node (yet): nothing listed there
        data = read.data
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConsulError(f"GET {path}: the answer is not a node's services")
        services = data.get("Services") or []
        if not isinstance(services, list):
            raise ConsulError(f"GET {path}: the answer's Services is not a list")
        # Junk entries (not objects, an ID that is not a string) are skipped: they must not
        # crash the confirmer, and cannot confirm anything.
        entries = [e for e in services if isinstance(e, dict) and isinstance(e.get("ID"), str)]
        self._hidden_if_filtered(not entries and read.filtered, service_name)
        return read.index, entries

    def node_checks(self, node: str, service_name: str, service_id: str, index: int = 0,
                    wait: float = 0.0, timeout: float | None = None) -> tuple[int, list[dict[str, Any]]]:
        """The servers' view of this instance's checks on this node.

        Node-scoped: a blocking read wakes only for check changes on this node, where a
        /v1/health/service/<name> read would wake for every instance of the service.
        """
        path = f"/v1/health/node/{quote(node, safe='')}"
        read = self.read_servers(path, [("filter", f'ServiceID == "{service_id}"')], index, wait, timeout)
        data = read.data
        if data is None:
            data = []
        if not isinstance(data, list):
            raise ConsulError(f"GET {path}: the answer is not a list of checks")
        checks = [c for c in data if isinstance(c, dict) and isinstance(c.get("CheckID"), str)]
        self._hidden_if_filtered(not checks and read.filtered, service_name)
        return read.index, checks

    def _hidden_if_filtered(self, hidden: bool, service_name: str) -> None:
        if not hidden:
            return
        # Empty because of the token, not because the catalog lacks the instance: waiting
        # cannot help, so say what the token needs instead of "not listed yet".
        exc = ConsulForbidden(
            f"the catalog hides {service_name} from this token ({_FILTERED_HEADER}): it needs "
            f'service:read on "{service_name}" and node:read on this agent\'s node '
            "(see examples/consul-acl-policy.hcl)")
        self._failed(exc)
        raise exc
