"""In-memory model of the pod API for the pods of one node: objects, watches, faults.

- every change bumps a global resourceVersion; a watch from an RV older than the history
  window gets 410 (an ERROR event with code 410, as the real apiserver sends it);
- bookmarks carry only metadata.resourceVersion and may come at any time after a change;
- faults: `down` (connection refused: every request and open watch fails), `status_code`
  401/403 on every request (a watch open at the time is ended), and `expire_history`
  (compaction: every RV older than now is too old);
- pod/status patches for the condition gate are recorded (`conditions`, `condition_patches`);
- core/v1 Events are created and patched (`events`), refused like every other request.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sidecar.errors import KubernetesError
from sim.clock import WALL_EPOCH, VirtualClock

HISTORY = 300.0  # about 5 min of etcd history
CONDITION = "katalog-sidecar.io/consul-confirmed"

WatchEvent = dict[str, Any]


def rfc3339(wall: float) -> str:
    """A metav1.Time as the API serializes it: UTC, whole seconds (truncated)."""
    return datetime.fromtimestamp(math.floor(wall), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Pod:
    name: str
    uid: str
    node: str
    app_ready: bool = False
    annotations: dict[str, str] = field(default_factory=dict)
    deletion_timestamp: float | None = None  # when it was deleted (virtual time; the API shows it plus the grace)
    grace: float = 30.0
    conditions: dict[str, str] = field(default_factory=dict)
    resource_version: int = 0

    def as_json(self, namespace: str) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name, "namespace": namespace, "uid": self.uid,
                                    "resourceVersion": str(self.resource_version),
                                    "annotations": dict(self.annotations)}
        if self.deletion_timestamp is not None:
            # As the API server sets it: the deletion's time plus the grace period, in whole
            # seconds (k8s.io/apiserver pkg/registry/rest/delete.go BeforeDelete; metav1.Time).
            metadata["deletionTimestamp"] = rfc3339(WALL_EPOCH + self.deletion_timestamp + self.grace)
            metadata["deletionGracePeriodSeconds"] = int(self.grace)
        return {
            "metadata": metadata,
            "spec": {"nodeName": self.node, "containers": [
                {"name": "app", "ports": [{"name": "http", "containerPort": 8080}]},
                {"name": "katalog-sidecar"}]},
            "status": {
                "containerStatuses": [{"name": "app", "ready": self.app_ready},
                                      {"name": "katalog-sidecar", "ready": True}],
                "conditions": [{"type": t, "status": s} for t, s in sorted(self.conditions.items())],
            },
        }


@dataclass
class Watch:
    name: str
    on_event: Callable[[WatchEvent], None]
    on_end: Callable[[int | None], None]  # the HTTP status that ended it (None: connection cut)
    active: bool = True


class PodApi:
    def __init__(self, clock: VirtualClock, namespace: str = "default") -> None:
        self.clock = clock
        self.namespace = namespace
        self.rv = 100
        self.pods: dict[str, Pod] = {}
        self.history: list[tuple[float, int, str, WatchEvent]] = []  # (time, rv, pod name, event)
        self.watches: list[Watch] = []
        self.down = False
        self.status_code: int | None = None  # 401 or 403 for every request while set
        self.condition_patches = 0
        self.events: dict[str, dict[str, Any]] = {}  # core/v1 Events by name (sidecar.kube.pod_events writes them)

    # --- the world changes pods ---
    def _changed(self, pod: Pod, kind: str = "MODIFIED") -> None:
        self.rv += 1
        pod.resource_version = self.rv
        event = {"type": kind, "object": pod.as_json(self.namespace)}
        self.history.append((self.clock.now, self.rv, pod.name, event))
        cutoff = self.clock.now - HISTORY
        while self.history and self.history[0][0] < cutoff:
            self.history.pop(0)
        for watch in [w for w in self.watches if w.active and w.name == pod.name]:
            watch.on_event(copy.deepcopy(event))

    def create(self, pod: Pod) -> None:
        self.pods[pod.name] = pod
        self._changed(pod, "ADDED")

    def set_ready(self, name: str, ready: bool) -> None:
        pod = self.pods[name]
        if pod.app_ready != ready and pod.deletion_timestamp is None:
            pod.app_ready = ready
            self._changed(pod)

    def annotate(self, name: str, annotations: dict[str, str]) -> None:
        pod = self.pods[name]
        pod.annotations = dict(annotations)
        self._changed(pod)

    def delete(self, name: str, grace: float) -> None:
        pod = self.pods[name]
        if pod.deletion_timestamp is None:
            pod.deletion_timestamp, pod.grace = self.clock.now, grace
            pod.app_ready = False
            self._changed(pod)

    def remove(self, name: str) -> None:
        """The kubelet is done with the pod: the object goes away."""
        pod = self.pods.pop(name, None)
        if pod is not None:
            self._changed(pod, "DELETED")

    def bookmark(self) -> None:
        for watch in [w for w in self.watches if w.active]:
            watch.on_event({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": str(self.rv)}}})

    # --- faults ---
    def set_down(self, down: bool) -> None:
        self.down = down
        if down:
            self._end_watches(None)

    def set_status_code(self, code: int | None) -> None:
        self.status_code = code
        if code is not None:
            self._end_watches(code)

    def expire_history(self) -> None:
        self.history.clear()

    def _end_watches(self, code: int | None) -> None:
        for watch in [w for w in self.watches if w.active]:
            watch.active = False
            watch.on_end(code)
        self.watches = [w for w in self.watches if w.active]

    # --- the API a client calls ---
    def refused(self) -> int | None:
        """None when the request would be served; 0 for connection refused; else the status."""
        if self.down:
            return 0
        return self.status_code

    def list_pod(self, name: str) -> tuple[int, dict[str, Any]]:
        code = self.refused()
        if code is not None:
            return code, {}
        pod = self.pods.get(name)
        items = [pod.as_json(self.namespace)] if pod is not None else []
        return 200, {"metadata": {"resourceVersion": str(self.rv)}, "items": items}

    def watch_pod(self, name: str, resource_version: int, on_event: Callable[[WatchEvent], None],
                  on_end: Callable[[int | None], None]) -> Watch | int:
        """Open a watch from an RV (events after it are replayed); the status code if refused."""
        code = self.refused()
        if code is not None:
            return code
        watch = Watch(name, on_event, on_end)
        oldest = self.history[0][1] if self.history else self.rv + 1
        if resource_version < self.rv and resource_version + 1 < oldest:
            on_event({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                                  "message": f"too old resource version: {resource_version} ({self.rv})"}})
            watch.active = False
            on_end(200)
            return watch
        self.watches.append(watch)
        for _t, rv, pod_name, event in self.history:
            if rv > resource_version and pod_name == name:
                on_event(copy.deepcopy(event))
        return watch

    # --- Events: the EventWriter protocol of sidecar.kube.pod_events, answered at once ---
    def create_event(self, namespace: str, event: dict[str, Any]) -> dict[str, Any]:
        self._event_request()
        self.events[event["metadata"]["name"]] = copy.deepcopy(event)
        return event

    def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self._event_request()
        if name not in self.events:
            raise KubernetesError(f'events "{name}" not found', status=404)
        self.events[name].update(patch)
        return self.events[name]

    def _event_request(self) -> None:
        code = self.refused()
        if code == 0:
            raise KubernetesError("connection refused", reason="unreachable")
        if code is not None:
            raise KubernetesError(f"events is forbidden: User cannot create resource \"events\" (HTTP {code})",
                                  status=code)

    def patch_condition(self, name: str, status: str) -> int:
        code = self.refused()
        if code is not None:
            return code
        pod = self.pods.get(name)
        if pod is None:
            return 404
        self.condition_patches += 1
        if pod.conditions.get(CONDITION) != status:
            pod.conditions[CONDITION] = status
            self._changed(pod)
        return 200
