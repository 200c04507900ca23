"""A virtual clock with an ordered timer queue: the only notion of time in the simulation.

Timers firing at the same instant run in the order they were set, so a run is a pure function
of its seed. Nothing here sleeps.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class Timer:
    at: float
    seq: int
    fn: Callable[[], object] = field(compare=False)
    label: str = field(compare=False, default="")
    cancelled: bool = field(compare=False, default=False)

    def cancel(self) -> None:
        self.cancelled = True


WALL_EPOCH = 1_796_000_000.0  # the wall clock (the API server's, the node's) at virtual time 0: late 2026


class VirtualClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._queue: list[Timer] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        """Seconds since the epoch now: the API server and the node agree (no skew modelled)."""
        return WALL_EPOCH + self.now

    def at(self, when: float, fn: Callable[[], object], label: str = "") -> Timer:
        timer = Timer(max(when, self.now), next(self._seq), fn, label)
        heapq.heappush(self._queue, timer)
        return timer

    def after(self, delay: float, fn: Callable[[], object], label: str = "") -> Timer:
        return self.at(self.now + max(0.0, delay), fn, label)

    def next_time(self) -> float | None:
        while self._queue and self._queue[0].cancelled:
            heapq.heappop(self._queue)
        return self._queue[0].at if self._queue else None

    def step(self) -> Timer | None:
        """Advance to the next timer and run it; None when nothing is scheduled."""
        while self._queue:
            timer = heapq.heappop(self._queue)
            if timer.cancelled:
                continue
            self.now = timer.at
            timer.fn()
            return timer
        return None
