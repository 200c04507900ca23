"""Termination: checks critical and confirmed in the catalog (traffic drains), then
deregister and confirm removal, all before a deadline inside the pod's grace period.

The deadline is kept by construction: every attempt's timeout is clipped to the time its step
has left, and a retry never starts when it could not finish in time (tenacity's
`stop_before_delay`). Deregistration is always attempted, on every instance, however long the
critical phase took: it matters more than the order. Each instance gets its own share of a
phase's time, so one that hangs does not leave the next without an attempt.

If the agent cannot be reached in time, stop trying before the deadline: the liveness TTL and
DeregisterCriticalServiceAfter clean up without us. What is left, and to whom, is reported
per instance (`DrainResult`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tenacity

from sidecar.catalog_view import CatalogReads, InstanceWatch, foreign_pod_uid
from sidecar.consul_api import ConsulAgent
from sidecar.errors import ConsulError, ConsulNotFound
from sidecar.registration import CRITICAL, TERMINATING, Instance

log = logging.getLogger("katalog.drain")

# Below this an HTTP call cannot complete even on loopback; a last attempt still gets it, so
# that deregistration is tried however little time is left (the overrun is at most this).
MIN_ATTEMPT_TIMEOUT = 0.1
# The longest blocking read of the catalog while draining, and the margin the read keeps for
# its answer to arrive before the step's deadline.
MAX_DRAIN_WAIT = 5.0
WAIT_MARGIN = 0.5


class _NotYet(Exception):
    """The catalog does not show the wanted state yet."""


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, _NotYet) or (isinstance(exc, ConsulError) and exc.retryable)


@dataclass
class DrainResult:
    """Service IDs by how far their drain got."""

    removed: list[str] = field(default_factory=list)  # deregistered, removal confirmed by the catalog
    deregistered: list[str] = field(default_factory=list)  # the agent removed it; the catalog did not confirm
    left: list[str] = field(default_factory=list)  # the agent never accepted the deregistration

    @property
    def complete(self) -> bool:
        return not self.deregistered and not self.left


class Drainer:
    def __init__(self, agent: ConsulAgent, clock: Callable[[], float], deadline: float,
                 reads: CatalogReads | None = None) -> None:
        self._agent = agent
        self._clock = clock
        self._deadline = deadline
        self._ownership = _Ownership(agent, reads if reads is not None else agent)

    def _until(self, deadline: float, step: Callable[[float], Any], what: str) -> bool:
        """Run `step(timeout)` until it succeeds or `deadline` comes, retrying transient faults.

        At least one attempt is made, with a timeout clipped to the time left; a retry is only
        started if its backoff ends before the deadline.
        """
        budget = max(deadline - self._clock(), MIN_ATTEMPT_TIMEOUT)

        def attempt() -> Any:
            return step(max(deadline - self._clock(), MIN_ATTEMPT_TIMEOUT))

        retrying = tenacity.Retrying(
            stop=tenacity.stop_before_delay(budget),
            wait=tenacity.wait_random_exponential(multiplier=0.05, max=1.0),
            retry=tenacity.retry_if_exception(_retryable),
            reraise=True,
        )
        try:
            retrying(attempt)
        except (ConsulError, _NotYet) as exc:
            log.error("%s: %s", what, exc or "not confirmed before the deadline")
            return False
        return True

    def _each(self, instances: tuple[Instance, ...], deadline: float,
              run: Callable[[Instance, float], bool]) -> dict[str, bool]:
        """`run(inst, its_deadline)` for every instance; each gets an equal share of the time left."""
        done: dict[str, bool] = {}
        for i, inst in enumerate(instances):
            share = (deadline - self._clock()) / (len(instances) - i)
            done[inst.service_id] = run(inst, self._clock() + share)
        return done

    def _wait_for(self, inst: Instance, removed: bool, deadline: float) -> Callable[[float], None]:
        # This pod's instance on this agent's node only (sidecar.catalog_view): another node's
        # entry with the same ID, or a same-node successor's, is not ours to wait for.
        watch = self._ownership.watch(inst)
        critical = {inst.readiness_check_id: CRITICAL, inst.liveness_check_id: CRITICAL}

        def step(timeout: float) -> None:
            time.sleep(max(0.0, min(watch.delay(), deadline - self._clock())))  # blocking-query hygiene
            # The read's wait comes from this step's own deadline, and its timeout is clipped to it.
            wait = max(0.0, min(MAX_DRAIN_WAIT, deadline - self._clock() - WAIT_MARGIN))
            mismatch = watch.removed(wait, timeout) if removed else watch.drained(critical, wait, timeout)
            if mismatch is not None:
                raise _NotYet(mismatch)

        return step

    @staticmethod
    def _write(call: Callable[..., None], *args: str) -> Callable[[float], None]:
        """A write whose 404 means the agent has nothing left to drain: that counts as done."""

        def step(timeout: float) -> None:
            try:
                call(*args, timeout=timeout)
            except ConsulNotFound:
                pass

        return step

    def run(self, instances: tuple[Instance, ...]) -> DrainResult:
        start = self._clock()
        # Keep a third of the budget for deregistration: removal matters more than the order.
        critical_deadline = start + (self._deadline - start) * 2 / 3

        def critical(inst: Instance, deadline: float) -> bool:
            # Both checks in one share: the readiness check first, it is the one clients filter on.
            ok = True
            for n, check_id in enumerate((inst.readiness_check_id, inst.liveness_check_id)):
                until = self._clock() + (deadline - self._clock()) / (2 - n)
                write = self._write(self._agent.update_ttl_check, check_id, CRITICAL, TERMINATING)
                ok &= self._until(until, self._ownership.guard(inst, write), f"{inst.service_id}: turning {check_id} critical")
            return ok

        def confirm_critical(inst: Instance, deadline: float) -> bool:
            if self._until(deadline, self._wait_for(inst, False, deadline),
                           f"{inst.service_id}: confirming critical in the catalog"):
                log.info("%s critical in the catalog: traffic drains", inst.service_id)
                return True
            return False

        def deregister(inst: Instance, deadline: float) -> bool:
            return self._until(deadline, self._ownership.guard(inst, self._write(self._agent.deregister_service,
                                                                                  inst.service_id)),
                               f"{inst.service_id}: deregistering")

        def confirm_removed(inst: Instance, deadline: float) -> bool:
            if self._until(deadline, self._wait_for(inst, True, deadline),
                           f"{inst.service_id}: confirming removal from the catalog"):
                log.info("%s removed from the catalog", inst.service_id)
                return True
            return False

        # Pushing critical is one quick agent write per check; confirming it gets the rest of
        # the critical phase.
        push_deadline = self._clock() + (critical_deadline - self._clock()) / 2
        self._each(instances, push_deadline, critical)
        self._each(instances, critical_deadline, confirm_critical)
        # Removal: half of what is left to deregister (agent writes), the rest to confirm.
        deregister_deadline = self._clock() + (self._deadline - self._clock()) / 2
        deregistered = self._each(instances, deregister_deadline, deregister)
        to_confirm = tuple(i for i in instances if deregistered[i.service_id])
        confirmed = self._each(to_confirm, self._deadline, confirm_removed)
        result = DrainResult()
        for inst in instances:
            sid = inst.service_id
            if confirmed.get(sid):
                result.removed.append(sid)
            elif deregistered[sid]:
                result.deregistered.append(sid)
            else:
                result.left.append(sid)
        return result


class _Ownership:
    """What counts during a drain: this pod's instance on this agent's node, nothing else.

    Writes are skipped when the agent's instance with our ID now belongs to another pod (a
    same-node successor of a force-deleted pod): its checks are not ours to turn critical and
    it is not ours to deregister. Catalog waits read this node only, through one watch per
    instance: the node learned while confirming critical (the agent can no longer say once
    the instance is deregistered) still scopes the wait for removal.
    """

    def __init__(self, agent: ConsulAgent, reads: CatalogReads) -> None:
        self._agent = agent
        self._reads = reads
        self._watches: dict[str, InstanceWatch] = {}
        self._foreign: set[str] = set()

    def watch(self, inst: Instance) -> InstanceWatch:
        if inst.service_id not in self._watches:
            self._watches[inst.service_id] = InstanceWatch(self._reads, inst)
        return self._watches[inst.service_id]

    def guard(self, inst: Instance, write: Callable[[float], None]) -> Callable[[float], None]:
        def step(timeout: float) -> None:
            # Whose instance is it? Asked with half the attempt's time, so that the write still
            # gets sent when the agent hangs; when the agent cannot say, write as before.
            started = time.monotonic()
            try:
                other = foreign_pod_uid(self._agent, inst, timeout / 2)
            except ConsulError:
                other = None
            if other is not None:
                if inst.service_id not in self._foreign:
                    self._foreign.add(inst.service_id)
                    log.warning("%s now belongs to pod UID %s on this agent, not to this pod (%s): "
                                "leaving it alone", inst.service_id, other, inst.pod_uid)
                return
            write(max(timeout - (time.monotonic() - started), MIN_ATTEMPT_TIMEOUT))

        return step
