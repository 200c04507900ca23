"""Is the app ready? Pure logic over the pod object as the API returns it: no I/O.

The app is ready when every container that belongs to it reports `ready`: the regular
containers and the native sidecars (`initContainers` with `restartPolicy: Always`), minus
this sidecar and any excluded container. A pod being deleted is never ready.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from sidecar import annotations as pod_annotations
from sidecar.readiness import Observation


def observe_pod(pod: Mapping[str, Any], own_container: str, excluded: Collection[str]) -> Observation:
    """What the pod says about the app's readiness. `detail` is stable text (it becomes check output)."""
    metadata = _mapping(pod.get("metadata"))
    spec = _mapping(pod.get("spec"))
    status = _mapping(pod.get("status"))
    uid = metadata.get("uid") if isinstance(metadata.get("uid"), str) else None
    ports = container_ports(pod)
    annotations = pod_annotations.relevant(_mapping(metadata.get("annotations")))
    first = first_container_port(pod, own_container)
    if metadata.get("deletionTimestamp"):
        grace = metadata.get("deletionGracePeriodSeconds")
        return Observation(
            ready=False,
            detail="pod is terminating",
            terminating=True,
            grace_period=grace_seconds(grace),
            deletion_at=deletion_time(metadata.get("deletionTimestamp")),
            pod_uid=uid,
            container_ports=ports,
            annotations=annotations,
            first_port=first,
        )
    skipped = {own_container, *excluded}
    checked = sorted({name for name in _app_container_names(spec) if name not in skipped})
    # A container without a status entry has not started yet: not ready.
    ready_names = {
        s.get("name")
        for s in _dicts(status.get("containerStatuses")) + _dicts(status.get("initContainerStatuses"))
        if s.get("ready") is True
    }
    not_ready = [name for name in checked if name not in ready_names]
    if not checked:
        ready, detail = True, "no app containers to check"
    elif not_ready:
        ready, detail = False, "not ready: " + ", ".join(not_ready)
    else:
        ready = True
        detail = "1 container ready" if len(checked) == 1 else f"all {len(checked)} containers ready"
    return Observation(ready=ready, detail=detail, pod_uid=uid, container_ports=ports,
                       annotations=annotations, first_port=first)


def container_ports(pod: Mapping[str, Any]) -> dict[str, int]:
    """Named ports of every container and init container, for `name:port-name` services."""
    spec = _mapping(pod.get("spec"))
    ports: dict[str, int] = {}
    for container in _dicts(spec.get("containers")) + _dicts(spec.get("initContainers")):
        for port in _dicts(container.get("ports")):
            name, number = port.get("name"), port.get("containerPort")
            # A port Consul could not take (a bool is an int in Python) is junk, not a port.
            if isinstance(name, str) and name and type(number) is int and 1 <= number <= 65535:
                ports.setdefault(name, number)
    return ports


def first_container_port(pod: Mapping[str, Any], own_container: str) -> int | None:
    """katalog-sync's default port: the first containerPort of the pod's containers, in
    order. This sidecar's own container is left out: it replaces katalog-sync's sidecar, whose
    ports katalog-sync users never meant to register."""
    for container in _dicts(_mapping(pod.get("spec")).get("containers")):
        if container.get("name") == own_container:
            continue
        for port in _dicts(container.get("ports")):
            number = port.get("containerPort")
            if isinstance(number, int) and not isinstance(number, bool):
                return number
    return None


def _app_container_names(spec: Mapping[str, Any]) -> list[str]:
    names = [c.get("name") for c in _dicts(spec.get("containers"))]
    # Classic init containers have finished before the app starts; only native sidecars count.
    names += [c.get("name") for c in _dicts(spec.get("initContainers")) if c.get("restartPolicy") == "Always"]
    return [n for n in names if isinstance(n, str)]


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _dicts(value: object) -> list[Mapping[str, Any]]:
    # The API omits empty lists; tolerate nulls and junk rather than crash the watch.
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def grace_seconds(value: object) -> float | None:
    """deletionGracePeriodSeconds as a number of seconds, or None when it is not one.

    An integer too large for a float, NaN or a negative number must not reach the drain's
    arithmetic (a float() of a huge JSON integer raises OverflowError).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def deletion_time(value: object) -> float | None:
    """metadata.deletionTimestamp (RFC 3339, as the API serializes a metav1.Time: whole seconds,
    `Z`) as seconds since the epoch, or None when it is not a timestamp with a zone.

    For a pod it is the deletion's time plus the grace period: k8s.io/apiserver
    `pkg/registry/rest/delete.go` BeforeDelete sets `now + options.GracePeriodSeconds`, which
    the pod strategy's CheckGracefulDelete (k8s.io/kubernetes `pkg/registry/core/pod/strategy.go`)
    set to the request's value, else `spec.terminationGracePeriodSeconds` (0 when the pod is not
    scheduled or already finished). A second deletion may only shorten it (BeforeDelete moves
    the timestamp back with the shorter grace). The kubelet counts its own grace period from
    when it acts, never earlier: this is the earliest SIGKILL. Truncated to the second, which
    only makes it earlier.
    """
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None  # RFC 3339 always has a zone; a local time would be a guess
    return parsed.timestamp()
