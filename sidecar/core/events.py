"""What goes into the core: every input is one of these frozen values.

The driver passes each to `Core.handle(event, now)`, `now` being its monotonic clock (a
simulator's virtual one). Calls the core asked for (sidecar.core.actions.Call) are answered
with exactly one `CallSucceeded` or `CallFailed` carrying the call's `request_id`; an answer
to a request the core no longer waits for is ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from sidecar.config import Config
from sidecar.readiness import Observation
from sidecar.registration import CheckState


class FailureKind(enum.Enum):
    """How an agent call failed (sidecar.errors by type, as the driver classifies it)."""

    UNAVAILABLE = "unavailable"  # connection refused/reset, timeout, TLS: the agent is not answering
    SERVER_ERROR = "server-error"  # 5xx or 429 (typically: the servers are unreachable)
    NO_TTL = "no-ttl"  # 500 "CheckID ... does not have associated TTL": the agent lost the check
    NOT_FOUND = "not-found"  # 404: the agent does not know the service or check
    FORBIDDEN = "forbidden"  # 401/403: the token lacks a permission
    REJECTED = "rejected"  # 400: the agent refused what we sent (configuration)
    OTHER = "other"  # anything else (junk in an answer)


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    message: str  # the agent's message, secrets already redacted


# --- the pod and the configuration -------------------------------------------------------

@dataclass(frozen=True)
class Start:
    """The first event. `previous_ever_confirmed`: the previous process of this pod had
    confirmed (its status file says so; sidecar.adoption)."""

    previous_ever_confirmed: bool = False


@dataclass(frozen=True)
class PodObserved:
    """The readiness source's current view (Kubernetes pod watch, HTTP/TCP probe, fixed)."""

    observation: Observation


@dataclass(frozen=True)
class SourceProblem:
    """The readiness source cannot see (None: that is over). The last observation is kept."""

    message: str | None


@dataclass(frozen=True)
class ConfigChanged:
    """A new valid configuration (the pod's annotations were edited)."""

    config: Config


@dataclass(frozen=True)
class ConfigInvalid:
    """The pod's annotations make no valid configuration (empty: that is over)."""

    problems: tuple[str, ...]


@dataclass(frozen=True)
class Terminate:
    """SIGTERM (or SIGINT). `at`: when the signal came, on the clock `now` comes from; the
    drain's budget counts from it, not from when the event is handled."""

    reason: str
    at: float


# --- time ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tick:
    """`Core.next_deadline()` has come (a retry, a TTL refresh, a heartbeat, a re-check)."""


@dataclass(frozen=True)
class TokenRotated:
    """CONSUL_HTTP_TOKEN_FILE now holds another token than the one the agent refused."""


# --- answers to the core's own calls --------------------------------------------------------

@dataclass(frozen=True)
class AgentInstance:
    """The value of a successful `ReadAgentInstance`: the agent's copy of one instance."""

    present: bool
    pod_uid: str | None = None  # its k8s-pod-uid meta
    checks: Mapping[str, CheckState] = field(default_factory=dict)  # its TTL checks, by check ID
    port: int | None = None  # its registered port (a named port resolved by the process that registered it)


@dataclass(frozen=True)
class CallSucceeded:
    """`value`: None for writes; AgentInstance for ReadAgentInstance; for ReadCatalog the
    mismatch still seen (str) or None when the catalog shows what was asked."""

    request_id: int
    value: object = None


@dataclass(frozen=True)
class CallFailed:
    request_id: int
    failure: Failure


# --- what the background readers saw (sidecar.consul: agent watch, confirmer) ---------------

@dataclass(frozen=True)
class AgentSeen:
    """The agent watch of `service_id` answered: the instance is there with this UID, or
    absent (404). Sent on every answer that differs from the previous one, and on the first
    answer after reads failed."""

    service_id: str
    present: bool
    pod_uid: str | None = None


@dataclass(frozen=True)
class AgentReadFailed:
    """A read of the agent failed (the watch goes on retrying with its own backoff). Reads
    recovering prove nothing about writes: this never resets the core's backoff or holds."""

    service_id: str
    failure: Failure


@dataclass(frozen=True)
class ConfirmResult:
    """The confirmer's word on `generation` (the core's counter of pushed states).

    outcome: "confirmed" (the catalog matches), "pending" (not yet, `message` says what
    differs), "lost" (a re-check of a confirmed state found a mismatch)."""

    generation: int
    outcome: str
    message: str = ""
    catalog_unreadable: bool = False  # not a mismatch: the servers could not be read (no leader, down)


@dataclass(frozen=True)
class WorkerDown:
    """A background worker the verdict depends on (the readiness source) is crash-looping
    (sidecar.supervision); None: it runs stably again."""

    name: str
    problem: str | None


Event = (Start | PodObserved | SourceProblem | ConfigChanged | ConfigInvalid | Terminate | Tick | TokenRotated
         | CallSucceeded | CallFailed | AgentSeen | AgentReadFailed | ConfirmResult | WorkerDown)
