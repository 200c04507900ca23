"""`katalog-sidecar lint`: every manifest mistake this project knows about, with a stable rule id.

Pure: documents in, findings out (the CLI does the YAML, the output format and the exit code).
A finding names the rule, the object, the path inside the document and the fix. Rule ids never
change meaning; a retired rule's id is not reused.

RBAC rules look at the Roles and RoleBindings in the same input (lint the workload together with
its RBAC: `katalog-sidecar lint deploy.yaml rbac.yaml`); without any RBAC in the input they stay
silent, since the RBAC may live elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

from sidecar.durations import parse_duration
from sidecar.manifests import templates as m
from sidecar.manifests.templates import Doc

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    severity: str
    summary: str


RULES: dict[str, Rule] = {r.id: r for r in (
    Rule("KS001", "gate-as-startup-or-liveness-probe", ERROR,
         "readiness-gate as a startupProbe deadlocks a native sidecar's pod; as a livenessProbe it restarts healthy sidecars"),
    Rule("KS002", "grace-period-below-drain", ERROR,
         "terminationGracePeriodSeconds must exceed the drain bound (KATALOG_DRAIN_TIMEOUT) by a margin"),
    Rule("KS003", "status-file-differs", ERROR,
         "the probe reads another status file than the sidecar writes"),
    Rule("KS004", "status-file-not-on-volume", ERROR,
         "the status file's directory must be a writable volume mount (an emptyDir)"),
    Rule("KS005", "identity-fieldref", ERROR,
         "POD_NAME, POD_NAMESPACE, POD_IP, HOST_IP (and POD_UID when set) must come from their downward-API fields"),
    Rule("KS006", "unknown-named-port", ERROR,
         "a service's named port must be declared by a container of the pod"),
    Rule("KS007", "probe-timing", WARNING,
         "the gate's probe timings should make sense: timeoutSeconds ≤ periodSeconds, period 1–10 s"),
    Rule("KS008", "condition-without-readiness-gate", ERROR,
         "KATALOG_GATE=condition needs the pod's readinessGates to list the condition"),
    Rule("KS009", "readiness-gate-without-rbac", ERROR,
         "readinessGates with the condition need a Role granting patch on pods/status to the pod's service account"),
    Rule("KS010", "role-without-watch", ERROR,
         "the Role for pods needs get, list and watch (the sidecar watches its own pod)"),
    Rule("KS011", "container-name-differs", ERROR,
         "the sidecar's container name must equal KATALOG_CONTAINER_NAME, or it waits for itself"),
    Rule("KS012", "no-gate", WARNING,
         "without the exec probe or the readiness gate nothing holds a rollout until Consul confirms"),
    Rule("KS013", "native-sidecar-without-pod-watch", ERROR,
         "a native sidecar gets SIGTERM only after the app exited: without the pod watch it drains too late"),
    Rule("KS014", "services-env-hides-annotations", WARNING,
         "KATALOG_SERVICES makes the sidecar ignore the pod's katalog-sidecar.io/ and katalog-sync.wish.com/ annotations"),
    Rule("KS015", "classic-sidecar-in-completing-pod", ERROR,
         "a sidecar in containers keeps a pod whose restartPolicy is not Always (a Job's) from ever completing"),
    Rule("KS016", "no-pod-uid", WARNING,
         "without POD_UID a restarted sidecar cannot recognise its pod's instance before it sees the pod"),
)}


@dataclass(frozen=True)
class Finding:
    rule: str
    name: str
    severity: str
    object: str
    path: str
    message: str
    fix: str
    source: str = ""  # file name (and document number), filled in by the CLI

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finding(rule_id: str, ref: m.PodSpecRef, path: str, message: str, fix: str) -> Finding:
    rule = RULES[rule_id]
    return Finding(rule.id, rule.name, rule.severity, ref.object, path, message, fix)


def lint(documents: Iterable[Doc | None]) -> list[Finding]:
    docs = [d for d in documents if isinstance(d, dict)]
    rbac = _Rbac(docs)
    findings: list[Finding] = []
    for doc in docs:
        for ref in m.pod_specs(doc):
            findings += lint_pod(ref, rbac)
    findings += rbac.role_findings()
    return findings


def lint_pod(ref: m.PodSpecRef, rbac: _Rbac | None = None) -> list[Finding]:
    spec = ref.spec
    out: list[Finding] = []
    for key, index, container in m.all_containers(spec):
        for kind in ("startupProbe", "livenessProbe"):
            if m.runs_gate(container.get(kind)):
                native = key == "initContainers" and container.get("restartPolicy") == "Always"
                why = "deadlock: the app starts only after this sidecar has started" if native and kind == "startupProbe" \
                    else "it waits for the app and Consul, so it must only gate readiness"
                out.append(_finding("KS001", ref, f"{ref.path}.{key}[{index}].{kind}",
                                    f"{container.get('name')}: readiness-gate as {kind} ({why})",
                                    f"remove the {kind}; use readiness-gate only as the sidecar's readinessProbe"))
    found = m.find_sidecar(spec)
    if found is None:
        return out
    key, index, sidecar = found
    at = f"{ref.path}.{key}[{index}]"
    env = {e.get("name"): e for e in sidecar.get("env") or [] if isinstance(e, dict)}

    # KS011: the container name the sidecar leaves out of the pod's readiness.
    expected = m.literal_env(sidecar, "KATALOG_CONTAINER_NAME", m.CONTAINER_NAME)
    if sidecar.get("name") != expected:
        out.append(_finding("KS011", ref, f"{at}.name",
                            f"container {sidecar.get('name')!r}, but KATALOG_CONTAINER_NAME is {expected!r}",
                            f"name the container {expected!r} or set KATALOG_CONTAINER_NAME to its name"))

    # KS005: identity from the downward API.
    for name, field in m.IDENTITY_FIELDS.items():
        entry = env.get(name)
        if name == "POD_UID" and entry is None:
            out.append(_finding("KS016", ref, f"{at}.env", "POD_UID is not set",
                                f"- name: {name}\n  valueFrom: {{fieldRef: {{fieldPath: {field}}}}}"))
            continue
        if name == "HOST_IP" and entry is None and "CONSUL_HTTP_ADDR" in env:
            continue
        got = ((entry or {}).get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") if entry else None
        if got != field:
            message = f"{name} is not set" if entry is None else f"{name} comes from {got or 'a literal value'}"
            out.append(_finding("KS005", ref, f"{at}.env", message,
                                f"- name: {name}\n  valueFrom: {{fieldRef: {{fieldPath: {field}}}}}"))

    # KS003 / KS004: one status file, on a writable volume.
    status_file = m.literal_env(sidecar, "KATALOG_STATUS_FILE", m.STATUS_FILE)
    probe = sidecar.get("readinessProbe")
    if isinstance(probe, dict) and m.runs_gate(probe):
        command = [str(p) for p in m.mapping(probe.get("exec")).get("command") or []]
        args = [a for a in command[1:] if not a.startswith("-")] if command and command[0].endswith(m.GATE_COMMAND) else []
        if args and args[0] != status_file:
            out.append(_finding("KS003", ref, f"{at}.readinessProbe.exec.command",
                                f"the probe reads {args[0]}, the sidecar writes {status_file}",
                                "drop the path argument (the probe uses KATALOG_STATUS_FILE) or make both equal"))
    for _, _, other in m.all_containers(spec):
        if other is sidecar or not m.runs_gate(other.get("readinessProbe")):
            continue
        theirs = m.literal_env(other, "KATALOG_STATUS_FILE", m.STATUS_FILE)
        if theirs != status_file:
            out.append(_finding("KS003", ref, f"{ref.path}: {other.get('name')}.readinessProbe",
                                f"{other.get('name')} runs the gate on {theirs}, the sidecar writes {status_file}",
                                "run readiness-gate only as the sidecar container's readinessProbe: it also checks "
                                "that the sidecar's process runs, which another container cannot see"))
    directory = str(PurePosixPath(status_file).parent)
    volumes = {v.get("name"): v for v in spec.get("volumes") or [] if isinstance(v, dict)}
    mount = next((mt for mt in sidecar.get("volumeMounts") or []
                  if isinstance(mt, dict) and str(mt.get("mountPath", "")).rstrip("/") == directory), None)
    if mount is None or mount.get("name") not in volumes:
        out.append(_finding("KS004", ref, f"{at}.volumeMounts",
                            f"{directory} (KATALOG_STATUS_FILE={status_file}) is not a volume mount of the sidecar",
                            f"mount an emptyDir at {directory} (the root filesystem should be read-only)"))
    elif mount.get("readOnly") or mount.get("subPath"):
        out.append(_finding("KS004", ref, f"{at}.volumeMounts",
                            f"the mount at {directory} is read-only or a subPath", "mount the whole emptyDir, writable"))

    # KS002: the grace period covers the drain.
    drain = _seconds(m.literal_env(sidecar, "KATALOG_DRAIN_TIMEOUT", f"{m.DEFAULT_DRAIN_TIMEOUT:g}s"))
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if drain is not None and isinstance(grace, (int, float)) and grace < drain + m.DRAIN_MARGIN:
        out.append(_finding("KS002", ref, f"{ref.path}.terminationGracePeriodSeconds",
                            f"{grace}s leaves less than {m.DRAIN_MARGIN}s after KATALOG_DRAIN_TIMEOUT ({drain:g}s): "
                            "the kubelet would kill the drain half way",
                            f"set terminationGracePeriodSeconds to at least {math.ceil(drain) + m.DRAIN_MARGIN}"))

    # KS006: named ports.
    declared = {str(p.get("name")) for _, _, c in m.all_containers(spec) for p in c.get("ports") or []
                if isinstance(p, dict) and p.get("name")}
    for item in m.literal_env(sidecar, "KATALOG_SERVICES").split(","):
        service, _, port = item.strip().partition(":")
        port = port.strip()
        if port and not port.isdigit() and port not in declared:
            out.append(_finding("KS006", ref, f"{at}.env[KATALOG_SERVICES]",
                                f"service {service.strip()!r} uses port {port!r}, which no container declares"
                                + (f" (named ports: {', '.join(sorted(declared))})" if declared else ""),
                                f"declare `ports: [{{name: {port}, containerPort: N}}]` on the app, or use a number"))

    # KS007: probe timings.
    if isinstance(probe, dict) and m.runs_gate(probe):
        period = probe.get("periodSeconds", 10)
        timeout = probe.get("timeoutSeconds", 1)
        failures = probe.get("failureThreshold", 3)
        problems = []
        if isinstance(period, int) and not 1 <= period <= 10:
            problems.append(f"periodSeconds={period} (a pod turns Ready up to a period after confirmation)")
        if isinstance(timeout, int) and isinstance(period, int) and timeout > period:
            problems.append(f"timeoutSeconds={timeout} > periodSeconds={period}")
        if isinstance(failures, int) and isinstance(period, int) and failures * period > 30:
            problems.append(f"failureThreshold × periodSeconds = {failures * period}s before a hung sidecar counts")
        if problems:
            out.append(_finding("KS007", ref, f"{at}.readinessProbe", "; ".join(problems),
                                "periodSeconds: 2, timeoutSeconds: 2, failureThreshold: 2 (see examples/)"))

    # KS008 / KS012: the gate.
    gates = [g.get("conditionType") for g in spec.get("readinessGates") or [] if isinstance(g, dict)]
    condition_mode = m.literal_env(sidecar, "KATALOG_GATE", "exec").strip().lower() == "condition"
    if condition_mode and m.CONDITION_TYPE not in gates:
        out.append(_finding("KS008", ref, f"{ref.path}.readinessGates",
                            f"KATALOG_GATE=condition, but readinessGates does not list {m.CONDITION_TYPE}: "
                            "the condition is set and nothing waits for it",
                            f"readinessGates: [{{conditionType: {m.CONDITION_TYPE}}}]"))
    if not m.runs_gate(probe) and m.CONDITION_TYPE not in gates:
        out.append(_finding("KS012", ref, f"{at}.readinessProbe",
                            "no readiness-gate probe and no readiness gate: the pod turns Ready before Consul confirms",
                            "readinessProbe: {exec: {command: [readiness-gate]}}, or --gate condition"))
    if m.CONDITION_TYPE in gates and not condition_mode:
        out.append(_finding("KS008", ref, f"{at}.env",
                            f"readinessGates lists {m.CONDITION_TYPE}, but the sidecar does not set it "
                            "(KATALOG_GATE is not condition): the pod never turns Ready",
                            "- name: KATALOG_GATE\n  value: condition"))

    # KS014: KATALOG_SERVICES hides the pod's annotations.
    if "KATALOG_SERVICES" in env and m.annotated_services(ref.template_meta):
        out.append(_finding("KS014", ref, f"{at}.env[KATALOG_SERVICES]",
                            "KATALOG_SERVICES is set, so the pod template's service annotations (and its tags, meta, "
                            "health, check TTL and excluded containers, and live edits of them) are ignored",
                            "remove KATALOG_SERVICES and let the annotations name the services"))

    # KS015: a classic sidecar never exits, so a pod that should complete never does.
    if key == "containers" and not m.restarts_always(ref):
        out.append(_finding("KS015", ref, f"{ref.path}.restartPolicy",
                            f"restartPolicy is {m.restart_policy(ref)} and the sidecar is in containers: "
                            "the pod never completes (the sidecar keeps running after the app exits)",
                            "make it a native sidecar: move it to initContainers with restartPolicy: Always "
                            "(katalog-sidecar inject --native)"))

    # KS013: a native sidecar must drain from the pod watch.
    source = m.literal_env(sidecar, "KATALOG_READINESS_SOURCE", "kubernetes").strip().lower()
    if key == "initContainers" and sidecar.get("restartPolicy") == "Always" and source != "kubernetes":
        out.append(_finding("KS013", ref, f"{at}.env[KATALOG_READINESS_SOURCE]",
                            f"native sidecar with KATALOG_READINESS_SOURCE={source}: it drains on SIGTERM, "
                            "which comes only after the app has exited",
                            "keep the pod watch (the default source), or make it a classic sidecar in containers"))

    # KS009: the condition needs RBAC.
    if rbac is not None and rbac.present and m.CONDITION_TYPE in gates:
        account = str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")
        if not rbac.allows(account, "patch", "pods/status"):
            out.append(_finding("KS009", ref, f"{ref.path}.serviceAccountName",
                                f"service account {account!r} may not patch pods/status: the condition is never set "
                                "and the pod never turns Ready",
                                "a Role with verbs [patch] on resources [pods/status], bound to the account "
                                "(examples/rbac-condition.yaml)"))
    return out


def _seconds(text: str) -> float | None:
    try:
        return parse_duration(text)
    except ValueError:
        return None


class _Rbac:
    """The Roles and RoleBindings of the input: which verbs a service account gets on what."""

    def __init__(self, docs: list[Doc]) -> None:
        flat: list[Doc] = []
        for doc in docs:
            if str(doc.get("kind", "")).endswith("List"):
                flat += [i for i in doc.get("items") or [] if isinstance(i, dict)]
            else:
                flat.append(doc)
        self.roles: dict[tuple[Any, Any], Doc] = {(d.get("kind"), _name(d)): d for d in flat if d.get("kind") in ("Role", "ClusterRole")}
        self.bindings = [d for d in flat if d.get("kind") in ("RoleBinding", "ClusterRoleBinding")]
        self.present = bool(self.roles or self.bindings)

    def _rules_of(self, account: str) -> list[Doc]:
        rules: list[Doc] = []
        for binding in self.bindings:
            subjects = binding.get("subjects") or []
            if not any(isinstance(s, dict) and s.get("kind") == "ServiceAccount" and s.get("name") == account
                       for s in subjects):
                continue
            ref = binding.get("roleRef") or {}
            role = self.roles.get((ref.get("kind"), ref.get("name")))
            if role is not None:
                rules += [r for r in role.get("rules") or [] if isinstance(r, dict)]
        return rules

    def allows(self, account: str, verb: str, resource: str) -> bool:
        for rule in self._rules_of(account):
            resources, verbs = rule.get("resources") or [], rule.get("verbs") or []
            groups = rule.get("apiGroups") or []
            if (("" in groups or "*" in groups) and (resource in resources or "*" in resources)
                    and (verb in verbs or "*" in verbs)):
                return True
        return False

    def role_findings(self) -> list[Finding]:
        out = []
        for (kind, name), role in self.roles.items():
            for index, rule in enumerate(role.get("rules") or []):
                if not isinstance(rule, dict) or "pods" not in (rule.get("resources") or []):
                    continue
                verbs = set(rule.get("verbs") or [])
                if "*" not in verbs and {"get", "list"} & verbs and "watch" not in verbs:
                    r = RULES["KS010"]
                    out.append(Finding(r.id, r.name, r.severity, f"{kind}/{name}", f"rules[{index}].verbs",
                                       f"verbs {sorted(verbs)} on pods, without watch: the sidecar's pod watch is refused",
                                       'verbs: ["get", "list", "watch"]'))
        return out


def _name(doc: Doc) -> str:
    meta = doc.get("metadata")
    return str(meta.get("name")) if isinstance(meta, dict) else "?"
