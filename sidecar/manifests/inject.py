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
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sidecar.manifests import templates as m
from sidecar.manifests.templates import Doc

GATES = ("exec", "condition", "both")

# What Kubernetes accepts as an environment variable's name on every supported version
# (the relaxed rule of 1.32+ allows more; this one works everywhere).
ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
# Variables inject writes itself: `--sidecar-env` may not set them. The pod's identity comes from
# the downward API (a literal would make every pod claim the same identity: one pod's
# registrations overwritten by another's); the others follow from a flag of their own, which
# also sets what must agree with them (the grace period, readinessGates, the token's volume).
RESERVED_ENV = {
    **{name: f"the pod's identity, set from the downward API ({field})" for name, field in m.IDENTITY_FIELDS.items()},
    "KATALOG_SERVICES": "use --services (or the pod's katalog-sidecar.io/services annotation)",
    "KATALOG_CONTAINER_NAME": f"the injected container's name, {m.CONTAINER_NAME}",
    "KATALOG_STATUS_FILE": f"the file on the injected emptyDir that readiness-gate reads, {m.STATUS_FILE}",
    "KATALOG_DRAIN_TIMEOUT": "use --drain-timeout (the grace period is raised to cover it)",
    "KATALOG_GATE": "use --gate (it also writes the pod's readinessGates entry)",
    "CONSUL_HTTP_TOKEN_FILE": "use --token-secret (it also mounts the Secret there)",
}


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
    # (NAME, value) added to the sidecar's env after inject's own, in this order: a value may
    # refer to the identity variables as $(POD_IP) etc. (see parse_sidecar_env)
    extra_env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class InjectResult:
    documents: list[Doc]
    injected: list[str]  # "Deployment/web" ...
    unchanged: list[str]  # already had the sidecar


def parse_sidecar_env(values: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """`--sidecar-env NAME=VALUE` (repeated) as (NAME, VALUE) pairs, in order; raises InjectError
    naming the value for a missing `=`, a name Kubernetes refuses, a name given twice, or one of
    inject's own variables (RESERVED_ENV). The value is written as it is: `$(POD_IP)` is expanded
    by the kubelet from the variables before it, as in any container's env."""
    pairs: list[tuple[str, str]] = []
    for value in values:
        name, sep, text = value.partition("=")
        if not sep:
            raise InjectError(f"--sidecar-env {value!r}: expected NAME=VALUE")
        check_extra_env(name, f"--sidecar-env {value!r}")
        if name in (seen for seen, _ in pairs):
            raise InjectError(f"--sidecar-env {value!r}: {name} is given twice")
        pairs.append((name, text))
    return tuple(pairs)


def check_extra_env(name: str, where: str) -> None:
    if not ENV_NAME.fullmatch(name):
        raise InjectError(f"{where}: {name!r} is not a valid environment variable name "
                          "(letters, digits, '_', '-', '.'; not starting with a digit)")
    if name in RESERVED_ENV:
        raise InjectError(f"{where}: {name} is written by inject itself: {RESERVED_ENV[name]}")


def inject(documents: Iterable[Doc | None], options: InjectOptions) -> InjectResult:
    """Raises InjectError for the first document it cannot handle; nothing is half-written."""
    if options.gate not in GATES:
        raise InjectError(f"--gate {options.gate!r}: expected one of {', '.join(GATES)}")
    names = [name for name, _ in options.extra_env]
    for name in names:
        check_extra_env(name, "extra_env")
    if len(set(names)) != len(names):
        raise InjectError(f"extra_env: a name is given twice: {names}")
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
    env += [{"name": name, "value": value} for name, value in options.extra_env]
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
