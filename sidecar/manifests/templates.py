"""Kubernetes manifests as plain data: where pod specs live, and the names inject and lint share.

Pure: no YAML, no I/O. `inject` (sidecar.manifests.inject) and `lint` (sidecar.manifests.lint) walk the same
documents the same way, so what one writes the other reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

Doc = dict[str, Any]

CONTAINER_NAME = "katalog-sidecar"
GATE_COMMAND = "readiness-gate"
CONDITION_TYPE = "katalog-sidecar.io/consul-confirmed"
SERVICES_ANNOTATION = "katalog-sidecar.io/services"
KATALOG_SYNC_SERVICES = "katalog-sync.wish.com/service-names"
STATUS_DIR = "/run/katalog"
STATUS_FILE = f"{STATUS_DIR}/status.json"
STATUS_VOLUME = "katalog-status"
DEFAULT_DRAIN_TIMEOUT = 20.0  # keep in step with KATALOG_DRAIN_TIMEOUT in sidecar.config
DRAIN_MARGIN = 5  # seconds the grace period must leave after the drain bound

# Kinds whose pod template is at spec.template (Job's too); Pod is its own spec.
TEMPLATE_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
# Kinds that carry pods but that inject does not rewrite (their pods come from a nested template).
REFUSED_KINDS = {
    "CronJob": "inject the Job template (spec.jobTemplate) by hand, or manage its Jobs",
    "ReplicationController": "use a Deployment or ReplicaSet",
}

IDENTITY_FIELDS = {
    "POD_NAME": "metadata.name",
    "POD_NAMESPACE": "metadata.namespace",
    "POD_IP": "status.podIP",
    "HOST_IP": "status.hostIP",
    "POD_UID": "metadata.uid",
}


@dataclass(frozen=True)
class PodSpecRef:
    """A pod spec inside a document: the object that holds it and the path to it."""

    kind: str
    name: str
    path: str  # e.g. "spec.template.spec", or "items[2].spec.template.spec" inside a List
    spec: Doc
    template_meta: Doc  # metadata of the pod (template): annotations may name the services
    owner_meta: Doc  # metadata of the workload itself

    @property
    def object(self) -> str:
        return f"{self.kind}/{self.name}"


def mapping(value: Any) -> Doc:
    """`value` if it is a mapping, else an empty one: manifests are user input."""
    return value if isinstance(value, dict) else {}


def pod_specs(doc: Doc, prefix: str = "") -> Iterator[PodSpecRef]:
    """Every pod spec in a document, Lists expanded; documents without one yield nothing."""
    kind = doc.get("kind")
    if not isinstance(kind, str):
        return
    if kind == "List" or (kind.endswith("List") and isinstance(doc.get("items"), list)):
        for index, item in enumerate(doc.get("items") or []):
            if isinstance(item, dict):
                yield from pod_specs(item, f"{prefix}items[{index}].")
        return
    meta = mapping(doc.get("metadata"))
    name = str(meta.get("name") or meta.get("generateName") or "?")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return
    if kind == "Pod":
        yield PodSpecRef(kind, name, f"{prefix}spec", spec, meta, meta)
    elif kind in TEMPLATE_KINDS:
        template = spec.get("template")
        if isinstance(template, dict) and isinstance(template.get("spec"), dict):
            template_meta = mapping(template.get("metadata"))
            yield PodSpecRef(kind, name, f"{prefix}spec.template.spec", template["spec"], template_meta, meta)


def all_containers(spec: Doc) -> list[tuple[str, int, Doc]]:
    """(list name, index, container) of every init and app container."""
    found = []
    for key in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(key) or []):
            if isinstance(container, dict):
                found.append((key, index, container))
    return found


def is_sidecar(container: Doc) -> bool:
    """The katalog-sidecar container: by its image, or by its default name."""
    return CONTAINER_NAME in str(container.get("image", "")) or container.get("name") == CONTAINER_NAME


def find_sidecar(spec: Doc) -> tuple[str, int, Doc] | None:
    for key, index, container in all_containers(spec):
        if is_sidecar(container):
            return key, index, container
    return None


def env_value(container: Doc, name: str) -> Doc | None:
    for entry in container.get("env") or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry
    return None


def literal_env(container: Doc, name: str, default: str = "") -> str:
    entry = env_value(container, name)
    if entry is not None and "value" in entry:
        return str(entry["value"])
    return default


def runs_gate(probe: Any) -> bool:
    """Whether a probe runs readiness-gate (directly, through a shell, or as the Python module)."""
    command = ((probe or {}).get("exec") or {}).get("command") if isinstance(probe, dict) else None
    if not isinstance(command, list):
        return False
    words = [word.rsplit("/", 1)[-1] for part in command for word in str(part).split()]
    return GATE_COMMAND in words or "readiness_gate" in words


def annotated_services(meta: Any) -> bool:
    """Whether these (pod) annotations name the services, in either namespace."""
    annotations = mapping(mapping(meta).get("annotations"))
    return bool(annotations.get(SERVICES_ANNOTATION) or annotations.get(KATALOG_SYNC_SERVICES))


def restart_policy(ref: PodSpecRef) -> str:
    """The pod's restartPolicy as Kubernetes defaults it (a Job's template must set one)."""
    return str(ref.spec.get("restartPolicy") or ("unset" if ref.kind == "Job" else "Always"))


def restarts_always(ref: PodSpecRef) -> bool:
    return restart_policy(ref) == "Always"
