"""Condition mode: the gate's verdict as a pod condition that the pod's readinessGates wait for.

`KATALOG_GATE=condition`: the sidecar sets `katalog-sidecar.io/consul-confirmed` on its own pod
(PATCH pods/status, a strategic merge patch: conditions merge by type, so kubelet's own
conditions are untouched). `True` exactly when readiness-gate would exit 0 (latch or
continuous), `False` with a reason and the gate's line otherwise. kubelet then counts the pod
Ready only with the condition True, without starting a probe process every period.

It patches only when status, reason or message change, from its own thread (the sync loop never
waits for the API server), and retries with capped, jittered backoff; a 403 is logged once,
names the missing permission, and is retried once a minute (it does not fix itself).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Protocol

from readiness_gate import state as status_state
from sidecar.backoff import Backoff
from sidecar.errors import KubernetesError
from sidecar.gate_reasons import GateReason
from sidecar.manifests import CONDITION_TYPE
from sidecar.supervision import Supervisor

log = logging.getLogger("katalog.condition")

MAX_MESSAGE = 1024
FORBIDDEN_RETRY = 60.0


class StatusPatcher(Protocol):
    def patch_pod_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...


def condition_state(passes: bool, phase: str, line: str) -> tuple[str, str, str]:
    """(status, reason, message) of the condition for a gate verdict. Pure."""
    if passes:
        reason = "Confirmed"
    elif phase in (status_state.DRAINING, status_state.STOPPED):
        reason = "Draining"
    elif phase == status_state.CONFIG_ERROR:
        reason = "ConfigError"
    else:
        reason = "WaitingForConsul"
    return ("True" if passes else "False"), reason, " ".join(line.split())[:MAX_MESSAGE]


def status_patch(status: str, reason: str, message: str, transition: datetime | None) -> dict[str, Any]:
    """The strategic merge patch for pods/status. `transition`: set lastTransitionTime (status changed)."""
    condition: dict[str, Any] = {"type": CONDITION_TYPE, "status": status, "reason": reason, "message": message}
    if transition is not None:
        condition["lastTransitionTime"] = transition.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"status": {"conditions": [condition]}}


class PodConditionWriter:
    """A SyncObserver that keeps the pod condition equal to the gate's verdict."""

    def __init__(self, client: StatusPatcher, namespace: str, pod: str, *,
                 on_forbidden: Callable[[str], None] | None = None,
                 backoff: Backoff | None = None, wall: Callable[[], float] = time.time,
                 supervisor: Supervisor | None = None) -> None:
        self._client = client
        self._namespace, self._pod = namespace, pod
        self._on_forbidden = on_forbidden
        self._backoff = backoff or Backoff(initial=0.5, cap=30.0)
        self._wall = wall
        self._cond = threading.Condition()
        self._desired: tuple[str, str, str] | None = None
        self._patched: tuple[str, str, str] | None = None
        self._closing = False
        self._forbidden: str | None = None
        self.patches = 0  # successful PATCH requests, for tests and the benchmark
        self.failures = 0
        self._stopped = threading.Event()  # cuts a supervisor's restart backoff short at close()
        # Called after a successful PATCH that changed the status (the sync loop rewrites the
        # status file, whose `condition` field readiness-gate checks in condition mode).
        self.on_written: Callable[[], None] | None = None
        self._thread = (supervisor or Supervisor()).start("pod-condition", self._run, self._stopped)

    def written(self) -> str | None:
        """The condition status this process last set ("True"/"False"), None before its first PATCH."""
        with self._cond:
            return self._patched[0] if self._patched is not None else None

    # -- SyncObserver ----------------------------------------------------------------------
    def gate(self, passes: bool, phase: str, line: str, reason: GateReason) -> None:
        desired = condition_state(passes, phase, line)
        with self._cond:
            if desired != self._desired:
                self._desired = desired
                self._cond.notify_all()

    def event(self, reason: str, message: str) -> None:
        pass

    def close(self, timeout: float) -> None:
        """Give a pending patch (e.g. Draining) until `timeout` to go out, then stop."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        self._stopped.set()

    # -- the worker ------------------------------------------------------------------------
    def _run(self) -> None:
        retry_at = 0.0
        while True:
            with self._cond:
                while True:
                    pending = self._desired != self._patched
                    now = time.monotonic()
                    if self._closing:
                        if not pending or now < retry_at:
                            return  # closing: one last try for a pending state, none after a failure
                        break
                    if pending and now >= retry_at:
                        break
                    self._cond.wait(retry_at - now if pending else None)
                desired = self._desired
            assert desired is not None
            retry_at = self._patch(desired)

    def _patch(self, desired: tuple[str, str, str]) -> float:
        """Sends one PATCH; returns when to try again (0 when done)."""
        status, reason, message = desired
        changed = self._patched is None or self._patched[0] != status
        body = status_patch(status, reason, message, datetime.fromtimestamp(self._wall(), timezone.utc) if changed else None)
        try:
            self._client.patch_pod_status(self._namespace, self._pod, body)
        except KubernetesError as exc:
            self.failures += 1
            if exc.status == 403:
                if str(exc) != self._forbidden:
                    log.error("cannot set the pod condition %s: %s", CONDITION_TYPE, exc)
                    if self._on_forbidden is not None:
                        self._on_forbidden(str(exc))
                self._forbidden = str(exc)
                return time.monotonic() + FORBIDDEN_RETRY
            delay = self._backoff.next_delay()
            log.warning("cannot set the pod condition %s (retrying in %.1fs): %s", CONDITION_TYPE, delay, exc)
            return time.monotonic() + delay
        if self._forbidden:
            log.info("pod condition %s can be set again", CONDITION_TYPE)
        self._forbidden = None
        self._backoff.reset()
        self.patches += 1
        with self._cond:
            self._patched = desired
        log.info("pod condition %s=%s (%s): %s", CONDITION_TYPE, status, reason, message)
        if changed and self.on_written is not None:
            self.on_written()
        return 0.0
