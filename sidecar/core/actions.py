"""What comes out of the core: the driver carries these out, in order.

`Call`s talk to the agent; the core makes at most one at a time and waits for its answer
(events.CallSucceeded / CallFailed with the same `request_id`), so a SIGTERM that arrives
meanwhile is handled between two calls. Everything else is fire-and-forget: the driver does
it and sends nothing back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.gate_reasons import GateReason
from sidecar.registration import Instance


@dataclass(frozen=True)
class Expectation:
    """What the servers must show for one generation of pushed state (the confirmer's target)."""

    generation: int
    instances: tuple[Instance, ...]
    checks: Mapping[str, Mapping[str, str]]  # service ID -> check ID -> status
    removed: bool = False
    # A periodic re-check of a confirmed state (continuous gate mode): the first mismatch is
    # reported as a loss of confirmation, then confirming goes on as usual.
    recheck: bool = False


# --- calls to the agent (one in flight at a time; answered by request_id) -------------------

@dataclass(frozen=True)
class Call:
    request_id: int
    timeout: float | None  # None: the configured KATALOG_CONSUL_TIMEOUT; else at most this


@dataclass(frozen=True)
class Register(Call):
    service_id: str
    payload: Mapping[str, Any]  # the /v1/agent/service/register body


@dataclass(frozen=True)
class UpdateCheck(Call):
    check_id: str
    status: str
    output: str


@dataclass(frozen=True)
class Deregister(Call):
    service_id: str


@dataclass(frozen=True)
class ReadAgentInstance(Call):
    """The agent's copy of the instance and its checks (answer: events.AgentInstance).
    `with_checks` False: the instance only (its UID), one read instead of two."""

    service_id: str
    with_checks: bool = True


@dataclass(frozen=True)
class ReadCatalog(Call):
    """One blocking read of the servers' view of `instance` on this node (draining only).

    checks: the statuses wanted (critical), or None for "removed". `wait`: the blocking wait.
    Answer: the mismatch still seen (str) or None."""

    instance: Instance
    checks: Mapping[str, str] | None
    wait: float


# --- fire and forget -------------------------------------------------------------------------

@dataclass(frozen=True)
class Confirm:
    """Start (or replace) the confirmer's target; its results come back as ConfirmResult."""

    expectation: Expectation


@dataclass(frozen=True)
class StopConfirming:
    pass


@dataclass(frozen=True)
class WatchAgent:
    """Keep a blocking read on the agent's copy of `service_id` (answers: AgentSeen, AgentReadFailed)."""

    service_id: str


@dataclass(frozen=True)
class UnwatchAgent:
    service_id: str


@dataclass(frozen=True)
class WriteStatus:
    """The status file's fields (readiness_gate.state); the driver adds pid, updated_at, etc."""

    fields: Mapping[str, Any]


@dataclass(frozen=True)
class GateVerdict:
    """What readiness-gate would say now (observers: the pod condition, ops' metrics)."""

    passes: bool
    phase: str
    line: str
    reason: GateReason  # why it is closed ("" when it passes): decided with the line (sidecar.core.report)


@dataclass(frozen=True)
class Notify:
    """A transition an operator cares about: an Event reason of sidecar.observers."""

    reason: str
    message: str


@dataclass(frozen=True)
class Log:
    level: int  # logging.INFO, ...
    message: str
    logger: str = "katalog.sync"  # operators (and tests) filter on the logger's name


@dataclass(frozen=True)
class PhaseChanged:
    """The core's own phase changed (sidecar.core.phases); for observers and metrics."""

    old: str
    new: str
    why: str


@dataclass(frozen=True)
class RecordConfirmed:
    """Metrics: a generation confirmed, `latency` seconds after it was pushed."""

    latency: float


@dataclass(frozen=True)
class StopSources:
    """Stop the readiness source (SIGTERM)."""


@dataclass(frozen=True)
class Exit:
    """The process exits with `code` (0: drained, 1: drain incomplete). Last action."""

    code: int


Action = (Register | UpdateCheck | Deregister | ReadAgentInstance | ReadCatalog | Confirm | StopConfirming
          | WatchAgent | UnwatchAgent | WriteStatus | GateVerdict | Notify | Log | PhaseChanged
          | RecordConfirmed | StopSources | Exit)
CALLS = (Register, UpdateCheck, Deregister, ReadAgentInstance, ReadCatalog)
