"""What the sidecar says: the gate's line, the status file's fields, the heartbeat. Pure."""

from __future__ import annotations

from typing import Any

from readiness_gate import state as status_state
from sidecar import gate_reasons as r
from sidecar import observers as so
from sidecar.core import actions as a
from sidecar.core.state import Context
from sidecar.gate_reasons import GateReason
from sidecar.registration import Instance, confirmed_summary


def gate_line(ctx: Context) -> tuple[str, str]:
    """(status phase, one line saying what the sidecar waits for). Ordered by what to fix first."""
    phase, message, _ = gate_state(ctx)
    return phase, message


def gate_state(ctx: Context) -> tuple[str, str, GateReason]:
    """(status phase, the gate's line, why the gate is closed): the reason is decided here, with
    the line, by the branch that picks it; nothing reads it back from the line's words.

    The reason is the one that would hold the gate: a failed-open gate passes (its verdict says
    OPEN) but still names what Consul cannot do, which is what keeps it failed open."""
    s = ctx.state
    if s.draining:
        return status_state.DRAINING, f"{s.drain_reason}: instances critical, deregistering", r.DRAINING
    if s.superseded:
        sid, uid = sorted(s.superseded.items())[0]
        ours = (s.observation.pod_uid if s.observation else None) or ctx.config.pod_uid
        return status_state.SUPERSEDED, (f"{sid} on this agent now belongs to pod UID {uid}, not to this pod ({ours}): "
                                         "a newer pod with this name on this node; this sidecar writes nothing to it"), \
            r.SUPERSEDED
    if s.worker_problem:
        return status_state.WORKER_DOWN, s.worker_problem, r.WORKER_DOWN
    if s.config_problem and not s.instances:
        return status_state.CONFIG_ERROR, s.config_problem, r.CONFIG_ERROR
    if s.port_problem:
        return status_state.SYNCING, s.port_problem, r.CONFIG_ERROR  # a named port no container declares
    if s.observation is None:
        if s.source_problem:
            return (status_state.SYNCING, f"waiting for the first readiness observation: {s.source_problem}",
                    r.KUBERNETES_FORBIDDEN if s.source_forbidden else r.KUBERNETES_UNAVAILABLE)
        return (status_state.SYNCING, f"waiting for the first readiness observation ({ctx.config.readiness.source})",
                r.STARTING)
    if not ctx.config.services:
        return status_state.SYNCING, "waiting for the pod's annotations", r.STARTING
    holding = _consul_reason(ctx)
    if s.failed_open:
        waiting = s.agent_problem or s.confirm_message or "waiting for the catalog to confirm the registration"
        return status_state.FAILED_OPEN, (f"failed open after {fail_open_text(ctx)}: Consul has not confirmed "
                                          f"(registration goes on): {waiting}"), holding
    if s.agent_problem:
        return status_state.SYNCING, s.agent_problem, holding
    # Services with a fixed health do not wait for the app.
    if _app_holds(ctx):
        return status_state.SYNCING, f"check critical because the app is not ready: {s.observation.detail}", \
            r.APP_NOT_READY
    if holding:
        return status_state.SYNCING, s.confirm_message or "waiting for the catalog to confirm the registration", holding
    summary = confirmed_summary(s.instances, {
        i.service_id: s.pushed[i.readiness_check_id].status for i in s.instances if i.readiness_check_id in s.pushed})
    if s.config_problem:
        summary += f"; annotation edit not applied: {s.config_problem}"
    return status_state.CONFIRMED, summary, r.OPEN


def _app_holds(ctx: Context) -> bool:
    """The app is not ready and a service follows it (services with a fixed health do not)."""
    s = ctx.state
    return s.observation is not None and not s.observation.ready and any(i.fixed_health is None for i in s.instances)


def _consul_reason(ctx: Context) -> GateReason:
    """What Consul's side holds the gate for, OPEN if nothing: the agent refuses (400/403) or
    cannot be reached, the catalog cannot be read, or it does not show what was pushed yet."""
    s = ctx.state
    if s.agent_problem:
        return r.CONSUL_REFUSED if s.agent_problem_fatal else r.AGENT_UNREACHABLE
    if s.confirmed_generation != s.generation:
        return r.SERVERS_UNREACHABLE if s.catalog_unreadable else r.NOT_CONFIRMED
    return r.OPEN


def fail_open_text(ctx: Context) -> str:
    after = ctx.config.fail_open_after or 0.0
    return f"{after:g}s" if after < 120 else f"{after / 60:g}m"


def consul_holds_the_gate(ctx: Context) -> bool:
    """The gate is closed only because Consul cannot confirm (r.CONSUL_CANNOT_CONFIRM): the agent
    is unreachable (not a 400/403, which needs a fix) or the catalog has not confirmed. Never
    the pod's own reasons: the app not ready, terminating, a configuration problem, another pod
    on our ID, a worker down. Asked also while failed open: whether to stay so."""
    s = ctx.state
    if not s.instances or _app_holds(ctx):
        return False  # nothing built to register yet, or the app's own readiness holds it
    return gate_state(ctx)[2] in r.CONSUL_CANNOT_CONFIRM


def verdict(ctx: Context, phase: str, message: str, reason: GateReason) -> a.GateVerdict:
    """The verdict readiness-gate would give on a fresh file (the same evaluate()), with the
    reason `gate_state` decided (OPEN when the gate passes: confirmed, latched or failed open)."""
    passes, line = status_state.evaluate(
        {"phase": phase, "message": message, "gate_mode": ctx.config.gate_mode,
         "ever_confirmed": ctx.state.ever_confirmed, "updated_at": 0.0, "stale_after": float("inf")},
        0.0, lambda _pid: True)
    return a.GateVerdict(passes, phase, line, r.OPEN if passes else reason or r.OTHER)


class Reporter:
    """The status file and the heartbeat: one write per event handled, and one per interval.

    `since` in the fields is on the core's clock; the driver turns it into wall time."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self.phase = status_state.STARTING
        self._last_logged: str | None = None
        self._since = 0.0
        self.final_message: str | None = None

    def maybe_heartbeat(self, force: bool = False) -> None:
        ctx = self._ctx
        if not (force or ctx.now >= ctx.timers.next_heartbeat):
            return
        if self.final_message is not None:
            ctx.timers.next_heartbeat = ctx.now + ctx.config.heartbeat_interval
            self.final_status(self.final_message)
        else:
            self.write_status()

    def write_status(self) -> None:
        ctx, s = self._ctx, self._ctx.state
        phase, message, reason = gate_state(ctx)
        if phase == status_state.CONFIRMED and not s.ever_confirmed:
            s.ever_confirmed = True
            ctx.info(f"confirmed: {message}")
        if (phase, message) != (self.phase, self._last_logged):
            self._since = ctx.now
            if phase != status_state.CONFIRMED:
                ctx.info(f"{phase}: {message}")
            elif self.phase != status_state.CONFIRMED:
                ctx.notify(so.CONFIRMED, message)
        self.phase, self._last_logged = phase, message
        # Due again in one interval whether or not the write succeeds: never a spin on a full disk.
        ctx.timers.next_heartbeat = ctx.now + ctx.config.heartbeat_interval
        gate = verdict(ctx, phase, message, reason)
        ctx.emit(a.WriteStatus({
            "phase": phase, "message": message, "since": self._since, "ever_confirmed": s.ever_confirmed,
            "services": [self._service_status(inst) for inst in s.instances],
            "source_problem": s.source_problem, "last_error": s.last_error,
            "reason": gate.reason,  # why the gate is closed ("" open): `katalog-sidecar status` shows it
        }))
        ctx.emit(gate)

    def final_status(self, message: str) -> None:
        ctx = self._ctx
        self.final_message = message
        gate = verdict(ctx, status_state.STOPPED, message, r.DRAINING)
        ctx.emit(a.WriteStatus({"phase": status_state.STOPPED, "message": message, "since": ctx.now,
                                "ever_confirmed": ctx.state.ever_confirmed, "services": [], "source_problem": None,
                                "reason": gate.reason}))
        ctx.emit(gate)

    def _service_status(self, inst: Instance) -> dict[str, Any]:
        s = self._ctx.state
        readiness = s.pushed.get(inst.readiness_check_id)
        return {
            "name": inst.name,
            "id": inst.service_id,
            "address": f"{inst.address}:{inst.port}",
            "registered": inst.service_id in s.registered,
            "readiness": readiness.status if readiness else None,
            "readiness_output": readiness.output if readiness else None,
            "confirmed": s.confirmed_generation == s.generation and inst.service_id in s.registered,
        }
