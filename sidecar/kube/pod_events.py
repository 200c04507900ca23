"""Kubernetes Events on the sidecar's pod: its story in `kubectl describe pod` and `kubectl get events`.

core/v1 Events, as client-go's recorder writes them: one Event per (reason, message), created
once and then PATCHed with an incremented `count` and a new `lastTimestamp` when it repeats, so
a fault that recurs is one line with a count, not a flood. A token bucket bounds what a flapping
pod can send. Only transitions are reported (the sync loop calls this on state changes), never a
heartbeat: a steady pod sends nothing.

Optional: without RBAC for events (403) the sidecar logs that once and carries on. A refusal may
be transient: the refused Event is tried again after FIRST_REFUSAL_RETRY; only repeated refusals
make it drop Events for REFUSED_HOLD at a time (then it tries again).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from sidecar.backoff import Backoff
from sidecar.errors import KubernetesError
from sidecar.gate_reasons import GateReason
from sidecar.observers import NORMAL, REASON_TYPES
from sidecar.supervision import Supervisor

log = logging.getLogger("katalog.events")

COMPONENT = "katalog-sidecar"
MAX_MESSAGE = 1024
AGGREGATE_FOR = 3600.0  # the API server keeps Events an hour by default; after that, a new one
BURST = 20
REFILL_SECONDS = 10.0  # one more Event allowed per this many seconds once the burst is spent
SEND_ATTEMPTS = 3
FIRST_REFUSAL_RETRY = 2.0  # a first 403 may be transient (an RBAC update rolling out): the Event is tried again
REFUSED_HOLD = 60.0  # repeated 403s: Events are dropped this long, then tried again


class EventWriter(Protocol):
    def create_event(self, namespace: str, event: dict[str, Any]) -> dict[str, Any]: ...

    def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...


def _timestamp(wall: float) -> str:
    return datetime.fromtimestamp(wall, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Seen:
    name: str
    count: int
    first: float
    last: float


class EventAggregator:
    """Pure: what to send for an Event (create or patch), and whether the bucket allows it."""

    def __init__(self, namespace: str, pod: str, uid: str | None, *, burst: int = BURST,
                 refill_seconds: float = REFILL_SECONDS) -> None:
        self.namespace, self.pod, self.uid = namespace, pod, uid
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._burst, self._refill = burst, refill_seconds
        self._tokens = float(burst)
        self._refilled_at: float | None = None
        self.dropped = 0

    def _take_token(self, now: float) -> bool:
        if self._refilled_at is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._refilled_at) / self._refill)
        self._refilled_at = now
        if self._tokens < 1:
            self.dropped += 1
            return False
        self._tokens -= 1
        return True

    def next_write(self, reason: str, message: str, now: float) -> tuple[str, str, dict[str, Any]] | None:
        """("create", name, body) or ("patch", name, patch); None when rate-limited."""
        message = " ".join(message.split())[:MAX_MESSAGE]
        if not self._take_token(now):
            return None
        key = (reason, message)
        seen = self._seen.get(key)
        if seen is not None and now - seen.first < AGGREGATE_FOR:
            seen.count += 1
            seen.last = now
            return "patch", seen.name, {"count": seen.count, "lastTimestamp": _timestamp(now)}
        name = f"{self.pod}.{int(now * 1e9):x}"
        self._seen[key] = _Seen(name, 1, now, now)
        involved: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "name": self.pod, "namespace": self.namespace}
        if self.uid:
            involved["uid"] = self.uid
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": self.namespace},
            "involvedObject": involved,
            "reason": reason, "message": message, "type": REASON_TYPES.get(reason, NORMAL),
            "count": 1, "firstTimestamp": _timestamp(now), "lastTimestamp": _timestamp(now),
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT, "reportingInstance": self.pod,
        }
        return "create", name, body

    def forget(self, name: str) -> None:
        """The API server no longer has this Event (expired): the next repeat creates a new one."""
        for key, seen in list(self._seen.items()):
            if seen.name == name:
                del self._seen[key]


class PodEventRecorder:
    """A SyncObserver that turns transitions into Events, from its own thread."""

    def __init__(self, client: EventWriter, namespace: str, pod: str, uid: str | None, *,
                 wall: Callable[[], float] = time.time, backoff: Backoff | None = None,
                 supervisor: Supervisor | None = None) -> None:
        self._client = client
        self._aggregator = EventAggregator(namespace, pod, uid)
        self._namespace = namespace
        self._wall = wall
        self._backoff = backoff or Backoff(initial=0.5, cap=5.0)
        self._queue: queue.Queue[tuple[str, str] | None] = queue.Queue(maxsize=100)
        self._refusals = 0  # 403s in a row
        self._refused_until = 0.0  # monotonic: Events are dropped until then (repeated 403s)
        self._said_refused = False
        self.sent = 0  # successful requests, for tests
        self._stopped = threading.Event()  # cuts a supervisor's restart backoff short at close()
        self._thread = (supervisor or Supervisor()).start("pod-events", self._run, self._stopped)

    def gate(self, passes: bool, phase: str, line: str, reason: GateReason) -> None:
        pass

    def event(self, reason: str, message: str) -> None:
        try:
            self._queue.put_nowait((reason, message))
        except queue.Full:
            self._aggregator.dropped += 1

    def close(self, timeout: float) -> None:
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        else:
            self._thread.join(timeout)
        self._stopped.set()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if time.monotonic() < self._refused_until:
                self._aggregator.dropped += 1
                continue
            write = self._aggregator.next_write(*item, self._wall())
            outcome = self._send(write) if write is not None else "sent"
            if outcome == "refused" and self._refusals == 1 and not self._stopped.wait(FIRST_REFUSAL_RETRY):
                outcome = self._send(write) if write is not None else "sent"  # a transient refusal?
            if outcome == "expired":
                # The API server dropped the Event (its TTL): start a new one.
                retry = self._aggregator.next_write(*item, self._wall())
                if retry is not None:
                    self._send(retry)

    def _send(self, write: tuple[str, str, dict[str, Any]]) -> str:
        """"sent", "dropped", "expired" (a patched Event is gone) or "refused" (403)."""
        how, name, body = write
        for attempt in range(SEND_ATTEMPTS):
            try:
                if how == "create":
                    self._client.create_event(self._namespace, body)
                else:
                    self._client.patch_event(self._namespace, name, body)
            except KubernetesError as exc:
                if exc.status == 403:
                    self._refusals += 1
                    if not self._said_refused:
                        log.warning("cannot write Events, carrying on without them: %s (trying again in %gs, then "
                                    "once every %gs while refused)", exc, FIRST_REFUSAL_RETRY, REFUSED_HOLD)
                        self._said_refused = True
                    if self._refusals > 1:
                        self._refused_until = time.monotonic() + REFUSED_HOLD
                    return "refused"
                if exc.status == 404 and how == "patch":
                    self._aggregator.forget(name)
                    return "expired"
                if attempt + 1 == SEND_ATTEMPTS or (exc.status is not None and exc.status < 500 and exc.status != 429):
                    log.debug("dropping Event %s: %s", body.get("reason", name), exc)
                    return "dropped"
                time.sleep(self._backoff.next_delay())
            else:
                self._backoff.reset()
                if self._said_refused:
                    log.info("Events can be written again")
                self._refusals, self._said_refused = 0, False
                self.sent += 1
                return "sent"
        return "dropped"
