"""The Consul adapter: every call the sidecar makes to its local agent, with timeouts.

Built on python-consul2's requests transport, with what that library leaves out: a timeout
on every call (blocking queries get their wait plus a margin), the token sent as a header
and re-read from its file so rotation works, TLS settings including the server name, and
agent answers turned into typed errors that keep the agent's own message.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import consul.std
import requests
from requests.adapters import HTTPAdapter

from sidecar.config import ConsulSettings
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


class TokenProvider:
    """The ACL token: from the file when one is set (re-read when it changes), else the env."""

    def __init__(self, token: str | None, token_file: Path | None) -> None:
        self._token = token
        self._file = token_file
        self._file_stamp: tuple[float, int] | None = None
        self._file_token: str | None = None

    def get(self) -> str | None:
        if self._file is None:
            return self._token
        try:
            stat = os.stat(self._file)
            stamp = (stat.st_mtime, stat.st_size)
            if stamp != self._file_stamp:
                self._file_token = self._file.read_text().strip() or None
                self._file_stamp = stamp
        except OSError as exc:
            # Keep the last token we had: a rotation in progress must not drop auth.
            log.warning("cannot read CONSUL_HTTP_TOKEN_FILE %s: %s", self._file, exc.strerror or exc)
        return self._file_token


class _ServerNameAdapter(HTTPAdapter):
    """Verifies the agent's certificate against CONSUL_TLS_SERVER_NAME and sends it as SNI."""

    def __init__(self, server_name: str) -> None:
        self._server_name = server_name
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["server_hostname"] = self._server_name
        kwargs["assert_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: str

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

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
        if settings.tls_server_name and settings.scheme == "https":
            self.session.mount("https://", _ServerNameAdapter(settings.tls_server_name))
        self._tokens = tokens
        self._address = settings.address

    def call(self, method: str, path: str, params: list[tuple[str, str]] | None = None,
             body: Any = None, timeout: float | None = None) -> Reply:
        headers = {}
        token = self._tokens.get()
        if token:
            headers["X-Consul-Token"] = token
        data = "" if body is None else json.dumps(body)
        uri = self.uri(path, params)
        try:
            response = self.session.request(
                method, uri, data=data, headers=headers, verify=self.verify, cert=self.cert,
                timeout=timeout if timeout is not None else self.timeout,
            )
        except requests.exceptions.SSLError as exc:
            raise ConsulTLSError(f"TLS with the agent at {self._address} failed: {_tls_reason(exc)}") from exc
        except requests.exceptions.Timeout as exc:
            raise ConsulTimeout(f"the agent at {self._address} did not answer in time") from exc
        except requests.exceptions.ConnectionError as exc:
            raise ConsulUnavailable(f"cannot connect to the agent at {self._address}") from exc
        reply = Reply(response.status_code, response.headers, response.text)
        _raise_for_status(reply, method, path)
        return reply


def _tls_reason(exc: Exception) -> str:
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return "certificate verification failed (check CONSUL_CACERT and CONSUL_TLS_SERVER_NAME)"
    if "alert" in text.lower() and "certificate" in text.lower():
        return "the agent requires a client certificate (set CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY)"
    if "hostname" in text.lower() or "match" in text.lower():
        return "the certificate does not match the agent's name (set CONSUL_TLS_SERVER_NAME)"
    return text[:_MAX_MESSAGE]


def _raise_for_status(reply: Reply, method: str, path: str) -> None:
    if reply.status < 400:
        return
    message = " ".join(reply.body.split())[:_MAX_MESSAGE] or f"HTTP {reply.status}"
    what = f"{method} {path}: {message}"
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
class AgentInfo:
    node_name: str
    datacenter: str
    version: str


class ConsulAgent:
    """The calls the sidecar makes. Only health/catalog reads reach the servers."""

    def __init__(self, settings: ConsulSettings, on_error: Callable[[ConsulError], None] | None = None,
                 on_request: Callable[[str, int], None] | None = None) -> None:
        """`on_request(target, +1/-1)` brackets every call: target is "agent" or "servers"."""
        self._settings = settings
        self._transport = _Transport(settings, TokenProvider(settings.token, settings.token_file))
        self._on_error = on_error
        self._on_request = on_request
        if settings.scheme == "https" and not settings.verify:
            log.warning("CONSUL_HTTP_SSL_VERIFY=false: the agent's certificate is not verified")

    @property
    def address(self) -> str:
        return self._settings.address

    def _call(self, method: str, path: str, params: list[tuple[str, str]] | None = None,
              body: Any = None, timeout: float | None = None) -> Reply:
        # Only /v1/health and /v1/catalog reach the servers; /v1/agent stays on the node.
        target = "agent" if path.startswith("/v1/agent/") else "servers"
        if self._on_request is not None:
            self._on_request(target, +1)
        try:
            return self._transport.call(method, path, params, body, timeout)
        except ConsulError as exc:
            if self._on_error is not None:
                self._on_error(exc)
            raise
        finally:
            if self._on_request is not None:
                self._on_request(target, -1)

    def self_info(self) -> AgentInfo:
        data = self._call("GET", "/v1/agent/self").json()
        cfg = data.get("Config", {})
        return AgentInfo(cfg.get("NodeName", ""), cfg.get("Datacenter", ""), cfg.get("Version", ""))

    def register_service(self, registration: Mapping[str, Any]) -> None:
        # replace-existing-checks: a sidecar restarted with other settings leaves no stale check.
        self._call("PUT", "/v1/agent/service/register", [("replace-existing-checks", "true")], registration)

    def update_ttl_check(self, check_id: str, status: str, output: str) -> None:
        self._call("PUT", f"/v1/agent/check/update/{check_id}", body={"Status": status, "Output": output})

    def deregister_service(self, service_id: str) -> None:
        self._call("PUT", f"/v1/agent/service/deregister/{service_id}")

    def agent_checks(self) -> dict[str, Any]:
        """The agent's own checks (local state, never forwarded to the servers)."""
        return dict(self._call("GET", "/v1/agent/checks").json() or {})

    def agent_service(self, service_id: str, content_hash: str = "", wait: float = 0.0) -> tuple[str, dict[str, Any] | None]:
        """The agent's view of one instance; a hash-blocking query when `content_hash` is set."""
        params: list[tuple[str, str]] = []
        timeout = None
        if content_hash and wait > 0:
            params = [("hash", content_hash), ("wait", _wait_param(wait))]
            timeout = blocking_timeout(self._settings.timeout, wait)
        try:
            reply = self._call("GET", f"/v1/agent/service/{service_id}", params, timeout=timeout)
        except ConsulNotFound:
            return "", None
        return reply.headers.get("X-Consul-ContentHash", ""), reply.json()

    def health_of_instance(self, service_name: str, service_id: str, index: int = 0,
                           wait: float = 0.0, stale: bool = False) -> tuple[int, list[dict[str, Any]]]:
        """The servers' view of one instance: catalog entry plus its checks (server-bound)."""
        params = [("filter", f'Service.ID == "{service_id}"')]
        timeout = None
        if index > 0 and wait > 0:
            params += [("index", str(index)), ("wait", _wait_param(wait))]
            timeout = blocking_timeout(self._settings.timeout, wait)
        if stale:
            params.append(("stale", ""))
        reply = self._call("GET", f"/v1/health/service/{service_name}", params, timeout=timeout)
        return reply.index, list(reply.json() or [])
