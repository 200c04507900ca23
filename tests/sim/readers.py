"""The sidecar's background readers, in virtual time: the agent watch and the confirmer.

They follow sidecar's own readers (agent watch: hash-blocking read of the agent's copy,
backoff 0.1-1.6 s on failure; confirmer: node-scoped blocking reads of the servers' view,
compared with sidecar.registration's compare_service/compare_checks, backoff 0.2-5 s) and post
the core's events. Each is stopped by `stop()`; a stopped reader posts nothing more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sidecar.backoff import Backoff
from sidecar.core.actions import Expectation
from sidecar.core.events import AgentReadFailed, AgentSeen, ConfirmResult, Event
from sidecar.registration import compare_checks, compare_service
from sim.agent_front import AgentFront, classify
from sim.clock import Timer, VirtualClock
from sim.consul_model import ConsulServers, Reply

Post = Callable[[Event], None]
AGENT_WATCH_WAIT = 300.0
MIN_INTERVAL = 0.05


class AgentWatch:
    def __init__(self, clock: VirtualClock, front: AgentFront, service_id: str, post: Post,
                 rng: Callable[[], float]) -> None:
        self.clock, self.front, self.service_id, self.post = clock, front, service_id, post
        self.backoff = Backoff(initial=0.1, cap=1.6, rng=rng)
        self.active = True
        self.failing = False
        self.last: tuple[bool, str | None] | None = None
        self._hash = ""
        self._cut: Callable[[], None] = lambda: None
        self._timer: Timer | None = self.clock.after(0.0, self._read, "agent watch")

    def stop(self) -> None:
        self.active = False
        self._cut()
        if self._timer is not None:
            self._timer.cancel()

    def _later(self, delay: float) -> None:
        if self.active:
            self._timer = self.clock.after(delay, self._read, "agent watch")

    def _read(self) -> None:
        if not self.active:
            return
        asked = self.clock.now
        agent = self.front.agent
        seq = object()
        self._pending: object = seq

        def answer(reply: Reply) -> None:
            if not self.active or self._pending is not seq:
                return
            self._pending = None
            self._answer(reply, asked)

        def start() -> Reply | None:
            return None

        if self.front.unreachable():
            self.clock.after(0.001, lambda: answer(Reply(0, text="connection refused")))
            return
        if self.front.faults.read_flap and self.front.rng.random() < 0.33:
            self.clock.after(0.002, lambda: answer(Reply(500, text="Unexpected response code: 500")))
            return
        self._cut = agent.wait_service(self.service_id, self._hash, AGENT_WATCH_WAIT,
                                       lambda r: self.clock.after(0.001, lambda: answer(r)))
        cut_after = self.front.cut_after()
        if cut_after is not None:
            def cut() -> None:
                if self._pending is seq:
                    self._cut()
                    answer(Reply(0, text="connection reset by peer"))
            self.clock.after(cut_after, cut, "long-poll cut")

    def _answer(self, reply: Reply, asked: float) -> None:
        if reply.status == 0 or (reply.status >= 500 and not reply.ok):
            self.failing = True
            self._hash = ""
            self.post(AgentReadFailed(self.service_id, classify(reply)))
            self._later(self.backoff.next_delay())
            return
        self.backoff.reset()
        present = reply.ok
        uid = reply.body.get("Meta", {}).get("k8s-pod-uid") if present else None
        seen = (present, uid)
        if seen != self.last or self.failing:
            self.post(AgentSeen(self.service_id, present, uid))
        self.failing = False
        self.last = seen
        if not present:
            self._hash = ""
            self._later(self.backoff.next_delay())
            return
        new_hash = str(reply.body.get("ContentHash", ""))
        delay = max(0.0, 1.0 - (self.clock.now - asked)) if new_hash == self._hash else 0.0
        self._hash = new_hash
        self._later(delay)


class Confirmer:
    """One target at a time; replaced by `expect`, idle after confirming."""

    def __init__(self, clock: VirtualClock, front: AgentFront, servers: ConsulServers, node: str, post: Post,
                 wait: float, rng: Callable[[], float]) -> None:
        self.clock, self.front, self.servers, self.node, self.post, self.wait = clock, front, servers, node, post, wait
        self.backoff = Backoff(initial=0.2, cap=5.0, rng=rng)
        self.target: Expectation | None = None
        self._token = object()
        self._cut: Callable[[], None] = lambda: None
        self.reads = 0

    def stop(self) -> None:
        self.target = None
        self._token = object()
        self._cut()

    def expect(self, target: Expectation) -> None:
        self.stop()
        self.target = target
        token = self._token
        state: dict[str, Any] = {"i": 0, "matched": False, "sidx": 0, "cidx": 0, "last": ""}
        self.clock.after(0.0, lambda: self._step(target, token, state), "confirm")

    def _step(self, target: Expectation, token: object, state: dict[str, Any]) -> None:
        if token is not self._token:
            return
        if state["i"] >= len(target.instances):
            self.post(ConfirmResult(target.generation, "confirmed"))
            self.target = None
            return
        inst = target.instances[state["i"]]
        kind = "checks" if state["matched"] else "services"
        index = state["cidx"] if state["matched"] else state["sidx"]
        wait = 0.0 if (kind == "checks" and state.get("fresh")) else self.wait
        state["fresh"] = False

        def answer(reply: Reply) -> None:
            if token is not self._token:
                return
            self._answer(target, token, state, inst, kind, reply)

        if self.front.unreachable():
            self.clock.after(0.001, lambda: answer(Reply(0, text="connection refused")))
            return
        if self.front.faults.read_flap and self.front.rng.random() < 0.33:
            self.clock.after(0.002, lambda: answer(Reply(500, text="Unexpected response code: 500")))
            return
        self.reads += 1
        self._cut = self.servers.blocking_read(self.node, kind, index if wait > 0 else 0, wait,
                                               lambda r: self.clock.after(0.002, lambda: answer(r)))

    def _answer(self, target: Expectation, token: object, state: dict[str, Any], inst: Any, kind: str,
                reply: Reply) -> None:
        if not reply.ok:
            message = f"agent accepted {inst.name} but the catalog cannot be read: {reply.text}"
            self._report(target, state, message, unreadable=True)
            state.update(sidx=0, cidx=0, matched=False)
            self.clock.after(self.backoff.next_delay(), lambda: self._step(target, token, state), "confirm retry")
            return
        self.backoff.reset()
        if kind == "services":
            state["sidx"] = reply.index
            mismatch = compare_service(inst, self.node, reply.body["Services"])
            if mismatch is None:
                state["matched"], state["fresh"] = True, True
        else:
            state["cidx"] = reply.index
            wanted = target.checks[inst.service_id]
            mismatch = compare_checks(inst, reply.body, wanted)
            if target.removed:
                mismatch = None
        if mismatch is None and kind == "checks":
            state.update(i=state["i"] + 1, matched=False, sidx=0, cidx=0)
        elif mismatch is not None:
            self._report(target, state, mismatch)
        self.clock.after(MIN_INTERVAL, lambda: self._step(target, token, state), "confirm next")

    def _report(self, target: Expectation, state: dict[str, Any], message: str, unreadable: bool = False) -> None:
        if message != state["last"]:
            outcome = "lost" if target.recheck and not state["last"] else "pending"
            self.post(ConfirmResult(target.generation, outcome, message, unreadable))
            state["last"] = message
