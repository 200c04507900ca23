"""Background threads that watch Consul and post what they see to the sync loop.

- AgentWatcher: one hash-blocking query on the *local agent's* view of an instance. It is the
  only long-poll a steady sidecar keeps open, costs the servers nothing, and notices within
  two seconds that the agent lost the instance or came back after a restart.
- Confirmer: blocking queries on the servers' view of this agent's node (catalog_view), held
  only while a change waits for confirmation; idle (no open query) once the catalog matches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from sidecar.adoption import UID_META
from sidecar.backoff import Backoff
from sidecar.consul.api import ConsulAgent
from sidecar.consul.catalog_view import CatalogReads, InstanceWatch
from sidecar.core.actions import Expectation
from sidecar.errors import ConsulError
from sidecar.supervision import Supervisor

log = logging.getLogger("katalog.watch")

Post = Callable[[str, Any], None]

AGENT_WATCH_WAIT = 300.0  # seconds; the agent answers early on any change to the instance
AGENT_WATCH_MIN_INTERVAL = 1.0  # seconds between two queries that saw no change
# Seconds between retries while the agent is down: 0.8-1.6 s once backed off, so a sidecar
# makes under one request a second while its agent is away (the fault-cost target), and still
# notices the agent's return within 2 s (the restart target).
AGENT_RETRY_CAP = 1.6
# Every service's watcher notices the same agent restart, within one retry period of each other.
RESTART_NOTICE_SPREAD = AGENT_RETRY_CAP + 0.5


class AgentWatcher:
    def __init__(self, agent: ConsulAgent, service_id: str, post: Post,
                 wait: float = AGENT_WATCH_WAIT, *, supervisor: Supervisor | None = None) -> None:
        self.name = f"agent-watch:{service_id}"
        self._supervisor = supervisor or Supervisor()
        self._agent = agent
        self._service_id = service_id
        self._post = post
        self._wait = wait
        self._stop_event = threading.Event()
        # Capped at AGENT_RETRY_CAP: while the agent is down we retry a cheap local connection, so its
        # return is noticed within two seconds.
        self._backoff = Backoff(initial=0.1, cap=AGENT_RETRY_CAP)
        # Read by the sync loop: while its watchers see the agent down, it leaves the probing
        # to them ("agent-back" wakes it) instead of retrying on its own as well.
        self.failing = False

    def start(self) -> None:
        self._supervisor.start(self.name, self._run, self._stop_event)

    @property
    def service_id(self) -> str:
        return self._service_id

    def stop(self) -> None:
        self._stop_event.set()

    def _run(self) -> None:
        content_hash = ""
        last_seen: tuple[bool, str | None] | None = None
        while not self._stop_event.is_set():
            asked = time.monotonic()
            try:
                new_hash, service = self._agent.agent_service(self._service_id, content_hash, self._wait)
            except ConsulError as exc:
                if not self.failing:
                    self._post("agent-failing", (self._service_id, exc))
                self.failing = True
                content_hash = ""
                self._stop_event.wait(self._backoff.next_delay())
                continue
            self._backoff.reset()
            seen = (service is not None, pod_uid(service))
            if self.failing or seen != last_seen or service is None:
                self.failing = False
                self._post("agent-seen", (self._service_id, *seen))
            last_seen = seen
            if service is None:
                # Wait for the sync loop to register it again instead of spinning on 404s.
                self._stop_event.wait(self._backoff.next_delay())
                content_hash = ""
                continue
            if not new_hash or new_hash == content_hash:
                # Nothing changed, yet the agent answered: a blocking query returns early only on
                # a change, and without a hash it does not block at all (a proxy that drops the
                # header). Keep a minimum interval, or that would be a hot loop.
                self._stop_event.wait(max(0.0, AGENT_WATCH_MIN_INTERVAL - (time.monotonic() - asked)))
            content_hash = new_hash


def pod_uid(service: Mapping[str, Any] | None) -> str | None:
    meta = service.get("Meta") if isinstance(service, Mapping) else None
    uid = meta.get(UID_META) if isinstance(meta, Mapping) else None
    return uid if isinstance(uid, str) and uid else None


class Confirmer:
    def __init__(self, agent: ConsulAgent, wait: float, post: Post, reads: CatalogReads | None = None, *,
                 supervisor: Supervisor | None = None) -> None:
        """`reads` defaults to the agent's node-scoped reads (the benchmark swaps in others)."""
        self._supervisor = supervisor or Supervisor()
        self._stop_event = threading.Event()  # ends a restart backoff of the supervisor
        self._reads: CatalogReads = reads if reads is not None else agent
        self._wait = wait
        self._post = post
        self._cond = threading.Condition()
        self._target: Expectation | None = None
        self._stopped = False
        self._backoff = Backoff(initial=0.2, cap=5.0)

    def expect(self, expectation: Expectation) -> None:
        with self._cond:
            self._target = expectation
            self._cond.notify()

    def start(self) -> None:
        self._supervisor.start("confirmer", self._run, self._stop_event)

    def stop(self) -> None:
        self._stop_event.set()
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _current(self) -> Expectation | None:
        with self._cond:
            while self._target is None and not self._stopped:
                self._cond.wait()
            return None if self._stopped else self._target

    def _is_current(self, expectation: Expectation) -> bool:
        with self._cond:
            return self._target is expectation and not self._stopped

    def _run(self) -> None:
        while True:
            target = self._current()
            if target is None:
                return
            if self._confirm(target):
                self._post("confirmed", target.generation)
                with self._cond:
                    if self._target is target:
                        self._target = None

    def _confirm(self, target: Expectation) -> bool:
        """Blocks until the servers match `target`, or `target` is replaced (then False)."""
        last_message = ""
        for inst in target.instances:
            watch = InstanceWatch(self._reads, inst)
            while self._is_current(target):
                self._sleep_unless_replaced(target, watch.delay())
                if not self._is_current(target):
                    continue  # replaced while waiting: the loop ends, and so does this target
                try:
                    mismatch = _mismatch(watch, target, self._wait)
                except ConsulError as exc:
                    message = f"agent accepted {inst.name} but the catalog cannot be read: {exc}"
                    if message != last_message:
                        self._post(self._pending_kind(target, last_message), (target.generation, message, True))
                        last_message = message
                    watch.reset()
                    self._sleep_unless_replaced(target, self._backoff.next_delay())
                    continue
                self._backoff.reset()
                if mismatch is None:
                    break
                if mismatch != last_message:
                    self._post(self._pending_kind(target, last_message), (target.generation, mismatch, False))
                    last_message = mismatch
            else:
                return False
        return self._is_current(target)

    @staticmethod
    def _pending_kind(target: Expectation, last_message: str) -> str:
        return "confirm-lost" if target.recheck and not last_message else "confirm-pending"

    def _sleep_unless_replaced(self, target: Expectation, delay: float) -> None:
        if delay <= 0:
            return
        with self._cond:
            if self._target is target and not self._stopped:
                self._cond.wait(delay)


def _mismatch(watch: InstanceWatch, target: Expectation, wait: float) -> str | None:
    if target.removed:
        return watch.removed(wait)
    return watch.confirmed(target.checks[watch.instance.service_id], wait)
