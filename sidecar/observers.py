"""What the sync loop tells the world besides the status file: its gate verdict and its transitions.

The sync loop (sidecar.syncer) calls an observer at the points where its state changes; the
observers (the pod condition, the pod's Events) do their own I/O on their own threads, so a
slow or forbidden API server never delays a Consul write. Calls must return at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sidecar.gate_reasons import GateReason

NORMAL = "Normal"
WARNING = "Warning"

# Event reasons: stable, CamelCase as Kubernetes' own; operators filter on them.
REGISTERED = "Registered"
CONFIRMED = "Confirmed"
CONFIRMATION_LOST = "ConfirmationLost"
DRAINING = "Draining"
DEREGISTERED = "Deregistered"
DRAIN_INCOMPLETE = "DrainIncomplete"
CONFIG_ERROR = "ConfigError"
CONSUL_REFUSED = "ConsulRefused"
KUBERNETES_FORBIDDEN = "KubernetesForbidden"
CONSUL_GATE_FAILED_OPEN = "ConsulGateFailedOpen"

REASON_TYPES = {
    REGISTERED: NORMAL, CONFIRMED: NORMAL, DRAINING: NORMAL, DEREGISTERED: NORMAL,
    CONFIRMATION_LOST: WARNING, DRAIN_INCOMPLETE: WARNING, CONFIG_ERROR: WARNING, CONSUL_REFUSED: WARNING,
    KUBERNETES_FORBIDDEN: WARNING, CONSUL_GATE_FAILED_OPEN: WARNING,
}


class SyncObserver(Protocol):
    def gate(self, passes: bool, phase: str, line: str, reason: GateReason) -> None:
        """The gate's verdict, line and closed reason (sidecar.gate_reasons; "" when it passes),
        on every status write (observers act on changes only)."""

    def event(self, reason: str, message: str) -> None:
        """A transition an operator cares about (one of the reasons above)."""

    def close(self, timeout: float) -> None:
        """Flush what is pending for at most `timeout` seconds, then stop."""


class NullObserver:
    def gate(self, passes: bool, phase: str, line: str, reason: GateReason) -> None:
        pass

    def event(self, reason: str, message: str) -> None:
        pass

    def close(self, timeout: float) -> None:
        pass


class Observers:
    """Several observers as one."""

    def __init__(self, observers: Sequence[SyncObserver]) -> None:
        self._observers = list(observers)

    def gate(self, passes: bool, phase: str, line: str, reason: GateReason) -> None:
        for observer in self._observers:
            observer.gate(passes, phase, line, reason)

    def event(self, reason: str, message: str) -> None:
        for observer in self._observers:
            observer.event(reason, message)

    def close(self, timeout: float) -> None:
        for observer in self._observers:
            observer.close(timeout / max(1, len(self._observers)))
