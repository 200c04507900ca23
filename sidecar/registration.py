"""What to register and what the catalog must show: pure functions, no I/O.

One Consul instance per (pod, service), with two TTL checks:
- readiness mirrors the app and never reaps (an app may be unready for a long time);
- liveness is kept passing by the sidecar and carries DeregisterCriticalServiceAfter, so a
  pod that dies without cleanup is reaped by its agent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.config import TOOL_NAME, Config, ServiceSpec
from sidecar.durations import format_duration

PASSING = "passing"
WARNING = "warning"
CRITICAL = "critical"

LIVENESS_RUNNING = "katalog-sidecar is running"

# The readiness check needs a TTL only because Consul's TTL checks require one: a dead or hung
# sidecar is caught by the liveness check's TTL, which makes the instance unhealthy on its own.
# A longer readiness TTL halves the refresh requests a steady sidecar makes.
READINESS_TTL_FACTOR = 10
TERMINATING = "pod is terminating"
POD_UID_META = "k8s-pod-uid"


@dataclass(frozen=True)
class Instance:
    """One registered instance: a service of this pod, its port resolved."""

    name: str
    service_id: str
    address: str
    port: int
    tags: tuple[str, ...]
    meta: tuple[tuple[str, str], ...]
    fixed_health: str | None = None  # the readiness check's status whatever the app's readiness

    @property
    def pod_uid(self) -> str | None:
        return dict(self.meta).get(POD_UID_META) or None

    @property
    def readiness_check_id(self) -> str:
        return check_ids(self.service_id)[0]

    @property
    def liveness_check_id(self) -> str:
        return check_ids(self.service_id)[1]


def check_ids(service_id: str) -> tuple[str, str]:
    """(readiness, liveness) check IDs of an instance."""
    return f"{service_id}:readiness", f"{service_id}:liveness"


@dataclass(frozen=True)
class CheckState:
    status: str
    output: str


DRAINING_STATE = CheckState(CRITICAL, TERMINATING)


def service_id(config: Config, service_name: str) -> str:
    """Stable for the pod's life and unique across namespaces (and clusters, when named).

    ':' cannot occur in namespace, pod or service names, so the parts cannot run together.
    """
    parts = [config.pod_namespace, config.pod_name, service_name]
    if config.cluster_name:
        parts.insert(0, config.cluster_name)
    return ":".join(parts)


def tool_meta(config: Config, pod_uid: str | None) -> dict[str, str]:
    meta = {
        "external-source": "kubernetes",
        "managed-by": TOOL_NAME,
        "k8s-namespace": config.pod_namespace,
        "k8s-pod": config.pod_name,
    }
    uid = pod_uid or config.pod_uid
    if uid:
        meta[POD_UID_META] = uid
    if config.cluster_name:
        meta["k8s-cluster"] = config.cluster_name
    return meta


def resolve_port(spec: ServiceSpec, container_ports: Mapping[str, int] | None) -> int:
    """The service's port; a named port is looked up in the pod spec. ValueError if unknown."""
    if spec.port is not None:
        return spec.port
    names = dict(container_ports or {})
    if spec.port_name in names:
        return names[spec.port_name]
    known = ", ".join(sorted(names)) or "none"
    raise ValueError(
        f"KATALOG_SERVICES: service {spec.name!r} uses container port {spec.port_name!r}, "
        f"which no container of the pod declares (named ports: {known})"
    )


def build_instances(config: Config, pod_uid: str | None,
                    container_ports: Mapping[str, int] | None) -> tuple[Instance, ...]:
    """Raises ValueError (with a message for the operator) when a named port is unknown."""
    base_meta = tool_meta(config, pod_uid)
    instances = []
    for spec in config.services:
        meta = dict(spec.meta)
        meta.update(base_meta)  # the tool's keys win; config validation already refused clashes
        instances.append(
            Instance(
                name=spec.name,
                service_id=service_id(config, spec.name),
                address=config.pod_ip,
                port=resolve_port(spec, container_ports),
                tags=spec.tags,
                meta=tuple(sorted(meta.items())),
                fixed_health=spec.health,
            )
        )
    return tuple(instances)


def registration_payload(instance: Instance, config: Config) -> dict[str, Any]:
    """The body of PUT /v1/agent/service/register.

    Checks start critical: a new instance is never served before its status is pushed, and
    the push that follows is then a status change, which Consul syncs with its output at
    once (an output-only change may wait minutes). On a re-registration the agent keeps the
    status it had, so adopting an instance does not flap it; the caller pushes right after.
    """
    ttl = format_duration(config.check_ttl)
    readiness_ttl = format_duration(config.check_ttl * READINESS_TTL_FACTOR)
    return {
        "ID": instance.service_id,
        "Name": instance.name,
        "Tags": list(instance.tags),
        "Address": instance.address,
        "Port": instance.port,
        "Meta": dict(instance.meta),
        "Checks": [
            {
                "CheckID": instance.readiness_check_id,
                "Name": "Kubernetes readiness",
                "Notes": "Mirrors the readiness of the pod's app containers, as seen by katalog-sidecar.",
                "TTL": readiness_ttl,
                "Status": CRITICAL,
            },
            {
                "CheckID": instance.liveness_check_id,
                "Name": "katalog-sidecar liveness",
                "Notes": "Kept passing while the sidecar runs; the agent reaps the instance "
                "once it has been critical for DeregisterCriticalServiceAfter.",
                "TTL": ttl,
                "Status": CRITICAL,
                "DeregisterCriticalServiceAfter": format_duration(config.deregister_critical_after),
            },
        ],
    }


def wanted_checks(instance: Instance, readiness: CheckState, liveness: CheckState) -> dict[str, CheckState]:
    """The checks' states; a fixed health replaces the app's readiness, except while draining."""
    if instance.fixed_health is not None and readiness != DRAINING_STATE:
        readiness = CheckState(instance.fixed_health, fixed_health_output(instance.fixed_health))
    return {instance.readiness_check_id: readiness, instance.liveness_check_id: liveness}


def fixed_health_output(status: str) -> str:
    return f"fixed health {status} (configured; not following the app's readiness)"


def confirmed_summary(instances: Sequence[Instance], statuses: Mapping[str, str]) -> str:
    """`web, api passing in the catalog`, or each status when they differ (fixed health)."""
    shown = [(inst.name, statuses.get(inst.service_id, PASSING)) for inst in instances]
    if len({status for _name, status in shown}) <= 1:
        return f"{', '.join(name for name, _s in shown)} {shown[0][1] if shown else PASSING} in the catalog"
    return ", ".join(f"{name} {status}" for name, status in shown) + " in the catalog"


def entry_pod_uid(entry: Mapping[str, Any]) -> str | None:
    """The pod UID a catalog entry was registered for (meta `k8s-pod-uid`), if it says."""
    meta = entry.get("Meta")
    uid = meta.get(POD_UID_META) if isinstance(meta, Mapping) else None
    return uid if isinstance(uid, str) and uid else None


def same_pod(instance: Instance, entry: Mapping[str, Any]) -> bool:
    """Is this entry this pod's incarnation? An ID names a pod; the UID names its incarnation.

    When either side does not know its UID (POD_UID unset with a non-Kubernetes readiness
    source, or an entry from an older sidecar) the node and the ID are all there is to go by.
    """
    ours, theirs = instance.pod_uid, entry_pod_uid(entry)
    return ours is None or theirs is None or ours == theirs


def compare_service(instance: Instance, node: str, services: Sequence[Mapping[str, Any]]) -> str | None:
    """None when this node's catalog lists this pod's instance at its address and port.

    `services` are the catalog's service entries on this agent's node; every one is examined.
    Another node's entry for the same ID (a StatefulSet pod's previous incarnation, another
    cluster's pod of the same name) is never among them, so it can never block the gate.
    """
    listed = [e for e in services if e.get("ID") == instance.service_id]
    if not listed:
        return f"agent accepted {instance.name} but the catalog does not list {instance.service_id} on node {node} yet"
    ours = [e for e in listed if same_pod(instance, e)]
    if not ours:
        return (f"catalog lists {instance.service_id} on node {node} for pod UID {entry_pod_uid(listed[0])}, "
                f"not this pod ({instance.pod_uid}): waiting for this pod's registration")
    at = [e for e in ours if e.get("Address") == instance.address and e.get("Port") == instance.port]
    if not at:
        address, port = ours[0].get("Address"), ours[0].get("Port")
        return f"catalog lists {instance.service_id} at {address}:{port}, expected {instance.address}:{instance.port}"
    # A re-registration with new tags or meta (an annotation edit) is confirmed only once the
    # servers have it too.
    entry = at[0]
    if list(entry.get("Tags") or []) != list(instance.tags):
        return f"catalog lists {instance.service_id} with tags {entry.get('Tags') or []}, expected {list(instance.tags)}"
    if dict(entry.get("Meta") or {}) != dict(instance.meta):
        return f"catalog lists {instance.service_id} with other meta than registered"
    return None


def compare_checks(instance: Instance, checks: Sequence[Mapping[str, Any]], wanted: Mapping[str, str]) -> str | None:
    """None when this node's checks of the instance have the statuses last pushed.

    `wanted` maps check ID to status. Output is not compared: Consul may defer output-only
    changes by minutes, but never a status change.
    """
    seen = {c.get("CheckID"): c.get("Status") for c in checks if c.get("ServiceID") in (None, instance.service_id)}
    for check_id, status in sorted(wanted.items()):
        if seen.get(check_id) != status:
            shown = seen.get(check_id) or "missing"
            return f"catalog shows check {check_id} {shown}, pushed {status}"
    return None
