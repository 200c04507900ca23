"""What the core learns from the pod, the confirmer and the supervisor: state changes and the
log lines they deserve. Pure."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar import observers as so
from sidecar.core import actions as a
from sidecar.core import events as e
from sidecar.core.reconfig import apply_config, config_invalid
from sidecar.core.state import Context

if TYPE_CHECKING:
    from sidecar.core.sync import Sync


def apply(ctx: Context, sync: Sync, event: e.Event) -> None:
    """An event that changes what is wanted, or what is known (the core's dispatch, outside a drain)."""
    if isinstance(event, e.PodObserved):
        observed(ctx, event)
    elif isinstance(event, e.SourceProblem):
        source_problem(ctx, event)
    elif isinstance(event, e.ConfirmResult):
        confirm_result(ctx, event)
    elif isinstance(event, e.AgentReadFailed):
        sync.faults.read_failed(event)
    elif isinstance(event, e.AgentSeen):
        sync.faults.seen(event)
    elif isinstance(event, e.ConfigChanged):
        apply_config(ctx, event.config)
    elif isinstance(event, e.ConfigInvalid):
        config_invalid(ctx, "; ".join(event.problems) or None)
    elif isinstance(event, e.TokenRotated):
        sync.token_rotated = True
    elif isinstance(event, e.WorkerDown):
        worker_down(ctx, event)


def observed(ctx: Context, event: e.PodObserved) -> None:
    s = ctx.state
    obs = event.observation
    previous = s.observation
    s.observation = obs
    s.source_problem = None
    if not obs.ready or obs.terminating:
        s.ready_since = None  # fail-open counts from the app turning ready
    elif s.ready_since is None:
        s.ready_since = ctx.now
    if previous is None or previous.ready != obs.ready:
        ctx.info(f"app {'ready' if obs.ready else 'not ready'}: {obs.detail}")
    if previous is not None and previous.ready != obs.ready and s.instances and not s.generation_unpushed:
        # What the catalog confirmed is not what is wanted any more: a new generation at once, not
        # only once the round that pushes it ends. A round still running (a slow agent's TTL
        # refresh) delays that push, and meanwhile the previous generation, confirmed critical,
        # passed the gate of an app just turned ready (simulator seed 183, gate-needs-catalog).
        s.generation += 1
        s.generation_unpushed = True
    if obs.terminating and not s.draining:
        s.draining = True
        s.drain_reason = "pod deleted" if obs.deleted else "deletionTimestamp set"
        ctx.info(f"pod is terminating ({s.drain_reason}): draining")


def source_problem(ctx: Context, event: e.SourceProblem) -> None:
    s = ctx.state
    if event.message != s.source_problem:
        if event.message:
            ctx.warning(f"readiness source: {event.message} (keeping the last known status)")
            if "forbidden" in event.message:
                ctx.notify(so.KUBERNETES_FORBIDDEN, event.message)
        else:
            ctx.info("readiness source recovered")
        # News for the gate (a 401/403 names what to fix): write now, not at the next heartbeat.
        ctx.timers.next_heartbeat = ctx.now
    s.source_problem = event.message
    s.source_forbidden = bool(event.message) and "forbidden" in (event.message or "")  # as the Event above


def confirm_result(ctx: Context, event: e.ConfirmResult) -> None:
    s = ctx.state
    if event.generation != s.generation:
        return
    if event.outcome == "confirmed":
        ctx.timers.next_reconfirm = ctx.now + ctx.config.reconfirm_interval
        if s.confirmed_generation != event.generation:
            ctx.emit(a.RecordConfirmed(ctx.now - ctx.timers.pushed_at))
            if s.confirm_message:
                ctx.info("catalog confirms the registration again")
        s.confirmed_generation = event.generation
        s.confirm_message, s.catalog_unreadable = "", False
        return
    if event.outcome == "lost" and s.confirmed_generation == event.generation:
        ctx.warning(f"lost confirmation: {event.message}")
        ctx.notify(so.CONFIRMATION_LOST, event.message)
        s.confirmed_generation = -1
    s.confirm_message, s.catalog_unreadable = event.message, event.catalog_unreadable


def worker_down(ctx: Context, event: e.WorkerDown) -> None:
    s = ctx.state
    problem = (f"the {event.name} worker is crash-looping ({event.problem}): the app's readiness is not "
               "being followed" if event.problem else None)
    if problem != s.worker_problem:
        if problem:
            ctx.error(problem)
        else:
            ctx.info(f"the {event.name} worker runs stably again")
        ctx.timers.next_heartbeat = ctx.now  # news for the gate: write now
    s.worker_problem = problem
