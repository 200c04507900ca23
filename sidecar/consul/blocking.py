"""Blocking-query hygiene, as Consul's blocking-query docs ask of every client loop.

- The index sent is never below 1 once a first answer came back, and it is reset (to 0: a
  fresh, non-blocking read) when the servers' index goes backwards (a snapshot restore, a
  new leader that lags, another datacenter's servers behind the same address).
- Iterations keep a minimum interval. An answer that does not advance the index (missing or
  zero `X-Consul-Index`, e.g. behind a proxy that strips it, or an index that went backwards)
  doubles the interval up to a cap, so a broken blocking query cannot become a tight loop
  against the servers; an answer that advances it resets the interval.

Pure bookkeeping: the caller passes the clock's readings and does the sleeping.
"""

from __future__ import annotations

import random

# Between two queries of one loop whose index advanced: short enough not to show in
# confirmation latency (a confirming read returns on a change, which takes longer than
# this), long enough that a storm of changes costs each loop at most 20 reads a second.
MIN_INTERVAL = 0.05
# When answers stop advancing the index the interval doubles up to this: about one
# request a second, the fault-state budget of a sidecar.
STALLED_INTERVAL_CAP = 1.0


class BlockingIndex:
    def __init__(self, min_interval: float = MIN_INTERVAL, cap: float = STALLED_INTERVAL_CAP,
                 rng: random.Random | None = None) -> None:
        self.index = 0
        self._min = min_interval
        self._cap = cap
        self._interval = min_interval
        self._started: float | None = None
        self._rng = rng or random.Random()

    def reset(self) -> None:
        """After an error: the next read is a fresh, non-blocking one (the caller backs off)."""
        self.index = 0

    def started(self, now: float) -> int:
        """Note that a query starts now; returns the index to send (0: a non-blocking read)."""
        self._started = now
        return self.index

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
        interval = self._interval
        if interval > self._min:
            interval *= self._rng.uniform(0.75, 1.0)  # sidecars that stalled together spread out
        return max(0.0, self._started + interval - now)
