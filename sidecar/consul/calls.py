"""Carrying out the core's agent calls (sidecar.core.actions.Call) against the real agent.

One function per direction: `perform` makes a call and turns its outcome into the event the
core expects back; `run_task` drives a core task to its end synchronously (the drain, outside
the sync loop: the scale benchmark and `Drainer`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator

from sidecar.adoption import found_statuses
from sidecar.consul.api import ConsulAgent
from sidecar.consul.catalog_view import CatalogReads, InstanceWatch
from sidecar.consul.watchers import pod_uid
from sidecar.core import actions as a
from sidecar.core import events as e
from sidecar.core.state import Answer, Sleep, TaskContext
from sidecar.errors import (
    ConsulError,
    ConsulForbidden,
    ConsulNotFound,
    ConsulRejected,
    ConsulServerError,
    ConsulTimeout,
    ConsulTLSError,
    ConsulUnavailable,
)
from sidecar.registration import check_ids


def failure_of(exc: ConsulError) -> e.Failure:
    """The core's name for a failed call (sidecar.errors by type)."""
    if isinstance(exc, (ConsulUnavailable, ConsulTimeout, ConsulTLSError)):
        kind = e.FailureKind.UNAVAILABLE
    elif isinstance(exc, ConsulServerError):
        kind = e.FailureKind.NO_TTL if "does not have associated TTL" in str(exc) else e.FailureKind.SERVER_ERROR
    elif isinstance(exc, ConsulNotFound):
        kind = e.FailureKind.NOT_FOUND
    elif isinstance(exc, ConsulForbidden):
        kind = e.FailureKind.FORBIDDEN
    elif isinstance(exc, ConsulRejected):
        kind = e.FailureKind.REJECTED
    else:
        kind = e.FailureKind.OTHER
    return e.Failure(kind, str(exc))


class Caller:
    """Makes the core's calls; keeps one catalog watch per instance for the drain's reads."""

    def __init__(self, agent: ConsulAgent, reads: CatalogReads | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._agent = agent
        self._reads: CatalogReads = reads if reads is not None else agent
        self._clock = clock
        self._catalog: dict[str, InstanceWatch] = {}

    def perform(self, call: a.Call) -> e.CallSucceeded | e.CallFailed:
        try:
            return e.CallSucceeded(call.request_id, self._perform(call))
        except ConsulError as exc:
            return e.CallFailed(call.request_id, failure_of(exc))

    def _perform(self, call: a.Call) -> object:
        agent, timeout = self._agent, call.timeout
        if isinstance(call, a.Register):
            agent.register_service(call.payload, timeout=timeout)
        elif isinstance(call, a.UpdateCheck):
            agent.update_ttl_check(call.check_id, call.status, call.output, timeout=timeout)
        elif isinstance(call, a.Deregister):
            agent.deregister_service(call.service_id, timeout=timeout)
        elif isinstance(call, a.ReadAgentInstance):
            service = agent.agent_service(call.service_id, timeout=timeout)[1]
            if service is None:
                return e.AgentInstance(False)
            checks = {}
            if call.with_checks:
                checks = found_statuses(agent.service_checks(call.service_id, timeout=timeout), check_ids(call.service_id))
            port = service.get("Port")
            return e.AgentInstance(True, pod_uid(service), checks, port if isinstance(port, int) else None)
        elif isinstance(call, a.ReadCatalog):
            # This pod's instance on this agent's node only (sidecar.consul.catalog_view).
            watch = self._catalog.setdefault(call.instance.service_id, InstanceWatch(self._reads, call.instance))
            limit = call.timeout if call.timeout is not None else float("inf")
            started = self._clock()
            time.sleep(max(0.0, min(watch.delay(), limit)))  # blocking-query hygiene
            left = None if call.timeout is None else max(0.1, call.timeout - (self._clock() - started))
            if call.checks is None:
                return watch.removed(call.wait, left)
            return watch.drained(call.checks, call.wait, left)
        return None


def run_task(task: Generator[a.Call | Sleep, Answer, object], ctx: TaskContext, caller: Caller,
             clock: Callable[[], float]) -> object:
    """Drive a core task to its end, synchronously: calls made, sleeps slept, logs logged."""
    answer: Answer = None
    ctx.now = clock()
    try:
        step = next(task)
        while True:
            _flush(ctx)
            if isinstance(step, Sleep):
                time.sleep(max(0.0, step.until - clock()))
                answer = None
            else:
                answer = caller.perform(step)
            ctx.now = clock()
            step = task.send(answer)
    except StopIteration as done:
        _flush(ctx)
        return done.value


def _flush(ctx: TaskContext) -> None:
    for action in ctx.out:
        if isinstance(action, a.Log):
            logging.getLogger(action.logger).log(action.level, "%s", action.message)
    ctx.out = []

