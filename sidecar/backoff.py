"""Capped exponential backoff with "equal jitter", so a persistent fault never becomes a hot loop.

Not full jitter (a delay anywhere in [0, ceiling]): half of each delay is fixed, so no draw of
the random number can make two retries follow each other at once, and the other half spreads
pods that failed together.
"""

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
