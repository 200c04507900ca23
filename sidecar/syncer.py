"""The sync loop: the driver of the core (sidecar.core), and the one place that writes to the agent.

Everything else (readiness source, agent watches, confirmer, signals) posts events into one
queue; this loop hands them to the core in order and carries out the actions it returns, so
there are no races between a readiness flip, a re-registration and a drain. The core asks for
one agent call at a time; the loop makes it and queues its answer behind whatever came
meanwhile, so a SIGTERM during a slow call is handled before the next call. Between events the loop only wakes for the core's next deadline (TTL refresh,
heartbeat, retry), never to poll.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from sidecar import observers as so
from sidecar.config import Config
from sidecar.consul.api import ConsulAgent
from sidecar.consul.calls import Caller, failure_of
from sidecar.consul.watchers import AgentWatcher, Confirmer
from sidecar.core import actions as a
from sidecar.core import events as e
from sidecar.core.machine import Core
from sidecar.core.terminate import EXIT_DRAIN_INCOMPLETE, EXIT_OK
from sidecar.metrics import Metrics
from sidecar.readiness import Observation, on_clock
from sidecar.status import StatusWriter
from sidecar.supervision import Supervisor

__all__ = ["EXIT_DRAIN_INCOMPLETE", "EXIT_OK", "Syncer"]

log = logging.getLogger("katalog.sync")


class CallInterrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt: no `except Exception` swallows it
    """Raised by the signal handler into an agent call made by the loop."""

READINESS_WORKER = "readiness"  # the supervised readiness source (sidecar.cli)


class Syncer:
    def __init__(self, config: Config, agent: ConsulAgent, status: StatusWriter, *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 metrics: Metrics | None = None, supervisor: Supervisor | None = None, previous_ever_confirmed: bool = False,
                 observer: so.SyncObserver | None = None) -> None:
        """`previous_ever_confirmed`: the previous process of this pod had confirmed (sidecar.adoption)."""
        self.core = Core(config, agent_address=agent.address)
        self.supervisor = supervisor or Supervisor()  # runs the watcher threads below
        self.agent = agent
        self.status = status
        self.clock = clock
        self.wall = wall
        self.metrics = metrics
        # Told about the gate's verdict and each transition (pod condition, Events); never blocks.
        self.observer: so.SyncObserver = observer or so.NullObserver()
        # SimpleQueue.put is reentrant, so a signal handler may post into it safely.
        self._events: queue.SimpleQueue[e.Event] = queue.SimpleQueue()
        self._previous_ever_confirmed = previous_ever_confirmed
        self._confirmer = Confirmer(agent, config.confirm_wait, self._from_reader, supervisor=self.supervisor)
        self._watchers: dict[str, AgentWatcher] = {}
        self._caller = Caller(agent, clock=clock)
        self._status_problem: str | None = None
        self._last_fields: dict[str, Any] | None = None
        self._rewrite = False
        self._worker_problem: str | None = None
        self._in_call = False  # an agent call is under way in the loop (see on_signal)
        self._exit: int | None = None
        self._stop_sources = threading.Event()
        self.last_loop = clock()  # for the liveness endpoint: a stuck loop stops updating it

    @property
    def config(self) -> Config:
        return self.core.config

    # --- inputs, from other threads -------------------------------------------------------
    def _post(self, event: e.Event) -> None:
        self._events.put(event)

    def observe(self, observation: Observation) -> None:
        # The deletionTimestamp onto the core's clock here, as it arrives: the core reads no clock.
        self._post(e.PodObserved(on_clock(observation, self.clock(), self.wall())))

    def problem(self, message: str | None) -> None:
        self._post(e.SourceProblem(message))

    def on_signal(self, reason: str, at: float | None = None) -> None:
        """The SIGTERM/SIGINT handler (sidecar.cli). Handlers run in the main thread, which is
        this loop's: if it is inside an agent call, that call is abandoned (the exception
        unwinds it), so the drain starts at once, not after the call's timeout."""
        self.request_shutdown(reason, at)
        if self._in_call and threading.current_thread() is threading.main_thread():
            self._in_call = False
            raise CallInterrupted(reason)

    def _call(self, call: a.Call) -> e.CallSucceeded | e.CallFailed:
        self._in_call = True
        try:
            return self._caller.perform(call)
        except CallInterrupted as exc:
            return e.CallFailed(call.request_id, e.Failure(e.FailureKind.UNAVAILABLE, f"abandoned on {exc}"))
        finally:
            self._in_call = False

    def request_shutdown(self, reason: str = "SIGTERM", at: float | None = None) -> None:
        """`at`: when the signal came (this loop's clock; default now): the kubelet's grace
        period runs from it. Safe in a signal handler: SimpleQueue.put is reentrant."""
        self._post(e.Terminate(reason, self.clock() if at is None else at))

    def reconfigure(self, config: Config) -> None:
        """A new configuration (the pod's annotations changed): re-register what differs."""
        self._post(e.ConfigChanged(config))

    def config_problem(self, problems: list[str] | None) -> None:
        """The pod's annotations make no valid configuration (None: that is over)."""
        self._post(e.ConfigInvalid(tuple(problems or ())))

    def rewrite_status(self) -> None:
        """Something the status file shows besides the core's fields changed (the pod condition
        this process set): write it again now, not at the next heartbeat."""
        self._rewrite = True
        self._post(e.Tick())

    def _from_reader(self, kind: str, payload: Any) -> None:
        """What the confirmer and the agent watches post (sidecar.consul.watchers)."""
        if kind == "confirmed":
            self._post(e.ConfirmResult(payload, "confirmed"))
        elif kind in ("confirm-pending", "confirm-lost"):
            generation, message, unreadable = payload
            self._post(e.ConfirmResult(generation, kind.removeprefix("confirm-"), message, unreadable))
        elif kind == "agent-seen":
            sid, present, uid = payload
            self._post(e.AgentSeen(sid, present, uid))
        elif kind == "agent-failing":
            sid, exc = payload
            self._post(e.AgentReadFailed(sid, failure_of(exc)))

    # --- the loop -----------------------------------------------------------------------
    def run(self, stop_sources: threading.Event) -> int:
        """Runs until SIGTERM; returns the process exit code.

        A deletionTimestamp drains and deregisters at once (a native sidecar gets SIGTERM only
        after the app has exited, too late to drain); the process then idles, keeping the
        status file fresh and the gate failing, until SIGTERM.
        """
        self._stop_sources = stop_sources
        self._confirmer.start()
        try:
            self._handle(e.Start(self._previous_ever_confirmed))
            while self._exit is None:
                self._handle(self._next_event())
            return self._exit
        finally:
            self._confirmer.stop()
            for watcher in self._watchers.values():
                watcher.stop()

    def _next_event(self) -> e.Event:
        timeout = max(0.0, self.core.next_deadline() - self.clock())
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return e.Tick()

    def _handle(self, event: e.Event) -> None:
        self.last_loop = self.clock()
        self._check_readiness_worker()
        if self._rewrite and self._last_fields is not None:
            self._rewrite = False
            self._write(dict(self._last_fields))
        if isinstance(event, e.Tick) and self.core.ctx.timers.retry_at is not None and self.agent.token_rotated():
            self._carry_out(self.core.handle(e.TokenRotated(), self.clock()))
        self._carry_out(self.core.handle(event, self.clock()))

    def _carry_out(self, actions: list[a.Action | a.Call]) -> None:
        # Log lines the core emits before its first call ("app not ready: ...") are written just
        # after that call, stamped with the time they were emitted: formatting and writing one
        # took 0.15 ms of a 4 ms readiness flip, ahead of its PUT (BENCHMARKS.md, where a flip's
        # milliseconds go). A slow agent delays the line, not its timestamp, by the call (at
        # most its timeout). Nothing else changes order.
        held: list[logging.LogRecord] | None = [] if any(isinstance(x, a.CALLS) for x in actions) else None
        for action in actions:
            if isinstance(action, a.CALLS):
                # In this thread, the answer queued behind whatever came meanwhile: a SIGTERM
                # during a slow call is handled before the next call, its budget from the signal.
                # (A caller thread cost a thread wake-up on every flip: 0.2 -> 2-27 ms at p50 on
                # a loaded node.)
                try:
                    self._post(self._call(action))
                finally:
                    _write_logs(held or [])
                    held = None
            elif isinstance(action, a.Log):
                if held is not None:
                    if logging.getLogger(action.logger).isEnabledFor(action.level):
                        held.append(_record(action))
                else:
                    logging.getLogger(action.logger).log(action.level, "%s", action.message)
            elif isinstance(action, a.WriteStatus):
                self._write_status(dict(action.fields))
            elif isinstance(action, a.GateVerdict):
                self.observer.gate(action.passes, action.phase, action.line, action.reason)
            elif isinstance(action, a.Notify):
                self.observer.event(action.reason, action.message)
            elif isinstance(action, a.Confirm):
                self._confirmer.expect(action.expectation)
            elif isinstance(action, a.StopConfirming):
                self._confirmer.stop()
            elif isinstance(action, a.WatchAgent):
                self._watch(action.service_id)
            elif isinstance(action, a.UnwatchAgent):
                watcher = self._watchers.pop(action.service_id, None)
                if watcher is not None:
                    watcher.stop()
            elif isinstance(action, a.RecordConfirmed):
                if self.metrics is not None:
                    self.metrics.confirmed(action.latency)
            elif isinstance(action, a.PhaseChanged):
                log.debug("phase %s -> %s (%s)", action.old, action.new, action.why)
            elif isinstance(action, a.StopSources):
                self._stop_sources.set()
            elif isinstance(action, a.Exit):
                self._exit = action.code

    def _check_readiness_worker(self) -> None:
        """Tell the core when the readiness worker starts or stops crash-looping."""
        status = next((w for w in self.supervisor.statuses() if w.name == READINESS_WORKER), None)
        problem = None
        if status is not None and status.crash_looping:
            problem = f"last failure: {status.last_error}"
        if problem != self._worker_problem:
            self._worker_problem = problem
            self._carry_out(self.core.handle(e.WorkerDown(READINESS_WORKER, problem), self.clock()))

    def _watch(self, service_id: str) -> None:
        if service_id not in self._watchers:
            watcher = AgentWatcher(self.agent, service_id, self._from_reader, supervisor=self.supervisor)
            self._watchers[service_id] = watcher
            watcher.start()

    # --- the status file ------------------------------------------------------------------
    def _write_status(self, fields: dict[str, Any]) -> None:
        """A status write that cannot stop the sidecar or its drain.

        A full disk or an unwritable emptyDir is logged once (and when it recovers); syncing,
        TTL refreshes and the drain go on, and the gate fails on the stale heartbeat, which is
        what it is for. Only a status file that cannot be written at start is fatal (exit 3).
        """
        fields["since"] = time.time() - (self.clock() - fields["since"])  # the core's clock -> wall time
        if self.metrics is not None and fields["phase"] != "stopped":
            self.metrics.phase(fields["phase"])
        self._last_fields = dict(fields)
        self._write(fields)

    def _write(self, fields: dict[str, Any]) -> None:
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


def _record(action: a.Log) -> logging.LogRecord:
    """The line as logging would make it now (its time), to be written later by _write_logs."""
    logger = logging.getLogger(action.logger)
    return logger.makeRecord(logger.name, action.level, __file__, 0, "%s", (action.message,), None)


def _write_logs(records: list[logging.LogRecord]) -> None:
    for record in records:
        logging.getLogger(record.name).handle(record)
