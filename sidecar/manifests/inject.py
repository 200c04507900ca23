"""`katalog-sidecar inject`: add the sidecar to workload manifests, as `linkerd inject` does.

Pure: documents in, documents out (the CLI does the YAML). Every pod spec found (Deployment,
StatefulSet, DaemonSet, ReplicaSet, Job, Pod, and those inside a List) gets the sidecar
container, its downward-API environment, the gate (exec probe and/or readinessGates), the
status emptyDir, resource requests and a grace period that covers the drain. Everything else
is left as it was; other kinds pass through untouched. A pod that already has the sidecar is
left as it is, so running inject twice changes nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

from sidecar.manifests import templates as m
from sidecar.manifests.templates import Doc

GATES = ("exec", "condition", "both")


class InjectError(ValueError):
    """A manifest inject refuses; the message names the object and what to do."""


@dataclass(frozen=True)
class InjectOptions:
    image: str
    services: str | None = None  # KATALOG_SERVICES; None: from the workload's annotation
    native: bool = False  # an initContainers entry with restartPolicy: Always (Kubernetes 1.29+)
    gate: str = "exec"  # exec: readinessProbe; condition: readinessGates; both
    token_secret: str | None = None  # Secret with key `token`, mounted and read via CONSUL_HTTP_TOKEN_FILE
    drain_timeout: float = m.DEFAULT_DRAIN_TIMEOUT


@dataclass(frozen=True)
class InjectResult:
    documents: list[Doc]
    injected: list[str]  # "Deployment/web" ...
    unchanged: list[str]  # already had the sidecar


def inject(documents: Iterable[Doc | None], options: InjectOptions) -> InjectResult:
    """Raises InjectError for the first document it cannot handle; nothing is half-written."""
    if options.gate not in GATES:
        raise InjectError(f"--gate {options.gate!r}: expected one of {', '.join(GATES)}")
    out: list[Doc] = []
    injected: list[str] = []
    unchanged: list[str] = []
    for doc in documents:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise InjectError(f"a document is a {type(doc).__name__}, not a Kubernetes object")
        doc = copy.deepcopy(doc)
        _refuse(doc)
        for ref in m.pod_specs(doc):
            if m.find_sidecar(ref.spec) is not None:
                unchanged.append(ref.object)
                continue
            _inject_pod(ref, options)
            injected.append(ref.object)
        out.append(doc)
    return InjectResult(out, injected, unchanged)


def _refuse(doc: Doc, where: str = "") -> None:
    kind = doc.get("kind")
    name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc.get("metadata"), dict) else "?"
    if kind in m.REFUSED_KINDS:
        raise InjectError(f"{where}{kind}/{name}: not supported; {m.REFUSED_KINDS[kind]}")
    if isinstance(kind, str) and kind.endswith("List"):
        for index, item in enumerate(doc.get("items") or []):
            if isinstance(item, dict):
                _refuse(item, f"{where}{kind} items[{index}]: ")
    if kind in m.TEMPLATE_KINDS:
        template = (doc.get("spec") or {}).get("template") if isinstance(doc.get("spec"), dict) else None
        if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
            raise InjectError(f"{where}{kind}/{name}: no spec.template.spec to add the sidecar to")
    if kind == "Pod" and not isinstance(doc.get("spec"), dict):
        raise InjectError(f"{where}Pod/{name}: no spec")


def _services(ref: m.PodSpecRef, options: InjectOptions) -> str | None:
    """KATALOG_SERVICES to write, or None: the pod's own annotations name the services.

    Annotations on the pod (template) stay the source: copied into KATALOG_SERVICES they would
    make the sidecar ignore every other annotation (tags, meta, health, check TTL, excluded
    containers) and stop following live edits. Only a workload-level annotation, which never
    reaches the pods, is copied."""
    if options.services:
        return options.services
    if m.annotated_services(ref.template_meta):
        return None
    value = m.mapping(m.mapping(ref.owner_meta).get("annotations")).get(m.SERVICES_ANNOTATION)
    if value:
        return str(value)
    raise InjectError(
        f"{ref.object}: which services to register? Pass --services name:port[,...] or annotate the "
        f"pod template with {m.SERVICES_ANNOTATION}: \"name:port\" (or katalog-sync's {m.KATALOG_SYNC_SERVICES})"
    )


def sidecar_container(services: str | None, options: InjectOptions) -> Doc:
    """The container inject adds (the same as examples/deployment-classic-sidecar.yaml)."""
    env: list[Doc] = [
        {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field}}} for name, field in m.IDENTITY_FIELDS.items()
    ]
    if services is not None:
        env.append({"name": "KATALOG_SERVICES", "value": services})
    env += [
        {"name": "KATALOG_CONTAINER_NAME", "value": m.CONTAINER_NAME},
        {"name": "KATALOG_STATUS_FILE", "value": m.STATUS_FILE},
        {"name": "KATALOG_DRAIN_TIMEOUT", "value": f"{options.drain_timeout:g}s"},
    ]
    if options.gate in ("condition", "both"):
        env.append({"name": "KATALOG_GATE", "value": "condition"})
    if options.token_secret:
        env.append({"name": "CONSUL_HTTP_TOKEN_FILE", "value": "/etc/katalog/consul/token"})
    container: Doc = {
        "name": m.CONTAINER_NAME,
        "image": options.image,
        "args": ["run"],
        "env": env,
        "ports": [{"name": "katalog-metrics", "containerPort": 9464}],
    }
    if options.native:
        container["restartPolicy"] = "Always"
    # Every gate mode: in condition mode the probe is what makes a hung or restarted sidecar's
    # pod NotReady (a condition nobody refreshes never expires; readiness_gate.state.evaluate).
    if options.gate in ("exec", "condition", "both"):
        container["readinessProbe"] = {
            "exec": {"command": [m.GATE_COMMAND]},
            "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 2, "successThreshold": 1,
        }
    container["resources"] = {"requests": {"cpu": "5m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}}
    container["securityContext"] = {
        "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
    }
    mounts: list[Doc] = [{"name": m.STATUS_VOLUME, "mountPath": m.STATUS_DIR}]
    if options.token_secret:
        mounts.append({"name": "katalog-consul-token", "mountPath": "/etc/katalog/consul", "readOnly": True})
    container["volumeMounts"] = mounts
    return container


def _inject_pod(ref: m.PodSpecRef, options: InjectOptions) -> None:
    spec = ref.spec
    names = {c.get("name") for _, _, c in m.all_containers(spec)}
    if m.CONTAINER_NAME in names:  # find_sidecar would have found it; kept for clarity
        return
    ports = {p.get("name") for _, _, c in m.all_containers(spec) for p in c.get("ports") or [] if isinstance(p, dict)}
    if "katalog-metrics" in ports:
        raise InjectError(f"{ref.object}: a container already declares the port name katalog-metrics")
    if not options.native and not m.restarts_always(ref):
        # A classic sidecar never exits by itself: the Job's pod would never complete.
        raise InjectError(f"{ref.object}: restartPolicy is {m.restart_policy(ref)}, so a sidecar in containers would "
                          "keep the pod from ever completing; pass --native (an init container with restartPolicy: "
                          "Always, Kubernetes 1.29+)")
    container = sidecar_container(_services(ref, options), options)
    if options.native:
        # First, so it starts before the other init containers and the app, and stops after them.
        spec["initContainers"] = [container, *(spec.get("initContainers") or [])]
    else:
        spec.setdefault("containers", []).append(container)
    volumes = spec.setdefault("volumes", [])
    existing = {v.get("name") for v in volumes if isinstance(v, dict)}
    for volume in _volumes(options):
        if volume["name"] in existing:
            raise InjectError(f"{ref.object}: a volume named {volume['name']} already exists")
        volumes.append(volume)
    if options.gate in ("condition", "both"):
        gates = spec.setdefault("readinessGates", [])
        if not any(isinstance(g, dict) and g.get("conditionType") == m.CONDITION_TYPE for g in gates):
            gates.append({"conditionType": m.CONDITION_TYPE})
    needed = int(options.drain_timeout) + (1 if options.drain_timeout % 1 else 0) + m.DRAIN_MARGIN
    grace = spec.get("terminationGracePeriodSeconds")
    if not isinstance(grace, int) or grace < max(needed, 30):
        spec["terminationGracePeriodSeconds"] = max(needed, 30, grace if isinstance(grace, int) else 0)
    if options.token_secret:
        # The token file (defaultMode 0440) must be readable by the sidecar's group.
        security = spec.setdefault("securityContext", {})
        security.setdefault("fsGroup", 65532)


def _volumes(options: InjectOptions) -> list[Doc]:
    volumes: list[Doc] = [{"name": m.STATUS_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}]
    if options.token_secret:
        volumes.append({"name": "katalog-consul-token",
                        "secret": {"secretName": options.token_secret, "defaultMode": 0o440}})
    return volumes
