"""Capped exponential backoff with full jitter, so a persistent fault never becomes a hot loop."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    def __init__(self, initial: float = 0.2, cap: float = 10.0,
                 rng: Callable[[], float] = random.random) -> None:
        self._initial = initial
        self._cap = cap
        self._rng = rng
        self._attempt = 0

    def next_delay(self) -> float:
        """Half fixed, half random: bounded below so retries never spin, spread so pods do not sync up."""
        ceiling = min(self._cap, self._initial * (2 ** self._attempt))
        self._attempt += 1
        return float(ceiling / 2 + self._rng() * ceiling / 2)

    def reset(self) -> None:
        self._attempt = 0
