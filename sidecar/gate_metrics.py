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

The closed reason is a label with a fixed set of values (`CLOSED_REASONS`), derived from the
gate line by `closed_reason()`; alert rules (examples/prometheus-rules.yaml) match on them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from readiness_gate import state as status_state

if TYPE_CHECKING:
    from sidecar.metrics import Metrics
    from sidecar.readiness import Observation, ReadinessSink

# Why the gate is closed; "" while it is open. Bounded: these and nothing else.
STARTING = "starting"  # no readiness observation yet, nothing wrong seen
KUBERNETES_UNAVAILABLE = "kubernetes_unavailable"  # cannot see the pod yet (API down, 401)
KUBERNETES_FORBIDDEN = "kubernetes_forbidden"  # cannot see the pod yet: RBAC
CONFIG_ERROR = "config_error"  # settings, annotations or a named port: nothing registered
APP_NOT_READY = "app_not_ready"
AGENT_UNREACHABLE = "agent_unreachable"  # the node's agent does not answer (or times out)
CONSUL_REFUSED = "consul_refused"  # 400/403 from the agent: ACL token or invalid registration
SERVERS_UNREACHABLE = "servers_unreachable"  # the agent accepted; the catalog cannot be read
NOT_CONFIRMED = "not_confirmed"  # the catalog answers but does not show the instance as pushed yet
DRAINING = "draining"  # the pod is terminating (or the sidecar stopped)
SUPERSEDED = "superseded"  # a newer pod (another UID) holds this pod's service ID on the node
WORKER_DOWN = "worker_down"  # the readiness worker is crash-looping: the app's readiness is not followed
OTHER = "other"  # a line this version does not know: a bug to report, never a new label value

CLOSED_REASONS = (STARTING, KUBERNETES_UNAVAILABLE, KUBERNETES_FORBIDDEN, CONFIG_ERROR, APP_NOT_READY,
                  AGENT_UNREACHABLE, CONSUL_REFUSED, SERVERS_UNREACHABLE, NOT_CONFIRMED, DRAINING, SUPERSEDED, WORKER_DOWN, OTHER)


def closed_reason(passes: bool, phase: str, line: str) -> str:
    """The bounded reason for a gate verdict ("" when it passes). Pure."""
    if passes:
        return ""
    if phase in (status_state.DRAINING, status_state.STOPPED):
        return DRAINING
    if phase == status_state.SUPERSEDED:
        return SUPERSEDED
    if phase == status_state.WORKER_DOWN:
        return WORKER_DOWN
    if phase == status_state.CONFIG_ERROR or line.startswith("config error: "):
        return CONFIG_ERROR
    if line.startswith("waiting for the first readiness observation"):
        if "forbidden" in line:
            return KUBERNETES_FORBIDDEN
        return STARTING if line.startswith("waiting for the first readiness observation (") else KUBERNETES_UNAVAILABLE
    if line.startswith("waiting for the agent at "):
        return AGENT_UNREACHABLE
    if line.startswith("Consul refused "):
        return CONSUL_REFUSED
    if line.startswith("check critical because the app is not ready"):
        return APP_NOT_READY
    if line.startswith("agent accepted ") and "the catalog cannot be read" in line:
        return SERVERS_UNREACHABLE
    if line.startswith(("agent accepted ", "waiting for the catalog", "the catalog ")):
        return NOT_CONFIRMED
    if line.startswith("KATALOG_SERVICES: "):
        return CONFIG_ERROR  # a named port no container of the pod declares
    if line == "waiting for the pod's annotations" or line == "starting":
        return STARTING
    return OTHER


class GateMetrics:
    """A sync observer that turns gate verdicts into metrics. Thread-safe; never blocks."""

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._open: bool | None = None
        self._reason: str | None = None
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
    def gate(self, passes: bool, phase: str, line: str) -> None:
        reason = closed_reason(passes, phase, line)
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
                for name in CLOSED_REASONS:
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
