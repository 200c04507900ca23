"""`katalog-sidecar explain POD`: why a pod is (not) Ready, from the operator's machine. Pure.

The facts (the pod, its Events, the configuration it was given, what the node's agent and the
catalog hold for it) are gathered elsewhere (sidecar.explain_sources) and passed in; this module
only reasons about them and renders the chain an operator follows at 3 a.m.:

    configured services -> registered on the node's agent -> checks -> catalog view
    -> gate verdict -> why the pod is or is not Ready -> the next thing to look at

Each conclusion names what it is based on. The sidecar's own status file is not read (that
would need exec rights into the pod); the pod's Events carry what the sidecar and the kubelet
said (the gate's line is in the kubelet's `Unhealthy` readiness-probe Events).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sidecar import gate_reasons as reasons
from sidecar import observers
from sidecar.gate_reasons import GateReason

PASSING = "passing"
OPEN: Literal["open"] = "open"  # the verdict when the gate passes
# The verdict: a closed reason of the gate (sidecar.gate_reasons, the same codes as the
# katalog_gate_closed_reason label), or what only explain can see from outside the pod.
Verdict = GateReason | Literal["open", "failed_open", "sidecar_down", "no_sidecar"]


@dataclass(frozen=True)
class Check:
    check_id: str
    status: str
    output: str = ""


@dataclass(frozen=True)
class ConsulInstance:
    service_id: str
    node: str
    address: str
    port: int
    pod_uid: str | None
    checks: tuple[Check, ...] = ()

    def status_of(self, check_id: str) -> str | None:
        return next((c.status for c in self.checks if c.check_id == check_id), None)


@dataclass(frozen=True)
class ConsulView:
    """One answer about the pod's instances: from the node's agent, or from the catalog (servers)."""

    address: str
    error: str | None = None  # could not be read at all
    node: str | None = None  # the Consul node the instances are (expected) on
    instances: Mapping[str, ConsulInstance] = field(default_factory=dict)  # by service ID
    known_servers: int | None = None  # the agent's own count (agent view only)
    node_health: str | None = None  # the node's serfHealth in the catalog (catalog view only)
    node_health_output: str = ""


@dataclass(frozen=True)
class Expected:
    """A service the sidecar was configured to register, as it would build it."""

    name: str
    service_id: str
    address: str
    port: int | None
    readiness_check_id: str
    liveness_check_id: str
    fixed_health: str | None = None


@dataclass(frozen=True)
class Container:
    name: str
    ready: bool
    state: str  # running, waiting, terminated, unknown
    detail: str = ""  # waiting/terminated reason and message
    restarts: int = 0


@dataclass(frozen=True)
class Event:
    reason: str
    type: str
    message: str
    count: int = 1
    last: str = ""  # RFC 3339
    component: str = ""


@dataclass(frozen=True)
class PodFacts:
    namespace: str
    name: str
    uid: str
    node: str
    host_ip: str
    pod_ip: str
    phase: str
    terminating: bool
    conditions: Mapping[str, tuple[str, str, str]]  # type -> (status, reason, message)
    containers: tuple[Container, ...]
    sidecar: str | None  # the sidecar container's name; None: the pod has no sidecar
    gate: str  # exec, condition, both, none
    excluded: tuple[str, ...] = ()  # containers left out of the app's readiness


@dataclass(frozen=True)
class Facts:
    pod: PodFacts
    configured: tuple[Expected, ...]
    config_source: str  # "environment", an annotation prefix, or why none is known
    config_problems: tuple[str, ...]
    events: tuple[Event, ...]
    agent: ConsulView | None  # None: not asked (no address known)
    catalog: ConsulView | None
    notes: tuple[str, ...] = ()  # what could not be gathered, said as it is


@dataclass
class Step:
    title: str
    ok: bool | None  # None: unknown
    lines: list[str]


@dataclass
class Report:
    pod: str
    ready: bool
    verdict: Verdict
    why: str
    next: str
    steps: list[Step]
    facts: Facts

    def as_json(self) -> dict[str, Any]:
        return {"pod": self.pod, "ready": self.ready, "verdict": self.verdict, "why": self.why, "next": self.next,
                "steps": [asdict(s) for s in self.steps], "facts": _plain(asdict(self.facts))}


SIDECAR_DOWN: Literal["sidecar_down"] = "sidecar_down"
FAILED_OPEN: Literal["failed_open"] = "failed_open"
NO_SIDECAR: Literal["no_sidecar"] = "no_sidecar"
GATE_READY_LINE = "Readiness probe failed: "


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _gate_lines(facts: Facts) -> list[str]:
    """The gate's own words, newest last: the kubelet's readiness-probe Events of the sidecar."""
    return [e.message.removeprefix(GATE_READY_LINE).strip() for e in facts.events
            if e.reason == "Unhealthy" and e.message.startswith(GATE_READY_LINE)]


def _ours(facts: Facts, *names: str) -> list[Event]:
    return [e for e in facts.events if e.reason in names]


def _last_of(facts: Facts, bad: str, good: Sequence[str]) -> Event | None:
    """The latest Event `bad` if no Event in `good` came after it (Events are in time order)."""
    found: Event | None = None
    for event in facts.events:
        if event.reason == bad:
            found = event
        elif event.reason in good:
            found = None
    return found


def _source(source: str) -> str:
    if source == "environment":
        return "KATALOG_SERVICES in the sidecar's environment"
    return f"the pod's {source} annotations" if source.endswith("/") else source


def _condition(pod: PodFacts, kind: str) -> str:
    status, reason, message = pod.conditions.get(kind, ("Unknown", "", ""))
    extra = ": ".join(x for x in (reason, message) if x)
    return f"{kind}={status}" + (f" ({extra})" if extra else "")


def analyze(facts: Facts) -> Report:
    pod = facts.pod
    steps: list[Step] = []
    ready = pod.conditions.get("Ready", ("Unknown", "", ""))[0] == "True"
    sidecar = next((c for c in pod.containers if c.name == pod.sidecar), None)
    app = [c for c in pod.containers if c.name != pod.sidecar and c.name not in pod.excluded]

    # 1. configured services
    if facts.config_problems:
        steps.append(Step("configured services", False, [f"configuration error: {p}" for p in facts.config_problems]))
    elif not facts.configured:
        steps.append(Step("configured services", False, [f"no services configured ({facts.config_source})"]))
    else:
        steps.append(Step("configured services", True, [
            f"{e.name}: ID {e.service_id} at {e.address}:{e.port if e.port is not None else '?'}"
            + (f" (fixed health {e.fixed_health})" if e.fixed_health else "")
            for e in facts.configured] + [f"from: {_source(facts.config_source)}"]))

    # 2-3. the node's agent: registered? checks?
    agent = facts.agent
    agent_has: dict[str, ConsulInstance] = {}
    if agent is None:
        steps.append(Step("node's agent", None, ["not asked: no agent address (pod has no host IP)"]))
    elif agent.error:
        steps.append(Step(f"node's agent at {agent.address}", False, [f"cannot be read: {agent.error}"]))
    else:
        lines = []
        for e in facts.configured:
            inst = agent.instances.get(e.service_id)
            if inst is None:
                lines.append(f"{e.name}: NOT registered on this agent (node {agent.node or '?'})")
                continue
            agent_has[e.service_id] = inst
            lines.append(f"{e.name}: registered on node {inst.node} at {inst.address}:{inst.port}"
                         + ("" if inst.pod_uid in (None, pod.uid) else f", but for another pod UID {inst.pod_uid}"))
            lines += [f"  check {c.check_id}: {c.status}" + (f" ({c.output})" if c.output else "") for c in inst.checks]
        if agent.known_servers == 0:
            lines.append("the agent knows no Consul servers: what it accepts cannot reach the catalog")
        steps.append(Step(f"node's agent at {agent.address}", bool(facts.configured) and len(agent_has) == len(facts.configured), lines))

    # 4. the catalog (the servers' view)
    catalog = facts.catalog
    in_catalog: dict[str, ConsulInstance] = {}
    mismatched: list[str] = []
    if catalog is None:
        steps.append(Step("catalog", None, ["not asked: no Consul address (--consul)"]))
    elif catalog.error:
        steps.append(Step(f"catalog via {catalog.address}", False, [f"cannot be read: {catalog.error}"]))
    else:
        lines = []
        for e in facts.configured:
            inst = catalog.instances.get(e.service_id)
            if inst is None or inst.pod_uid not in (None, pod.uid):
                lines.append(f"{e.name}: NOT in the catalog" + (f" on node {catalog.node}" if catalog.node else "")
                             + ("" if inst is None else f" for this pod (an entry for pod UID {inst.pod_uid} is)"))
                continue
            in_catalog[e.service_id] = inst
            statuses = ", ".join(f"{c.check_id.rsplit(':', 1)[-1]} {c.status}" for c in inst.checks)
            lines.append(f"{e.name}: on node {inst.node} at {inst.address}:{inst.port}: {statuses or 'no checks'}")
            on_agent = agent_has.get(e.service_id)
            if on_agent is not None:
                differ = [c.check_id for c in on_agent.checks if inst.status_of(c.check_id) != c.status]
                if differ:
                    mismatched.append(e.name)
                    lines.append(f"  differs from the agent for {', '.join(differ)}: the agent has not synced it yet")
        if catalog.node_health and catalog.node_health != PASSING:
            lines.append(f"node {catalog.node}'s agent is {catalog.node_health} in the catalog"
                         + (f" ({catalog.node_health_output})" if catalog.node_health_output else ""))
        all_passing = bool(facts.configured) and all(
            e.service_id in in_catalog and all(c.status == PASSING for c in in_catalog[e.service_id].checks)
            for e in facts.configured)
        steps.append(Step(f"catalog via {catalog.address}", all_passing, lines))

    # 5. the gate, as the pod shows it
    gate_lines = _gate_lines(facts)
    gate_open = sidecar is not None and sidecar.ready
    if pod.gate in ("condition", "both"):
        status = pod.conditions.get("katalog-sidecar.io/consul-confirmed", ("Unknown", "", ""))[0]
        gate_open = status == "True" and (pod.gate == "condition" or gate_open)
    gate = [f"{pod.gate} gate on container {pod.sidecar}: {'open' if gate_open else 'closed'}"]
    if sidecar is not None:
        gate.append(f"sidecar container {sidecar.state}" + (f" ({sidecar.detail})" if sidecar.detail else "")
                    + (f", restarted {sidecar.restarts} time(s)" if sidecar.restarts else ""))
    if pod.gate in ("condition", "both"):
        gate.append(_condition(pod, "katalog-sidecar.io/consul-confirmed"))
    if gate_lines and not gate_open:
        gate.append(f"the gate said: {gate_lines[-1]}")
    steps.append(Step("gate", gate_open, gate))

    # 6. the pod
    steps.append(Step("pod", ready, [_condition(pod, "Ready"), _condition(pod, "ContainersReady")]
                      + [f"container {c.name}: {'ready' if c.ready else 'NOT ready'}, {c.state}"
                         + (f" ({c.detail})" if c.detail else "") for c in pod.containers]))

    verdict, why, next_step = _conclude(facts, sidecar, app, agent_has, in_catalog, mismatched, gate_open, gate_lines)
    return Report(f"{pod.namespace}/{pod.name}", ready, verdict, why, next_step, steps, facts)


def _conclude(facts: Facts, sidecar: Container | None, app: list[Container], agent_has: Mapping[str, ConsulInstance],
              in_catalog: Mapping[str, ConsulInstance], mismatched: list[str], gate_open: bool,
              gate_lines: list[str]) -> tuple[Verdict, str, str]:
    """(verdict, why, next): the first broken link of the chain, in the order the gate checks."""
    pod, agent, catalog = facts.pod, facts.agent, facts.catalog
    ns = f"-n {pod.namespace}"
    logs = f"kubectl logs {pod.name} {ns} -c {pod.sidecar}"
    if pod.sidecar is None:
        return NO_SIDECAR, "the pod has no katalog-sidecar container", "inject it (`katalog-sidecar inject`) or pick another pod"
    if pod.terminating:
        return reasons.DRAINING, "the pod is terminating: the sidecar drains and deregisters it", "nothing: this is a normal shutdown"
    if facts.config_problems:
        return (reasons.CONFIG_ERROR, "the sidecar's configuration is invalid, so nothing is registered: "
                + "; ".join(facts.config_problems), "fix the named variable or pod annotation")
    if sidecar is None or sidecar.state != "running":
        detail = f" ({sidecar.detail})" if sidecar is not None and sidecar.detail else ""
        return (SIDECAR_DOWN, f"the sidecar container is not running{detail}",
                f"`{logs} --previous` and `kubectl describe pod {pod.name} {ns}`")
    failed_open = _last_of(facts, observers.CONSUL_GATE_FAILED_OPEN, (observers.CONFIRMED,))
    if gate_open and failed_open is not None:
        return (FAILED_OPEN, f"the gate FAILED OPEN: {failed_open.message}; the pod is Ready without Consul's "
                "confirmation, and Consul clients may not see it", "why Consul cannot confirm: the agent and "
                "catalog lines above; the sidecar leaves the state by itself once the catalog confirms")
    if gate_open:
        unready = [c.name for c in app if not c.ready]
        why = "the gate is open: every service is confirmed in the catalog"
        if unready:
            return OPEN, f"{why}; the pod is not Ready because {', '.join(unready)} is not ready", "the app's readiness probe"
        return OPEN, why, "nothing" if facts.pod.conditions.get("Ready", ("",))[0] == "True" else "wait one probe period"
    unready = [c.name for c in app if not c.ready]
    if unready and any(e.fixed_health is None for e in facts.configured):
        return (reasons.APP_NOT_READY, f"the app is not ready ({', '.join(unready)}): the sidecar keeps its readiness "
                "check critical and the gate waits for it", f"the app's own readiness probe: `kubectl describe pod {pod.name} {ns}`")
    refused = _last_of(facts, observers.CONSUL_REFUSED, (observers.CONFIRMED, observers.REGISTERED))
    # From outside the pod the gate's reason code is not visible (no exec into the status file):
    # the sidecar's own Event (ConsulRefused) says it; the gate's line in the kubelet's probe
    # Events is the fallback when that Event was dropped or has expired.
    said = gate_lines[-1] if gate_lines else ""
    if refused is not None or said.startswith("Consul refused "):
        message = refused.message if refused is not None else said
        return (reasons.CONSUL_REFUSED, f"the node's agent refuses the registration: {message}",
                "the Consul ACL token's policy (examples/consul-acl-policy.hcl) or the value the message names; "
                "the sidecar retries once a minute, at once when the token file changes")
    if agent is not None and agent.error:
        node_down = catalog is not None and not catalog.error and catalog.node_health not in (None, PASSING)
        if node_down or not catalog or catalog.error or not any(e.service_id in in_catalog for e in facts.configured):
            where = f"node {catalog.node}'s agent is {catalog.node_health} in the catalog" if node_down and catalog else \
                f"the agent at {agent.address} does not answer ({agent.error})"
            return (reasons.AGENT_UNREACHABLE, f"the sidecar cannot reach its node's Consul agent: {where}",
                    f"the Consul agent on node {pod.node} (its DaemonSet pod and log), HOST_IP and port 8500; {logs}")
    if agent is not None and not agent.error:
        taken = [i for i in agent_has.values() if i.pod_uid not in (None, pod.uid)]
        if taken:
            return (reasons.SUPERSEDED, f"{taken[0].service_id} on the node's agent belongs to pod UID "
                    f"{taken[0].pod_uid}, not to this pod ({pod.uid}): a newer pod with this name on this node; "
                    "this sidecar leaves it alone", "nothing if this pod is on its way out; else the other pod")
        missing = [e.name for e in facts.configured if e.service_id not in agent_has]
        if missing:
            forbidden = _last_of(facts, observers.KUBERNETES_FORBIDDEN, (observers.REGISTERED, observers.CONFIRMED))
            if forbidden is not None:
                return (reasons.KUBERNETES_FORBIDDEN, f"the sidecar cannot read its pod: {forbidden.message}",
                        "grant get, list, watch on pods (examples/rbac.yaml)")
            return (reasons.NOT_CONFIRMED, f"{', '.join(missing)} not registered on the node's agent yet",
                    f"the sidecar's log: `{logs}`")
    if catalog is not None and catalog.error:
        return (reasons.SERVERS_UNREACHABLE, f"the catalog cannot be read ({catalog.error}): the Consul servers are "
                "down or have no leader, so nothing can be confirmed; the rollout holds, as designed",
                "the Consul servers (`consul operator raft list-peers`, their logs)")
    if catalog is not None:
        absent = [e.name for e in facts.configured if e.service_id not in in_catalog]
        if absent or mismatched:
            cause = "the node's agent knows no servers" if agent is not None and agent.known_servers == 0 else \
                "the node's agent has not synced it to the servers yet"
            what = f"{', '.join(absent)} not in the catalog" if absent else f"{', '.join(mismatched)} not as pushed in the catalog"
            return (reasons.NOT_CONFIRMED, f"{what} although the agent has it: {cause}",
                    f"the agent on node {pod.node}: `consul members`, its log (anti-entropy, RPC errors to the servers)")
        return (reasons.NOT_CONFIRMED, "Consul shows every service passing, but the gate is still closed: the sidecar "
                "has not confirmed it (its token may lack service:read/node:read for the confirmation reads, or it "
                "is about to confirm)", f"`{logs}`; the gate's line in `kubectl describe pod {pod.name} {ns}`")
    return (reasons.OTHER, "Consul could not be asked; the gate is closed" + (f": {said}" if said else ""),
            "give --consul (and --consul-token), or read the gate's line in `kubectl describe pod`")


def render_text(report: Report) -> str:
    marks = {True: "ok", False: "!!", None: "??"}
    lines = [f"pod {report.pod}: {'Ready' if report.ready else 'NOT Ready'}"]
    pod = report.facts.pod
    lines.append(f"  node {pod.node or '?'} (host IP {pod.host_ip or '?'}), pod IP {pod.pod_ip or '?'}, uid {pod.uid}")
    for number, step in enumerate(report.steps, 1):
        lines.append(f"{number}. [{marks[step.ok]}] {step.title}")
        lines += [f"     {line}" for line in step.lines]
    events = [e for e in report.facts.events if e.component == "katalog-sidecar" or e.reason == "Unhealthy"]
    if events:
        lines.append("recent events:")
        lines += [f"     {e.last} {e.type} {e.reason} (x{e.count}): {e.message}" for e in events[-8:]]
    for note in report.facts.notes:
        lines.append(f"note: {note}")
    lines.append(f"verdict: {report.verdict}")
    lines.append(f"why:     {report.why}")
    lines.append(f"next:    {report.next}")
    return "\n".join(lines)
