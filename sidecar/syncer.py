"""The sync loop: the one place that writes to the agent.

Everything else (readiness source, agent watchers, confirmer, signals) posts events into one
queue; this loop applies them in order, so there are no races between a readiness flip, a
re-registration and a drain. Between events it only wakes for deadlines (TTL refresh,
heartbeat, retry), never to poll.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from readiness_gate import state as status_state
from sidecar import observers as so
from sidecar.adoption import all_passing, found_statuses, is_this_pod
from sidecar.backoff import Backoff
from sidecar.config import Config
from sidecar.consul_api import ConsulAgent
from sidecar.drain import Drainer
from sidecar.errors import (
    ConsulError,
    ConsulForbidden,
    ConsulNotFound,
    ConsulRejected,
    ConsulServerError,
    ConsulUnavailable,
)
from sidecar.metrics import Metrics
from sidecar.readiness import Observation
from sidecar.registration import (
    CRITICAL,
    LIVENESS_RUNNING,
    PASSING,
    READINESS_TTL_FACTOR,
    TERMINATING,
    CheckState,
    Instance,
    build_instances,
    check_ids,
    confirmed_summary,
    registration_payload,
    service_id,
    wanted_checks,
)
from sidecar.status import StatusWriter
from sidecar.supervision import Supervisor
from sidecar.watchers import RESTART_NOTICE_SPREAD, AgentWatcher, Confirmer, Expectation

log = logging.getLogger("katalog.sync")

EXIT_OK = 0
EXIT_DRAIN_INCOMPLETE = 1
# A safety net only: while the watchers see the agent down, they wake the loop when it is back.
AGENT_DOWN_RETRY = 30.0


@dataclass
class SyncState:
    observation: Observation | None = None
    source_problem: str | None = None
    instances: tuple[Instance, ...] = ()
    registered: set[str] = field(default_factory=set)
    pushed: dict[str, CheckState] = field(default_factory=dict)
    agent_problem: str | None = None
    agent_problem_fatal: bool = False
    generation: int = 0
    confirmed_generation: int = -1
    confirm_message: str = ""
    ever_confirmed: bool = False
    draining: bool = False
    drain_reason: str = ""
    port_problem: str | None = None
    config_problem: str | None = None  # the pod's annotations do not make a valid configuration
    retired: list[Instance] = field(default_factory=list)  # no longer configured: to deregister


class Syncer:
    def __init__(self, config: Config, agent: ConsulAgent, status: StatusWriter, *,
                 clock: Callable[[], float] = time.monotonic, metrics: Metrics | None = None,
                 supervisor: Supervisor | None = None, previous_ever_confirmed: bool = False,
                 observer: so.SyncObserver | None = None) -> None:
        """`previous_ever_confirmed`: the previous process of this pod had confirmed (sidecar.adoption)."""
        self.config = config
        self.supervisor = supervisor or Supervisor()  # runs the watcher threads below
        self.agent = agent
        self.status = status
        self.clock = clock
        self.metrics = metrics
        # Told about the gate's verdict and each transition (pod condition, Events); never blocks.
        self.observer: so.SyncObserver = observer or so.NullObserver()
        self.state = SyncState()
        # SimpleQueue.put is reentrant, so a signal handler may post into it safely.
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._retry_backoff = Backoff(initial=0.2, cap=10.0)
        self._retry_at: float | None = None
        self._next_refresh = 0.0  # liveness TTLs
        self._next_readiness_refresh = 0.0
        self._next_heartbeat = 0.0
        self._last_logged: str | None = None
        self._final_message: str | None = None
        self._pushed_at = 0.0
        self._next_reconfirm = 0.0
        self._registered_all_at = float("-inf")  # on the watchers' clock: time.monotonic
        self._last_error: str | None = None
        self._phase_since = time.time()
        self._phase = status_state.STARTING
        self._confirmer = Confirmer(agent, config.confirm_wait, self._post, supervisor=self.supervisor)
        self._watchers: list[AgentWatcher] = []
        self._drained: int | None = None  # the exit code, once drained before SIGTERM
        # Adoption (sidecar.adoption): statuses found on the agent, kept alive until the first
        # observation (None: not looked yet); needs this pod's UID to tell its instance apart.
        self._adopting = bool(config.pod_uid)
        self._found: dict[str, CheckState] | None = None
        self._adopt_latch = previous_ever_confirmed and config.gate_mode == "latch"
        self._status_problem: str | None = None
        self.last_loop = clock()  # for the liveness endpoint: a stuck loop stops updating it

    # --- inputs, from other threads -------------------------------------------------------
    def _post(self, kind: str, payload: Any = None) -> None:
        self._events.put((kind, payload))

    def observe(self, observation: Observation) -> None:
        self._post("observe", observation)

    def problem(self, message: str | None) -> None:
        self._post("source-problem", message)

    def request_shutdown(self, reason: str = "SIGTERM") -> None:
        # The time of the signal: the kubelet's grace period runs from it, not from when the
        # loop gets to the event (an agent call in flight can hold the loop for its timeout).
        self._post("shutdown", (reason, self.clock()))

    def reconfigure(self, config: Config) -> None:
        """A new configuration (the pod's annotations changed): re-register what differs."""
        self._post("reconfigure", config)

    def config_problem(self, problems: list[str] | None) -> None:
        """The pod's annotations make no valid configuration (None: that is over)."""
        self._post("config-problem", "; ".join(problems) if problems else None)

    # --- the loop -----------------------------------------------------------------------
    def run(self, stop_sources: threading.Event) -> int:
        """Runs until SIGTERM; returns the process exit code.

        A deletionTimestamp drains and deregisters at once (a native sidecar gets SIGTERM only
        after the app has exited, too late to drain); the process then idles, keeping the
        status file fresh and the gate failing, until SIGTERM.
        """
        self._confirmer.start()
        self._write_status()
        try:
            while True:
                kind, payload = self._next_event()
                self.last_loop = self.clock()
                if kind == "shutdown":
                    stop_sources.set()
                    reason, signalled_at = payload
                    if self._drained is not None:
                        return self._drained
                    return self._drain_and_deregister(reason, since=signalled_at)
                if self._drained is not None:
                    self._maybe_heartbeat(self.clock())
                    continue
                self._apply(kind, payload)
                if self.state.draining:
                    self._drained = self._drain_and_deregister(self.state.drain_reason)
                    continue
                self._reconcile()
        finally:
            self._confirmer.stop()
            for watcher in self._watchers:
                watcher.stop()

    def next_deadline(self) -> float:
        """When the loop has something to do next, in any state.

        Only deadlines that the next wake-up acts on, and moves on, count: one that the loop
        would skip leaves a time in the past and turns the wait into a spin (a refresh while a
        retry is pending, a refresh after the drain).
        """
        deadlines = [self._next_heartbeat]
        if self._drained is not None:
            return self._next_heartbeat  # drained: only the heartbeat until SIGTERM
        if self._retry_at is not None:
            # _reconcile does nothing before the retry is due (refresh and reconfirm included).
            deadlines.append(self._retry_at)
        else:
            if self.state.observation is not None and self.state.registered:
                deadlines.append(self._next_refresh)
            if self.state.observation is None and self._adopting:
                deadlines.append(self._next_refresh)  # keeping found statuses alive
            if self._reconfirms():
                deadlines.append(self._next_reconfirm)
        return min(deadlines)

    def _next_event(self) -> tuple[str, Any]:
        timeout = max(0.0, self.next_deadline() - self.clock())
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return "tick", None

    def _apply(self, kind: str, payload: Any) -> None:
        s = self.state
        if kind == "observe":
            previous = s.observation
            s.observation = payload
            s.source_problem = None if payload is not None else s.source_problem
            if previous is None or previous.ready != payload.ready:
                log.info("app %s: %s", "ready" if payload.ready else "not ready", payload.detail)
            if payload.terminating and not s.draining:
                s.draining = True
                s.drain_reason = "pod deleted" if payload.deleted else "deletionTimestamp set"
                log.info("pod is terminating (%s): draining", s.drain_reason)
        elif kind == "source-problem":
            if payload != s.source_problem:
                if payload:
                    log.warning("readiness source: %s (keeping the last known status)", payload)
                    if "forbidden" in payload:
                        self.observer.event(so.KUBERNETES_FORBIDDEN, payload)
                else:
                    log.info("readiness source recovered")
                # News for the gate (a 401/403 names what to fix): write now, not at the next heartbeat.
                self._next_heartbeat = self.clock()
            s.source_problem = payload
        elif kind == "confirmed":
            if payload == s.generation:
                self._next_reconfirm = self.clock() + self.config.reconfirm_interval
                if s.confirmed_generation != payload and self.metrics is not None:
                    self.metrics.confirmed(self.clock() - self._pushed_at)
                if s.confirmed_generation != payload and s.confirm_message:
                    log.info("catalog confirms the registration again")
                s.confirmed_generation = payload
                s.confirm_message = ""
        elif kind in ("confirm-pending", "confirm-lost"):
            generation, message = payload
            if generation == s.generation:
                if kind == "confirm-lost" and s.confirmed_generation == generation:
                    log.warning("lost confirmation: %s", message)
                    self.observer.event(so.CONFIRMATION_LOST, message)
                    s.confirmed_generation = -1
                s.confirm_message = message
        elif kind == "agent-lost":
            if payload in s.registered:
                log.warning("agent no longer knows %s: registering it again", payload)
                s.registered.discard(payload)
        elif kind in ("reconfigure", "config-problem"):
            self._apply_config(kind, payload)
        elif kind == "agent-back":
            # The agent answered again after failing: it may have restarted with or without
            # its state. Re-register (idempotent, keeps the same ID) and re-push the status,
            # once: every service's watcher reports the same restart, within one retry period.
            if payload < self._registered_all_at + RESTART_NOTICE_SPREAD:
                return
            log.info("agent at %s answers again: re-registering and re-pushing status", self.agent.address)
            s.registered.clear()
            self._retry_at = None
            self._retry_backoff.reset()

    # --- reconcile: make the agent match what we want -----------------------------------
    def wanted(self) -> tuple[CheckState, CheckState]:
        s = self.state
        if s.draining:
            terminating = CheckState(CRITICAL, TERMINATING)
            return terminating, terminating
        obs = s.observation
        assert obs is not None
        readiness = CheckState(PASSING if obs.ready else CRITICAL, obs.detail)
        return readiness, CheckState(PASSING, LIVENESS_RUNNING)

    def _reconcile(self) -> None:
        s = self.state
        now = self.clock()
        if s.observation is None or not self.config.services:  # nothing seen, or services not named yet
            if (s.observation is None and self._adopting and now >= self._next_refresh
                    and (self._retry_at is None or now >= self._retry_at)):
                self._keep_found_alive(now)
            self._maybe_heartbeat(now, force=s.observation is not None)
            return
        if not s.instances:
            try:
                s.instances = build_instances(self.config, s.observation.pod_uid, s.observation.container_ports)
                s.port_problem = None
            except ValueError as exc:
                if s.port_problem != str(exc):
                    log.error("%s", exc)
                s.port_problem = str(exc)
                self._maybe_heartbeat(now, force=True)
                return
        # A refused token is retried after a long wait, or at once when its file was rewritten.
        if self._retry_at is not None and now < self._retry_at and not self.agent.token_rotated():
            self._maybe_heartbeat(now)
            return
        self._retry_at = None
        try:
            changed = self._retire()
            changed |= self._register_missing()
            changed |= self._push_changes()
            if now >= self._next_refresh:
                self._refresh_ttls()
        except ConsulError as exc:
            self._agent_failed(exc)
        else:
            self._start_watchers()  # only now: before registration they would see a 404
            if s.agent_problem:
                log.info("agent at %s accepts our writes again", self.agent.address)
            s.agent_problem = None
            s.agent_problem_fatal = False
            self._retry_backoff.reset()
            if changed:
                s.generation += 1
                self._pushed_at = now
                self._confirmer.expect(self._expectation())
        if self._reconfirms() and now >= self._next_reconfirm:
            self._confirmer.expect(replace(self._expectation(), recheck=True))
            self._next_reconfirm = now + self.config.reconfirm_interval
        self._maybe_heartbeat(now, force=True)

    def _reconfirms(self) -> bool:
        """Continuous mode re-reads the catalog now and then; latch mode never does when idle."""
        s = self.state
        return self.config.gate_mode == "continuous" and s.confirmed_generation == s.generation

    def _expectation(self) -> Expectation:
        s = self.state
        readiness, liveness = self.wanted()
        return Expectation(
            generation=s.generation,
            instances=s.instances,
            checks={inst.service_id: {cid: cs.status for cid, cs in wanted_checks(inst, readiness, liveness).items()}
                    for inst in s.instances},
            removed=False,
        )

    def _keep_found_alive(self, now: float) -> None:
        """Before the first readiness observation: refresh, unchanged, the statuses a previous
        process of this pod left on the agent, so its instance is not reaped meanwhile."""
        try:
            if self._found is None:
                found: dict[str, CheckState] = {}
                for spec in self.config.services:
                    sid = service_id(self.config, spec.name)
                    if is_this_pod(self.agent.agent_service(sid)[1], self.config.pod_uid):
                        found.update(found_statuses(self.agent.service_checks(sid), check_ids(sid)))
                self._found = found
                if found:
                    log.info("adopting the registration on the agent: keeping its statuses (%s) until the first "
                             "readiness observation", ", ".join(f"{k} {v.status}" for k, v in sorted(found.items())))
            for check_id, check in self._found.items():
                self.agent.update_ttl_check(check_id, check.status, check.output)
        except ConsulNotFound:
            self._found = {}  # gone meanwhile: nothing left to keep alive
        except ConsulError as exc:
            delay = self._retry_backoff.next_delay()
            what = "look for this pod's instance on the agent" if self._found is None else "keep the adopted statuses alive"
            if self._last_error != str(exc):
                log.warning("cannot %s: %s; retrying in %.1fs", what, exc, delay)
            self._last_error = str(exc)
            self._retry_at = now + delay
            return
        self._retry_at = None
        self._retry_backoff.reset()
        if not self._found:
            self._adopting = False  # nothing of ours on the agent
        self._next_refresh = now + self.config.check_ttl / 3

    def _latch_adoptable(self, readiness: CheckState) -> bool:
        """The previous process confirmed, and the agent still holds every instance of this pod
        (its UID) with every check passing, and the app is ready now (sidecar.adoption)."""
        s = self.state
        uid = (s.observation.pod_uid if s.observation is not None else None) or self.config.pod_uid
        if readiness.status != PASSING or not s.instances:
            return False
        for inst in s.instances:
            if not is_this_pod(self.agent.agent_service(inst.service_id)[1], uid):
                return False
            ids = (inst.readiness_check_id, inst.liveness_check_id)
            if not all_passing(found_statuses(self.agent.service_checks(inst.service_id), ids), ids):
                return False
        return True

    def _register_missing(self) -> bool:
        s = self.state
        readiness, liveness = self.wanted()
        changed = False
        if self._adopt_latch:
            adopt = self._latch_adoptable(readiness)  # may raise: then tried again with the retry
            self._adopt_latch = False
            if adopt:
                s.ever_confirmed = True
                log.info("latch adopted: the previous sidecar process of this pod confirmed %s, and the agent "
                         "still holds it with this pod's UID, passing", ", ".join(i.name for i in s.instances))
        for inst in s.instances:
            if inst.service_id in s.registered:
                continue
            self.agent.register_service(registration_payload(inst, self.config))
            # Re-registration keeps the agent's old check status: push it explicitly.
            for check_id, check in wanted_checks(inst, readiness, liveness).items():
                self.agent.update_ttl_check(check_id, check.status, check.output)
                s.pushed[check_id] = check
            s.registered.add(inst.service_id)
            log.info("registered %s (%s:%d) with the agent", inst.service_id, inst.address, inst.port)
            self.observer.event(so.REGISTERED, f"registered {inst.service_id} ({inst.address}:{inst.port}) "
                                                f"with the Consul agent at {self.agent.address}")
            changed = True
        if changed:
            if len(s.registered) == len(s.instances):
                self._registered_all_at = self.clock()
            self._next_refresh = self.clock() + self.config.check_ttl / 3
            self._next_readiness_refresh = self.clock() + self.config.check_ttl * READINESS_TTL_FACTOR / 3
        return changed

    def _push_changes(self) -> bool:
        s = self.state
        readiness, liveness = self.wanted()
        changed = False
        for inst in s.instances:
            for check_id, check in wanted_checks(inst, readiness, liveness).items():
                if s.pushed.get(check_id) == check:
                    continue
                self._update_check(inst, check_id, check)
                if s.pushed.get(check_id, check).status != check.status:
                    log.info("%s: check %s -> %s (%s)", inst.service_id, check_id, check.status, check.output)
                s.pushed[check_id] = check
                changed = True
        return changed

    def _refresh_ttls(self) -> None:
        # Same status and output as last time: the agent only resets its TTL timer, no Raft write.
        now = self.clock()
        with_readiness = now >= self._next_readiness_refresh
        for inst in self.state.instances:
            check_ids = (inst.readiness_check_id, inst.liveness_check_id) if with_readiness else (inst.liveness_check_id,)
            for check_id in check_ids:
                check = self.state.pushed.get(check_id)
                if check is not None:
                    self._update_check(inst, check_id, check)
        self._next_refresh = now + self.config.check_ttl / 3
        if with_readiness:
            self._next_readiness_refresh = now + self.config.check_ttl * READINESS_TTL_FACTOR / 3

    def _update_check(self, inst: Instance, check_id: str, check: CheckState) -> None:
        try:
            self.agent.update_ttl_check(check_id, check.status, check.output)
        except (ConsulNotFound, ConsulServerError) as exc:
            # "CheckID ... does not have associated TTL" (500) or 404: the agent lost the
            # instance, e.g. it restarted without its data dir. Register it again.
            if "does not have associated TTL" in str(exc) or isinstance(exc, ConsulNotFound):
                log.warning("agent lost check %s: registering %s again", check_id, inst.service_id)
                self.state.registered.discard(inst.service_id)
                self._register_missing()
                return
            raise

    def _agent_failed(self, exc: ConsulError) -> None:
        s = self.state
        if isinstance(exc, (ConsulRejected, ConsulForbidden)):
            fix = "CONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN_FILE (ACL policy)" if isinstance(exc, ConsulForbidden) else "KATALOG_SERVICES, KATALOG_TAGS, KATALOG_META"
            if "Consul Enterprise feature" in str(exc):
                fix = "CONSUL_NAMESPACE / CONSUL_PARTITION: this agent is not Consul Enterprise"
            elif fix.startswith("KATALOG_SERVICES") and self.config.service_source != "environment":
                fix = f"the pod's {self.config.service_source}"
            text = f"Consul refused {', '.join(i.name for i in s.instances)}: {exc} (fix {fix})"
            delay = 60.0  # a permission or validation error does not fix itself: no retry storm
            s.agent_problem_fatal = True
        else:
            text = f"waiting for the agent at {self.agent.address}: {exc}"
            delay = self._retry_backoff.next_delay()
            if isinstance(exc, ConsulUnavailable) and self._watchers and all(w.failing for w in self._watchers):
                # The agent watchers probe it every 0.8-1.6 s and post "agent-back" when it
                # answers, which retries at once: a retry of our own would only add requests.
                delay = AGENT_DOWN_RETRY
        self._last_error = text
        if text != s.agent_problem:
            when = "when it answers again" if delay == AGENT_DOWN_RETRY else f"in {delay:.1f}s"
            log.error("%s; retrying %s", text, when)
            if s.agent_problem_fatal:
                self.observer.event(so.CONSUL_REFUSED, text)
        s.agent_problem = text
        self._retry_at = self.clock() + delay

    # --- status ---------------------------------------------------------------------------
    def gate_line(self) -> tuple[str, str]:
        """(phase, one line saying what the sidecar waits for). Ordered by what to fix first."""
        s = self.state
        if s.draining:
            return status_state.DRAINING, f"{s.drain_reason}: instances critical, deregistering"
        if s.config_problem and not s.instances:
            return status_state.CONFIG_ERROR, s.config_problem
        if s.port_problem:
            return status_state.SYNCING, s.port_problem
        if s.observation is None:
            if s.source_problem:
                return status_state.SYNCING, f"waiting for the first readiness observation: {s.source_problem}"
            return status_state.SYNCING, f"waiting for the first readiness observation ({self.config.readiness.source})"
        if not self.config.services:
            return status_state.SYNCING, "waiting for the pod's annotations"
        if s.agent_problem:
            return status_state.SYNCING, s.agent_problem
        # Services with a fixed health do not wait for the app.
        if not s.observation.ready and any(i.fixed_health is None for i in s.instances):
            return status_state.SYNCING, f"check critical because the app is not ready: {s.observation.detail}"
        if s.confirmed_generation != s.generation:
            return status_state.SYNCING, s.confirm_message or "waiting for the catalog to confirm the registration"
        summary = confirmed_summary(s.instances, {
            i.service_id: s.pushed[i.readiness_check_id].status for i in s.instances if i.readiness_check_id in s.pushed})
        if s.config_problem:
            summary += f"; annotation edit not applied: {s.config_problem}"
        return status_state.CONFIRMED, summary

    def _maybe_heartbeat(self, now: float, force: bool = False) -> None:
        if not (force or now >= self._next_heartbeat):
            return
        if self._final_message is not None:
            self._next_heartbeat = now + self.config.heartbeat_interval
            self._final_status(self._final_message)
        else:
            self._write_status()

    def _write_status(self) -> None:
        s = self.state
        phase, message = self.gate_line()
        if phase == status_state.CONFIRMED and not s.ever_confirmed:
            s.ever_confirmed = True
            log.info("confirmed: %s", message)
        if (phase, message) != (self._phase, self._last_logged):
            self._phase_since = time.time()
            if phase != status_state.CONFIRMED:
                log.info("%s: %s", phase, message)
            elif self._phase != status_state.CONFIRMED:
                self.observer.event(so.CONFIRMED, message)
        self._phase, self._last_logged = phase, message
        # Due again in one interval whether or not this write succeeds: never a spin on a full disk.
        self._next_heartbeat = self.clock() + self.config.heartbeat_interval
        self._write(
            phase=phase,
            message=message,
            since=self._phase_since,
            ever_confirmed=s.ever_confirmed,
            services=[self._service_status(inst) for inst in s.instances],
            source_problem=s.source_problem,
            last_error=self._last_error,
        )
        if self.metrics is not None:
            self.metrics.phase(phase)
        self._tell_gate(phase, message)

    def _write(self, **fields: Any) -> None:
        """A status write that cannot stop the sidecar or its drain.

        A full disk or an unwritable emptyDir is logged once (and when it recovers); syncing,
        TTL refreshes and the drain go on, and the gate fails on the stale heartbeat, which is
        what it is for. Only a status file that cannot be written at start is fatal (exit 3).
        """
        try:
            self.status.write(**fields)
        except OSError as exc:
            problem = str(exc.strerror or exc)
            if problem != self._status_problem:
                log.error("cannot write the status file %s: %s (carrying on: the registration is kept "
                          "and the drain still runs; the gate fails on the stale heartbeat)",
                          self.status.path, problem)
            self._status_problem = problem
            return
        if self._status_problem is not None:
            log.info("the status file %s is writable again", self.status.path)
            self._status_problem = None

    def _tell_gate(self, phase: str, message: str) -> None:
        """The observers get the verdict readiness-gate would give (the same evaluate())."""
        now = time.time()
        passes, line = status_state.evaluate(
            {"phase": phase, "message": message, "gate_mode": self.config.gate_mode,
             "ever_confirmed": self.state.ever_confirmed, "updated_at": now, "stale_after": float("inf")},
            now, lambda _pid: True)
        self.observer.gate(passes, phase, line)

    def _service_status(self, inst: Instance) -> dict[str, Any]:
        s = self.state
        readiness = s.pushed.get(inst.readiness_check_id)
        return {
            "name": inst.name,
            "id": inst.service_id,
            "address": f"{inst.address}:{inst.port}",
            "registered": inst.service_id in s.registered,
            "readiness": readiness.status if readiness else None,
            "readiness_output": readiness.output if readiness else None,
            "confirmed": s.confirmed_generation == s.generation and inst.service_id in s.registered,
        }

    def _start_watchers(self) -> None:
        watched = {w.service_id for w in self._watchers}
        for inst in self.state.instances:
            if inst.service_id in watched:
                continue
            watcher = AgentWatcher(self.agent, inst.service_id, self._post, supervisor=self.supervisor)
            watcher.start()
            self._watchers.append(watcher)

    # --- configuration changes (the pod's annotations were edited) --------------------------
    def _apply_config(self, kind: str, payload: Any) -> None:
        """The one entry point for a new configuration: instances whose registration differs
        are registered again (status re-pushed, confirmed again), services no longer
        configured are deregistered. An invalid edit keeps the last valid registration."""
        s = self.state
        if s.draining:
            return
        if kind == "config-problem":
            if payload and payload != s.config_problem:
                kept = "keeping the registration as it was" if s.instances else "nothing registered"
                log.error("config error in the pod's annotations (%s): %s", kept, payload)
            elif not payload and s.config_problem:
                log.info("the pod's annotations are valid again")
            s.config_problem = payload
            return
        config: Config = payload
        previous, self.config = self.config, config
        s.config_problem = None
        obs = s.observation
        if obs is None or not s.instances:
            s.instances, s.port_problem = (), None  # built from the new config by _reconcile
            log.info("services from the %s: %s", config.service_source, ", ".join(x.name for x in config.services))
            return
        try:
            instances = build_instances(config, obs.pod_uid, obs.container_ports)
        except ValueError as exc:
            self.config, s.config_problem = previous, str(exc)
            log.error("config error in the pod's annotations (keeping the registration as it was): %s", exc)
            return
        before = {i.service_id: i for i in s.instances}
        for inst in instances:
            old = before.pop(inst.service_id, None)
            if old is None or registration_payload(old, previous) != registration_payload(inst, config):
                s.registered.discard(inst.service_id)
        s.retired.extend(before.values())
        s.instances = instances
        log.info("configuration changed (services from %s): %s", config.service_source,
                 ", ".join(f"{i.name} {i.address}:{i.port}" for i in instances))

    def _retire(self) -> bool:
        """Deregister instances no longer configured; True if any was."""
        s = self.state
        changed = False
        while s.retired:
            inst = s.retired[0]
            for watcher in [w for w in self._watchers if w.service_id == inst.service_id]:
                watcher.stop()
                self._watchers.remove(watcher)
            try:
                self.agent.deregister_service(inst.service_id)
            except ConsulNotFound:
                pass
            s.retired.pop(0)
            s.registered.discard(inst.service_id)
            for check_id in (inst.readiness_check_id, inst.liveness_check_id):
                s.pushed.pop(check_id, None)
            log.info("deregistered %s: no longer configured", inst.service_id)
            changed = True
        return changed

    # --- termination --------------------------------------------------------------------
    def _drain_and_deregister(self, reason: str, since: float | None = None) -> int:
        """Checks critical, confirmed in the catalog; deregister, removal confirmed; bounded.

        The budget counts from `since` (the signal), so time the loop spent finishing an agent
        call is not added on top; the drain still gets a last second to try its writes.
        """
        s = self.state
        obs = s.observation
        budget = self.config.drain_timeout
        if obs is not None and obs.grace_period:
            budget = min(budget, max(1.0, obs.grace_period - 2.0))
        now = self.clock()
        deadline = max((now if since is None else since) + budget, now + min(1.0, budget))
        if not s.draining:
            s.draining, s.drain_reason = True, reason
            log.info("%s: draining %d instance(s) within %.1fs", reason, len(s.instances), deadline - now)
        self.observer.event(so.DRAINING, f"{s.drain_reason}: instances critical in Consul, then deregistered")
        self._confirmer.stop()
        for watcher in self._watchers:
            watcher.stop()
        self._write_status()
        if not s.instances:
            log.info("nothing was registered: nothing to drain")
            self._final_status("stopped: nothing was registered")
            return EXIT_OK
        result = Drainer(self.agent, self.clock, deadline).run(s.instances)
        if result.complete:
            self.observer.event(so.DEREGISTERED, f"drained and deregistered {', '.join(i.service_id for i in s.instances)}")
            self._final_status("drained and deregistered")
            return EXIT_OK
        # Say what is really left, and to whom: an instance the agent removed needs no reaper.
        if result.left:
            log.error(
                "drain incomplete before the deadline: the liveness check goes critical within %s "
                "and the agent reaps the instance %s after that (still registered with the agent: %s)",
                f"{self.config.check_ttl:g}s", f"{self.config.deregister_critical_after:g}s", ", ".join(result.left),
            )
        if result.deregistered:
            log.error(
                "drain incomplete before the deadline: the agent deregistered %s but the catalog did not "
                "confirm the removal; the agent removes it from the catalog once it reaches the servers",
                ", ".join(result.deregistered),
            )
        self.observer.event(so.DRAIN_INCOMPLETE, "drain incomplete before the deadline: " + (
            "left to the TTL and the agent's reaper" if result.left else "removal from the catalog not confirmed"))
        if result.left:
            self._final_status("drain incomplete: left to the TTL and the agent's reaper")
        else:
            self._final_status("deregistered from the agent; removal from the catalog not confirmed yet")
        return EXIT_DRAIN_INCOMPLETE

    def _final_status(self, message: str) -> None:
        self._final_message = message
        self._write(phase=status_state.STOPPED, message=message, since=time.time(),
                    ever_confirmed=self.state.ever_confirmed, services=[], source_problem=None)
        self._tell_gate(status_state.STOPPED, message)
