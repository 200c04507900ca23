"""Termination outside the sync loop: the core's drain (sidecar.core.drain) run synchronously
against the agent. The sync loop runs the same task event by event; this is for callers that
have no loop (the scale benchmark, tests of the drain's deadline)."""

from __future__ import annotations

import random
from collections.abc import Callable

from sidecar.consul.api import ConsulAgent
from sidecar.consul.calls import Caller, run_task
from sidecar.consul.catalog_view import CatalogReads
from sidecar.core.drain import Drain, DrainResult
from sidecar.core.state import TaskContext
from sidecar.registration import Instance

__all__ = ["DrainResult", "Drainer"]


class Drainer:
    def __init__(self, agent: ConsulAgent, clock: Callable[[], float], deadline: float,
                 reads: CatalogReads | None = None) -> None:
        self._caller = Caller(agent, reads, clock)
        self._clock = clock
        self._deadline = deadline

    def run(self, instances: tuple[Instance, ...]) -> DrainResult:
        ctx = TaskContext(random.random)
        result = run_task(Drain(ctx, self._deadline).run(instances), ctx, self._caller, self._clock)
        assert isinstance(result, DrainResult)
        return result


