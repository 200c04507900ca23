"""Termination: checks critical and confirmed in the catalog (traffic drains), then
deregister and confirm removal, all before a deadline inside the pod's grace period.

If the agent cannot be reached in time, stop trying before the deadline: the liveness TTL and
DeregisterCriticalServiceAfter clean up without us.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import tenacity

from sidecar.consul_api import ConsulAgent
from sidecar.errors import ConsulError, ConsulNotFound
from sidecar.registration import CRITICAL, TERMINATING, Instance, compare_with_catalog

log = logging.getLogger("katalog.drain")


class _NotYet(Exception):
    """The catalog does not show the wanted state yet."""


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, _NotYet) or (isinstance(exc, ConsulError) and exc.retryable)


class Drainer:
    def __init__(self, agent: ConsulAgent, clock: Callable[[], float], deadline: float) -> None:
        self._agent = agent
        self._clock = clock
        self._deadline = deadline

    def _remaining(self) -> float:
        return self._deadline - self._clock()

    def _until(self, deadline: float, step: Callable[[], Any], what: str) -> bool:
        """Run `step` until it succeeds, retrying transient faults with jittered backoff."""
        budget = deadline - self._clock()
        if budget <= 0:
            log.error("%s: no time left", what)
            return False
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(budget),
            wait=tenacity.wait_random_exponential(multiplier=0.05, max=1.0),
            retry=tenacity.retry_if_exception(_retryable),
            reraise=True,
        )
        try:
            retrying(step)
        except (ConsulError, _NotYet) as exc:
            log.error("%s: %s", what, exc or "not confirmed before the deadline")
            return False
        return True

    def _wait_for(self, inst: Instance, removed: bool) -> Callable[[], None]:
        state = {"index": 0}

        def step() -> None:
            wait = max(0.0, min(5.0, self._remaining() - 0.5))
            index, entries = self._agent.health_of_instance(inst.name, inst.service_id, state["index"], wait)
            state["index"] = index
            if removed:
                if entries:
                    raise _NotYet(f"catalog still lists {inst.service_id}")
                return
            checks = {inst.readiness_check_id: CRITICAL, inst.liveness_check_id: CRITICAL}
            mismatch = compare_with_catalog(inst, entries, checks)
            if mismatch is not None and entries:
                raise _NotYet(mismatch)

        return step

    @staticmethod
    def _step(call: Callable[..., None], *args: str) -> Callable[[], None]:
        """A write whose 404 means the agent has nothing left to drain: that counts as done."""

        def step() -> None:
            try:
                call(*args)
            except ConsulNotFound:
                pass

        return step

    def run(self, instances: tuple[Instance, ...]) -> bool:
        start = self._clock()
        # Keep a third of the budget for deregistration: removal matters more than the order.
        critical_deadline = start + (self._deadline - start) * 2 / 3
        ok = True
        for inst in instances:
            for check_id in (inst.readiness_check_id, inst.liveness_check_id):
                ok &= self._until(critical_deadline, self._step(self._agent.update_ttl_check, check_id, CRITICAL, TERMINATING),
                                  f"{inst.service_id}: turning {check_id} critical")
        for inst in instances:
            if self._until(critical_deadline, self._wait_for(inst, removed=False),
                           f"{inst.service_id}: confirming critical in the catalog"):
                log.info("%s critical in the catalog: traffic drains", inst.service_id)
            else:
                ok = False
        for inst in instances:
            ok &= self._until(self._deadline, self._step(self._agent.deregister_service, inst.service_id),
                              f"{inst.service_id}: deregistering")
        for inst in instances:
            if self._until(self._deadline, self._wait_for(inst, removed=True),
                           f"{inst.service_id}: confirming removal from the catalog"):
                log.info("%s removed from the catalog", inst.service_id)
            else:
                ok = False
        return ok
