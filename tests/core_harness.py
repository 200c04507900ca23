"""A tiny in-process driver for the pure core (sidecar.core): a dict for the agent, a virtual
clock, no threads. For fast tests of one decision; the simulator (tests/sim) explores schedules."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from test_config import VALID

from sidecar.config import load_config
from sidecar.core import actions as a
from sidecar.core import events as e
from sidecar.core.machine import Core
from sidecar.readiness import Observation
from sidecar.registration import CheckState

UID = "uid-1"


def config(**env: str) -> Any:
    return load_config(dict(VALID, POD_UID=UID, **env))


def observation(ready: bool = True, **kw: Any) -> Observation:
    return Observation(ready, "app ready" if ready else "app not ready", pod_uid=UID, **kw)


@dataclass
class AgentModel:
    """The node's agent as the core sees it: instances (with their UID) and TTL checks."""

    services: dict[str, str | None] = field(default_factory=dict)  # service ID -> pod UID
    checks: dict[str, CheckState] = field(default_factory=dict)
    # Decides a call's fate: None answers normally, a Failure fails it.
    fail: Callable[[a.Call], e.Failure | None] = lambda _call: None

    def answer(self, call: a.Call) -> e.CallSucceeded | e.CallFailed:
        failure = self.fail(call)
        if failure is not None:
            return e.CallFailed(call.request_id, failure)
        value: object = None
        if isinstance(call, a.Register):
            meta = call.payload.get("Meta") or {}
            self.services[call.service_id] = meta.get("k8s-pod-uid")
            for check in call.payload.get("Checks") or []:
                self.checks.setdefault(check["CheckID"], CheckState("critical", ""))
        elif isinstance(call, a.UpdateCheck):
            if call.check_id not in self.checks:
                return e.CallFailed(call.request_id, e.Failure(e.FailureKind.NOT_FOUND, "Unknown check"))
            self.checks[call.check_id] = CheckState(call.status, call.output)
        elif isinstance(call, a.Deregister):
            if call.service_id not in self.services:
                return e.CallFailed(call.request_id, e.Failure(e.FailureKind.NOT_FOUND, "Unknown service"))
            del self.services[call.service_id]
            for cid in [c for c in self.checks if c.startswith(call.service_id + ":")]:
                del self.checks[cid]
        elif isinstance(call, a.ReadAgentInstance):
            if call.service_id not in self.services:
                value = e.AgentInstance(False)
            else:
                value = e.AgentInstance(True, self.services[call.service_id], {
                    c: s for c, s in self.checks.items() if c.startswith(call.service_id + ":")}, 8080)
        elif isinstance(call, a.ReadCatalog):
            gone = call.instance.service_id not in self.services
            value = None if (call.checks is None) == gone else "not yet"
        return e.CallSucceeded(call.request_id, value)


class Run:
    """Feeds events at a virtual time; answers the core's calls from the agent model at once
    (unless `hold` is set: then they wait in `held`); confirms at once when `auto_confirm`."""

    def __init__(self, cfg: Any = None, *, agent: AgentModel | None = None, auto_confirm: bool = True,
                 previous_ever_confirmed: bool = False) -> None:
        self.core = Core(cfg or config(), agent_address="127.0.0.1:8500", rng=random.Random(1).random, strict=True)
        self.agent = agent or AgentModel()
        self.now = 0.0
        self.auto_confirm = auto_confirm
        self.hold = False
        self.latency = 0.0  # virtual seconds each agent call takes
        self.held: list[a.Call] = []
        self.actions: list[Any] = []
        self.timeline: list[tuple[float, Any]] = []  # (virtual time it was returned, action)
        self.exit: int | None = None
        self.send(e.Start(previous_ever_confirmed))

    def calls(self, kind: type | None = None) -> list[a.Call]:
        return [x for x in self.actions if isinstance(x, a.CALLS) and (kind is None or isinstance(x, kind))]

    def logs(self) -> list[str]:
        return [x.message for x in self.actions if isinstance(x, a.Log)]

    def last_status(self) -> dict[str, Any]:
        return dict([x for x in self.actions if isinstance(x, a.WriteStatus)][-1].fields)

    def send(self, event: e.Event) -> None:
        todo: list[e.Event] = [event]
        while todo:
            out = self.core.handle(todo.pop(0), self.now)
            self.actions += out
            self.timeline += [(self.now, x) for x in out]
            for action in out:
                if isinstance(action, a.CALLS):
                    if self.hold:
                        self.held.append(action)
                    elif action.timeout is not None and self.latency > action.timeout:
                        self.now += action.timeout  # the call times out
                        todo.append(e.CallFailed(action.request_id, e.Failure(e.FailureKind.UNAVAILABLE, "timed out")))
                    else:
                        self.now += self.latency
                        todo.append(self.agent.answer(action))
                elif isinstance(action, a.Confirm) and self.auto_confirm:
                    todo.append(e.ConfirmResult(action.expectation.generation, "confirmed"))
                elif isinstance(action, a.Exit):
                    self.exit = action.code

    def release(self) -> None:
        self.hold = False
        held, self.held = self.held, []
        for call in held:
            self.send(self.agent.answer(call))

    def advance(self, seconds: float, step: float = 0.05) -> None:
        """Move the virtual clock, sending Tick whenever the core's next deadline comes."""
        end = self.now + seconds
        while True:
            deadline = self.core.next_deadline()
            if deadline > end:
                break
            self.now = max(self.now, deadline)
            self.send(e.Tick())
            if self.exit is not None:
                return
        self.now = end
