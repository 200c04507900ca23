"""The gate as metrics: open or not, why it is closed, and how long a ready app waited for it.

Two taps feed it, so the sync loop needs no knowledge of metrics:
- `GateMetrics.gate` is a sync observer (sidecar.observers): it gets every gate verdict the
  status file gets, the same `evaluate()` readiness-gate runs;
- `ReadinessTap` sits between the readiness source and the sync loop and notes when the app
  turned ready, which the gate line alone cannot tell (an agent fault outranks "app not ready"
  in the line).

`katalog_gate_wait_seconds` is what an operator watches during a rollout: from the moment the
sidecar saw the app ready to the moment the gate would pass. The kubelet adds up to one probe
period on top before the pod turns Ready.

The closed reason is a label with a fixed set of values (sidecar.gate_reasons.CLOSED_REASONS):
the code the verdict carries, decided with the gate's line (sidecar.core.report.gate_state),
never read back from its words; alert rules (examples/monitoring/prometheus-rules.yaml) match on them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from readiness_gate import state as status_state
from sidecar import gate_reasons as r
from sidecar.gate_reasons import GateReason

if TYPE_CHECKING:
    from sidecar.metrics import Metrics
    from sidecar.readiness import Observation, ReadinessSink

class GateMetrics:
    """A sync observer that turns gate verdicts into metrics. Thread-safe; never blocks."""

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._open: bool | None = None
        self._reason: GateReason | None = None
        self._app_ready_since: float | None = None  # when the app last turned ready
        self._waited_for: float | None = None  # the app_ready_since already counted

    def app_ready(self, ready: bool) -> None:
        """From the readiness tap: the app's readiness as the sidecar sees it now."""
        with self._lock:
            if not ready:
                self._app_ready_since = None
            elif self._app_ready_since is None:
                self._app_ready_since = self._clock()

    # --- SyncObserver -----------------------------------------------------------------------
    def gate(self, passes: bool, phase: str, line: str, reason: GateReason) -> None:
        with self._lock:
            if passes and not self._open and self._app_ready_since is not None \
                    and self._waited_for != self._app_ready_since:
                # Once per app-ready: a latched gate that reopens after a drain is not a new wait.
                self._metrics.gate_wait.observe(max(0.0, self._clock() - self._app_ready_since))
                self._waited_for = self._app_ready_since
            if passes != self._open:
                self._metrics.gate_open.set(1 if passes else 0)
                self._open = passes
            self._metrics.gate_failed_open.set(1 if phase == status_state.FAILED_OPEN else 0)
            if reason != self._reason:
                for name in r.CLOSED_REASONS:
                    self._metrics.gate_closed_reason.labels(name).set(1 if name == reason else 0)
                self._reason = reason

    def event(self, reason: str, message: str) -> None:
        pass

    def close(self, timeout: float) -> None:
        pass


class ReadinessTap:
    """Passes a readiness source's reports on unchanged, telling `GateMetrics` when the app is ready."""

    def __init__(self, sink: ReadinessSink, gate: GateMetrics) -> None:
        self._sink = sink
        self._gate = gate

    def observe(self, observation: Observation) -> None:
        self._gate.app_ready(observation.ready and not observation.terminating)
        self._sink.observe(observation)

    def problem(self, message: str | None) -> None:
        self._sink.problem(message)
