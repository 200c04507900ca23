"""What the sidecar says: the gate's line, the status file's fields, the heartbeat. Pure."""

from __future__ import annotations

from typing import Any

from readiness_gate import state as status_state
from sidecar import observers as so
from sidecar.core import actions as a
from sidecar.core.state import Context
from sidecar.registration import Instance, confirmed_summary


def gate_line(ctx: Context) -> tuple[str, str]:
    """(status phase, one line saying what the sidecar waits for). Ordered by what to fix first."""
    s = ctx.state
    if s.draining:
        return status_state.DRAINING, f"{s.drain_reason}: instances critical, deregistering"
    if s.superseded:
        sid, uid = sorted(s.superseded.items())[0]
        ours = (s.observation.pod_uid if s.observation else None) or ctx.config.pod_uid
        return status_state.SUPERSEDED, (f"{sid} on this agent now belongs to pod UID {uid}, not to this pod ({ours}): "
                                         "a newer pod with this name on this node; this sidecar writes nothing to it")
    if s.worker_problem:
        return status_state.WORKER_DOWN, s.worker_problem
    if s.config_problem and not s.instances:
        return status_state.CONFIG_ERROR, s.config_problem
    if s.port_problem:
        return status_state.SYNCING, s.port_problem
    if s.observation is None:
        if s.source_problem:
            return status_state.SYNCING, f"waiting for the first readiness observation: {s.source_problem}"
        return status_state.SYNCING, f"waiting for the first readiness observation ({ctx.config.readiness.source})"
    if not ctx.config.services:
        return status_state.SYNCING, "waiting for the pod's annotations"
    if s.failed_open:
        waiting = s.agent_problem or s.confirm_message or "waiting for the catalog to confirm the registration"
        return status_state.FAILED_OPEN, (f"failed open after {fail_open_text(ctx)}: Consul has not confirmed "
                                          f"(registration goes on): {waiting}")
    if s.agent_problem:
        return status_state.SYNCING, s.agent_problem
    # Services with a fixed health do not wait for the app.
    if not s.observation.ready and any(i.fixed_health is None for i in s.instances):
        return status_state.SYNCING, f"check critical because the app is not ready: {s.observation.detail}"
    if s.confirmed_generation != s.generation:
        return status_state.SYNCING, s.confirm_message or "waiting for the catalog to confirm the registration"
    summary = confirmed_summary(s.instances, {
        i.service_id: s.pushed[i.readiness_check_id].status for i in s.instances if i.readiness_check_id in s.pushed})
    if s.config_problem:
        summary += f"; annotation edit not applied: {s.config_problem}"
    return status_state.CONFIRMED, summary


def fail_open_text(ctx: Context) -> str:
    after = ctx.config.fail_open_after or 0.0
    return f"{after:g}s" if after < 120 else f"{after / 60:g}m"


def consul_holds_the_gate(ctx: Context) -> bool:
    """The gate is closed only because Consul cannot confirm: the agent is unreachable (not a
    400/403, which needs a fix) or the catalog has not confirmed. Never the pod's own reasons:
    the app not ready, terminating, a configuration problem, another pod on our ID, a worker down."""
    s = ctx.state
    if (s.draining or s.superseded or s.worker_problem or s.port_problem or s.observation is None
            or not ctx.config.services or not s.instances or (s.config_problem and not s.instances)):
        return False
    if not s.observation.ready and any(i.fixed_health is None for i in s.instances):
        return False
    if s.agent_problem:
        return not s.agent_problem_fatal
    return s.confirmed_generation != s.generation


def verdict(ctx: Context, phase: str, message: str) -> a.GateVerdict:
    """The verdict readiness-gate would give on a fresh file (the same evaluate())."""
    passes, line = status_state.evaluate(
        {"phase": phase, "message": message, "gate_mode": ctx.config.gate_mode,
         "ever_confirmed": ctx.state.ever_confirmed, "updated_at": 0.0, "stale_after": float("inf")},
        0.0, lambda _pid: True)
    return a.GateVerdict(passes, phase, line)


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
        phase, message = gate_line(ctx)
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
        ctx.emit(a.WriteStatus({
            "phase": phase, "message": message, "since": self._since, "ever_confirmed": s.ever_confirmed,
            "services": [self._service_status(inst) for inst in s.instances],
            "source_problem": s.source_problem, "last_error": s.last_error,
        }))
        ctx.emit(verdict(ctx, phase, message))

    def final_status(self, message: str) -> None:
        ctx = self._ctx
        self.final_message = message
        ctx.emit(a.WriteStatus({"phase": status_state.STOPPED, "message": message, "since": ctx.now,
                                "ever_confirmed": ctx.state.ever_confirmed, "services": [], "source_problem": None}))
        ctx.emit(verdict(ctx, status_state.STOPPED, message))

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
