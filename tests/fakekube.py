"""A fake Kubernetes API server for tests: pods (list, watch, PATCH status) and Events, in memory, on loopback.

It speaks the real wire format (PodList, `Status` errors, chunked watch streams with one
JSON event per line, BOOKMARK and ERROR events) and enforces what the real server enforces
that a client could get wrong: the bearer token, a `metadata.name` field selector (as a Role
restricted with `resourceNames` requires), and the resourceVersion a watch resumes from
(410 once it is older than the retained history). Every request is recorded, so a test can
show what the client asked for. Faults are injected by calling methods, never scripted.

    with FakeKube(tmp_path / "token") as kube:
        kube.create_pod(make_pod("web-0", "shop"))
        ... point a client at kube.url ...
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

BOOKMARK_EVERY = 60.0  # the watch cache's bookmark frequency
BOOKMARK_BEFORE_END = 2.0  # ... and it sends one this long before `timeoutSeconds` ends a watch

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "AlreadyExists",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stamp(wall: float) -> str:
    """A metav1.Time as the API serializes it: UTC, whole seconds (truncated)."""
    return datetime.fromtimestamp(int(wall), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_object(code: int, message: str, reason: str | None = None,
                  details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `Status` as the API returns it for errors (also the object of an ERROR event), keys in
    the real server's order; a 403 for pods carries `details` naming the resource."""
    status: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or _REASONS.get(code, "Unknown"),
    }
    if details is None and code == 403:
        details = {"kind": "pods"}
    if details is not None:
        status["details"] = details
    status["code"] = code
    return status


def make_pod(
    name: str,
    namespace: str = "default",
    containers: Iterable[str] = ("app", "katalog-sidecar"),
    ready: bool | Mapping[str, bool] = True,
    native_sidecars: Iterable[str] = (),
    init_containers: Iterable[str] = (),
    ports: Mapping[str, int] | None = None,
    uid: str | None = None,
) -> dict[str, Any]:
    """A running pod as `kubectl get pod -o json` shows it.

    `ready` is one value for every container or a per-name mapping (missing names: True).
    `ports` are named ports of the first container; `init_containers` are classic ones,
    already completed; `native_sidecars` are init containers with `restartPolicy: Always`.
    """
    containers, native_sidecars, init_containers = list(containers), list(native_sidecars), list(init_containers)

    def is_ready(container: str) -> bool:
        return ready if isinstance(ready, bool) else ready.get(container, True)

    def spec_of(container: str, index: int) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "name": container,
            "image": f"registry.example/{container}:1.0",
            "imagePullPolicy": "IfNotPresent",
            "resources": {},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
        }
        if index == 0 and ports:
            spec["ports"] = [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in ports.items()]
        return spec

    def status_of(container: str) -> dict[str, Any]:
        return {
            "name": container,
            "ready": is_ready(container),
            "started": True,
            "restartCount": 0,
            "image": f"registry.example/{container}:1.0",
            "imageID": f"registry.example/{container}@sha256:{'0' * 64}",
            "containerID": f"containerd://{uuid.uuid4().hex}",
            "state": {"running": {"startedAt": _now()}},
        }

    init_specs = [dict(spec_of(c, 1), restartPolicy="Always") for c in native_sidecars]
    init_specs += [dict(spec_of(c, 1), command=["sh", "-c", "true"]) for c in init_containers]
    init_statuses = [status_of(c) for c in native_sidecars]
    for c in init_containers:
        init_statuses.append(
            dict(status_of(c), ready=True, started=False, state={"terminated": {"exitCode": 0, "reason": "Completed"}})
        )
    all_ready = all(is_ready(c) for c in containers + native_sidecars)
    now = _now()

    def condition(kind: str, value: bool) -> dict[str, Any]:
        return {"type": kind, "status": "True" if value else "False", "lastProbeTime": None, "lastTransitionTime": now}

    pod: dict[str, Any] = {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or str(uuid.uuid4()),
            "resourceVersion": "0",
            "creationTimestamp": now,
            "labels": {"app": name.rsplit("-", 1)[0]},
        },
        "spec": {
            "containers": [spec_of(c, i) for i, c in enumerate(containers)],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "nodeName": "node-1",
        },
        "status": {
            "phase": "Running",
            "hostIP": "172.18.0.2",
            "podIP": "10.244.1.23",
            "podIPs": [{"ip": "10.244.1.23"}],
            "startTime": now,
            "qosClass": "BestEffort",
            "conditions": [
                condition("PodReadyToStartContainers", True),
                condition("Initialized", True),
                condition("Ready", all_ready),
                condition("ContainersReady", all_ready),
                condition("PodScheduled", True),
            ],
            "containerStatuses": [status_of(c) for c in containers],
        },
    }
    if init_specs:
        pod["spec"]["initContainers"] = init_specs
        pod["status"]["initContainerStatuses"] = init_statuses
    return pod


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    time: float
    status: int = 0  # filled in when the answer is sent

    @property
    def is_watch(self) -> bool:
        return self.query.get("watch") in ("true", "1")


@dataclass
class _Event:
    rv: int
    type: str
    obj: dict[str, Any]


@dataclass(eq=False)
class _Watch:
    namespace: str
    selector: dict[str, str]
    bookmarks: bool
    # The pods resourceVersion the client has seen (its start, the last event or bookmark sent):
    # the real watch cache sends a bookmark only when pods moved past it.
    seen_rv: int = 0
    next_bookmark: float = 0.0  # monotonic time of the next periodic bookmark
    # Events and injected faults in the order they happened, so a stall or a break cuts
    # the stream exactly where the test called it.
    commands: deque[tuple[str, Any]] = field(default_factory=deque)
    stalled: bool = False


@dataclass
class _Failure:
    status: int
    remaining: int
    verb: str | None


class FakeKube:
    """The fake API server. Thread-safe; every mutator wakes the open watches."""

    def __init__(self, token_file: Path, token: str = "token-1", *, require_name_selector: bool = True,
                 service_account: str = "default", pod_names: set[str] | None = None) -> None:
        self.token_file = token_file
        self.require_name_selector = require_name_selector
        # Who the token belongs to (named in 403 messages) and, like a Role with
        # `resourceNames`, the only pod names it may list and watch (None: any).
        self.service_account = service_account
        self.pod_names = pod_names
        self._cond = threading.Condition()
        self._token = token
        token_file.write_text(token + "\n")
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}
        self._rv = 100
        self._compacted = 0
        self._expire_with_http = False
        self._history: list[_Event] = []
        self._watches: set[_Watch] = set()
        self._failures: list[_Failure] = []
        self._requests: list[RecordedRequest] = []
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._stopping = False
        self._end_at_once = False
        self._events: dict[tuple[str, str], dict[str, Any]] = {}
        # Events have their own versions here: the pods watch cache (bookmarks) never sees them move.
        self._event_rv = 1_000_000
        self._forbidden: set[tuple[str, str]] = set()

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> FakeKube:
        """Serve, on the same port as before after a stop() (an API server coming back)."""
        with self._cond:
            self._stopping = False
        server = ThreadingHTTPServer(("127.0.0.1", self._port), _handler_for(self))
        server.daemon_threads = True
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fakekube", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut every open connection, as an API server outage would."""
        if self._server is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            connections = list(self._connections)
        self._server.shutdown()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- pods -------------------------------------------------------------------------------

    def create_pod(self, pod: Mapping[str, Any]) -> dict[str, Any]:
        pod = copy.deepcopy(dict(pod))
        meta = pod.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        with self._cond:
            self._pods[(meta["namespace"], meta["name"])] = pod
            self._record("ADDED", pod)
            return copy.deepcopy(pod)

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        with self._cond:
            return copy.deepcopy(self._pods[(namespace, name)])

    def update_pod(self, namespace: str, name: str, mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Apply `mutate` to the stored pod and send MODIFIED, as any update does."""
        with self._cond:
            pod = self._pods[(namespace, name)]
            mutate(pod)
            self._record("MODIFIED", pod)
            return copy.deepcopy(pod)

    def set_container_ready(self, namespace: str, name: str, container: str, ready: bool) -> dict[str, Any]:
        def mutate(pod: dict[str, Any]) -> None:
            status = pod["status"]
            entries = status.get("containerStatuses", []) + status.get("initContainerStatuses", [])
            for entry in entries:
                if entry["name"] == container:
                    entry["ready"] = ready
                    break
            else:
                raise KeyError(f"pod {namespace}/{name} has no container status {container!r}")
            native = {c["name"] for c in pod["spec"].get("initContainers", []) if c.get("restartPolicy") == "Always"}
            counted = status.get("containerStatuses", []) + [
                s for s in status.get("initContainerStatuses", []) if s["name"] in native
            ]
            all_ready = all(s["ready"] for s in counted)
            for cond in status.get("conditions", []):
                if cond["type"] in ("Ready", "ContainersReady"):
                    cond["status"] = "True" if all_ready else "False"
                    cond["lastTransitionTime"] = _now()

        return self.update_pod(namespace, name, mutate)

    def annotate_pod(self, namespace: str, name: str, key: str, value: str) -> dict[str, Any]:
        """A change that does not touch readiness (a new resourceVersion all the same)."""
        return self.update_pod(namespace, name, lambda pod: pod["metadata"].setdefault("annotations", {}).update({key: value}))

    def set_deletion_timestamp(self, namespace: str, name: str, grace_seconds: int = 30,
                               deleted_ago: float = 0.0) -> dict[str, Any]:
        """A graceful deletion as the API server records it: `deletionTimestamp` is the deletion's
        time plus the grace period, the earliest the kubelet SIGKILLs, in whole seconds
        (k8s.io/apiserver pkg/registry/rest/delete.go BeforeDelete), and
        `deletionGracePeriodSeconds` the grace. `deleted_ago`: the deletion came that many
        seconds ago (a sidecar restarted during the termination sees less of the grace left)."""
        def mutate(pod: dict[str, Any]) -> None:
            pod["metadata"]["deletionTimestamp"] = _stamp(time.time() - deleted_ago + grace_seconds)
            pod["metadata"]["deletionGracePeriodSeconds"] = grace_seconds

        return self.update_pod(namespace, name, mutate)

    def delete_pod(self, namespace: str, name: str) -> None:
        """Removal from the API, as the real server does it even at gracePeriodSeconds=0: a
        MODIFIED that marks the pod (unless it already was), then DELETED with that state."""
        with self._cond:
            pod = self._pods[(namespace, name)]
            if not pod["metadata"].get("deletionTimestamp"):
                pod["metadata"]["deletionTimestamp"] = _now()
                pod["metadata"]["deletionGracePeriodSeconds"] = 0
                self._record("MODIFIED", pod)
            del self._pods[(namespace, name)]
            self._record("DELETED", pod)

    # -- writes: pods/status and Events --------------------------------------------------------

    def forbid(self, verb: str, resource: str) -> None:
        """RBAC without `verb` on `resource` ("patch", "pods/status"; "create", "events"): 403."""
        with self._cond:
            self._forbidden.add((verb, resource))

    def allow(self, verb: str, resource: str) -> None:
        with self._cond:
            self._forbidden.discard((verb, resource))

    def events(self, namespace: str, involved: str | None = None) -> list[dict[str, Any]]:
        """Events of the namespace (for one involved object's name), oldest first."""
        with self._cond:
            found = [copy.deepcopy(e) for (ns, _), e in self._events.items()
                     if ns == namespace and (involved is None or e.get("involvedObject", {}).get("name") == involved)]
        return sorted(found, key=lambda e: int(e["metadata"]["resourceVersion"]))

    def condition(self, namespace: str, name: str, condition_type: str) -> dict[str, Any] | None:
        with self._cond:
            for cond in self._pods[(namespace, name)]["status"].get("conditions", []):
                if cond.get("type") == condition_type:
                    return copy.deepcopy(cond)
        return None

    def _patch_pod_status(self, namespace: str, name: str, content_type: str, patch: Any) -> tuple[int, dict[str, Any]]:
        with self._cond:
            pod = self._pods.get((namespace, name))
            if pod is None:
                return 404, status_object(404, f'pods "{name}" not found')
            if not isinstance(patch, dict):
                return 400, status_object(400, "the patch is not a JSON object")
            status_patch = patch.get("status") or {}
            status = pod.setdefault("status", {})
            for key, value in status_patch.items():
                if key == "conditions" and content_type == STRATEGIC_MERGE:
                    # patchMergeKey "type": each condition merges into the one of its type.
                    conditions = status.setdefault("conditions", [])
                    for cond in value or []:
                        current = next((c for c in conditions if c.get("type") == cond.get("type")), None)
                        if current is None:
                            conditions.append(dict(cond))
                        else:
                            current.update(cond)
                elif value is None:
                    status.pop(key, None)
                else:
                    status[key] = copy.deepcopy(value)  # merge patch: lists replace
            self._record("MODIFIED", pod)
            return 200, dict(copy.deepcopy(pod), kind="Pod", apiVersion="v1")

    def _create_event(self, namespace: str, event: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(event, dict) or event.get("kind") not in (None, "Event"):
            return 400, status_object(400, "the body is not an Event")
        meta = event.setdefault("metadata", {})
        name = meta.get("name")
        involved = event.get("involvedObject") or {}
        if not name:
            return 422, status_object(422, 'Event "" is invalid: metadata.name: Required value: name or generateName is required')
        if involved.get("namespace", namespace) != namespace:
            return 422, status_object(422, f'Event "{name}" is invalid: involvedObject.namespace: Invalid value: '
                                           f'"{involved.get("namespace")}": does not match event.namespace')
        with self._cond:
            if (namespace, name) in self._events:
                return 409, status_object(409, f'events "{name}" already exists')
            self._event_rv += 1
            meta.update(namespace=namespace, uid=str(uuid.uuid4()), resourceVersion=str(self._event_rv),
                        creationTimestamp=_now())
            self._events[(namespace, name)] = copy.deepcopy(event)
            self._cond.notify_all()
            return 201, copy.deepcopy(event)

    def _patch_event(self, namespace: str, name: str, patch: Any) -> tuple[int, dict[str, Any]]:
        with self._cond:
            event = self._events.get((namespace, name))
            if event is None:
                return 404, status_object(404, f'events "{name}" not found')
            if not isinstance(patch, dict):
                return 400, status_object(400, "the patch is not a JSON object")
            for key, value in patch.items():
                if key != "metadata":
                    event[key] = value
            self._event_rv += 1
            event["metadata"]["resourceVersion"] = str(self._event_rv)
            self._cond.notify_all()
            return 200, copy.deepcopy(event)

    def expire_event(self, namespace: str, name: str) -> None:
        """The API server's event TTL ran out for this one."""
        with self._cond:
            self._events.pop((namespace, name), None)

    # -- watch faults -----------------------------------------------------------------------

    def send_bookmark(self) -> str:
        """A BOOKMARK at the current resourceVersion to every open watch that allows them."""
        with self._cond:
            self._broadcast("bookmark", self._rv)
            return str(self._rv)

    def expire_history(self, *, as_http_status: bool = False) -> None:
        """Compact: every resourceVersion issued so far becomes too old to resume a watch from.

        Watches resuming from one get an ERROR event with a 410 Status (what the watch cache
        does), or with `as_http_status` a plain HTTP 410.
        """
        with self._cond:
            self._rv += 1  # other objects moved on, as they do in etcd
            self._compacted = self._rv
            self._history.clear()
            self._expire_with_http = as_http_status

    def send_error_410_event(self) -> None:
        """An ERROR event (410, reason Expired) to every open watch, which then ends."""
        with self._cond:
            self._broadcast("error410", None)

    def inject_event(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """Any event, for example a type the client does not know."""
        self.send_raw_line(json.dumps({"type": event_type, "object": obj}).encode())

    def send_raw_line(self, line: bytes) -> None:
        """Bytes as they are, as one line of the open watch streams (a newline is added if missing)."""
        with self._cond:
            self._broadcast("raw", line if line.endswith(b"\n") else line + b"\n")

    def stall_watches(self) -> None:
        """Open watches keep their connection but send nothing more (new watches work)."""
        with self._cond:
            self._broadcast("stall", None)

    def break_watches(self) -> None:
        """Open watches send half an event line, then their connection is cut."""
        with self._cond:
            self._broadcast("break", None)

    def end_watches_at_once(self, on: bool = True) -> None:
        """New watches answer 200 and end at once, cleanly (a proxy that closes streams)."""
        with self._cond:
            self._end_at_once = on

    def fail_next(self, status: int, n: int = 1, verb: str | None = None) -> None:
        """Answer the next `n` requests (of `verb` "list" or "watch", or any) with a Status error."""
        with self._cond:
            self._failures.append(_Failure(status, n, verb))

    def set_token(self, token: str, *, write_file: bool = True) -> None:
        """Rotate the expected token; by default also write it to the token file, as the kubelet does."""
        with self._cond:
            self._token = token
        if write_file:
            self.token_file.write_text(token + "\n")

    # -- inspection -------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._cond:
            return list(self._requests)

    @property
    def resource_version(self) -> str:
        with self._cond:
            return str(self._rv)

    @property
    def open_watches(self) -> int:
        with self._cond:
            return len(self._watches)

    def wait_for_request(self, predicate: Callable[[RecordedRequest], bool], timeout: float = 5.0, after: int = 0) -> RecordedRequest:
        """The first recorded request from index `after` on that matches, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for request in self._requests[after:]:
                    if predicate(request):
                        return request
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no matching request within {timeout}s; got {self._requests[after:]}")
                self._cond.wait(remaining)

    # -- internals (called with self._cond held) -------------------------------------------

    def _record(self, event_type: str, pod: dict[str, Any]) -> None:
        self._rv += 1
        pod["metadata"]["resourceVersion"] = str(self._rv)
        event = _Event(self._rv, event_type, copy.deepcopy(pod))
        self._history.append(event)
        for watch in self._watches:
            if _matches(event.obj, watch.namespace, watch.selector):
                watch.commands.append(("event", event))
        self._cond.notify_all()

    def _broadcast(self, command: str, arg: Any) -> None:
        for watch in self._watches:
            watch.commands.append((command, arg))
        self._cond.notify_all()

    def _log_request(self, request: RecordedRequest) -> None:
        with self._cond:
            self._requests.append(request)
            self._cond.notify_all()

    def _take_failure(self, verb: str) -> int | None:
        with self._cond:
            for failure in self._failures:
                if failure.verb in (None, verb) and failure.remaining > 0:
                    failure.remaining -= 1
                    return failure.status
            return None

    def _list_body(self, namespace: str, selector: dict[str, str]) -> dict[str, Any]:
        with self._cond:
            # List items carry no kind/apiVersion; the list does.
            items = [copy.deepcopy(p) for p in self._pods.values() if _matches(p, namespace, selector)]
            return {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    def _next_lines(self, watch: _Watch, deadline: float) -> tuple[list[bytes], str | None]:
        """Lines to send next and how the stream goes on: None, "end", "break" or "abort"."""
        with self._cond:
            while True:
                if self._stopping:
                    return [], "abort"
                lines: list[bytes] = []
                while watch.commands:
                    command, arg = watch.commands.popleft()
                    if command == "break":
                        return lines, "break"
                    if command == "stall":
                        watch.stalled = True
                    elif command == "error410":
                        lines.append(_event_line("ERROR", status_object(410, "too old resource version", "Expired")))
                        return lines, "end"
                    elif watch.stalled:
                        continue
                    elif command == "event":
                        lines.append(_watch_event_line(arg))
                        watch.seen_rv = max(watch.seen_rv, arg.rv)
                    elif command == "raw":
                        lines.append(arg)
                    elif command == "bookmark" and watch.bookmarks:
                        lines.append(_event_line("BOOKMARK", _bookmark_object(arg)))
                        watch.seen_rv = max(watch.seen_rv, arg)
                if lines:
                    return lines, None
                now = time.monotonic()
                remaining = deadline - now
                if remaining <= 0 or self._end_at_once:
                    return [], "end"
                # The real watch cache's bookmark timing: one every minute, and one 2 s before
                # `timeoutSeconds` runs out, each only if some pod changed since the client's
                # last event or bookmark.
                due = min(watch.next_bookmark, deadline - BOOKMARK_BEFORE_END)
                if watch.bookmarks and not watch.stalled and now >= due:
                    watch.next_bookmark = now + BOOKMARK_EVERY if now >= watch.next_bookmark else watch.next_bookmark
                    if now >= deadline - BOOKMARK_BEFORE_END:
                        watch.next_bookmark = deadline  # nothing more before the end
                    if self._rv > watch.seen_rv:
                        watch.seen_rv = self._rv
                        return [_event_line("BOOKMARK", _bookmark_object(self._rv))], None
                    continue
                wake = remaining if not watch.bookmarks else min(remaining, max(0.0, due - now))
                self._cond.wait(wake)

    def _open_watch(self, namespace: str, selector: dict[str, str], query: dict[str, str]) -> tuple[_Watch | None, list[bytes], int]:
        """Register a watch: (watch, first lines, HTTP status). A 410 may end it before it starts."""
        requested = query.get("resourceVersion", "")
        with self._cond:
            if requested not in ("", "0"):
                try:
                    start = int(requested)
                except ValueError:
                    return None, [], 400
                if start < self._compacted:
                    if self._expire_with_http:
                        return None, [], 410
                    line = _event_line("ERROR", status_object(410, f"too old resource version: {start} ({self._compacted})", "Expired"))
                    return None, [line], 200
                # Replay what happened after the requested version.
                first = [
                    _watch_event_line(e)
                    for e in self._history
                    if e.rv > start and _matches(e.obj, namespace, selector)
                ]
            else:
                # No resourceVersion: the current state as synthetic ADDED events first.
                first = [
                    _event_line("ADDED", dict(copy.deepcopy(p), kind="Pod", apiVersion="v1"))
                    for p in self._pods.values()
                    if _matches(p, namespace, selector)
                ]
            watch = _Watch(namespace, selector, query.get("allowWatchBookmarks") in ("true", "1"),
                           seen_rv=self._rv, next_bookmark=time.monotonic() + BOOKMARK_EVERY)
            self._watches.add(watch)
            return watch, first, 200

    def _close_watch(self, watch: _Watch) -> None:
        with self._cond:
            self._watches.discard(watch)

    def _check_access(self, auth: str | None, verb: str, namespace: str,
                      selector: dict[str, str]) -> tuple[int, str, dict[str, Any] | None] | None:
        """None, or the error's code, message and details (a named request's 403 names the pod)."""
        with self._cond:
            token = self._token
        if auth != f"Bearer {token}":
            return 401, "Unauthorized", None
        name = selector.get("metadata.name")
        if (self.require_name_selector and name is None) or (self.pod_names is not None and name not in self.pod_names):
            details = {"name": name, "kind": "pods"} if name else {"kind": "pods"}
            return 403, _forbidden(verb, namespace, self.service_account, name), details
        return None


STRATEGIC_MERGE = "application/strategic-merge-patch+json"
PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json", STRATEGIC_MERGE,
               "application/apply-patch+yaml")


def _forbidden_write(verb: str, resource: str, name: str, namespace: str, account: str = "default") -> str:
    kind = resource.split("/")[0]
    what = f'{kind} "{name}"' if name else kind
    return (f'{what} is forbidden: User "system:serviceaccount:{namespace}:{account}" cannot {verb} '
            f'resource "{resource}" in API group "" in the namespace "{namespace}"')


def _forbidden(verb: str, namespace: str, account: str = "default", name: str | None = None) -> str:
    """The real authorizer's message (a named request names the pod)."""
    what = f'pods "{name}"' if name else "pods"
    return (
        f'{what} is forbidden: User "system:serviceaccount:{namespace}:{account}" cannot {verb} '
        f'resource "pods" in API group "" in the namespace "{namespace}"'
    )


def _json_bytes(body: Mapping[str, Any]) -> bytes:
    """The API server's encoding: compact JSON, then a newline."""
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _event_line(event_type: str, obj: Mapping[str, Any]) -> bytes:
    return json.dumps({"type": event_type, "object": obj}, separators=(",", ":")).encode() + b"\n"


def _watch_event_line(event: _Event) -> bytes:
    # Objects in watch events carry kind and apiVersion (list items do not).
    return _event_line(event.type, dict(event.obj, kind="Pod", apiVersion="v1"))


def _bookmark_object(rv: int) -> dict[str, Any]:
    # What the API server sends: an empty object of the watched kind carrying only the RV.
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": str(rv)},
        "spec": {"containers": None},
        "status": {},
    }


def _matches(pod: Mapping[str, Any], namespace: str, selector: Mapping[str, str]) -> bool:
    meta = pod.get("metadata", {})
    fields = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace")}
    return meta.get("namespace") == namespace and all(fields.get(k) == v for k, v in selector.items())


def _parse_selector(text: str) -> dict[str, str] | None:
    """`metadata.name=x,metadata.namespace=y` (also `==`); None for anything unsupported."""
    selector: dict[str, str] = {}
    for term in filter(None, text.split(",")):
        key, sep, value = term.partition("==") if "==" in term else term.partition("=")
        if not sep or key not in ("metadata.name", "metadata.namespace"):
            return None
        selector[key] = value
    return selector


def _handler_for(fake: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive and chunked streams, as the API server
        record: RecordedRequest

        def setup(self) -> None:
            super().setup()
            with fake._cond:
                fake._connections.add(self.connection)

        def finish(self) -> None:
            with fake._cond:
                fake._connections.discard(self.connection)
            try:
                super().finish()
            except OSError:
                pass

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            parts = urlsplit(self.path)
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            self.record = RecordedRequest("GET", parts.path, query, time.monotonic())
            fake._log_request(self.record)
            segments = parts.path.strip("/").split("/")
            if len(segments) == 5 and segments[:3] == ["api", "v1", "namespaces"] and segments[4] == "events":
                return self._events_list(segments[3], query.get("fieldSelector", ""))
            if len(segments) != 5 or segments[:3] != ["api", "v1", "namespaces"] or segments[4] != "pods":
                return self._status(404, "the server could not find the requested resource")
            namespace = segments[3]
            verb = "watch" if self.record.is_watch else "list"
            selector = _parse_selector(query.get("fieldSelector", ""))
            name = (selector or {}).get("metadata.name")
            injected = fake._take_failure(verb)
            if injected is not None:
                if injected == 403:  # as the authorizer words it, naming the pod a request names
                    return self._status(403, _forbidden(verb, namespace, fake.service_account, name),
                                        {"name": name, "kind": "pods"} if name else None)
                return self._status(injected, "Unauthorized" if injected == 401 else f"injected failure {injected}")
            if selector is None:
                return self._status(400, f"unable to parse requested fieldSelector {query.get('fieldSelector')!r}")
            denied = fake._check_access(self.headers.get("Authorization"), verb, namespace, selector)
            if denied is not None:
                return self._status(*denied)
            if verb == "list":
                return self._json(200, fake._list_body(namespace, selector))
            self._watch(namespace, selector, query)

        def _events_list(self, namespace: str, selector: str) -> None:
            """As `kubectl get events --field-selector involvedObject.name=<pod>` reads them."""
            wanted = dict(term.split("=", 1) for term in selector.split(",") if "=" in term)
            unknown = set(wanted) - {"involvedObject.name"}
            if unknown:
                return self._status(400, f"field label not supported: {sorted(unknown)[0]}")
            items = fake.events(namespace, wanted.get("involvedObject.name"))
            self._json(200, {"kind": "EventList", "apiVersion": "v1",
                             "metadata": {"resourceVersion": fake.resource_version}, "items": items})

        def _watch(self, namespace: str, selector: dict[str, str], query: dict[str, str]) -> None:
            try:
                timeout = float(query.get("timeoutSeconds", "1800"))
            except ValueError:
                return self._status(400, "invalid timeoutSeconds")
            deadline = time.monotonic() + timeout
            watch, lines, code = fake._open_watch(namespace, selector, query)
            if code != 200:
                return self._status(code, "too old resource version" if code == 410 else "invalid resourceVersion")
            self.record.status = 200
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                self._chunks(lines)
                if watch is None:  # an ERROR event, then the server ends the stream
                    return self._end()
                while True:
                    lines, how = fake._next_lines(watch, deadline)
                    self._chunks(lines)
                    if how == "end":
                        return self._end()
                    if how == "break":
                        self._cut(b'{"type":"MODIFIED","object":{"kind":"Pod","meta')
                        return
                    if how == "abort":
                        self._cut(b"")
                        return
            except OSError:
                self.close_connection = True  # the client went away
            finally:
                if watch is not None:
                    fake._close_watch(watch)

        def _chunks(self, lines: list[bytes]) -> None:
            for line in lines:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()

        def _end(self) -> None:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def _cut(self, partial: bytes) -> None:
            if partial:
                self.wfile.write(b"%x\r\n%s" % (len(partial) + 20, partial))  # a chunk that never completes
                self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def _status(self, code: int, message: str, details: dict[str, Any] | None = None) -> None:
            self._json(code, status_object(code, message, details=details))

        def _json(self, code: int, body: Mapping[str, Any]) -> None:
            self.record.status = code
            data = _json_bytes(body)
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _write(self, method: str) -> None:
            parts = urlsplit(self.path)
            self.record = RecordedRequest(method, parts.path, dict(parse_qsl(parts.query)), time.monotonic())
            fake._log_request(self.record)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            segments = parts.path.strip("/").split("/")
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if segments[:3] != ["api", "v1", "namespaces"] or len(segments) < 5:
                return self._status(404, "the server could not find the requested resource")
            namespace, resource = segments[3], segments[4]
            name = segments[5] if len(segments) > 5 else ""
            sub = segments[6] if len(segments) > 6 else ""
            if method == "POST" and resource == "events" and not name:
                verb, target = "create", "events"
            elif method == "PATCH" and resource == "events" and name and not sub:
                verb, target = "patch", "events"
            elif method == "PATCH" and resource == "pods" and name and sub == "status":
                verb, target = "patch", "pods/status"
            else:
                self.close_connection = True
                return self._status(405, f"the fake API server does not serve {method} {parts.path}")
            with fake._cond:
                token, forbidden = fake._token, (verb, target) in fake._forbidden
            if self.headers.get("Authorization") != f"Bearer {token}":
                return self._status(401, "Unauthorized")
            if forbidden:
                kind = target.split("/")[0]
                return self._status(403, _forbidden_write(verb, target, name, namespace, fake.service_account),
                                    details={"name": name, "kind": kind} if name else {"kind": kind})
            if method == "PATCH" and content_type not in PATCH_TYPES:
                return self._status(415, "the body of the request was in an unknown format - accepted media types "
                                         "include: " + ", ".join(PATCH_TYPES))
            if method == "POST" and content_type != "application/json":
                return self._status(415, f"the body of the request was in an unknown format: {content_type}")
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                return self._status(400, "the body of the request is not valid JSON")
            if target == "pods/status":
                code, answer = fake._patch_pod_status(namespace, name, content_type, body)
            elif verb == "create":
                code, answer = fake._create_event(namespace, body)
            else:
                code, answer = fake._patch_event(namespace, name, body)
            self._json(code, answer)

        def do_POST(self) -> None:  # noqa: N802
            self._write("POST")

        def do_PATCH(self) -> None:  # noqa: N802
            self._write("PATCH")

        def do_PUT(self) -> None:  # noqa: N802
            self.record = RecordedRequest(self.command, self.path, {}, time.monotonic())
            fake._log_request(self.record)
            self.close_connection = True
            self._status(405, "the fake API server does not serve this method")

        do_DELETE = do_PUT  # noqa: N815

    return Handler
