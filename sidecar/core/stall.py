"""Noticing that the process did not run for a while (SIGSTOP, a frozen cgroup, a paused VM, a
starved node), and what that makes stale. Pure.

What the core knows of the agent (which instances are ours: `registered`, adopted ones) is kept
true by the agent watch's news. While the process is stopped, nothing is handled: a same-node
successor (same pod name, new UID) may meanwhile have re-registered our service IDs with its
own UID, and the watch's news of it waits behind whatever the process does first on being
continued (a TTL refresh, the drain that a SIGTERM sent during the stop starts). So after a
stall every instance is "unverified": the core reads the agent's copy (its k8s-pod-uid) before
its next write to it, and never writes to one that carries another UID (simulator seeds 10, 99,
1062: `foreign-write`). What was confirmed is as stale: statuses are pushed and confirmed again.

A stall is an event handled later than the core could have been woken: its own next deadline
(the loop waits for it, or for an event) or, while a call is in flight, that call's timeout
(the loop makes it inline), plus STALL_SLACK for scheduling and I/O the loop does around it.
"""

from __future__ import annotations

from sidecar.core import actions as a
from sidecar.core.state import Context

STALL_SLACK = 2.0


class StallWatch:
    def __init__(self) -> None:
        self._expect_by: float | None = None  # the latest moment the next event was due

    def check(self, ctx: Context, adopted: set[str]) -> None:
        """On every event, before it is handled: a stall makes ownership unverified."""
        if self._expect_by is None or ctx.now <= self._expect_by + STALL_SLACK:
            return
        ours = set(ctx.state.registered) | adopted
        late = ctx.now - self._expect_by
        if ours:
            ctx.warning(f"this process did not run for {late:.1f}s past its next deadline (stopped or starved): "
                        f"re-reading the agent's copy of {', '.join(sorted(ours))} before writing to it "
                        "(another pod may have taken it over meanwhile)")
        ctx.unverified |= ours
        s = ctx.state
        if s.registered and not s.draining and not s.generation_unpushed:
            # What was confirmed is as old as the stop: the TTLs may have run out meanwhile (the
            # catalog shows critical while the status file still says confirmed: simulator seed
            # 191, gate-needs-catalog). A new generation at once, every status pushed again and
            # confirmed again before the gate passes on it.
            s.generation += 1
            s.generation_unpushed = True
        if s.registered and not s.draining:
            s.pushed.clear()

    def expect(self, ctx: Context, waiting: bool, next_deadline: float) -> None:
        """After the event: when the next one is due at the latest."""
        budgets = [_budget(ctx, call) for call in ctx.out if isinstance(call, a.CALLS)]
        if budgets:
            self._expect_by = ctx.now + max(budgets)
        elif not waiting:
            self._expect_by = next_deadline
        # else: blocked in the call emitted earlier; its deadline stands


def _budget(ctx: Context, call: a.Call) -> float:
    timeout = call.timeout if call.timeout is not None else ctx.config.consul.timeout
    return timeout + (call.wait if isinstance(call, a.ReadCatalog) else 0.0)
