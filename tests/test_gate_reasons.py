"""The gate's closed reason is a code decided with the verdict (sidecar.core.report.gate_state),
not read back from the gate's line. These tests prove the change kept what users see: over a
grid of core states, the line and phase are the ones the code before it wrote, the reason is
the label value the line-reading classifier gave (one documented correction), and fail-open
acts on exactly the states it acted on before.

The `old_*` functions are the code as it was before the change (b757fbe), kept here verbatim
as the oracle: sidecar/core/report.py's gate_line and consul_holds_the_gate, and
sidecar/gate_metrics.py's closed_reason."""

from __future__ import annotations

import dataclasses
import itertools
import random
from typing import Any

from core_harness import UID, config

from readiness_gate import state as st
from sidecar import gate_reasons as r
from sidecar.core import report
from sidecar.core.state import Context
from sidecar.readiness import Observation
from sidecar.registration import build_instances, confirmed_summary
from sidecar.status_report import render

# The label values of katalog_gate_closed_reason before the change, in their order: users' alert
# rules and dashboards match on them, so they are the same strings, no more, no fewer.
LABEL_VALUES_BEFORE = ("starting", "kubernetes_unavailable", "kubernetes_forbidden", "config_error", "app_not_ready",
                       "agent_unreachable", "consul_refused", "servers_unreachable", "not_confirmed", "draining",
                       "superseded", "worker_down", "other")


def test_the_label_values_are_the_ones_before() -> None:
    assert r.CLOSED_REASONS == LABEL_VALUES_BEFORE
    assert {"agent_unreachable", "servers_unreachable", "not_confirmed"} == r.CONSUL_CANNOT_CONFIRM


# --- the oracle: the code before the change, verbatim -----------------------------------------

def old_gate_line(ctx: Context) -> tuple[str, str]:
    """report.gate_line before the change."""
    s = ctx.state
    if s.draining:
        return st.DRAINING, f"{s.drain_reason}: instances critical, deregistering"
    if s.superseded:
        sid, uid = sorted(s.superseded.items())[0]
        ours = (s.observation.pod_uid if s.observation else None) or ctx.config.pod_uid
        return st.SUPERSEDED, (f"{sid} on this agent now belongs to pod UID {uid}, not to this pod ({ours}): "
                               "a newer pod with this name on this node; this sidecar writes nothing to it")
    if s.worker_problem:
        return st.WORKER_DOWN, s.worker_problem
    if s.config_problem and not s.instances:
        return st.CONFIG_ERROR, s.config_problem
    if s.port_problem:
        return st.SYNCING, s.port_problem
    if s.observation is None:
        if s.source_problem:
            return st.SYNCING, f"waiting for the first readiness observation: {s.source_problem}"
        return st.SYNCING, f"waiting for the first readiness observation ({ctx.config.readiness.source})"
    if not ctx.config.services:
        return st.SYNCING, "waiting for the pod's annotations"
    if s.failed_open:
        waiting = s.agent_problem or s.confirm_message or "waiting for the catalog to confirm the registration"
        return st.FAILED_OPEN, (f"failed open after {report.fail_open_text(ctx)}: Consul has not confirmed "
                                f"(registration goes on): {waiting}")
    if s.agent_problem:
        return st.SYNCING, s.agent_problem
    # Services with a fixed health do not wait for the app.
    if not s.observation.ready and any(i.fixed_health is None for i in s.instances):
        return st.SYNCING, f"check critical because the app is not ready: {s.observation.detail}"
    if s.confirmed_generation != s.generation:
        return st.SYNCING, s.confirm_message or "waiting for the catalog to confirm the registration"
    summary = confirmed_summary(s.instances, {
        i.service_id: s.pushed[i.readiness_check_id].status for i in s.instances if i.readiness_check_id in s.pushed})
    if s.config_problem:
        summary += f"; annotation edit not applied: {s.config_problem}"
    return st.CONFIRMED, summary


def old_consul_holds_the_gate(ctx: Context) -> bool:
    """report.consul_holds_the_gate before the change."""
    s = ctx.state
    if (s.draining or s.superseded or s.worker_problem or s.port_problem or s.observation is None
            or not ctx.config.services or not s.instances or (s.config_problem and not s.instances)):
        return False
    if not s.observation.ready and any(i.fixed_health is None for i in s.instances):
        return False
    if s.agent_problem:
        return not s.agent_problem_fatal
    return s.confirmed_generation != s.generation


def old_closed_reason(passes: bool, phase: str, line: str) -> str:
    """gate_metrics.closed_reason before the change: the reason read back from the gate's line."""
    if passes:
        return ""
    if phase in (st.DRAINING, st.STOPPED):
        return "draining"
    if phase == st.SUPERSEDED:
        return "superseded"
    if phase == st.WORKER_DOWN:
        return "worker_down"
    if phase == st.CONFIG_ERROR or line.startswith("config error: "):
        return "config_error"
    if line.startswith("waiting for the first readiness observation"):
        if "forbidden" in line:
            return "kubernetes_forbidden"
        return "starting" if line.startswith("waiting for the first readiness observation (") else "kubernetes_unavailable"
    if line.startswith("waiting for the agent at "):
        return "agent_unreachable"
    if line.startswith("Consul refused "):
        return "consul_refused"
    if line.startswith("check critical because the app is not ready"):
        return "app_not_ready"
    if line.startswith("agent accepted ") and "the catalog cannot be read" in line:
        return "servers_unreachable"
    if line.startswith(("agent accepted ", "waiting for the catalog", "the catalog ")):
        return "not_confirmed"
    if line.startswith("KATALOG_SERVICES: "):
        return "config_error"  # a named port no container of the pod declares
    if line == "waiting for the pod's annotations" or line == "starting":
        return "starting"
    return "other"


# --- the grid ----------------------------------------------------------------------------------

SID = "shop:web-0:web"
UNREADABLE = "agent accepted web but the catalog cannot be read: No cluster leader"
NOT_LISTED = f"agent accepted web but the catalog does not list {SID} on node n1 yet"
# What the confirmer reports for a catalog that answers but differs from what was pushed
# (sidecar.registration.compare_service/compare_checks, sidecar.consul.catalog_view). The line
# reader called these "other" (its own "a bug to report"); the code calls them what they are,
# not_confirmed. The one change of a label value, and only for these lines; the alert rules
# treat both alike (a gate held too long; neither is a fault state).
MISMATCHES = (
    f"catalog shows check {SID}:readiness critical, pushed passing",
    f"catalog lists {SID} at 10.0.0.9:8080, expected 10.0.0.5:8080",
    f"the agent does not hold {SID} (registering it again)",
    f"catalog still lists {SID} on node n1",
)
SOURCE_PROBLEMS = (None, "Kubernetes API unreachable: cannot connect to https://10.96.0.1:443",
                   'pods "web-0" is forbidden: User "system:serviceaccount:shop:web" cannot get resource "pods"')
AGENT_PROBLEMS = (None, ("waiting for the agent at 127.0.0.1:8500: cannot connect to the agent", False),
                  ("Consul refused web: Permission denied (fix CONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN_FILE "
                   "(ACL policy))", True))
CONFIRM = (("", False), (UNREADABLE, True), (NOT_LISTED, False)) + tuple((m, False) for m in MISMATCHES)
DIMENSIONS: dict[str, tuple[Any, ...]] = {
    "mode": ("latch", "continuous"), "services": (True, False), "ever_confirmed": (False, True),
    "draining": (False, True), "superseded": (False, True), "worker": (False, True), "config_problem": (False, True),
    "instances": ("none", "app", "fixed"), "port_problem": (False, True), "observation": (None, True, False),
    "source": SOURCE_PROBLEMS, "failed_open": (False, True), "agent": AGENT_PROBLEMS, "confirmed": (True, False),
    "confirm": CONFIRM,
}
EARLY = ("draining", "superseded", "worker", "config_problem", "port_problem")  # the first branches


def _context(case: dict[str, Any]) -> Context:
    cfg = config(KATALOG_GATE_MODE=case["mode"], KATALOG_FAIL_OPEN_AFTER="20s")
    if not case["services"]:
        cfg = dataclasses.replace(cfg, services=())
    ctx = Context(cfg, "127.0.0.1:8500", random.Random(1).random)
    s = ctx.state
    s.ever_confirmed = case["ever_confirmed"]
    s.draining, s.drain_reason = case["draining"], "SIGTERM"
    if case["superseded"]:
        s.superseded = {SID: "uid-2"}
    if case["worker"]:
        s.worker_problem = "the readiness worker is crash-looping (boom): the app's readiness is not being followed"
    if case["config_problem"]:
        s.config_problem = "katalog-sidecar.io/port: 'x' is not a port"
    if case["instances"] != "none":
        instances = build_instances(config(), UID, None)
        if case["instances"] == "fixed":
            instances = tuple(dataclasses.replace(i, fixed_health="passing") for i in instances)
        s.instances = instances
    if case["port_problem"]:
        s.port_problem = ("KATALOG_SERVICES: service 'web' uses container port 'grpc', which no container of the pod "
                          "declares (named ports: http)")
    if case["observation"] is not None:
        ready = case["observation"]
        s.observation = Observation(ready, "app ready" if ready else "not ready: app", pod_uid=UID)
    if case["source"] is not None:
        s.source_problem = case["source"]
        s.source_forbidden = "forbidden" in case["source"]  # as sidecar.core.inputs.source_problem sets it
    s.failed_open = case["failed_open"]
    if case["agent"] is not None:
        s.agent_problem, s.agent_problem_fatal = case["agent"]
    s.generation = 3
    s.confirmed_generation = 3 if case["confirmed"] else -1
    s.confirm_message, s.catalog_unreadable = case["confirm"]
    return ctx


def _cases() -> list[dict[str, Any]]:
    """Every combination past the early branches (they all off), and a sample of all of them."""
    names = list(DIMENSIONS)
    late = [DIMENSIONS[n] if n not in EARLY else (False,) for n in names]
    cases = [dict(zip(names, values, strict=True)) for values in itertools.product(*late)]
    rng = random.Random(21)
    cases += [{n: rng.choice(DIMENSIONS[n]) for n in names} for _ in range(6000)]
    return cases


def test_lines_phases_reasons_and_fail_open_are_those_of_before_over_a_grid_of_states() -> None:
    corrected = 0
    cases = _cases()
    for case in cases:
        ctx = _context(case)
        phase, line, reason = report.gate_state(ctx)
        assert (phase, line) == old_gate_line(ctx), case
        verdict = report.verdict(ctx, phase, line, reason)
        before = old_closed_reason(verdict.passes, verdict.phase, verdict.line)
        if before == "other" and any(line.endswith(m) for m in MISMATCHES):
            before, corrected = "not_confirmed", corrected + 1
        assert verdict.reason == before, (case, verdict)
        assert verdict.reason in r.CLOSED_REASONS or (verdict.reason == r.OPEN and verdict.passes), verdict
        assert report.consul_holds_the_gate(ctx) == old_consul_holds_the_gate(ctx), case
    assert len(cases) > 20000 and corrected > 0


def test_a_connection_failure_after_a_refusal_is_agent_unreachable_and_may_fail_open() -> None:
    """The one state where the code and the old flag disagreed: a 403, then the agent stopped
    answering. The line said "waiting for the agent" (label agent_unreachable) but the stale
    refusal flag kept fail-open from acting; now the failure resets it (sidecar.core.faults)."""
    from core_harness import AgentModel, Run, observation

    from sidecar.core import actions as a
    from sidecar.core import events as e

    refuse = [e.FailureKind.FORBIDDEN]
    agent = AgentModel(fail=lambda call: e.Failure(refuse[0], "Permission denied" if refuse[0] is e.FailureKind.FORBIDDEN
                                                   else "connection refused") if isinstance(call, a.Register) else None)
    run = Run(config(KATALOG_FAIL_OPEN_AFTER="20s"), agent=agent, auto_confirm=False)
    run.send(e.PodObserved(observation(ready=True)))
    gates = [x for x in run.actions if isinstance(x, a.GateVerdict)]
    assert gates[-1].reason == r.CONSUL_REFUSED and gates[-1].line.startswith("Consul refused ")
    refuse[0] = e.FailureKind.UNAVAILABLE
    run.send(e.TokenRotated())  # retry now
    run.advance(1)
    gates = [x for x in run.actions if isinstance(x, a.GateVerdict)]
    assert gates[-1].line.startswith("waiting for the agent at ") and gates[-1].reason == r.AGENT_UNREACHABLE
    assert report.consul_holds_the_gate(run.core.ctx)
    run.advance(25)
    assert [x for x in run.actions if isinstance(x, a.GateVerdict)][-1].phase == st.FAILED_OPEN


def test_status_shows_the_reason_the_gate_is_closed() -> None:
    doc = {"pod": "shop/web-0", "agent": "127.0.0.1:8500", "phase": "syncing", "since": 0.0, "updated_at": 0.0,
           "gate_mode": "latch", "reason": r.SERVERS_UNREACHABLE}
    assert "reason:     servers_unreachable" in render(doc, False, UNREADABLE, 1.0).splitlines()
    assert "reason:" not in render(dict(doc, reason=""), True, "ok: web passing in the catalog", 1.0)
