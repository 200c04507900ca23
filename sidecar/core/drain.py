"""Termination as a task: checks critical and confirmed in the catalog (traffic drains), then
deregister and confirm removal, all before a deadline inside the pod's grace period. Pure.

Every attempt's timeout is clipped to the time its step has left, and a retry never starts
when its backoff would end past that (tenacity's `stop_before_delay`, as before). Writes are
skipped for an instance that now carries another pod's UID on this agent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field

from sidecar.core import actions as a
from sidecar.core.events import AgentInstance, FailureKind
from sidecar.core.state import Answer, Failed, Sleep, Task, TaskContext, call
from sidecar.registration import CRITICAL, TERMINATING, Instance

LOG = "katalog.drain"
MIN_ATTEMPT_TIMEOUT = 0.1
RESERVE_FACTOR = 1.5  # a deregistration's reserve: this many times the slowest call seen
MAX_DRAIN_WAIT = 5.0
WAIT_MARGIN = 0.5
RETRYABLE = (FailureKind.UNAVAILABLE, FailureKind.SERVER_ERROR, FailureKind.NO_TTL, FailureKind.OTHER)

Step = Callable[[float], Generator[a.Call | Sleep, Answer, object]]


class NotYet(Exception):
    """The catalog does not show the wanted state yet."""


@dataclass
class DrainResult:
    """Service IDs by how far their drain got."""

    removed: list[str] = field(default_factory=list)  # deregistered, removal confirmed by the catalog
    deregistered: list[str] = field(default_factory=list)  # the agent removed it; the catalog did not confirm
    left: list[str] = field(default_factory=list)  # the agent never accepted the deregistration
    # Found carrying another pod's UID on this agent (a same-node successor took it over): left alone.
    foreign: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.deregistered and not self.left


class Drain:
    def __init__(self, ctx: TaskContext, deadline: float, verified: frozenset[str] = frozenset(),
                 owner: Callable[[str], str | None] = lambda _sid: None) -> None:
        """`verified`: service IDs the caller knows to be this pod's on the agent right now (no
        ownership read before each write for those; the agent may be slow). `owner(sid)`: the
        other pod's UID the caller has since seen on `sid` (its agent watch), or None; checked
        before every write."""
        self._ctx = ctx
        self._deadline = deadline
        self._verified = verified
        self._owner = owner
        self._foreign: set[str] = set()
        self._slowest = 0.0

    def _until(self, deadline: float, step: Step, what: str) -> Task:
        """`step(timeout)` until it succeeds or `deadline` comes, retrying transient faults."""
        ctx = self._ctx
        start = ctx.now
        budget = max(deadline - start, MIN_ATTEMPT_TIMEOUT)
        attempt = 0
        while True:
            attempt += 1
            try:
                yield from step(max(deadline - ctx.now, MIN_ATTEMPT_TIMEOUT))
                return True
            except (Failed, NotYet) as exc:
                retryable = isinstance(exc, NotYet) or exc.kind in RETRYABLE
                pause = ctx.rng() * min(1.0, 0.05 * 2 ** attempt)  # random exponential, as tenacity's
                if not retryable or (ctx.now - start) + pause >= budget:
                    ctx.log(logging.ERROR, f"{what}: {exc or 'not confirmed before the deadline'}", LOG)
                    return False
                if pause > 0:
                    yield Sleep(ctx.now + pause)

    def _each(self, instances: tuple[Instance, ...], deadline: float,
              run: Callable[[Instance, float], Task]) -> Generator[a.Call | Sleep, Answer, dict[str, bool]]:
        """`run(inst, its_deadline)` for every instance; each gets an equal share of the time left."""
        done: dict[str, bool] = {}
        for i, inst in enumerate(instances):
            share = (deadline - self._ctx.now) / (len(instances) - i)
            done[inst.service_id] = bool((yield from run(inst, self._ctx.now + share)))
        return done

    def _wait_for(self, inst: Instance, removed: bool, deadline: float) -> Step:
        critical: Mapping[str, str] = {inst.readiness_check_id: CRITICAL, inst.liveness_check_id: CRITICAL}

        def step(timeout: float) -> Task:
            ctx = self._ctx
            wait = max(0.0, min(MAX_DRAIN_WAIT, deadline - ctx.now - WAIT_MARGIN))
            mismatch = yield from call(a.ReadCatalog(ctx.request_id(), timeout, inst, None if removed else critical, wait))
            if mismatch is not None:
                raise NotYet(str(mismatch))
            return None

        return step

    def _guarded(self, inst: Instance, make: Callable[[int, float], a.Call]) -> Step:
        """A write, skipped when the agent's instance with our ID now belongs to another pod;
        its 404 means the agent has nothing left to drain: that counts as done."""

        def step(timeout: float) -> Task:
            ctx = self._ctx
            started = ctx.now
            other = self._owner(inst.service_id)
            if other is None and inst.service_id not in self._verified:
                other = yield from self._read_owner(inst, timeout / 2)
            if other is not None:
                if inst.service_id not in self._foreign:
                    self._foreign.add(inst.service_id)
                    ctx.log(logging.WARNING, f"{inst.service_id} now belongs to pod UID {other} on this agent, not "
                                             f"to this pod ({inst.pod_uid}): leaving it alone", LOG)
                return None
            yield from self._timed(make(ctx.request_id(), max(timeout - (ctx.now - started), MIN_ATTEMPT_TIMEOUT)))
            return None

        return step

    def _read_owner(self, inst: Instance, timeout: float) -> Generator[a.Call | Sleep, Answer, str | None]:
        """The other pod's UID on the agent's instance with our ID, or None (ours, absent, or the
        agent cannot say: then the write goes ahead as before)."""
        try:
            seen = yield from call(a.ReadAgentInstance(self._ctx.request_id(), timeout, inst.service_id, False))
        except Failed:
            return None
        if isinstance(seen, AgentInstance) and seen.present and seen.pod_uid and inst.pod_uid \
                and seen.pod_uid != inst.pod_uid:
            return seen.pod_uid
        return None

    def _timed(self, request: a.Call) -> Task:
        """A write; its 404 means the agent has nothing left to drain: that counts as done."""
        started = self._ctx.now
        try:
            yield from call(request)
        except Failed as exc:
            if exc.kind is not FailureKind.NOT_FOUND:
                raise
        finally:
            self._slowest = max(self._slowest, self._ctx.now - started)
        return None

    def run(self, instances: tuple[Instance, ...]) -> Generator[a.Call | Sleep, Answer, DrainResult]:
        """In priority order, deregistration never starved: every step before it keeps, for
        the deregistrations still to do, a reserve of what agent calls have cost so far."""
        ctx = self._ctx
        n = len(instances)

        def critical(inst: Instance, check_id: str) -> Task:
            until = self._deadline - self._reserve(n)
            # A write may take longer than the slowest so far (a slow agent's latency varies): one
            # that would end in the deregistrations' reserve even at RESERVE_FACTOR x is not begun.
            if ctx.now + self._cost() * RESERVE_FACTOR > until:
                ctx.log(logging.WARNING, f"{inst.service_id}: no time left to turn {check_id} critical "
                                         "(the agent is slow): deregistering first", LOG)
                return False
            write = self._guarded(inst, _critical_write(check_id))
            return (yield from self._until(until, write, f"{inst.service_id}: turning {check_id} critical"))

        def confirm_critical(inst: Instance, deadline: float) -> Task:
            if deadline - ctx.now < self._cost():
                return False  # no time for a read: deregistration first
            if (yield from self._until(deadline, self._wait_for(inst, False, deadline),
                                       f"{inst.service_id}: confirming critical in the catalog")):
                ctx.log(logging.INFO, f"{inst.service_id} critical in the catalog: traffic drains", LOG)
                return True
            return False

        def confirm_removed(inst: Instance, deadline: float) -> Task:
            if (yield from self._until(deadline, self._wait_for(inst, True, deadline),
                                       f"{inst.service_id}: confirming removal from the catalog")):
                ctx.log(logging.INFO, f"{inst.service_id} removed from the catalog", LOG)
                return True
            return False

        # The readiness checks first (clients filter on them), then the liveness checks.
        pushed = {inst.service_id: True for inst in instances}
        for n_check in (0, 1):
            for inst in instances:
                check_id = (inst.readiness_check_id, inst.liveness_check_id)[n_check]
                pushed[inst.service_id] &= bool((yield from critical(inst, check_id)))
        # Confirming critical gets what is left before the deregistrations' reserve.
        confirm_until = self._deadline - self._reserve(n)
        yield from self._each(tuple(i for i in instances if pushed[i.service_id] and i.service_id not in self._foreign),
                              confirm_until, confirm_critical)
        deregistered: dict[str, bool] = {}
        for j, inst in enumerate(instances):
            if inst.service_id in self._foreign:
                deregistered[inst.service_id] = False  # another pod's now: not ours to deregister
                continue
            # Its reserve for those after it, but at least an equal share of the time left: the
            # slowest call seen is a guess, and a deregistration cut short is worth no more than
            # the next one (simulator seed 215: 3.4 s for a 3.6 s write, 5.3 s kept for the next).
            rest = sum(1 for later in instances[j + 1:] if later.service_id not in self._foreign)
            until = max(self._deadline - self._reserve(rest), ctx.now + (self._deadline - ctx.now) / (rest + 1))
            write = self._guarded(inst, _deregister(inst.service_id))
            deregistered[inst.service_id] = bool((yield from self._until(until, write, f"{inst.service_id}: deregistering")))
        to_confirm = tuple(i for i in instances if deregistered[i.service_id] and i.service_id not in self._foreign)
        confirmed = yield from self._each(to_confirm, self._deadline, confirm_removed)
        result = DrainResult()
        for inst in instances:
            sid = inst.service_id
            if sid in self._foreign:
                result.foreign.append(sid)
            elif confirmed.get(sid):
                result.removed.append(sid)
            elif deregistered[sid]:
                result.deregistered.append(sid)
            else:
                result.left.append(sid)
        return result

    def _cost(self) -> float:
        """What one agent call is expected to take: the slowest seen in this drain, or a floor."""
        return max(self._slowest, MIN_ATTEMPT_TIMEOUT)

    def _reserve(self, deregistrations: int) -> float:
        return deregistrations * self._cost() * RESERVE_FACTOR


def _critical_write(check_id: str) -> Callable[[int, float], a.Call]:
    def make(request_id: int, timeout: float) -> a.Call:
        return a.UpdateCheck(request_id, timeout, check_id, CRITICAL, TERMINATING)

    return make


def _deregister(service_id: str) -> Callable[[int, float], a.Call]:
    def make(request_id: int, timeout: float) -> a.Call:
        return a.Deregister(request_id, timeout, service_id)

    return make
