"""What the core knows, and the context its tasks share: state, the clock's `now`, the
actions produced so far, request ids. Pure: nothing here does I/O."""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from sidecar.backoff import Backoff
from sidecar.config import Config
from sidecar.core import actions as a
from sidecar.core.events import CallFailed, CallSucceeded, Failure, FailureKind
from sidecar.readiness import Observation
from sidecar.registration import CheckState, Instance


@dataclass
class SyncState:
    observation: Observation | None = None
    source_problem: str | None = None
    source_forbidden: bool = False  # source_problem is a 403 (RBAC), not the API being unreachable
    instances: tuple[Instance, ...] = ()
    registered: set[str] = field(default_factory=set)
    pushed: dict[str, CheckState] = field(default_factory=dict)
    agent_problem: str | None = None
    agent_problem_fatal: bool = False
    generation: int = 0
    # `generation` was started before its push (a readiness change, a stall): the round that
    # pushes it takes it, no new one (sidecar.core.inputs, sidecar.core.stall)
    generation_unpushed: bool = False
    confirmed_generation: int = -1
    confirm_message: str = ""
    catalog_unreadable: bool = False  # confirm_message is "the catalog cannot be read", not a mismatch
    ever_confirmed: bool = False
    draining: bool = False
    drain_reason: str = ""
    port_problem: str | None = None
    config_problem: str | None = None  # the pod's annotations do not make a valid configuration
    retired: list[Instance] = field(default_factory=list)  # no longer configured: to deregister
    last_error: str | None = None
    worker_problem: str | None = None  # the readiness worker is crash-looping (its last failure)
    superseded: dict[str, str] = field(default_factory=dict)  # service ID -> the other pod's UID on this agent
    ready_since: float | None = None  # when the app last turned ready (fail-open counts from it)
    failed_open: bool = False  # KATALOG_FAIL_OPEN_AFTER ran out while Consul could not confirm
    gate_closed_at: float | None = None  # when the gate last closed (None: it passes now)


@dataclass
class Timers:
    """Deadlines on the core's clock (`now`); see Core.next_deadline."""

    retry_at: float | None = None
    next_refresh: float = 0.0  # liveness TTLs
    next_readiness_refresh: float = 0.0
    next_heartbeat: float = 0.0
    next_reconfirm: float = 0.0
    pushed_at: float = 0.0
    resume_at: float | None = None  # a task waiting (a drain retry's backoff)


class Failed(Exception):
    """An agent call failed: raised inside a task where the sequential code raised ConsulError."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure

    @property
    def kind(self) -> FailureKind:
        return self.failure.kind


@dataclass(frozen=True)
class Sleep:
    """Yielded by a task: resume me (with None) once `now` reaches `until`."""

    until: float


Answer = CallSucceeded | CallFailed | None
# A task: yields calls (answered with CallSucceeded/CallFailed) or Sleeps (answered with None).
Task = Generator["a.Call | Sleep", Answer, object]


class TaskContext:
    """What a task needs: `now`, randomness, request ids, and where its actions go."""

    def __init__(self, rng: Callable[[], float]) -> None:
        self.rng = rng
        self.now = 0.0
        self.out: list[a.Action | a.Call] = []
        self._next_request = 0

    def request_id(self) -> int:
        self._next_request += 1
        return self._next_request

    def emit(self, action: a.Action | a.Call) -> None:
        self.out.append(action)

    def log(self, level: int, message: str, logger: str = "katalog.sync") -> None:
        self.out.append(a.Log(level, message, logger))

    def info(self, message: str) -> None:
        self.log(logging.INFO, message)

    def warning(self, message: str) -> None:
        self.log(logging.WARNING, message)

    def error(self, message: str) -> None:
        self.log(logging.ERROR, message)

    def notify(self, reason: str, message: str) -> None:
        self.out.append(a.Notify(reason, message))


class Context(TaskContext):
    """Shared by the core's parts: its state, `now`, and the actions of the current `handle`."""

    def __init__(self, config: Config, agent_address: str, rng: Callable[[], float]) -> None:
        super().__init__(rng)
        self.config = config
        self.agent_address = agent_address
        self.state = SyncState()
        self.timers = Timers()
        self.retry_backoff = Backoff(initial=0.2, cap=10.0, rng=rng)
        self.watched: dict[str, bool] = {}  # service ID -> its agent watch's reads are failing
        # Service IDs whose owner on the agent must be read again before our next write to them:
        # the process stalled, so the agent watch's news may be late (sidecar.core.stall).
        self.unverified: set[str] = set()


def call(request: a.Call) -> Generator[a.Call | Sleep, Answer, object]:
    """`value = yield from call(...)` in a task: the call's value, or Failed raised."""
    answer = yield request
    if isinstance(answer, CallFailed):
        raise Failed(answer.failure)
    assert isinstance(answer, CallSucceeded)
    return answer.value
