"""Thread supervision: the one place every worker thread runs, so none can die silently.

A worker is a function that runs until its stop event is set or its job is done (a normal
return ends it). An unexpected exception is logged through `logging`, so in the configured
text or JSON format with its traceback, and the worker is started again after a capped,
jittered backoff: a worker that fails at once on every start (a bug hit by the same input
again) costs one attempt per `cap` seconds, not a hot loop. A worker that ran a while before
failing starts its backoff afresh.

Each worker's liveness (running, restarting, finished) is reported by `statuses()`: the
status file and `katalog-sidecar status` list it, and `/healthz` answers 503 while a worker is
down between a failure and its restart.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidecar.backoff import Backoff

log = logging.getLogger("katalog.supervisor")

RESTART_INITIAL = 1.0  # seconds before the first restart
RESTART_CAP = 30.0  # a worker failing on every start is retried at most this often
STABLE_AFTER = 60.0  # a worker that ran this long before failing was healthy: back off from the start
CRASH_LOOP_AFTER = 3  # failures in a row, each before STABLE_AFTER: the worker is crash-looping

RUNNING = "running"
RESTARTING = "restarting"
FINISHED = "finished"

_MAX_ERROR = 200  # an exception's text goes to the status file and /healthz: keep it short


@dataclass(frozen=True)
class WorkerStatus:
    name: str
    state: str  # RUNNING, RESTARTING or FINISHED
    restarts: int
    last_error: str | None  # "ValueError: ...", of the last failure
    crash_looping: bool = False  # CRASH_LOOP_AFTER quick failures in a row, not running stably since

    def describe(self) -> str:
        text = f"{self.name}: {self.state}"
        if self.restarts:
            text += f", restarted {self.restarts} time{'s' if self.restarts != 1 else ''} (last failure: {self.last_error})"
        return text


@dataclass
class _Entry:
    name: str
    work: Callable[[], None]
    stop: threading.Event
    backoff: Backoff
    state: str = RUNNING
    restarts: int = 0
    last_error: str | None = None
    quick_failures: int = 0  # in a row, each after less than STABLE_AFTER of running
    started_at: float = 0.0


class Supervisor:
    """Starts workers in daemon threads, restarts them when they fail, reports their liveness."""

    def __init__(self, *, initial: float = RESTART_INITIAL, cap: float = RESTART_CAP,
                 stable_after: float = STABLE_AFTER, rng: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[threading.Event, float], object] = threading.Event.wait,
                 on_restart: Callable[[str], None] | None = None) -> None:
        """`sleep(stop, seconds)` waits out a restart backoff, returning early when `stop` is set."""
        self._initial = initial
        self._cap = cap
        self._stable_after = stable_after
        self._rng = rng
        self._clock = clock
        self._sleep = sleep
        self._on_restart = on_restart
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def start(self, name: str, work: Callable[[], None], stop: threading.Event) -> threading.Thread:
        """Run `work` in a thread named `name` until it returns or `stop` is set.

        `stop` also cuts a restart backoff short. A second worker of the same name replaces the
        first one in the reports.
        """
        entry = _Entry(name, work, stop, Backoff(self._initial, self._cap, self._rng))
        with self._lock:
            self._entries[name] = entry
        thread = threading.Thread(target=self._run, args=(entry,), name=name, daemon=True)
        thread.start()
        return thread

    def statuses(self) -> list[WorkerStatus]:
        now = self._clock()
        with self._lock:
            return [WorkerStatus(e.name, e.state, e.restarts, e.last_error, self._crash_looping(e, now))
                    for e in self._entries.values()]

    def _crash_looping(self, entry: _Entry, now: float) -> bool:
        if entry.quick_failures < CRASH_LOOP_AFTER:
            return False
        return not (entry.state == RUNNING and now - entry.started_at >= self._stable_after)

    def down(self) -> list[WorkerStatus]:
        """Workers that failed and wait for their restart."""
        return [s for s in self.statuses() if s.state == RESTARTING]

    def report(self) -> dict[str, Any]:
        """The `workers` field of the status file."""
        return {"workers": [{"name": s.name, "state": s.state, "restarts": s.restarts, "last_error": s.last_error,
                             "crash_looping": s.crash_looping} for s in self.statuses()]}

    def _run(self, entry: _Entry) -> None:
        while True:
            began = self._clock()
            with self._lock:
                entry.started_at = began
            try:
                entry.work()
            except Exception as exc:  # noqa: BLE001 - the point: no exception ends a worker unseen
                delay = self._failed(entry, exc, self._clock() - began)
                self._sleep(entry.stop, delay)
                if not entry.stop.is_set():
                    with self._lock:
                        entry.state = RUNNING
                    continue
            break
        with self._lock:
            entry.state = FINISHED

    def _failed(self, entry: _Entry, exc: Exception, ran_for: float) -> float:
        """Record and log the failure; return how long to wait before the restart."""
        error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:_MAX_ERROR]
        if ran_for >= self._stable_after:
            entry.backoff.reset()
        delay = entry.backoff.next_delay()
        with self._lock:
            entry.quick_failures = 0 if ran_for >= self._stable_after else entry.quick_failures + 1
            entry.restarts += 1
            entry.last_error = error
            entry.state = RESTARTING
        if self._on_restart is not None and not entry.stop.is_set():
            self._on_restart(entry.name)
        if entry.stop.is_set():
            log.error("worker %s failed while stopping: %s", entry.name, error, exc_info=exc)
        else:
            log.error("worker %s failed: %s; restarting it in %.1fs (failure %d)",
                      entry.name, error, delay, entry.restarts, exc_info=exc)
        return delay
