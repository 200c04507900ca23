"""One sidecar process in the simulation: the real core, driven as sidecar's drivers drive it.

Events go through one FIFO; at most one agent call is in flight (as the core's API says), and
its answer is queued behind anything that came meanwhile (a SIGTERM is handled first). The
process can be hung (SIGSTOP: nothing runs until it is continued) and killed (the status file
survives; a new process starts from it). The pod watch takes its failure handling from
sidecar/kube/source.py itself; the condition writer is modelled on sidecar/kube/pod_condition.py.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from readiness_gate import state as status_state
from sidecar.backoff import Backoff
from sidecar.config import Config
from sidecar.core import actions as act
from sidecar.core import events as ev
from sidecar.errors import KubernetesError
from sidecar.kube.pod_condition import condition_state
from sidecar.kube.pod_readiness import observe_pod
from sidecar.kube.source import KubernetesSource
from sidecar.readiness import Observation, on_clock
from sidecar.registration import CheckState
from sim.agent_front import AgentFront, classify
from sim.clock import Timer, VirtualClock
from sim.consul_model import ConsulServers, Reply
from sim.invariants import Violation
from sim.kube_model import PodApi, Watch, WatchEvent
from sim.readers import AgentWatch, Confirmer

log = logging.getLogger("sim")

SPIN_LIMIT = 100  # Ticks that do nothing, in a row, with the deadline not moving: a hot loop
CONDITION_FORBIDDEN_RETRY = 60.0


@dataclass
class Record:
    """What the invariants look at, per process."""

    calls: list[tuple[float, str, str]] = field(default_factory=list)  # (time, kind, service or check ID)
    terminate_at: float | None = None
    drain_under_way: bool = False  # SIGTERM came while a drain (deletionTimestamp) was running
    first_drain_write: float | None = None
    exit_code: int | None = None
    exited_at: float | None = None


class Sidecar:
    def __init__(self, world: Any, pod_name: str, uid: str, config: Config, pid: int) -> None:
        from sidecar.core.machine import Core  # the port under test; imported late so models load without it

        self.world = world
        self.clock: VirtualClock = world.clock
        self.front: AgentFront = world.front
        self.servers: ConsulServers = world.servers
        self.api: PodApi = world.api
        self.pod_name, self.uid, self.config, self.pid = pod_name, uid, config, pid
        self.rng = random.Random(world.rng.random())
        self.core = Core(config, agent_address="sim-agent:8500", rng=self.rng.random)
        self.queue: deque[ev.Event] = deque()
        self.in_flight: int | None = None
        self.alive = True
        self.started_at = self.clock.now
        self.spins = 0
        self.frozen_until: float | None = None
        self.record = Record()
        self.watches: dict[str, AgentWatch] = {}
        self.confirmer = Confirmer(self.clock, self.front, self.servers, world.node, self._post, config.confirm_wait,
                                   self.rng.random)
        self._tick: Timer | None = None
        self._busy = False
        self.source = PodSource(self)
        self.condition = ConditionWriter(self) if config.gate == "condition" else None
        self.events = EventRecorder(self)
        previous = world.status_files.get(uid, {})
        self._post(ev.Start(previous_ever_confirmed=bool(previous.get("ever_confirmed"))
                           and previous.get("uid") == uid))
        self.source.start()

    # --- the event loop ---
    def _post(self, event: ev.Event) -> None:
        if not self.alive:
            return
        self.queue.append(event)
        if not self._busy:
            self._busy = True
            self.clock.after(0.0, self._drain, "sidecar loop")

    def _wake(self) -> None:
        """The core's deadline came: the loop wakes (sidecar.syncer's `get(timeout=...)` returns)."""
        if self.alive and not self._busy:
            self._busy = True
            self.clock.after(0.0, self._drain, "sidecar loop")

    def _drain(self) -> None:
        self._busy = False
        if not self.alive or self.in_flight is not None:
            return  # a call in flight blocks the loop (sidecar.syncer performs it); its answer wakes it
        if not self.queue and self.core.next_deadline() > self.clock.now:
            return  # nothing queued, nothing due: the armed Tick wakes the loop
        if self.frozen_until is not None:
            self._busy = True
            self.clock.at(self.frozen_until, self._drain, "sidecar thaw")
            return
        # As sidecar.syncer: a Tick only when nothing is queued. A deadline that fell due while
        # the process was stopped does not jump ahead of what came meanwhile (a SIGTERM).
        event = self.queue.popleft() if self.queue else ev.Tick()
        self.world.steps += 1
        actions = self.core.handle(event, self.clock.now)
        if isinstance(event, ev.Tick) and not actions and self.core.next_deadline() <= self.clock.now:
            self.spins += 1
            if self.spins > SPIN_LIMIT:
                raise Violation("no-spin", f"sidecar of {self.uid}: {self.spins} Ticks in a row at the same instant did "
                                f"nothing and next_deadline() stays at {self.core.next_deadline() - self.world.t0:.3f} "
                                f"(phase {self.core.phase.value}, call {self.in_flight} in flight): a hot loop")
        else:
            self.spins = 0
        self._carry_out(actions)
        if self.alive and self.queue and self.in_flight is None:
            self._busy = True
            self.clock.after(0.0, self._drain, "sidecar loop")
        self._arm_tick()

    def _arm_tick(self) -> None:
        if not self.alive:
            return
        if self._tick is not None:
            self._tick.cancel()
        if self.in_flight is not None:
            return  # blocked in the call: no Tick until its answer
        deadline = self.core.next_deadline()
        self._tick = self.clock.at(deadline, self._wake, "tick")

    def _carry_out(self, actions: list[act.Action]) -> None:
        for action in actions:
            if not self.alive:
                return
            if isinstance(action, act.CALLS):
                self._call(action)
            elif isinstance(action, act.WriteStatus):
                doc = dict(action.fields)
                doc.update(updated_at=self.clock.now, pid=self.pid, uid=self.uid, gate_mode=self.config.gate_mode,
                           stale_after=max(3 * self.config.heartbeat_interval, 10.0))
                if self.condition is not None:  # what the driver adds in condition mode (sidecar/cli.py)
                    doc.update(gate="condition", condition=self.condition.written())
                self.world.status_files[self.uid] = doc
            elif isinstance(action, act.GateVerdict):
                if self.condition is not None:
                    self.condition.want(condition_state(action.passes, action.phase, action.line))
            elif isinstance(action, act.Confirm):
                self.confirmer.expect(action.expectation)
            elif isinstance(action, act.StopConfirming):
                self.confirmer.stop()
            elif isinstance(action, act.WatchAgent):
                if action.service_id not in self.watches:
                    self.watches[action.service_id] = AgentWatch(self.clock, self.front, action.service_id, self._post,
                                                                 self.rng.random)
            elif isinstance(action, act.UnwatchAgent):
                watch = self.watches.pop(action.service_id, None)
                if watch is not None:
                    watch.stop()
            elif isinstance(action, act.StopSources):
                self.source.stop()
            elif isinstance(action, act.Exit):
                self.record.exit_code, self.record.exited_at = action.code, self.clock.now
                self.world.trace(f"{self.pod_name}/{self.uid} exit {action.code}")
                self.stop()
                self.world.sidecar_exited(self)
            elif isinstance(action, act.Notify):
                self.events.notify(action.reason, action.message)
            elif isinstance(action, act.Log):
                self.world.trace(f"{self.pod_name}/{self.uid}: {action.message}", level=action.level)
            elif isinstance(action, act.PhaseChanged):
                self.world.trace(f"{self.pod_name}/{self.uid} phase {action.old} -> {action.new}: {action.why}")

    def _call(self, action: act.Action) -> None:
        if self._tick is not None:
            self._tick.cancel()
        timeout = getattr(action, "timeout", None) or self.config.consul.timeout
        request_id: int = action.request_id
        self.in_flight = request_id
        agent = self.front.agent
        kind = type(action).__name__
        target = getattr(action, "service_id", None) or getattr(action, "check_id", "")
        self.world.before_call(self, kind, str(target))
        self.record.calls.append((self.clock.now, kind, str(target)))
        if self.record.terminate_at is not None and self.record.first_drain_write is None and kind in (
                "UpdateCheck", "Deregister"):
            self.record.first_drain_write = self.clock.now

        def done(reply: Reply, value: object = None) -> None:
            if not self.alive:
                return
            self.in_flight = None
            self._busy = False
            # Posted behind whatever came during the call (a SIGTERM is handled first).
            if reply.ok:
                self._post(ev.CallSucceeded(request_id, value))
            else:
                self._post(ev.CallFailed(request_id, classify(reply)))

        if isinstance(action, act.Register):
            self.front.write(lambda: agent.register(action.payload), timeout, done)
        elif isinstance(action, act.UpdateCheck):
            self.front.write(lambda: agent.update_check(action.check_id, action.status, action.output), timeout, done)
        elif isinstance(action, act.Deregister):
            self.front.write(lambda: agent.deregister(action.service_id), timeout, done)
        elif isinstance(action, act.ReadAgentInstance):
            sid = action.service_id

            def read_instance() -> Reply:
                service = agent.service(sid)
                if service.status == 404:
                    return Reply(200, ev.AgentInstance(False))
                checks = agent.service_checks(sid).body
                return Reply(200, ev.AgentInstance(True, service.body["Meta"].get("k8s-pod-uid"), {
                    cid: CheckState(c["Status"], c["Output"]) for cid, c in checks.items()}))
            self.front.read(read_instance, timeout, lambda r: done(r, r.body))
        elif isinstance(action, act.ReadCatalog):
            self._read_catalog(action, timeout, done)

    def _read_catalog(self, action: act.ReadCatalog, timeout: float, done: Callable[[Reply, object], None]) -> None:
        inst, node = action.instance, self.world.node

        def mismatch() -> str | None:
            entry, statuses = self.servers.instance(node, inst.service_id)
            ours = entry is not None and (inst.pod_uid is None or entry["Meta"].get("k8s-pod-uid") in (None, inst.pod_uid))
            if action.checks is None:
                return f"catalog still lists {inst.service_id}" if ours else None
            if not ours:
                return None
            bad = [cid for cid, status in action.checks.items() if statuses.get(cid) != status]
            return f"catalog shows {bad} not yet {list(action.checks.values())}" if bad else None

        def finish(reply: Reply) -> None:
            done(reply if not reply.ok else Reply(200), mismatch() if reply.ok else None)

        if not self.servers.up:
            self.front.read(lambda: Reply(500, text="No cluster leader"), timeout, finish)
            return
        if mismatch() is None or action.wait <= 0:
            self.front.read(lambda: Reply(200), timeout, finish)
            return
        kind = "services" if action.checks is None else "checks"
        index = self.servers.read(node, kind).index
        wait = min(action.wait, timeout)
        self.servers.blocking_read(node, kind, index, wait, lambda r: self.front.read(lambda: r, timeout, finish))

    # --- signals and death ---
    def sigterm(self) -> None:
        if not self.alive:
            return
        # A stopped process takes the signal when continued: its handler notes the time then.
        at = max(self.clock.now, self.frozen_until or self.clock.now)
        if self.record.terminate_at is None:
            self.record.terminate_at = at
            self.record.drain_under_way = self.core.ctx.state.draining
        self._post(ev.Terminate("SIGTERM", at))

    def freeze(self, until: float) -> None:
        self.frozen_until = until
        for watch in self.watches.values():
            watch.stop()
        self.watches_frozen = list(self.watches)
        self.clock.at(until, self._thaw, "thaw")

    def _thaw(self) -> None:
        self.frozen_until = None
        for sid in list(self.watches):
            self.watches[sid] = AgentWatch(self.clock, self.front, sid, self._post, self.rng.random)

    def stop(self) -> None:
        """The process is gone (exit or SIGKILL): every reader and timer with it."""
        self.alive = False
        if self._tick is not None:
            self._tick.cancel()
        for watch in self.watches.values():
            watch.stop()
        self.confirmer.stop()
        self.source.stop()
        self.events.stop()
        if self.condition is not None:
            self.condition.stop()


class _Sink:
    def __init__(self, sidecar: Sidecar) -> None:
        self.s = sidecar

    def observe(self, observation: Observation) -> None:
        # As sidecar.syncer does: the deletionTimestamp onto the core's clock as it arrives.
        self.s._post(ev.PodObserved(on_clock(observation, self.s.clock.now, self.s.clock.wall())))

    def problem(self, message: str | None) -> None:
        self.s._post(ev.SourceProblem(message))


class PodSource:
    """List + watch of the sidecar's own pod. What to do on a failure (the problem reported,
    how long to wait) is decided by sidecar.kube_source.KubernetesSource itself."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.s = sidecar
        self.active = False
        self.watch: Watch | None = None
        self.rv = 0
        self.sink = _Sink(sidecar)
        readiness = sidecar.config.readiness
        self.real = KubernetesSource(cast(Any, None), "default", sidecar.pod_name, readiness.container_name,
                                     readiness.exclude_containers, 60.0, expected_uid=sidecar.uid,
                                     rng=sidecar.rng.random)
        self._timer: Timer | None = None
        self._idle: Timer | None = None
        self.stalled_until = 0.0
        self.inactivity = sidecar.config.kubernetes.watch_inactivity

    def start(self) -> None:
        self.active = True
        self._timer = self.s.clock.after(0.01, self._list, "pod list")

    def stop(self) -> None:
        self.active = False
        if self.watch is not None:
            self.watch.active = False
        if self._timer is not None:
            self._timer.cancel()
        if self._idle is not None:
            self._idle.cancel()

    def _arm_idle(self) -> None:
        """kube_source.py's client ends a watch that sends nothing for KATALOG_KUBE_WATCH_INACTIVITY
        (WatchInactiveError) and resumes it at once from the same resourceVersion: the API replays
        what the silent stream did not deliver (a stalled stream, `stall_watch`)."""
        if self._idle is not None:
            self._idle.cancel()
        self._idle = self.s.clock.after(self.inactivity, self._inactive, "watch inactivity")

    def _inactive(self) -> None:
        watch = self.watch
        if not self.active or watch is None or not watch.active:
            return
        watch.active = False
        self.s.api.watches = [w for w in self.s.api.watches if w is not watch]
        self._open()

    def _failed(self, code: int) -> None:
        if code == 0:
            exc = KubernetesError("connection refused", reason="unreachable")
        elif code == 403:
            exc = KubernetesError(f"pods \"{self.s.pod_name}\" is forbidden: User cannot watch resource \"pods\" "
                                  "(HTTP 403)", status=403)
        else:
            exc = KubernetesError(f"HTTP {code}", status=code)
        delay = self.real._on_failure(exc, self.sink)
        self._timer = self.s.clock.after(delay, self._list, "pod relist")

    def _recovered(self) -> None:
        self.real._connected(self.sink)

    def _list(self) -> None:
        if not self.active:
            return
        code, body = self.s.api.list_pod(self.s.pod_name)
        if code != 200:
            self._failed(code)
            return
        self._recovered()
        self.rv = int(body["metadata"]["resourceVersion"])
        for item in body["items"]:
            self._observe(item)
        self._open()

    def _open(self) -> None:
        if not self.active:
            return
        self._arm_idle()  # also while the replay below is delivered
        opened = self.s.api.watch_pod(self.s.pod_name, self.rv, self._event, self._ended)
        if isinstance(opened, int):
            self._failed(opened)
        else:
            self.watch = opened

    def _event(self, event: WatchEvent) -> None:
        if not self.active or self.s.clock.now < self.stalled_until:
            return
        self.s.clock.after(0.002, lambda: self._deliver(event), "watch event")

    def _deliver(self, event: WatchEvent) -> None:
        if not self.active:
            return
        self._arm_idle()
        obj = event["object"]
        if event["type"] == "ERROR":
            if self.watch is not None:
                self.watch.active = False
            self._timer = self.s.clock.after(0.01, self._list, "relist after 410")
            return
        self.rv = int(obj["metadata"]["resourceVersion"])
        if event["type"] == "BOOKMARK":
            return
        if event["type"] == "DELETED":
            obj = dict(obj)
            obj["metadata"] = dict(obj["metadata"], deletionTimestamp=obj["metadata"].get("deletionTimestamp") or "gone")
        self._observe(obj)

    def _observe(self, pod: dict[str, Any]) -> None:
        if pod.get("metadata", {}).get("uid") != self.s.uid:
            # Another incarnation under our pod's name: ours is gone (kube_source's expected_uid).
            observation = Observation(ready=False, detail="pod deleted", terminating=True, deleted=True,
                                      pod_uid=self.s.uid)
        else:
            observation = observe_pod(pod, self.s.config.readiness.container_name,
                                      self.s.config.readiness.exclude_containers)
        self.real._send(observation, self.sink)

    def _ended(self, code: int | None) -> None:
        if not self.active:
            return
        if code in (None, 0):
            self._failed(0)
        elif code == 200:
            return
        else:
            self._failed(code)


class _NoThread:
    """A Supervisor that starts nothing: the recorder's loop is stepped by EventRecorder."""

    def start(self, name: str, target: Callable[[], None], stop: object) -> None:
        return None


class _VirtualTime:
    """What sidecar.kube.pod_events reads of the `time` module, on the virtual clock."""

    def __init__(self, clock: VirtualClock) -> None:
        self.monotonic = self.time = clock

    @staticmethod
    def sleep(_seconds: float) -> None:
        pass  # a 5xx retry's pause: the sim's API answers the same at once


class EventRecorder:
    """sidecar.kube.pod_events.PodEventRecorder in virtual time. Its own `event`, `_send` (403s
    counted, holds set), aggregator and rate limit decide; the loop of its thread (`_run`) is
    stepped here one queued Event at a time, reading whichever state the code keeps (a refusal
    hold, a retry after a first refusal; before issue 18's fix of defect 7, a `_disabled` flag), so
    the recorder's own rules are what the `event-delivered` invariant checks."""

    def __init__(self, sidecar: Sidecar) -> None:
        from sidecar.kube import pod_events

        self.s = sidecar
        self.mod = pod_events
        with self._virtual_time():
            self.real = pod_events.PodEventRecorder(
                cast(Any, sidecar.api), sidecar.api.namespace, sidecar.pod_name, sidecar.uid, wall=sidecar.clock,
                backoff=Backoff(0.5, 5.0, sidecar.rng.random), supervisor=cast(Any, _NoThread()))
        self.notified: deque[tuple[float, str]] = deque()  # (when, reason) of each queued Event
        self.busy = False
        self.active = True

    def _virtual_time(self) -> Any:
        import contextlib

        @contextlib.contextmanager
        def patched() -> Any:
            saved = self.mod.time
            self.mod.time = cast(Any, _VirtualTime(self.s.clock))
            try:
                yield
            finally:
                self.mod.time = saved
        return patched()

    def notify(self, reason: str, message: str) -> None:
        queued = self.real._queue.qsize()
        self.real.event(reason, message)
        if self.real._queue.qsize() == queued:
            self._outcome(self.s.clock.now, reason, "not queued")
            return
        self.notified.append((self.s.clock.now, reason))
        if not self.busy:
            self.busy = True
            self.s.clock.after(0.001, self._step, "event write")

    def stop(self) -> None:
        self.active = False

    def _dropping(self) -> bool:
        disabled = getattr(self.real, "_disabled", None)
        return bool((disabled is not None and disabled.is_set())
                    or self.s.clock.now < getattr(self.real, "_refused_until", 0.0))

    def _step(self) -> None:
        if not self.active or self.s.frozen_until is not None:
            if self.active:
                self.s.clock.at(self.s.frozen_until or self.s.clock.now, self._step, "event write")
            return
        if not self.notified:
            self.busy = False
            return
        item = self.real._queue.get_nowait()
        assert item is not None
        at, reason = self.notified.popleft()
        with self._virtual_time():
            if self._dropping():
                self.real._aggregator.dropped += 1
                self._done(at, reason, "dropped while refused")
                return
            write = self.real._aggregator.next_write(*item, self.s.clock.now)
            if write is None:
                self._done(at, reason, "rate-limited")
                return
            outcome = self.real._send(write)
        retry = getattr(self.mod, "FIRST_REFUSAL_RETRY", None)
        if outcome == "refused" and retry is not None and getattr(self.real, "_refusals", 0) == 1:
            self.s.clock.after(retry, lambda: self._again(at, reason, item, write), "event write retry")
            return
        self._expired(at, reason, item, outcome)

    def _again(self, at: float, reason: str, item: tuple[str, str], write: tuple[str, str, dict[str, Any]]) -> None:
        if not self.active:
            return
        with self._virtual_time():
            outcome = self.real._send(write)  # a transient refusal?
        self._expired(at, reason, item, outcome)

    def _expired(self, at: float, reason: str, item: tuple[str, str], outcome: str) -> None:
        if outcome == "expired":
            with self._virtual_time():
                retry = self.real._aggregator.next_write(*item, self.s.clock.now)
                outcome = self.real._send(retry) if retry is not None else "rate-limited"
        self._done(at, reason, outcome)

    def _done(self, at: float, reason: str, outcome: str) -> None:
        self._outcome(at, reason, outcome)
        self.s.clock.after(0.001, self._step, "event write")

    def _outcome(self, at: float, reason: str, outcome: str) -> None:
        self.s.world.invariants.event_outcome(self.s, at, reason, outcome)


class ConditionWriter:
    """pod_condition.PodConditionWriter's rules: patch on change, backoff 0.5-30 s, 403 once a minute."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.s = sidecar
        self.desired: tuple[str, str, str] | None = None
        self.patched: tuple[str, str, str] | None = None
        self.backoff = Backoff(0.5, 30.0, sidecar.rng.random)
        self.retry_at = 0.0
        self._timer: Timer | None = None
        self.active = True

    def want(self, desired: tuple[str, str, str]) -> None:
        if desired != self.desired:
            self.desired = desired
            self._schedule()

    def stop(self) -> None:
        self.active = False
        if self._timer is not None:
            self._timer.cancel()

    def written(self) -> str | None:
        return self.patched[0] if self.patched is not None else None

    def _schedule(self) -> None:
        if self._timer is not None and not self._timer.cancelled:
            return
        self._timer = self.s.clock.at(max(self.s.clock.now + 0.005, self.retry_at), self._patch, "condition patch")

    def _patch(self) -> None:
        self._timer = None
        if not self.active or self.desired is None or self.desired == self.patched:
            return
        if self.s.frozen_until is not None:
            self._timer = self.s.clock.at(self.s.frozen_until, self._patch, "condition patch")
            return
        desired = self.desired
        code = self.s.api.patch_condition(self.s.pod_name, desired[0]) if self.s.api.pods.get(
            self.s.pod_name) is not None and self.s.api.pods[self.s.pod_name].uid == self.s.uid else 404
        if code == 200:
            changed = self.patched is None or self.patched[0] != desired[0]
            self.patched = desired
            doc = self.s.world.status_files.get(self.s.uid)
            if changed and doc is not None and doc.get("pid") == self.s.pid:
                doc["condition"] = desired[0]  # the driver rewrites the status file at once (on_written)
            self.backoff.reset()
            self.retry_at = 0.0
        else:
            delay = CONDITION_FORBIDDEN_RETRY if code == 403 else self.backoff.next_delay()
            self.retry_at = self.s.clock.now + delay
        if self.desired != self.patched and code != 404:
            self._schedule()


_ = status_state
