"""The sidecar's contracts (README.md: "How it works", "Faults", "Performance") as invariants,
checked after every simulated step.

Each raises Violation with what broke; bounds are the documented ones (staleness: 3 missed
heartbeats plus a probe period; SIGTERM: one agent call's timeout plus a second; ceilings
from the Faults table and issue 18).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from readiness_gate import state as status_state
from sidecar.manifests.inject import InjectOptions, sidecar_container
from sidecar.registration import service_id as make_service_id
from sim.kube_model import CONDITION

if TYPE_CHECKING:
    from sim.process import Sidecar
    from sim.world import World

STALE_BOUND = 25.0  # stale_after 15 s + one 10 s probe period
OPEN_SLACK = 5.0  # one agent call (timeout 5 s): the catalog changed between the confirming read and the verdict
SIGTERM_BOUND = 6.0  # the agent timeout (5 s) of a call in flight, plus a second
WINDOW = 60.0
REAP_RUNNING = 10.0  # a sidecar running this long has had the time to push its liveness
RESTART_DRAIN = 3.0  # a process restarted during termination drains within this, the agent answering
SLOW_WRITE = 4.0  # the slow agent's worst write latency (sim.agent_front)
# <= 0.2 register calls/s while writes fail, once the retry backoff (sidecar.core.state: 0.2 s
# doubling to 10 s) has reached its cap: a process that starts as writes fail makes its first
# log2(10 / 0.2) ~ 6 tries within ~10 s (seed 103: 15 in 60 s, 9 of them at the capped rate).
BACKOFF_RAMP = 6
REGISTER_CEILING_WRITES_FAIL = 0.2 * WINDOW + 2 + BACKOFF_RAMP
WRITES_CEILING_FORBIDDEN = 2  # one try per 60 s hold after a 403 (a try may be register + update)
DRAIN_CRITICAL_WRITES = 2  # a drain turns readiness and liveness critical, each tried once after a 403
NEEDLESS_REGISTER_CEILING = 1  # no re-registration while the agent holds our instance intact
CALLS_CEILING_AGENT_DOWN = WINDOW  # <= 1 request/s per sidecar while the agent is down
TAKEOVER_GRACE = 10.0  # time to notice that another pod's UID took our service ID
FLIP_BOUND = 10.0  # app readiness flip -> catalog, with nothing failing
CONVERGE_BOUND = 180.0  # TTL 15 s + reaper (60 s + 30 s period) + anti-entropy, with margin
WRITE_FAULTS = ("agent_down", "writes_fail", "writes_forbidden", "agent_restart")
ALL_AGENT = WRITE_FAULTS + ("agent_slow", "read_flap")
API_FAULTS = ("api_down", "api_403")
EVENT_QUIET = 60.0 + 2.0 + 5.0  # pod_events: REFUSED_HOLD after repeated 403s, the first retry, a margin


class Violation(AssertionError):
    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"[{invariant}] {detail}")
        self.invariant = invariant


class Invariants:
    def __init__(self, world: World) -> None:
        self.w = world
        self.uid_since: dict[str, tuple[str | None, float]] = {}
        self.all_passing_at: dict[str, float] = {}
        self.gate_open: dict[str, bool] = {}
        self.stalled_since: dict[str, float] = {}
        self.disagree_since: dict[str, float] = {}
        self.not_passing_since: dict[str, float] = {}
        self._sids: dict[str, tuple[str, ...]] = {}
        self._raft_seen = -1
        self._reaped_seen = 0
        self.checked = 0
        self.needless: dict[int, list[float]] = {}
        self.flips: dict[str, list[float]] = {}
        self.opened_unconfirmed: dict[str, float] = {}
        self.ever_opened: set[str] = set()

    def sids(self, uid: str) -> tuple[str, ...]:
        if uid not in self._sids:
            config = self.w.config_for(uid)
            self._sids[uid] = tuple(make_service_id(config, spec.name) for spec in config.services)
        return self._sids[uid]

    # --- the servers' view ---
    def catalog_passing(self, uid: str) -> bool:
        for sid in self.sids(uid):
            entry, statuses = self.w.servers.instance(self.w.node, sid)
            if entry is None or entry["Meta"].get("k8s-pod-uid") != uid or len(statuses) < 2:
                return False
            if any(s != "passing" for s in statuses.values()):
                return False
        return True

    def _live(self, uid: str) -> Sidecar | None:
        sidecar = self.w.sidecars.get(uid)
        return sidecar if sidecar is not None and sidecar.alive else None

    # --- every step ---
    def check(self) -> None:
        self.checked += 1
        now = self.w.clock.now
        for sid, service in self.w.agent.services.items():
            uid = service.meta.get("k8s-pod-uid")
            if self.uid_since.get(sid, (None, 0.0))[0] != uid:
                self.uid_since[sid] = (uid, now)
        pod = self.w.api.pods.get("web-0")
        if self.w.servers.raft_index != self._raft_seen:
            self._raft_seen = self.w.servers.raft_index
            if pod is not None and self.catalog_passing(pod.uid):
                self.all_passing_at[pod.uid] = now
        if pod is not None:
            self._gate(pod.uid, pod, now)
        if len(self.w.agent.reaped) > self._reaped_seen:
            for reap in self.w.agent.reaped[self._reaped_seen:]:
                self._reaped(*reap)
            self._reaped_seen = len(self.w.agent.reaped)
        for sidecar in list(self.w.sidecars.values()):
            self._sigterm(sidecar, now)
        if now >= self.converge_at():
            self._converged(now)

    def _gate(self, uid: str, pod: Any, now: float) -> None:
        sidecar = self._live(uid)
        doc = self.w.status_files.get(uid)
        exec_open = doc is not None and status_state.evaluate(
            doc, now, lambda pid: sidecar is not None and sidecar.pid == pid, lambda _pid: None)[0]
        if self.w.settings.gate == "condition":
            # kubelet: Ready needs the condition True, and the sidecar container's own probe
            # when `inject --gate condition` gives it one.
            open_ = pod.conditions.get(CONDITION) == "True" and (exec_open or not condition_mode_probe())
        else:
            open_ = exec_open
        was = self.gate_open.get(uid, False)
        self.gate_open[uid] = open_
        # Latch mode: once confirmed, a later Consul problem does not close the gate (by design),
        # so only its first opening needs the catalog; continuous and condition gates every time.
        latched = self.w.settings.gate_mode == "latch" and uid in self.ever_opened
        if open_:
            self.ever_opened.add(uid)
        if open_ and not was and not latched:
            seen = self.all_passing_at.get(uid)
            if (seen is None or now - seen > OPEN_SLACK) and not self.catalog_passing(uid):
                self.opened_unconfirmed.setdefault(uid, now)
        if not open_ or self.catalog_passing(uid):
            self.opened_unconfirmed.pop(uid, None)
        opened = self.opened_unconfirmed.get(uid)
        if opened is not None and now - opened > OPEN_SLACK:
            raise Violation("gate-needs-catalog", f"{self.w.settings.gate} gate of {uid} opened {now - opened:.1f}s ago "
                            f"and the servers' catalog has not shown every instance of {uid} passing since")
        progressing = sidecar is not None and sidecar.frozen_until is None
        if progressing:
            self.stalled_since.pop(uid, None)
        else:
            self.stalled_since.setdefault(uid, now)
        if open_ and not progressing and now - self.stalled_since[uid] > STALE_BOUND:
            raise Violation("gate-staleness", f"{self.w.settings.gate} gate of {uid} open {now - self.stalled_since[uid]:.1f}s "
                            "after its sidecar stopped making progress (hung or dead)")
        if self.w.settings.gate == "condition" and open_ and sidecar is not None and progressing:
            passes = sidecar.core.gate().passes
            if passes:
                self.disagree_since.pop(uid, None)
            else:
                since = self.disagree_since.setdefault(uid, now)
                if now - since > STALE_BOUND and sidecar.record.calls and self._started_before(sidecar, since):
                    raise Violation("gate-staleness", f"condition of {uid} True for {now - since:.1f}s while its "
                                    "running sidecar's own verdict fails")
        if self.w.settings.gate_mode == "continuous" and open_:
            if self.catalog_passing(uid):
                self.not_passing_since.pop(uid, None)
            else:
                since = self.not_passing_since.setdefault(uid, now)
                bound = self.w.config_for(uid).reconfirm_interval + 2 * STALE_BOUND
                if now - since > bound:
                    raise Violation("gate-needs-catalog", f"continuous gate of {uid} open {now - since:.1f}s while the "
                                    "catalog does not show it passing")

    @staticmethod
    def _started_before(sidecar: Sidecar, t: float) -> bool:
        return bool(sidecar.record.calls) and sidecar.record.calls[0][0] <= t

    # --- writes ---
    def before_call(self, sidecar: Sidecar, kind: str, target: str) -> None:
        now = self.w.clock.now
        if kind not in ("Register", "UpdateCheck", "Deregister"):
            return
        sid = self._service_of(sidecar, target)
        owner, since = self.uid_since.get(sid, (None, now))
        current = self.w.agent.pod_uid_of(sid)
        # A successor (newer UID) taking over a lingering entry is the takeover itself; an older
        # incarnation writing over its successor's instance is the defect.
        if (current is not None and current != sidecar.uid and owner == current and now - since > TAKEOVER_GRACE
                and _incarnation(current) > _incarnation(sidecar.uid)):
            raise Violation("foreign-write", f"sidecar of {sidecar.uid} sends {kind} {target}, an instance that "
                            f"carries pod UID {current} since {now - since:.1f}s")
        calls = sidecar.record.calls
        if kind == "Register":
            if self._whole_window(("writes_fail",), now) and self._quiet(("agent_down", "agent_restart"), now):
                n = self._count(calls, ("Register",), now) + 1
                if n > REGISTER_CEILING_WRITES_FAIL:
                    raise Violation("request-ceiling", f"{n} register calls in {WINDOW:g}s while writes fail")
            if self._intact(sidecar, sid):
                marks = self.needless.setdefault(sidecar.pid, [])
                marks.append(now)
                if (self._whole_window(("read_flap",), now) and self._quiet(WRITE_FAULTS + ("agent_slow",), now)
                        and sum(1 for t in marks if t > now - WINDOW) > NEEDLESS_REGISTER_CEILING * len(self.sids(sidecar.uid))):
                    raise Violation("request-ceiling", f"re-registered {sid} while the agent held it intact, "
                                    f"{sum(1 for t in marks if t > now - WINDOW)} times in {WINDOW:g}s of read flaps")
        if self._whole_window(("writes_forbidden",), now) and self._quiet(("agent_down", "agent_restart"), now):
            n = self._count(calls, ("Register", "UpdateCheck"), now) + 1
            ceiling = WRITES_CEILING_FORBIDDEN + 1
            if sidecar.core.ctx.state.draining:
                # The drain is one last pass, not a retry of the loop's: it tries each instance's
                # two critical writes once, whatever the hold (a token fixed meanwhile, or one
                # that may write one service but not the other, must not leave instances passing),
                # and never retries a 403 (sidecar/core/drain.py RETRYABLE). Its bound is that pass.
                ceiling += DRAIN_CRITICAL_WRITES * len(self.sids(sidecar.uid))
            if n > ceiling:
                raise Violation("request-ceiling", f"{n} writes in {WINDOW:g}s after a 403 (one try per hold"
                                f"{', plus one drain pass' if sidecar.core.ctx.state.draining else ''})")

    def _intact(self, sidecar: Sidecar, sid: str) -> bool:
        agent = self.w.agent
        service = agent.services.get(sid)
        if service is None or service.meta.get("k8s-pod-uid") != sidecar.uid:
            return False
        return sum(1 for c in agent.checks.values() if c.service_id == sid) >= 2

    def _service_of(self, sidecar: Sidecar, target: str) -> str:
        for sid in self.sids(sidecar.uid):
            if target == sid or target.startswith(sid + ":"):
                return sid
        return target.rsplit(":", 1)[0]

    def _count(self, calls: Iterable[tuple[float, str, str]], kinds: tuple[str, ...], now: float) -> int:
        return sum(1 for t, k, _ in calls if k in kinds and t > now - WINDOW)

    def _whole_window(self, kinds: tuple[str, ...], now: float) -> bool:
        return any(now - self.w.active.since.get(k, now) >= WINDOW for k in kinds)

    def _quiet(self, kinds: tuple[str, ...], now: float, window: float = WINDOW) -> bool:
        return self.w.active.quiet_since(kinds, now) >= window and all(
            self.w.active.since.get(k, now) >= now for k in kinds)

    # --- termination ---
    def deletion(self, uid: str, at: float, grace: float) -> None:
        self.w.clock.at(at + grace - 0.01, lambda: self._drained(uid, at, grace), "check drain")

    def _drained(self, uid: str, at: float, grace: float) -> None:
        now = self.w.clock.now
        window = now - at + 5.0
        if not self._quiet(WRITE_FAULTS, now, window) or not self._quiet(API_FAULTS + ("hang", "stall_watch"), now, window):
            return
        if uid in self.w.deleted:
            return
        killed, sidecar = self.w.killed_at.get(uid), self._live(uid)
        if killed is not None and killed > at and (sidecar is None or sidecar.started_at > now - RESTART_DRAIN):
            return  # SIGKILLed during its drain, and no process of the pod has run long enough since (seed 1771)
        left = [sid for sid in self.sids(uid) if self.w.agent.pod_uid_of(sid) == uid]
        if not left:
            return
        budget = min(self.w.config_for(uid).drain_timeout, max(1.0, grace - 2.0))
        if sidecar is not None and sidecar.started_at > at:
            # Restarted during the termination: its budget is what the deletionTimestamp leaves
            # (sidecar.core.terminate.drain_deadline), not a whole one counted from its start.
            budget = min(budget, max(1.0, at + grace - 2.0 - sidecar.started_at))
        if not self._quiet(("agent_slow",), now, window) and len(self.sids(uid)) * SLOW_WRITE + 1.0 > budget:
            return  # even deregistrations alone do not fit the budget at the slow agent's latency
        statuses = {c.check_id: c.status for c in self.w.agent.checks.values() if c.service_id in left}
        made_critical = all(s == "critical" for s in statuses.values())
        raise Violation("drain", f"pod {uid} deleted {now - at:.1f}s ago (grace {grace:g}s): {left} still on the agent "
                        f"({'critical' if made_critical else 'not critical: ' + str(statuses)}) with the agent answering")

    def _sigterm(self, sidecar: Sidecar, now: float) -> None:
        t = sidecar.record.terminate_at
        if t is None or sidecar.record.first_drain_write is not None or now - t <= SIGTERM_BOUND:
            return
        if sidecar.record.drain_under_way:
            return  # the drain of a deletionTimestamp runs on, within its own deadline (core: Terminate)
        if sidecar.frozen_until is not None or not self._quiet(WRITE_FAULTS, now, now - t + 5.0):
            return
        if self._quiet(("hang",), now, now - t + 1.0) and any(
                self.w.agent.pod_uid_of(sid) == sidecar.uid for sid in self.sids(sidecar.uid)):
            raise Violation("sigterm-bound", f"SIGTERM to the sidecar of {sidecar.uid} {now - t:.1f}s ago and no "
                            "drain write yet, with the agent answering")

    # --- the reaper ---
    def _reaped(self, at: float, sid: str, uid: str | None) -> None:
        if uid is None:
            return
        sidecar = self._live(uid)
        if sidecar is None or sidecar.frozen_until is not None or sidecar.started_at > at - REAP_RUNNING:
            return
        span = at - sidecar.started_at  # long enough to have pushed its liveness, and nothing in the way
        if not self._quiet(WRITE_FAULTS + ("hang", "agent_slow"), at, span):
            return
        pod = self.w.api.pods.get("web-0")
        if pod is None or pod.uid != uid or pod.deletion_timestamp is not None:
            return
        raise Violation("live-instance-reaped", f"the agent reaped {sid} of pod {uid} while its sidecar ran "
                        f"{at - sidecar.started_at:.0f}s and the agent took writes")

    # --- app readiness reaching Consul ---
    def flip(self, uid: str, at: float) -> None:
        self.flips.setdefault(uid, []).append(at)
        self.w.clock.at(at + FLIP_BOUND, lambda: self._flipped(uid, at), "check flip")

    def _flipped(self, uid: str, at: float) -> None:
        now = self.w.clock.now
        span = now - at
        kinds = ALL_AGENT + API_FAULTS + ("servers_down", "hang", "kill_restart", "stall_watch")
        if not self._quiet(kinds, now, span) or not self._quiet(("writes_forbidden",), now, span + 60.0):
            return  # a 403 holds writes for 60 s by design (one try per hold)
        if uid not in self.w.sidecars:
            return
        pod = self.w.api.pods.get("web-0")
        sidecar = self._live(uid)
        if pod is None or pod.uid != uid or pod.deletion_timestamp is not None or sidecar is None:
            return
        if sidecar.started_at > at - 5.0 or sidecar.record.terminate_at is not None:
            return
        if any(t > at for t in self.flips.get(uid, [])):
            return
        want = "passing" if pod.app_ready else "critical"
        for sid in self.sids(uid):
            entry, statuses = self.w.servers.instance(self.w.node, sid)
            if entry is None or entry["Meta"].get("k8s-pod-uid") != uid:
                return  # not registered yet (a superseded or restarting pod): other invariants
            readiness = [s for cid, s in statuses.items() if cid.endswith(":readiness")]
            if readiness and readiness[0] != want:
                raise Violation("flip-latency", f"app of {uid} turned {'ready' if pod.app_ready else 'not ready'} "
                                f"{span:.1f}s ago with nothing failing; the catalog still shows {sid} {readiness[0]}")

    # --- Events (sidecar.kube.pod_events) ---
    def event_outcome(self, sidecar: Sidecar, at: float, reason: str, outcome: str) -> None:
        """An Event the core notified must reach the API unless the API refused or failed
        requests recently: a refused Event is tried again after FIRST_REFUSAL_RETRY, and only
        repeated refusals drop Events for a hold (issue 18 defect 7: one transient 403 turned
        Events off for the process's life; 6 of 17 drained pods never got `Deregistered`)."""
        if outcome in ("sent", "rate-limited"):
            return
        now = self.w.clock.now
        if not self._quiet(API_FAULTS, now, now - at + EVENT_QUIET):
            return
        raise Violation("event-delivered", f"Event {reason} of {sidecar.uid}, notified {now - at:.1f}s ago: {outcome}, "
                        f"although the pod API took every request for {now - at + EVENT_QUIET:.0f}s")

    # --- convergence ---
    def converge_at(self) -> float:
        last = max((e.start + e.duration for e in self.w.episodes), default=0.0)
        return self.w.t0 + max(last, self.w.settings.fault_window) + CONVERGE_BOUND

    def _converged(self, now: float) -> None:
        pod = self.w.api.pods.get("web-0")
        live = pod.uid if pod is not None and pod.deletion_timestamp is None and self._live(pod.uid) else None
        for node_services in [self.w.servers.services.get(self.w.node, {})]:
            for sid, entry in node_services.items():
                uid = entry["Meta"].get("k8s-pod-uid")
                if uid != live:
                    raise Violation("convergence", f"{now - self.converge_at() + CONVERGE_BOUND:.0f}s after the "
                                    f"faults stopped the catalog still lists {sid} of pod {uid}; live pod: {live}")
        if live is None:
            return
        assert pod is not None
        want = "passing" if pod.app_ready else "critical"
        for sid in self.sids(live):
            found, statuses = self.w.servers.instance(self.w.node, sid)
            if found is None or sorted(statuses.values()) != sorted(["passing", want]):
                raise Violation("convergence", f"after the faults stopped the catalog shows {sid} of live pod {live} "
                                f"as {found and statuses}; app ready: {pod.app_ready}")


@functools.cache
def condition_mode_probe() -> bool:
    """Does the container `inject --gate condition` adds carry a readiness probe of its own?"""
    container = sidecar_container("web:http", InjectOptions(image="katalog-sidecar", gate="condition"))
    return "readinessProbe" in container


def _incarnation(uid: str) -> int:
    """uid-N: the Nth incarnation of the pod in this world."""
    return int(uid.rsplit("-", 1)[1])
