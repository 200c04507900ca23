"""The core: `handle(event, now) -> list[Action]`. Pure (sidecar.core).

Applies each event to the state, then runs at most one task at a time (a registration round,
the adoption refresh, the drain): a task yields one agent call, the core returns it as an
action and resumes the task when the call's answer comes back as an event. The phase is
derived from the state after every event and checked against sidecar.core.phases.TRANSITIONS.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from sidecar import observers as so
from sidecar.config import Config
from sidecar.core import actions as a
from sidecar.core import events as e
from sidecar.core import failopen, inputs
from sidecar.core.drain import DrainResult
from sidecar.core.phases import TRANSITIONS, ImpossibleTransition, Phase, derive
from sidecar.core.report import Reporter, gate_state, verdict
from sidecar.core.stall import StallWatch
from sidecar.core.state import Answer, Context, Sleep, Task
from sidecar.core.sync import Sync
from sidecar.core.terminate import EXIT_DRAIN_INCOMPLETE, EXIT_OK, Drained, drain_deadline, drain_task, report_drain

__all__ = ["EXIT_DRAIN_INCOMPLETE", "EXIT_OK", "Core"]


class Core:
    def __init__(self, config: Config, *, agent_address: str, rng: Callable[[], float] = random.random,
                 strict: bool = False) -> None:
        """`strict`: an impossible transition raises (tests, the simulator); else it is logged."""
        self.ctx = Context(config, agent_address, rng)
        self._reporter = Reporter(self.ctx)
        self._sync = Sync(self.ctx, self._reporter, False)
        self._strict = strict
        self.phase = Phase.STARTING
        self._task: Task | None = None
        self._waiting: int | None = None  # the request id of the call in flight
        self._waiting_register: str | None = None  # ... and the instance it registers
        # A registration still in flight when the drain began: the drain's deregistration of
        # that instance waits for its answer, so the registration cannot land after it.
        self._stale_register: int | None = None
        self._deferred: a.Call | None = None
        self._drain_then_exit = False
        self._drain_since: float | None = None
        self._drained: int | None = None  # the exit code, once drained before SIGTERM
        self._exited = False
        self._stall = StallWatch()

    @property
    def config(self) -> Config:
        return self.ctx.config

    def gate(self) -> a.GateVerdict:
        return verdict(self.ctx, *gate_state(self.ctx))

    # --- the one entry point ---------------------------------------------------------------
    def handle(self, event: e.Event, now: float) -> list[a.Action | a.Call]:
        ctx = self.ctx
        ctx.now, ctx.out = now, []
        if self._exited:
            return []
        self._stall.check(ctx, {cid.rpartition(":")[0] for cid in self._sync.adoption.found or {}})
        self._dispatch(event)
        if not self._exited and self._drained is None:
            failopen.step(ctx)
        if not self._exited and ctx.now >= ctx.timers.next_heartbeat:
            # Also between two calls of a long round or drain (a slow agent): the gate must not
            # take a sidecar waiting on its agent for a hung one.
            self._reporter.maybe_heartbeat()
        self._derive_phase()
        self._stall.expect(ctx, self._waiting is not None or self._stale_register is not None, self.next_deadline())
        return ctx.out

    def next_deadline(self) -> float:
        """When the core has something to do next, in any state (then send Tick)."""
        t = self.ctx.timers
        deadlines = [t.next_heartbeat]
        if self._drained is not None or self._exited:
            return t.next_heartbeat
        if t.resume_at is not None:
            deadlines.append(t.resume_at)
        s = self.ctx.state
        fail_open_at = failopen.deadline(self.ctx)
        if fail_open_at is not None:
            deadlines.append(fail_open_at)
        if self._task is not None or s.draining or s.superseded:
            # Retries, refreshes and re-checks wait for the task; none while draining; none while
            # another pod holds our ID (no round runs then, so their deadlines would never move:
            # a Tick spin, simulator seed 1025).
            return min(deadlines)
        if t.retry_at is not None:
            deadlines.append(t.retry_at)
        else:
            if s.observation is not None and s.registered:
                deadlines.append(t.next_refresh)
            if s.observation is None and self._sync.adoption.active:
                deadlines.append(t.next_refresh)  # keeping found statuses alive
            if self._sync.reconfirms():
                deadlines.append(t.next_reconfirm)
        return min(deadlines)

    def _dispatch(self, event: e.Event) -> None:
        ctx, s = self.ctx, self.ctx.state
        if isinstance(event, e.Start):
            self._sync = Sync(ctx, self._reporter, event.previous_ever_confirmed)
            self._reporter.write_status()
            return
        if isinstance(event, e.Terminate):
            ctx.emit(a.StopSources())
            if self._drained is not None:
                self._exit(self._drained)
                return
            self._drain_then_exit = True
            if not s.draining:
                self._start_drain(event.reason, since=event.at)
            # else: a drain (deletionTimestamp) is under way, within its own deadline; exit after it
            return
        if isinstance(event, (e.CallSucceeded, e.CallFailed)):
            self._answered(event)
        elif self._drained is not None or s.draining:
            if isinstance(event, e.AgentSeen) and self._drained is None:
                # Only who holds our IDs matters now: the drain leaves another pod's instance alone.
                self._sync.faults.other_pod(event.service_id, event.present, event.pod_uid)
            if isinstance(event, e.Tick):
                self._reporter.maybe_heartbeat()
                if self._task is not None and ctx.timers.resume_at is not None and ctx.now >= ctx.timers.resume_at:
                    ctx.timers.resume_at = None
                    self._resume(None)
            return
        else:
            inputs.apply(ctx, self._sync, event)
            if s.draining:
                self._start_drain(s.drain_reason, since=None)
                return
        if s.superseded:
            self._reporter.maybe_heartbeat(force=True)  # no write of ours while another pod holds our ID
        elif self._task is None and not s.draining and self._drained is None:
            self._run(self._sync.round())

    # --- tasks ---------------------------------------------------------------------------------
    def _run(self, task: Task | None) -> None:
        if task is None:
            return
        self._task = task
        self._resume(None, first=True)

    def _resume(self, answer: Answer, first: bool = False) -> None:
        assert self._task is not None
        try:
            step = next(self._task) if first else self._task.send(answer)
        except StopIteration as done:
            self._task = None
            self._finished(done.value)
            return
        if isinstance(step, Sleep):
            self.ctx.timers.resume_at = step.until
        else:
            if isinstance(step, a.Deregister) and self._stale_register is not None:
                self._deferred = step
                return
            self._waiting = step.request_id
            self._waiting_register = step.service_id if isinstance(step, a.Register) else None
            self.ctx.emit(step)

    def _answered(self, answer: e.CallSucceeded | e.CallFailed) -> None:
        if answer.request_id == self._stale_register:
            self._stale_register = None
            if self._deferred is not None:
                step, self._deferred = self._deferred, None
                self._waiting = step.request_id
                self.ctx.emit(step)
            return
        if self._task is None or answer.request_id != self._waiting:
            return  # an answer nobody waits for any more
        self._waiting = None
        self._resume(answer)

    def _finished(self, value: object) -> None:
        if isinstance(value, Drained):
            self._drain_done(value.result)

    # --- termination ---------------------------------------------------------------------------
    def _start_drain(self, reason: str, since: float | None) -> None:
        """Drop what was under way; a call still in flight is left to finish on its own (its
        answer is ignored): the drain does not wait for it, its budget runs from the signal."""
        self._drain_since = since
        if self._task is not None:
            self._task.close()
            self._task = None
            self.ctx.timers.resume_at = None
            if self._waiting is not None and self._waiting_register is not None:
                self._stale_register = self._waiting
                self.ctx.state.registered.add(self._waiting_register)  # it may land: drain it
            self._waiting = None
        self._begin_drain(reason, since)

    def _begin_drain(self, reason: str, since: float | None) -> None:
        ctx, s = self.ctx, self.ctx.state
        deadline = drain_deadline(ctx, since)
        if not s.draining or (since is not None and not self._announced):
            s.draining, s.drain_reason = True, reason
            ctx.info(f"{reason}: draining {len(s.instances)} instance(s) within {deadline - ctx.now:.1f}s")
        self._announced = True
        self._derive_phase()
        ctx.notify(so.DRAINING, f"{s.drain_reason}: instances critical in Consul, then deregistered")
        ctx.emit(a.StopConfirming())
        # The agent watches go on until the drain ends: a same-node successor that takes our
        # service IDs over meanwhile (its kubelet sent our SIGTERM as it started it) must stop
        # the drain's writes to them (simulator seed 133: foreign-write).
        self._reporter.write_status()
        found = self._sync.adoption.found or {}
        self._run(drain_task(ctx, deadline, frozenset(cid.rpartition(":")[0] for cid in found)))

    _announced = False

    def _drain_done(self, result: DrainResult | None) -> None:
        for sid in list(self.ctx.watched):
            self.ctx.emit(a.UnwatchAgent(sid))
        self.ctx.watched.clear()
        code = report_drain(self.ctx, self._reporter, result)
        if self._drain_then_exit:
            self._exit(code)
        else:
            self._drained = code

    def _exit(self, code: int) -> None:
        self._exited = True
        self._derive_phase()
        self.ctx.emit(a.Exit(code))

    # --- the phase -------------------------------------------------------------------------------
    def _derive_phase(self) -> None:
        new = derive(self.ctx.state, exited=self._exited, drained=self._drained is not None,
                     adopting=bool(self._sync.adoption.found), writes_pending=self._sync.writes_pending)
        old = self.phase
        if new is old:
            return
        why = TRANSITIONS[old].get(new)
        if why is None:
            message = f"internal: {old.value} -> {new.value} is not an allowed transition"
            if self._strict:
                raise ImpossibleTransition(message)
            self.ctx.log(logging.ERROR, message)
            why = "not in the table"
        self.phase = new
        self.ctx.emit(a.PhaseChanged(old.value, new.value, why))
