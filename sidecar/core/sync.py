"""Making the agent hold what the core wants: registration, status pushes, TTL refreshes,
retirement of services no longer configured, adoption of a previous process's instance.

Each round is a task (sidecar.core.state.Task): sequential code that yields one agent call
at a time and gets its answer back, so the order of writes reads as it happens. Pure.
"""

from __future__ import annotations

from sidecar import observers as so
from sidecar.adoption import all_passing
from sidecar.core import actions as a
from sidecar.core.adopt import Adoption
from sidecar.core.events import AgentInstance, FailureKind
from sidecar.core.faults import AgentFaults
from sidecar.core.report import Reporter
from sidecar.core.state import Context, Failed, Task, call
from sidecar.registration import (
    CRITICAL,
    LIVENESS_RUNNING,
    PASSING,
    READINESS_TTL_FACTOR,
    TERMINATING,
    CheckState,
    Instance,
    build_instances,
    registration_payload,
    wanted_checks,
)


class Sync:
    def __init__(self, ctx: Context, reporter: Reporter, previous_ever_confirmed: bool) -> None:
        self._ctx = ctx
        self._reporter = reporter
        self.adoption = Adoption(ctx, reporter)  # before the first observation (sidecar.core.adopt)
        self._adopt_latch = previous_ever_confirmed and ctx.config.gate_mode == "latch"
        self.token_rotated = False
        self.faults = AgentFaults(ctx)  # failed calls, what the agent watch saw (sidecar.core.faults)

    # --- what is wanted -----------------------------------------------------------------
    def wanted(self) -> tuple[CheckState, CheckState]:
        s = self._ctx.state
        if s.draining:
            terminating = CheckState(CRITICAL, TERMINATING)
            return terminating, terminating
        obs = s.observation
        assert obs is not None
        readiness = CheckState(PASSING if obs.ready else CRITICAL, obs.detail)
        return readiness, CheckState(PASSING, LIVENESS_RUNNING)

    def writes_pending(self) -> bool:
        s = self._ctx.state
        if s.retired or any(i.service_id not in s.registered for i in s.instances):
            return True
        readiness, liveness = self.wanted()
        return any(s.pushed.get(cid) != check for inst in s.instances
                   for cid, check in wanted_checks(inst, readiness, liveness).items())

    def expectation(self, recheck: bool = False) -> a.Expectation:
        s = self._ctx.state
        readiness, liveness = self.wanted()
        return a.Expectation(
            generation=s.generation,
            instances=s.instances,
            checks={inst.service_id: {cid: cs.status for cid, cs in wanted_checks(inst, readiness, liveness).items()}
                    for inst in s.instances},
            removed=False,
            recheck=recheck,
        )

    def reconfirms(self) -> bool:
        """Continuous mode re-reads the catalog now and then; latch mode never does when idle."""
        s = self._ctx.state
        return self._ctx.config.gate_mode == "continuous" and s.confirmed_generation == s.generation

    # --- one round ------------------------------------------------------------------------
    def round(self) -> Task | None:
        """The task that makes the agent match, or None when there is nothing to write now."""
        ctx, s = self._ctx, self._ctx.state
        now = ctx.now
        if s.observation is None or not ctx.config.services:  # nothing seen, or services not named yet
            if (s.observation is None and self.adoption.active and now >= ctx.timers.next_refresh
                    and (ctx.timers.retry_at is None or now >= ctx.timers.retry_at)):
                return self.adoption.keep_alive()
            self._reporter.maybe_heartbeat(force=s.observation is not None)
            return None
        if not s.instances:
            try:
                s.instances = build_instances(ctx.config, s.observation.pod_uid, s.observation.container_ports)
                s.port_problem = None
            except ValueError as exc:
                if s.port_problem != str(exc):
                    ctx.error(str(exc))
                s.port_problem = str(exc)
                self._reporter.maybe_heartbeat(force=True)
                return None
        # A refused token is retried after a long wait, or at once when its file was rewritten.
        if ctx.timers.retry_at is not None and now < ctx.timers.retry_at and not self.token_rotated:
            self._reporter.maybe_heartbeat()
            return None
        self.token_rotated = False
        ctx.timers.retry_at = None
        return self._writes(now)

    def _writes(self, now: float) -> Task:
        ctx, s = self._ctx, self._ctx.state
        try:
            if (yield from self._reverify()):
                self._reporter.maybe_heartbeat(force=True)
                return None  # another pod holds our ID now: no write of ours (sidecar.core.faults)
            changed = bool((yield from self._retire()))
            changed |= bool((yield from self._register_missing()))
            changed |= bool((yield from self._push_changes()))
            if ctx.now >= ctx.timers.next_refresh:
                changed |= bool((yield from self._refresh_ttls()))
        except Failed as exc:
            self.faults.failed(exc.failure)
        else:
            for inst in s.instances:  # only now: before registration they would see a 404
                if inst.service_id not in ctx.watched:
                    ctx.watched[inst.service_id] = False
                    ctx.emit(a.WatchAgent(inst.service_id))
            if s.agent_problem:
                ctx.info(f"agent at {ctx.agent_address} accepts our writes again")
            s.agent_problem = None
            s.agent_problem_fatal = False
            ctx.retry_backoff.reset()
            if changed or s.generation_unpushed:
                if not s.generation_unpushed:
                    s.generation += 1
                s.generation_unpushed = False
                ctx.timers.pushed_at = now
                ctx.emit(a.Confirm(self.expectation()))
        if self.reconfirms() and ctx.now >= ctx.timers.next_reconfirm:
            ctx.emit(a.Confirm(self.expectation(recheck=True)))
            ctx.timers.next_reconfirm = ctx.now + ctx.config.reconfirm_interval
        self._reporter.maybe_heartbeat(force=True)
        return None

    def _reverify(self) -> Task:
        """After a stall (sidecar.core.stall): read who holds each of our instances on the agent
        before writing to it, as the agent watch would have told; True if another pod does."""
        ctx, s = self._ctx, self._ctx.state
        ctx.unverified &= s.registered
        for sid in sorted(ctx.unverified):
            seen = yield from call(a.ReadAgentInstance(ctx.request_id(), None, sid, False))
            assert isinstance(seen, AgentInstance)
            ctx.unverified.discard(sid)
            if not self.faults.other_pod(sid, seen.present, seen.pod_uid) and not seen.present:
                self.faults.agent_lost(sid)
        return bool(s.superseded)

    def _retire(self) -> Task:
        """Deregister instances no longer configured; True if any was."""
        ctx, s = self._ctx, self._ctx.state
        changed = False
        while s.retired:
            inst = s.retired[0]
            if ctx.watched.pop(inst.service_id, None) is not None:
                ctx.emit(a.UnwatchAgent(inst.service_id))
            try:
                yield from call(a.Deregister(ctx.request_id(), None, inst.service_id))
            except Failed as exc:
                if exc.kind is not FailureKind.NOT_FOUND:
                    raise
            s.retired.pop(0)
            s.registered.discard(inst.service_id)
            for check_id in (inst.readiness_check_id, inst.liveness_check_id):
                s.pushed.pop(check_id, None)
            ctx.info(f"deregistered {inst.service_id}: no longer configured")
            changed = True
        return changed

    def _latch_adoptable(self, readiness: CheckState) -> Task:
        """The previous process confirmed, and the agent still holds every instance of this pod
        (its UID) with every check passing, and the app is ready now (sidecar.adoption)."""
        ctx, s = self._ctx, self._ctx.state
        uid = (s.observation.pod_uid if s.observation is not None else None) or ctx.config.pod_uid
        if readiness.status != PASSING or not s.instances or not uid:
            return False
        for inst in s.instances:
            seen = yield from call(a.ReadAgentInstance(ctx.request_id(), None, inst.service_id))
            assert isinstance(seen, AgentInstance)
            ids = (inst.readiness_check_id, inst.liveness_check_id)
            if not seen.present or seen.pod_uid != uid or not all_passing(seen.checks, ids):
                return False
        return True

    def _register_missing(self) -> Task:
        ctx, s = self._ctx, self._ctx.state
        readiness, liveness = self.wanted()
        changed = False
        if self._adopt_latch:
            adopt = yield from self._latch_adoptable(readiness)  # may raise: then tried again with the retry
            self._adopt_latch = False
            if adopt:
                s.ever_confirmed = True
                names = ", ".join(i.name for i in s.instances)
                ctx.info(f"latch adopted: the previous sidecar process of this pod confirmed {names}, and the agent "
                         "still holds it with this pod's UID, passing")
        for inst in s.instances:
            if inst.service_id in s.registered:
                continue
            yield from call(a.Register(ctx.request_id(), None, inst.service_id, registration_payload(inst, ctx.config)))
            # Re-registration keeps the agent's old check status: push it explicitly.
            for check_id, check in wanted_checks(inst, readiness, liveness).items():
                yield from call(a.UpdateCheck(ctx.request_id(), None, check_id, check.status, check.output))
                s.pushed[check_id] = check
            s.registered.add(inst.service_id)
            ctx.info(f"registered {inst.service_id} ({inst.address}:{inst.port}) with the agent")
            ctx.notify(so.REGISTERED, f"registered {inst.service_id} ({inst.address}:{inst.port}) "
                                      f"with the Consul agent at {ctx.agent_address}")
            changed = True
        if changed:
            ctx.timers.next_refresh = ctx.now + ctx.config.check_ttl / 3
            ctx.timers.next_readiness_refresh = ctx.now + ctx.config.check_ttl * READINESS_TTL_FACTOR / 3
        return changed

    def _push_changes(self) -> Task:
        s = self._ctx.state
        readiness, liveness = self.wanted()
        changed = False
        for inst in s.instances:
            for check_id, check in wanted_checks(inst, readiness, liveness).items():
                if s.pushed.get(check_id) == check:
                    continue
                yield from self._update_check(inst, check_id, check)
                if s.pushed.get(check_id, check).status != check.status:
                    self._ctx.info(f"{inst.service_id}: check {check_id} -> {check.status} ({check.output})")
                s.pushed[check_id] = check
                changed = True
        return changed

    def _refresh_ttls(self) -> Task:
        # Same status and output as last time: the agent only resets its TTL timer, no Raft write.
        ctx = self._ctx
        now = ctx.now
        with_readiness = now >= ctx.timers.next_readiness_refresh
        changed = False  # True when the agent had lost an instance and it was registered again
        for inst in ctx.state.instances:
            ids = (inst.readiness_check_id, inst.liveness_check_id) if with_readiness else (inst.liveness_check_id,)
            for check_id in ids:
                check = ctx.state.pushed.get(check_id)
                if check is not None:
                    changed |= bool((yield from self._update_check(inst, check_id, check)))
        ctx.timers.next_refresh = now + ctx.config.check_ttl / 3
        if with_readiness:
            ctx.timers.next_readiness_refresh = now + ctx.config.check_ttl * READINESS_TTL_FACTOR / 3
        return changed

    def _update_check(self, inst: Instance, check_id: str, check: CheckState) -> Task:
        ctx = self._ctx
        try:
            yield from call(a.UpdateCheck(ctx.request_id(), None, check_id, check.status, check.output))
        except Failed as exc:
            # "CheckID ... does not have associated TTL" (500) or 404: the agent lost the
            # instance, e.g. it restarted without its data dir. Register it again.
            if exc.kind in (FailureKind.NO_TTL, FailureKind.NOT_FOUND):
                ctx.warning(f"agent lost check {check_id}: registering {inst.service_id} again")
                ctx.state.registered.discard(inst.service_id)
                return bool((yield from self._register_missing()))  # a change: confirmed again
            raise
        return False
