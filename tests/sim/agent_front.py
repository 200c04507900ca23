"""The sidecar's view of the agent: the model behind the network faults of the schedule.

Each request gets a latency and either reaches the agent model or fails the way a real one
would (refused, 5xx, 403, a long-poll cut). A write slower than the caller's timeout fails
for the caller (UNAVAILABLE) and is not applied (the slowness is on the way in).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.core.events import Failure, FailureKind
from sim.clock import VirtualClock
from sim.consul_model import AgentModel, Reply


@dataclass
class AgentFaults:
    down: bool = False  # connection refused (also while the agent model is stopped)
    slow: bool = False  # writes take 2-4 s, under the 5 s timeout
    read_flap: bool = False  # long-polls cut after 2-3 s, a third of reads answer 500
    writes_fail: bool = False  # writes answer 500, reads work
    writes_forbidden: bool = False  # writes answer 403 (a token without service:write)


def classify(reply: Reply) -> Failure:
    if reply.status == 0:
        return Failure(FailureKind.UNAVAILABLE, reply.text or "connection refused")
    if reply.status == 404:
        return Failure(FailureKind.NOT_FOUND, reply.text)
    if reply.status == 500 and "does not have associated TTL" in reply.text:
        return Failure(FailureKind.NO_TTL, reply.text)
    if reply.status in (401, 403):
        return Failure(FailureKind.FORBIDDEN, reply.text)
    if reply.status == 400:
        return Failure(FailureKind.REJECTED, reply.text)
    if reply.status == 429 or reply.status >= 500:
        return Failure(FailureKind.SERVER_ERROR, reply.text)
    return Failure(FailureKind.OTHER, reply.text)


class AgentFront:
    def __init__(self, clock: VirtualClock, agent: AgentModel, rng: random.Random) -> None:
        self.clock = clock
        self.agent = agent
        self.rng = rng
        self.faults = AgentFaults()

    def unreachable(self) -> bool:
        return self.faults.down or not self.agent.running

    def latency(self, write: bool) -> float:
        if write and self.faults.slow:
            return self.rng.uniform(2.0, 4.0)
        return self.rng.uniform(0.001, 0.008)

    def write(self, apply: Callable[[], Reply], timeout: float, done: Callable[[Reply], None]) -> None:
        """A write: `done` gets the reply after the latency, or a timeout reply at `timeout`."""
        if self.unreachable():
            self.clock.after(0.001, lambda: done(Reply(0, text="connection refused")))
            return
        latency = self.latency(True)
        faults = self.faults

        def land() -> None:
            if self.unreachable():
                reply = Reply(0, text="connection reset")
            elif faults.writes_forbidden:
                reply = Reply(403, text="Permission denied: token lacks permission 'service:write'")
            elif faults.writes_fail:
                reply = Reply(500, text="Unexpected response code: 500 (rpc error: timeout)")
            else:
                reply = apply()
            if latency <= timeout:
                done(reply)

        # The latency is on the way in (a slow proxy or agent queue): a request its caller gave up
        # on is cut with the connection and never applied.
        if latency <= timeout:
            self.clock.after(latency, land, "agent write")
        else:
            self.clock.after(timeout, lambda: done(Reply(0, text=f"read timeout ({timeout:g}s)")), "timeout")

    def read(self, apply: Callable[[], Reply], timeout: float, done: Callable[[Reply], None]) -> None:
        if self.unreachable():
            self.clock.after(0.001, lambda: done(Reply(0, text="connection refused")))
            return
        if self.faults.read_flap and self.rng.random() < 0.33:
            self.clock.after(0.002, lambda: done(Reply(500, text="Unexpected response code: 500")))
            return
        self.clock.after(self.latency(False), lambda: done(Reply(0, text="connection refused")
                                                           if self.unreachable() else apply()), "agent read")

    def cut_after(self) -> float | None:
        """While reads flap, a long-poll is cut after this many seconds (a proxy's idle timeout)."""
        return self.rng.uniform(2.0, 3.0) if self.faults.read_flap else None
