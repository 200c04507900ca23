"""The seeded fault schedule: episodes of faults over the first part of a run, then quiet.

An episode is (start, duration, kind). Kinds touch the agent, the servers, the pod API, the
sidecar process and the pod itself, so they overlap in every combination a seed picks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

AGENT_FAULTS = ("agent_down", "agent_slow", "read_flap", "writes_fail", "writes_forbidden")
KINDS = AGENT_FAULTS + (
    "agent_restart_keep", "agent_restart_lost", "servers_down", "api_down", "api_403", "api_expire",
    "sigterm", "delete_pod", "kill_restart", "hang", "successor", "ready_flip", "stall_watch",
)
# Interleavings a uniform draw rarely lines up, expanded into plain episodes (a "buggify"):
COMPOUND = {
    "restart_while_terminating": (("kill_restart", 0.0, 8.0), ("delete_pod", 2.0, None)),
    "slow_then_terminate": (("agent_slow", 0.0, 60.0), ("ready_flip", 1.0, None), ("delete_pod", 3.0, None)),
    "restart_in_api_outage": (("api_down", 0.0, 150.0), ("kill_restart", 5.0, 25.0)),
    "blind_successor": (("stall_watch", 0.0, 90.0), ("successor", 2.0, None)),
    "short_403_then_flip": (("api_403", 0.0, 2.0), ("ready_flip", 3.0, None)),
    "flaps_with_failing_writes": (("read_flap", 0.0, 90.0), ("writes_fail", 0.0, 90.0)),
    "flaps_with_403": (("read_flap", 0.0, 150.0), ("writes_forbidden", 0.0, 150.0)),
}


@dataclass(frozen=True)
class Episode:
    start: float
    duration: float
    kind: str

    def __str__(self) -> str:
        return f"{self.kind}@{self.start:.1f}+{self.duration:.1f}s"


def schedule(rng: random.Random, fault_window: float, episodes: int, kinds: tuple[str, ...] = KINDS) -> list[Episode]:
    out: list[Episode] = []
    for _ in range(episodes):
        kind = rng.choice(kinds + tuple(COMPOUND))
        start = rng.uniform(5.0, fault_window)
        if kind in COMPOUND:
            for part, offset, duration in COMPOUND[kind]:
                out.append(Episode(start + offset, duration if duration is not None else rng.uniform(5.0, 60.0), part))
            continue
        if kind in ("agent_down", "servers_down", "api_down", "api_403"):
            duration = rng.choice((rng.uniform(0.5, 5.0), rng.uniform(5.0, 120.0)))
        elif kind in ("hang",):
            duration = rng.uniform(2.0, 60.0)
        elif kind in ("kill_restart",):
            duration = rng.choice((rng.uniform(0.5, 5.0), rng.uniform(5.0, 60.0)))  # until the new process
        elif kind in ("agent_restart_keep", "agent_restart_lost"):
            duration = rng.uniform(0.5, 20.0)
        else:
            duration = rng.uniform(5.0, 150.0)
        out.append(Episode(start, min(duration, fault_window + 5.0 - start + 60.0), kind))
    return sorted(out, key=lambda e: (e.start, e.kind))
