"""Blocking-query hygiene, as Consul's blocking-query docs ask of every client loop.

- The index sent is never below 1 once a first answer came back, and it is reset (to 0: a
  fresh, non-blocking read) when the servers' index goes backwards (a snapshot restore, a
  new leader that lags, another datacenter's servers behind the same address).
- Iterations keep a minimum interval on average: a loop may make a few reads back to back
  (a neighbour's change on the node wakes it just before its own arrives), then one per
  MIN_INTERVAL (a token bucket). An answer that does not advance the index (missing or zero
  `X-Consul-Index`, e.g. behind a proxy that strips it, or an index that went backwards)
  doubles the interval up to a cap, with no burst, so a broken blocking query cannot become a
  tight loop against the servers; an answer that advances it resets the interval.

Pure bookkeeping: the caller passes the clock's readings and does the sleeping.
"""

from __future__ import annotations

import random

# Between two queries of one loop whose index advanced, on average: a storm of changes costs
# each loop at most 20 reads a second.
MIN_INTERVAL = 0.05
# Reads a loop may make back to back before MIN_INTERVAL applies. A confirmation is two or
# three reads (the instance, then its checks; a wake for a neighbour's change on the node just
# before ours): spacing each by MIN_INTERVAL put 50-100 ms into a confirmation that takes 6 ms.
BURST = 3
# When answers stop advancing the index the interval doubles up to this: about one
# request a second, the fault-state budget of a sidecar.
STALLED_INTERVAL_CAP = 1.0


class BlockingIndex:
    def __init__(self, min_interval: float = MIN_INTERVAL, cap: float = STALLED_INTERVAL_CAP,
                 rng: random.Random | None = None, burst: int = BURST) -> None:
        self.index = 0
        self._min = min_interval
        self._cap = cap
        self._interval = min_interval
        self._started: float | None = None
        self._rng = rng or random.Random()
        self._burst = float(burst)
        self._tokens = float(burst)
        self._refilled_at: float | None = None

    def reset(self) -> None:
        """After an error: the next read is a fresh, non-blocking one (the caller backs off)."""
        self.index = 0

    def started(self, now: float) -> int:
        """Note that a query starts now; returns the index to send (0: a non-blocking read)."""
        self._started = now
        self._tokens = self._refill(now) - 1.0
        self._refilled_at = now
        return self.index

    def _refill(self, now: float) -> float:
        if self._refilled_at is None:
            return self._tokens
        return min(self._burst, self._tokens + max(0.0, now - self._refilled_at) / self._min)

    def returned(self, index: int) -> None:
        """Take the index an answer carried."""
        if index > self.index and index >= 1:
            self.index = index
            self._interval = self._min
            return
        # No progress: the header is missing or zero, the index went backwards, or the wait
        # ran out. Only a backwards index forgets the old one; a missing one keeps the loop
        # blocking (index >= 1) where it can.
        if 0 < index < self.index:
            self.index = 0
        else:
            self.index = max(self.index, 1)
        self._interval = min(self._interval * 2, self._cap)

    def delay(self, now: float) -> float:
        """Seconds to wait before the next query of this loop."""
        if self._started is None:
            return 0.0
        if self._interval > self._min:
            # Stalled: one read per (growing) interval, no burst; sidecars that stalled
            # together spread out.
            interval = self._interval * self._rng.uniform(0.75, 1.0)
            return max(0.0, self._started + interval - now)
        return max(0.0, (1.0 - self._refill(now)) * self._min)
