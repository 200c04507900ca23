"""Fail-open (KATALOG_FAIL_OPEN_AFTER): the gate opens once it has held a ready app that long
only because Consul cannot confirm, and leaves that state by itself when Consul confirms. Pure."""

from __future__ import annotations

from sidecar import observers as so
from sidecar.core.report import consul_holds_the_gate, gate_line, gate_state, verdict
from sidecar.core.state import Context


def step(ctx: Context) -> None:
    """After every event: open the gate once it has been held `fail_open_after` since the app
    turned ready, only because Consul cannot confirm; leave that state by itself, and say so,
    when it confirms (or when a reason of the pod's own closes the gate again)."""
    s = ctx.state
    if s.failed_open:
        if consul_holds_the_gate(ctx):
            return
        s.failed_open = False
        if s.confirmed_generation == s.generation and not s.agent_problem and not s.draining:
            ctx.info("the catalog confirms the registration: no longer failed open")
        else:
            ctx.warning("no longer failed open: the gate is closed for a reason of the pod's own")
        ctx.timers.next_heartbeat = ctx.now  # news for the gate: write now
        return
    if verdict(ctx, *gate_state(ctx)).passes:
        s.gate_closed_at = None  # open (latched, or confirmed): nothing to count
        return
    if s.gate_closed_at is None:
        s.gate_closed_at = ctx.now
    after, held = ctx.config.fail_open_after, held_since(ctx)
    if not after or held is None or ctx.now < held + after or not consul_holds_the_gate(ctx):
        return
    s.failed_open = True
    _, message = gate_line(ctx)
    ctx.warning(message)
    ctx.notify(so.CONSUL_GATE_FAILED_OPEN, message)
    ctx.timers.next_heartbeat = ctx.now


def held_since(ctx: Context) -> float | None:
    """Since when the gate has held a ready app: the later of the app turning ready and the
    gate closing (continuous mode closes a confirmed pod's gate when confirmation is lost)."""
    s = ctx.state
    if s.ready_since is None:
        return None
    return max(s.ready_since, s.gate_closed_at if s.gate_closed_at is not None else s.ready_since)


def deadline(ctx: Context) -> float | None:
    """When fail-open would act next (a deadline already past is acted on or moot: no spin)."""
    s, after, held = ctx.state, ctx.config.fail_open_after, held_since(ctx)
    if after and held is not None and not s.failed_open and held + after > ctx.now:
        return held + after
    return None
