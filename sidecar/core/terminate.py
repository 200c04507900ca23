"""Termination: which instances to drain, the drain's deadline, and what its result means
(exit code, log lines, Events, the final status). Pure; the drain itself is sidecar.core.drain."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

from sidecar import observers as so
from sidecar.core import actions as a
from sidecar.core.drain import RETRYABLE, Drain, DrainResult
from sidecar.core.events import AgentInstance
from sidecar.core.report import Reporter
from sidecar.core.state import Answer, Context, Failed, Sleep, Task, call
from sidecar.registration import Instance, build_instances

OWNER_READS = 5  # tries of a restarted process's read of what the previous one left (a third of reads failing: 1 in 243 gives up)
EXIT_OK = 0
EXIT_DRAIN_INCOMPLETE = 1


@dataclass(frozen=True)
class Drained:
    """A drain task's end: None when there was nothing of ours to drain."""

    result: DrainResult | None


SIGKILL_RESERVE = 2.0  # the drain ends this long before the kubelet's SIGKILL
MIN_DRAIN = 1.0  # every drain gets at least this long from its start to try its writes


def drain_deadline(ctx: Context, since: float | None) -> float:
    """When the drain must be done: the earlier of two, each `SIGKILL_RESERVE` before a SIGKILL.

    - SIGTERM-based: the budget `min(KATALOG_DRAIN_TIMEOUT, grace - reserve)` counts from
      `since` (the signal), so time spent finishing an agent call is not added on top; without a
      signal (the watch saw the deletionTimestamp first) from now.
    - Deletion-based: the pod's deletionTimestamp is the deletion plus the grace period, the
      earliest the kubelet SIGKILLs (sidecar.kube.pod_readiness.deletion_time). A process
      restarted during the termination (simulator seeds 30, 682, 1203) starts long after the
      deletion: counted from its own start, the budget ran past the SIGKILL.

    Used only with a grace period above 0, as the budget's grace term (the kubelet gives a 0 s
    deletion 2 s all the same). The deletion-based deadline comes from the API server's wall
    clock (on the core's clock through the driver), so it is bounded: one later than the
    SIGTERM-based deadline (a node clock behind, a far-off timestamp) changes nothing, and one
    in the past or too near (a node clock ahead, or a restart that came truly late) still
    leaves the drain `MIN_DRAIN` from now, in which it deregisters first (sidecar.core.drain).
    """
    obs = ctx.state.observation
    budget = ctx.config.drain_timeout
    by_deletion: float | None = None
    if obs is not None and obs.grace_period:
        budget = min(budget, max(MIN_DRAIN, obs.grace_period - SIGKILL_RESERVE))
        if obs.deletion_deadline is not None:
            by_deletion = obs.deletion_deadline - SIGKILL_RESERVE
    deadline = (ctx.now if since is None else since) + budget
    if by_deletion is not None and by_deletion < deadline:
        cut = deadline - by_deletion
        deadline = max(by_deletion, ctx.now + min(MIN_DRAIN, budget))
        if cut > 1.0:  # not the second the timestamp's truncation and the watch's latency take anyway
            ctx.info(f"the pod's deletionTimestamp leaves {by_deletion + SIGKILL_RESERVE - ctx.now:.1f}s of its "
                     f"grace period: the drain ends within {deadline - ctx.now:.1f}s")
    return max(deadline, ctx.now + min(MIN_DRAIN, budget))


def _instances(ctx: Context) -> tuple[Instance, ...]:
    """This pod's instances, built from the configuration if no round has built them yet (a
    process restarted on a terminating pod has not registered anything itself)."""
    s = ctx.state
    if s.instances or not ctx.config.services:
        return s.instances
    obs = s.observation
    try:
        return build_instances(ctx.config, (obs.pod_uid if obs else None) or ctx.config.pod_uid,
                               obs.container_ports if obs else None)
    except ValueError as exc:
        ctx.error(f"cannot name this pod's instances to drain them: {exc}")
        return ()


def drain_task(ctx: Context, deadline: float, adopted: frozenset[str] = frozenset()) -> Task:
    """Drain what is ours on the agent: what this process registered or adopted, and what a
    previous process of this pod left there (its UID, read now), never another pod's instance.
    One the agent cannot say anything about is drained if this process tried to register it,
    else left to its TTL."""
    s = ctx.state
    attempted = {i.service_id for i in s.instances}  # a round built them: registration was tried
    candidates = [i for i in _instances(ctx) if i.service_id not in s.superseded]
    ours: list[Instance] = []
    verified: set[str] = set()  # no read before each write (see _watched)
    for inst in candidates:
        sid = inst.service_id
        if sid in s.registered or sid in adopted:
            ours.append(inst)
            if _watched(ctx, sid):
                verified.add(sid)
            continue
        try:
            seen = yield from _read_owner(ctx, sid, ctx.now + (deadline - ctx.now) / 4)
        except Failed as exc:
            if inst.service_id in attempted:
                ours.append(inst)  # its registration was tried (it may have landed): drain it, as before
            else:
                ctx.warning(f"{inst.service_id}: cannot tell whether the agent holds it ({exc}): not draining it")
            continue
        assert isinstance(seen, AgentInstance)
        if seen.present and (seen.pod_uid == inst.pod_uid or not inst.pod_uid):
            ctx.info(f"{inst.service_id}: found on the agent with this pod's UID: draining it")
            ours.append(inst)
            if _watched(ctx, inst.service_id):
                verified.add(inst.service_id)
    if not ours:
        return Drained(None)
    result = yield from Drain(ctx, deadline, frozenset(verified), s.superseded.get).run(tuple(ours))
    return Drained(result)


def _read_owner(ctx: Context, sid: str, until: float) -> Generator[a.Call | Sleep, Answer, object]:
    """The agent's copy of `sid`, a transient failure tried again at once, up to OWNER_READS
    times before `until` (a 500 in a read flap left a restarted process's instance passing:
    simulator seed 204). No pause between: a read costs the agent nothing, and the drain's
    budget is better spent on its writes."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return (yield from call(a.ReadAgentInstance(ctx.request_id(), max(0.1, until - ctx.now), sid, False)))
        except Failed as exc:
            if exc.kind not in RETRYABLE or attempt >= OWNER_READS or ctx.now >= until:
                raise


def _watched(ctx: Context, sid: str) -> bool:
    """Whether the drain may write to `sid` without reading its owner first: its agent watch
    (which goes on during the drain) answers, so a takeover by a same-node successor stops the
    drain's writes to it, and the process has not stalled since (sidecar.core.stall). Else
    the drain reads the agent's copy before each write, within that write's share of the budget:
    a read once at the start goes stale while a slow agent takes seconds a write and the
    successor registers meanwhile (simulator seeds 133, 816: foreign-write)."""
    return sid in ctx.watched and not ctx.watched[sid] and sid not in ctx.unverified


def report_drain(ctx: Context, reporter: Reporter, result: DrainResult | None) -> int:
    """Log lines, Events and the final status for a drain's result; returns the exit code."""
    s = ctx.state
    if result is None:
        if s.superseded:
            ctx.info("every instance now belongs to another pod on this agent: nothing of ours to drain")
            reporter.final_status("stopped: superseded, nothing of ours to drain")
        else:
            ctx.info("nothing was registered: nothing to drain")
            reporter.final_status("stopped: nothing was registered")
        return EXIT_OK
    drained = result.removed + result.deregistered + result.left
    if result.foreign and not drained:
        ctx.info("every instance now belongs to another pod on this agent: nothing of ours to drain")
        reporter.final_status("stopped: superseded, nothing of ours to drain")
        return EXIT_OK
    if result.complete:
        ctx.notify(so.DEREGISTERED, f"drained and deregistered {', '.join(drained)}")
        reporter.final_status("drained and deregistered")
        return EXIT_OK
    if result.left:
        ctx.error(
            "drain incomplete before the deadline: the liveness check goes critical within "
            f"{ctx.config.check_ttl:g}s and the agent reaps the instance {ctx.config.deregister_critical_after:g}s "
            f"after that (still registered with the agent: {', '.join(result.left)})")
    if result.deregistered:
        ctx.error(
            f"drain incomplete before the deadline: the agent deregistered {', '.join(result.deregistered)} "
            "but the catalog did not confirm the removal; the agent removes it from the catalog once it "
            "reaches the servers")
    ctx.notify(so.DRAIN_INCOMPLETE, "drain incomplete before the deadline: " + (
        "left to the TTL and the agent's reaper" if result.left else "removal from the catalog not confirmed"))
    reporter.final_status("drain incomplete: left to the TTL and the agent's reaper" if result.left
                          else "deregistered from the agent; removal from the catalog not confirmed yet")
    return EXIT_DRAIN_INCOMPLETE
