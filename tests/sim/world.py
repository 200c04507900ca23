"""A simulated node: the agent, the servers, the pod API, one pod name (a StatefulSet's) whose
incarnations each run the real core, a kubelet, and the fault schedule. `run()` steps the
virtual clock and checks every invariant (sim.invariants) after every step.
"""

from __future__ import annotations

import functools
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sidecar.config import load_config
from sim.agent_front import AgentFront
from sim.clock import VirtualClock
from sim.consul_model import AgentModel, ConsulServers
from sim.faults import AGENT_FAULTS, Episode, schedule
from sim.invariants import Invariants, Violation
from sim.kube_model import Pod, PodApi
from sim.process import Sidecar

NODE = "node-a"
HOT_LOOP_STEPS = 60_000  # a seed takes 1,000-5,000 steps; far more is a loop that never rests
POD = "web-0"


@dataclass
class Settings:
    seed: int
    gate: str = "exec"  # or "condition"
    gate_mode: str = "latch"  # or "continuous"
    fault_window: float = 600.0
    quiet: float = 240.0
    episodes: int = 12
    kinds: tuple[str, ...] | None = None
    episodes_given: list[Episode] | None = None
    persist: bool = True


@dataclass
class Active:
    """Which faults are on now, and since when (for the invariants' windows)."""

    since: dict[str, float] = field(default_factory=dict)
    last_end: dict[str, float] = field(default_factory=dict)
    depth: dict[str, int] = field(default_factory=dict)

    def on(self, kind: str, now: float) -> None:
        if self.depth.get(kind, 0) == 0:
            self.since[kind] = now
        self.depth[kind] = self.depth.get(kind, 0) + 1

    def off(self, kind: str, now: float) -> bool:
        self.depth[kind] -= 1
        if self.depth[kind] == 0:
            del self.since[kind]
            self.last_end[kind] = now
            return True
        return False

    def quiet_since(self, kinds: tuple[str, ...], now: float) -> float:
        """How long none of `kinds` has been on (inf if never)."""
        if any(k in self.since for k in kinds):
            return 0.0
        ends = [self.last_end[k] for k in kinds if k in self.last_end]
        return now - max(ends) if ends else float("inf")


class World:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rng = random.Random(settings.seed)
        self.clock = VirtualClock()
        self.t0 = self.clock.now
        self.servers = ConsulServers(self.clock)
        self.agent = AgentModel(NODE, self.clock, self.servers, random.Random(self.rng.random()), settings.persist)
        self.front = AgentFront(self.clock, self.agent, random.Random(self.rng.random()))
        self.kubelet_rng = random.Random(settings.seed * 7919 + 17)
        self.api = PodApi(self.clock)
        self.node = NODE
        self.status_files: dict[str, dict[str, Any]] = {}
        self.sidecars: dict[str, Sidecar] = {}  # by pod UID: the live process of each incarnation
        self.active = Active()
        self.steps = 0
        self.clock_steps = 0
        self._uids = 0
        self._pids = 100
        self.traces: deque[str] = deque(maxlen=80)
        self.episodes = settings.episodes_given if settings.episodes_given is not None else schedule(
            self.rng, settings.fault_window, settings.episodes, settings.kinds or _default_kinds())
        self.invariants = Invariants(self)
        self.pending_restart: dict[str, float] = {}
        self.deleted: set[str] = set()
        self.killed_at: dict[str, float] = {}  # pod UID -> when its sidecar was last SIGKILLed
        self._new_incarnation(ready=True)
        for episode in self.episodes:
            self.clock.at(self.t0 + episode.start, functools.partial(self._begin, episode), f"fault {episode}")
        self.end = max(self.t0 + settings.fault_window + settings.quiet, self.invariants.converge_at() + 60.0)

    # --- pods and processes ---
    def _new_incarnation(self, ready: bool) -> str:
        self._uids += 1
        uid = f"uid-{self._uids}"
        self.api.create(Pod(POD, uid, NODE, app_ready=False, grace=30.0))
        if ready:
            self.clock.after(self.rng.uniform(0.5, 3.0), lambda: self._set_ready(uid, True), "app ready")
        self._start_sidecar(uid)
        return uid

    def _set_ready(self, uid: str, ready: bool) -> None:
        pod = self.api.pods.get(POD)
        if pod is not None and pod.uid == uid:
            self.api.set_ready(POD, ready)

    def config_for(self, uid: str) -> Any:
        env = {"POD_NAME": POD, "POD_NAMESPACE": "default", "POD_IP": "10.0.0.5", "POD_UID": uid,
               "HOST_IP": "10.0.0.1", "KATALOG_SERVICES": "web:http,api:9090", "KATALOG_GATE": self.settings.gate,
               "KATALOG_GATE_MODE": self.settings.gate_mode, "KATALOG_KUBE_API_URL": "http://127.0.0.1:1"}
        return load_config(env)

    def _start_sidecar(self, uid: str) -> None:
        pod = self.api.pods.get(POD)
        if pod is None or pod.uid != uid:
            return  # the pod is gone: the kubelet starts nothing
        self._pids += 1
        self.sidecars[uid] = Sidecar(self, POD, uid, self.config_for(uid), self._pids)
        self.trace(f"sidecar {uid} started (pid {self._pids})")

    def sidecar_exited(self, sidecar: Sidecar) -> None:
        if self.sidecars.get(sidecar.uid) is sidecar:
            del self.sidecars[sidecar.uid]
        pod = self.api.pods.get(POD)
        if pod is not None and pod.uid == sidecar.uid and pod.deletion_timestamp is None:
            # exited without deletion (SIGTERM alone): the kubelet restarts the container
            self.clock.after(self.rng.uniform(1.0, 10.0), lambda: self._start_sidecar(sidecar.uid), "container restart")

    def _kill(self, uid: str) -> None:
        sidecar = self.sidecars.pop(uid, None)
        if sidecar is not None:
            self.killed_at[uid] = self.clock.now
            sidecar.stop()
            self.trace(f"sidecar {uid} killed")

    def _current_uid(self) -> str | None:
        pod = self.api.pods.get(POD)
        return pod.uid if pod is not None else None

    def _delete(self, grace: float, force: bool) -> None:
        pod = self.api.pods.get(POD)
        if pod is None or pod.deletion_timestamp is not None:
            return
        uid = pod.uid
        self.api.delete(POD, grace)
        self.invariants.deletion(uid, self.clock.now, grace)
        self.trace(f"pod {uid} deleted (grace {grace:g}s{', forced' if force else ''})")
        sidecar = self.sidecars.get(uid)
        if sidecar is not None and not force:
            self.clock.after(self.rng.uniform(0.0, 3.0), sidecar.sigterm, "kubelet SIGTERM")
        elif sidecar is not None:
            # A forced deletion removes the object at once, but the node's kubelet still stops the
            # containers it runs: SIGTERM as for any deletion, SIGKILL at the grace period (a
            # stopped process takes the signal when continued). Its own generator, so that the
            # schedules of every seed stay as they were.
            self.clock.after(self.kubelet_rng.uniform(0.0, 3.0), sidecar.sigterm, "kubelet SIGTERM")

        def kill_and_replace() -> None:
            self._kill(uid)
            if not force:
                self.api.remove(POD)
            self._new_incarnation(ready=True)

        if force:
            self.deleted.add(uid)
            self.api.remove(POD)  # the object is gone at once; the old process runs until its grace ends
            self.clock.after(grace, lambda: self._kill(uid), "kubelet SIGKILL")
            self.clock.after(0.5, lambda: self._new_incarnation(ready=self.rng.random() < 0.5), "successor")
        else:
            self.clock.after(grace, kill_and_replace, "kubelet SIGKILL")

    # --- faults ---
    def _begin(self, e: Episode) -> None:
        now = self.clock.now
        self.trace(f"fault begins: {e}")
        end_at = now + e.duration
        if e.kind in AGENT_FAULTS:
            self.active.on(e.kind, now)
            setattr(self.front.faults, e.kind.split("_", 1)[1] if e.kind.startswith("agent_") else e.kind, True)
            self.clock.at(end_at, lambda: self._end_agent_fault(e), f"fault ends {e}")
        elif e.kind in ("agent_restart_keep", "agent_restart_lost"):
            self.active.on("agent_restart", now)
            self.agent.persist = e.kind == "agent_restart_keep"
            self.agent.stop()
            self.clock.at(end_at, self._agent_back, "agent start")
        elif e.kind == "servers_down":
            self.active.on(e.kind, now)
            self.servers.up = False
            self.clock.at(end_at, lambda: self._end_simple(e, lambda: setattr(self.servers, "up", True)), "servers up")
        elif e.kind == "api_down":
            self.active.on(e.kind, now)
            self.api.set_down(True)
            self.clock.at(end_at, lambda: self._end_simple(e, lambda: self.api.set_down(False)), "api up")
        elif e.kind == "api_403":
            self.active.on(e.kind, now)
            self.api.set_status_code(403)
            self.clock.at(end_at, lambda: self._end_simple(e, lambda: self.api.set_status_code(None)), "api allows")
        elif e.kind == "api_expire":
            self.api.expire_history()
            for watch in list(self.api.watches):
                watch.active = False
                watch.on_end(None)
            self.api.watches.clear()
        elif e.kind == "sigterm":
            uid = self._current_uid()
            if uid is not None and uid in self.sidecars:
                self.sidecars[uid].sigterm()
        elif e.kind == "delete_pod":
            self._delete(self.rng.choice((30.0, 10.0, 60.0)), force=False)
        elif e.kind == "successor":
            self._delete(30.0, force=True)
        elif e.kind == "kill_restart":
            uid = self._current_uid()
            if uid is not None and uid in self.sidecars:
                self.active.on("kill_restart", now)
                self._kill(uid)
                self.clock.at(end_at, functools.partial(self._restart_container, uid), "container restart")
        elif e.kind == "hang":
            uid = self._current_uid()
            if uid is not None and uid in self.sidecars:
                self.active.on("hang", now)
                self.sidecars[uid].freeze(end_at)
                self.clock.at(end_at, lambda: self.active.off("hang", self.clock.now), "thaw")
        elif e.kind == "stall_watch":
            # This process's pod watch stays open but delivers nothing (a stalled stream, a
            # partitioned kubelet-to-API path): the sidecar is blind to its pod meanwhile.
            uid = self._current_uid()
            if uid is not None and uid in self.sidecars:
                self.active.on("stall_watch", now)
                self.sidecars[uid].source.stalled_until = end_at
                self.clock.at(end_at, lambda: self.active.off("stall_watch", self.clock.now), "stream flows")
        elif e.kind == "ready_flip":
            uid = self._current_uid()
            pod = self.api.pods.get(POD)
            if uid is not None and pod is not None:
                self._set_ready(uid, not pod.app_ready)
                self.invariants.flip(uid, self.clock.now)

    def _agent_back(self) -> None:
        self.agent.start()
        self.active.off("agent_restart", self.clock.now)
        self.trace("agent started")

    def _restart_container(self, uid: str) -> None:
        self.active.off("kill_restart", self.clock.now)
        self._start_sidecar(uid)

    def _end_agent_fault(self, e: Episode) -> None:
        if self.active.off(e.kind, self.clock.now):
            setattr(self.front.faults, e.kind.split("_", 1)[1] if e.kind.startswith("agent_") else e.kind, False)
        self.trace(f"fault ends: {e}")

    def _end_simple(self, e: Episode, undo: Any) -> None:
        if self.active.off(e.kind, self.clock.now):
            undo()
        self.trace(f"fault ends: {e}")

    # --- hooks for invariants ---
    def before_call(self, sidecar: Sidecar, kind: str, target: str) -> None:
        self.invariants.before_call(sidecar, kind, target)

    def trace(self, line: str, level: int = logging.INFO) -> None:
        self.traces.append(f"{self.clock.now - self.t0:9.3f} {line}")

    # --- running ---
    def run(self, max_steps: int | None = None) -> None:
        while True:
            t = self.clock.next_time()
            if t is None or t > self.end or (max_steps is not None and self.steps >= max_steps):
                break
            self.clock.step()
            self.clock_steps += 1
            if self.clock_steps > HOT_LOOP_STEPS:
                raise Violation("hot-loop", f"{self.clock_steps} steps in {self.clock.now - self.t0:.0f}s of simulated "
                                "time: something wakes without end")
            self.invariants.check()

    def report(self, violation: Violation) -> str:
        lines = [f"seed {self.settings.seed} ({self.settings.gate}/{self.settings.gate_mode}): {violation}",
                 "schedule: " + ", ".join(str(e) for e in self.episodes), "last steps:"]
        return "\n".join(lines + list(self.traces))


def _default_kinds() -> tuple[str, ...]:
    from sim.faults import KINDS
    return KINDS
