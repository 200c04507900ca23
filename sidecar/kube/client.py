"""A minimal Kubernetes API client: list and watch one pod, nothing more.

The official client is heavy and its watch gives little control over timeouts, so (like
patroni) this talks to the API with `requests`. Every request has a connect and a read
timeout; on a watch the read timeout doubles as the inactivity timeout that detects a dead
stream. The service-account token is re-read every minute and after a 401, because the
kubelet rotates projected tokens in place.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import requests

from sidecar.errors import KubernetesError

log = logging.getLogger("katalog.kube")

TOKEN_MAX_AGE = 60.0  # the kubelet refreshes tokens well before they expire; a minute is plenty
_MAX_BODY = 300  # error messages are truncated so nothing sensitive reaches the logs
_MAX_PARSED = 64 * 1024  # a Status is parsed whole (a real 403 is over 300 bytes), a page of junk is not
RBAC_HINT = "grant get, list, watch on pods (see examples/rbac.yaml)"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
MERGE_PATCH = "application/merge-patch+json"


class WatchInactiveError(KubernetesError):
    """The watch stream stayed silent longer than the inactivity timeout."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the watch sent nothing for {seconds:g}s", reason="inactivity")


class StreamBrokenError(KubernetesError):
    """The watch stream ended in the middle of a chunk or a line."""

    def __init__(self) -> None:
        super().__init__("the watch stream was cut off", reason="broken")


class KubeClient:
    """Lists and watches pods of one namespace with the pod's service account."""

    def __init__(
        self,
        api_url: str,
        token_file: Path,
        ca_file: Path,
        timeout: float,
        *,
        watch_inactivity: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        session: requests.Session | None = None,
    ) -> None:
        self._base = api_url.rstrip("/")
        self._token_file = token_file
        self._timeout = timeout
        # A watch may legitimately stay silent for about a minute between bookmarks, so its
        # read timeout is its own, longer than the request timeout.
        self._watch_inactivity = watch_inactivity if watch_inactivity is not None else timeout
        self._clock = clock
        self._session = session or requests.Session()
        self._session.trust_env = False  # no proxy or .netrc from the app's environment (see consul_api)
        self._token: str | None = None
        self._token_read_at: float | None = None
        self._token_problem: str | None = None  # why the token file cannot be read, while it cannot
        self._malformed_warned = False
        self._verify: bool | str = True
        if self._base.startswith("https://"):
            if ca_file.is_file():
                self._verify = str(ca_file)
            else:
                log.warning("Kubernetes CA file %s not found; verifying the API server with the system CAs", ca_file)
        # Open watch responses, so close() can end a blocked read from another thread.
        self._lock = threading.Lock()
        self._open: set[requests.Response] = set()
        self._closed = False

    def list_pod(self, namespace: str, name: str) -> tuple[dict[str, Any] | None, str]:
        """The pod (None if absent) and the list's resourceVersion, to watch from.

        A LIST with a `metadata.name` field selector, not a GET: a Role restricted with
        `resourceNames` allows list and watch only with that selector, and the list's
        resourceVersion is what a watch must resume from.
        """
        response = self._request("list", namespace, self._pods_params(name), stream=False)
        try:
            body = response.json()
        except (ValueError, RecursionError) as exc:
            raise KubernetesError("the API server sent a pod list that is not valid JSON", reason="malformed") from exc
        meta = body.get("metadata") if isinstance(body, dict) else None
        items = body.get("items") if isinstance(body, dict) else None
        resource_version = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if not isinstance(resource_version, str) or not resource_version or not isinstance(items, (list, type(None))):
            raise KubernetesError("the API server sent a pod list without items or resourceVersion", reason="malformed")
        # The field selector already filters by name; checking again costs nothing.
        pods = [item for item in items or () if isinstance(item, dict) and isinstance(item.get("metadata"), dict)
                and item["metadata"].get("name") == name]
        return (pods[0] if pods else None), resource_version

    def watch_pod(
        self, namespace: str, name: str, resource_version: str, timeout_seconds: int
    ) -> Generator[dict[str, Any], None, None]:
        """Open a watch (errors are raised here, before any event) and return its events.

        The server ends the stream after `timeout_seconds`; the iterator then simply stops.
        Raises WatchInactiveError when the stream stays silent past the client timeout and
        StreamBrokenError when it is cut off.
        """
        params = self._pods_params(name)
        params.update(
            watch="true",
            resourceVersion=resource_version,
            allowWatchBookmarks="true",
            timeoutSeconds=str(timeout_seconds),
        )
        response = self._request("watch", namespace, params, stream=True)
        return self._events(response)

    def close(self) -> None:
        """End every open watch now, from any thread, and refuse further requests."""
        with self._lock:
            self._closed = True
            responses = list(self._open)
        for response in responses:
            _shut_down(response)

    # -- writes: the pod condition and Events (sidecar.kube.pod_condition, sidecar.kube.pod_events) ---

    def patch_pod_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """PATCH pods/<name>/status with a strategic merge patch (conditions merge by type)."""
        url = f"{self._base}/api/v1/namespaces/{namespace}/pods/{name}/status"
        return self._write("PATCH", url, patch, STRATEGIC_MERGE_PATCH, "patch", "pods/status", namespace)

    def create_event(self, namespace: str, event: dict[str, Any]) -> dict[str, Any]:
        return self._write("POST", f"{self._base}/api/v1/namespaces/{namespace}/events", event,
                           "application/json", "create", "events", namespace)

    def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self._write("PATCH", f"{self._base}/api/v1/namespaces/{namespace}/events/{name}", patch,
                           MERGE_PATCH, "patch", "events", namespace)

    def _write(self, method: str, url: str, body: dict[str, Any], content_type: str, verb: str, resource: str,
               namespace: str) -> dict[str, Any]:
        data = json.dumps(body, separators=(",", ":")).encode()
        response = self._send_write(method, url, data, content_type, refresh_token=False)
        if response.status_code == 401:
            response.close()
            response = self._send_write(method, url, data, content_type, refresh_token=True)
        if not 200 <= response.status_code < 300:
            raise _write_error(response, verb, resource, namespace)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        finally:
            response.close()
        return answer if isinstance(answer, dict) else {}

    def _send_write(self, method: str, url: str, data: bytes, content_type: str, *,
                    refresh_token: bool) -> requests.Response:
        if self._closed:
            raise KubernetesError("the Kubernetes client was closed", reason="closed")
        headers = {"Accept": "application/json", "Content-Type": content_type}
        token = self._read_token(force=refresh_token)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            return self._session.request(method, url, data=data, headers=headers, verify=self._verify,
                                         timeout=(self._timeout, self._timeout), allow_redirects=False)
        except requests.RequestException as exc:
            raise _connection_error(exc, self._base, self._timeout) from exc

    # -- internals ----------------------------------------------------------------

    @staticmethod
    def _pods_params(name: str) -> dict[str, str]:
        return {"fieldSelector": f"metadata.name={name}"}

    def _request(self, verb: str, namespace: str, params: dict[str, str], *, stream: bool) -> requests.Response:
        url = f"{self._base}/api/v1/namespaces/{namespace}/pods"
        response = self._send(url, params, stream=stream, refresh_token=False)
        if response.status_code == 401:
            # The kubelet may have rotated the token since we last read it: re-read, retry once.
            response.close()
            response = self._send(url, params, stream=stream, refresh_token=True)
        if response.status_code != 200:
            if response.status_code in (401, 403) and self._token is None and self._token_problem:
                response.close()
                # Sent without a token because there is none to send: RBAC is not the problem.
                raise KubernetesError(
                    f"the service-account token file {self._token_file} cannot be used ({self._token_problem}), so the "
                    f"API server refused an anonymous request (HTTP {response.status_code}); mount the token "
                    "(automountServiceAccountToken) or set KATALOG_KUBE_TOKEN_FILE",
                    status=response.status_code, reason="Unauthorized" if response.status_code == 401 else "Forbidden")
            raise _http_error(response, verb, namespace)
        if stream:
            with self._lock:
                if self._closed:
                    response.close()
                    raise KubernetesError("the Kubernetes client was closed", reason="closed")
                self._open.add(response)
        return response

    def _send(self, url: str, params: dict[str, str], *, stream: bool, refresh_token: bool) -> requests.Response:
        if self._closed:
            raise KubernetesError("the Kubernetes client was closed", reason="closed")
        headers = {"Accept": "application/json"}
        if stream:
            headers["Accept-Encoding"] = "identity"  # a compressed stream would be buffered
        token = self._read_token(force=refresh_token)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            return self._session.get(
                url,
                params=params,
                headers=headers,
                verify=self._verify,
                stream=stream,
                timeout=(self._timeout, self._watch_inactivity if stream else self._timeout),
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise _connection_error(exc, self._base, self._timeout) from exc

    def _read_token(self, *, force: bool) -> str | None:
        now = self._clock()
        if not force and self._token_read_at is not None and now - self._token_read_at < TOKEN_MAX_AGE:
            return self._token
        try:
            self._token = self._token_file.read_text().strip() or None
            self._token_problem = None if self._token else "the file is empty"
        except (OSError, ValueError) as exc:  # ValueError: not UTF-8
            problem = "the file does not exist" if isinstance(exc, FileNotFoundError) else (
                (exc.strerror if isinstance(exc, OSError) else None) or exc.__class__.__name__)
            if problem != self._token_problem:
                log.warning("cannot read the service-account token file %s (%s); sending requests without a token",
                            self._token_file, problem)
            self._token_problem = problem
            self._token = None
        self._token_read_at = now
        return self._token

    def _events(self, response: requests.Response) -> Generator[dict[str, Any], None, None]:
        buffer = b""
        try:
            # chunk_size=None yields each HTTP chunk as it arrives: no waiting for a full buffer.
            for chunk in response.iter_content(chunk_size=None):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    event = self._parse(line)
                    if event is not None:
                        yield event
        except requests.exceptions.ChunkedEncodingError as exc:
            raise StreamBrokenError() from exc
        except requests.exceptions.SSLError as exc:
            raise StreamBrokenError() from exc
        except requests.ConnectionError as exc:
            # requests raises a plain ConnectionError for a read timeout inside a stream.
            raise WatchInactiveError(self._watch_inactivity) from exc
        finally:
            with self._lock:
                self._open.discard(response)
            response.close()
        if buffer.strip():
            raise StreamBrokenError()

    def _parse(self, line: bytes) -> dict[str, Any] | None:
        if not line.strip():
            return None
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the decoder's stack
            event = None
        if isinstance(event, dict) and isinstance(event.get("type"), str):
            return event
        if not self._malformed_warned:
            log.warning("skipping a malformed line in the pod watch: %.80r", line)
            self._malformed_warned = True
        return None


def _http_error(response: requests.Response, verb: str, namespace: str) -> KubernetesError:
    """An HTTP error as a KubernetesError: the Status reason and message, shortened, no token.

    The body is parsed first and shortened after: a real 403 `Status` is over 300 bytes.
    """
    code = response.status_code
    text = response.text[:_MAX_PARSED]
    response.close()
    reason, message = response.reason or "", " ".join(text.split())[:_MAX_BODY]
    try:
        status = json.loads(text) if text.lstrip().startswith("{") else None
    except (ValueError, RecursionError):
        status = None
    if isinstance(status, dict) and status.get("kind") == "Status":
        reason = str(status.get("reason") or reason)
        message = " ".join(str(status.get("message") or message).split())[:_MAX_BODY]
    if code == 403:
        return KubernetesError(
            f"forbidden: the service account cannot {verb} pods in namespace {namespace}; {RBAC_HINT}"
            + (f" (API server: {message})" if message else ""),
            status=code,
            reason=reason or "Forbidden",
        )
    if code == 401:
        return KubernetesError(
            "unauthorized: the API server rejected the service-account token (HTTP 401)",
            status=code,
            reason=reason or "Unauthorized",
        )
    return KubernetesError(f"{verb} pods failed: HTTP {code} {reason}: {message}".rstrip(": "), status=code, reason=reason)


WRITE_RBAC_HINTS = {
    "pods/status": "grant patch on pods/status (see examples/rbac-condition.yaml)",
    "events": "grant create, patch on events (see examples/rbac-condition.yaml), or set KATALOG_EVENTS=false",
}


def _write_error(response: requests.Response, verb: str, resource: str, namespace: str) -> KubernetesError:
    """A failed write as a KubernetesError; a 403 names the verb, the resource and the fix."""
    code = response.status_code
    text = response.text[:_MAX_BODY]
    response.close()
    reason, message = response.reason or "", text
    try:
        status = json.loads(text) if text.lstrip().startswith("{") else None
    except ValueError:
        status = None
    if isinstance(status, dict) and status.get("kind") == "Status":
        reason = str(status.get("reason") or reason)
        message = str(status.get("message") or text)[:_MAX_BODY]
    if code == 403:
        return KubernetesError(
            f"forbidden: the service account cannot {verb} {resource} in namespace {namespace}; "
            f"{WRITE_RBAC_HINTS.get(resource, '')}" + (f" (API server: {message})" if message else ""),
            status=code, reason=reason or "Forbidden")
    if code == 401:
        return KubernetesError("unauthorized: the API server rejected the service-account token (HTTP 401)",
                               status=code, reason=reason or "Unauthorized")
    return KubernetesError(f"{verb} {resource} failed: HTTP {code} {reason}: {message}".rstrip(": "),
                           status=code, reason=reason)


def _connection_error(exc: requests.RequestException, base: str, timeout: float) -> KubernetesError:
    if isinstance(exc, requests.ConnectTimeout):
        return KubernetesError(f"cannot connect to {base}: timed out after {timeout:g}s", reason="unreachable")
    if isinstance(exc, requests.Timeout):
        return KubernetesError(f"{base} did not answer within {timeout:g}s", reason="unreachable")
    if isinstance(exc, requests.exceptions.SSLError):
        return KubernetesError(f"TLS with {base} failed; check KATALOG_KUBE_CA_FILE", reason="unreachable")
    return KubernetesError(f"cannot connect to {base}: {_os_reason(exc)}", reason="unreachable")


def _os_reason(exc: BaseException) -> str:
    """The OS-level reason ("Connection refused") without urllib3's object reprs and addresses."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and isinstance(current.strerror, str) and current.strerror:
            return current.strerror.lower()
        todo += [a for a in current.args if isinstance(a, BaseException)]
        reason = getattr(current, "reason", None)
        for linked in (reason, current.__cause__, current.__context__):
            if isinstance(linked, BaseException):
                todo.append(linked)
    return "connection failed"


def _shut_down(response: requests.Response) -> None:
    # Closing a socket does not wake a thread blocked reading it; shutting it down does.
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
