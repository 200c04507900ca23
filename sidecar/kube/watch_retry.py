"""The pod watch's retry policy (sidecar.kube.source): when a request to the API fails, what the
sink is told and how long to wait; when a watch stream keeps ending, how soon to start the next.
Logs and sink problems only on changes, so a lasting fault is one line."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from sidecar.backoff import Backoff
from sidecar.errors import KubernetesError
from sidecar.readiness import ReadinessSink

log = logging.getLogger("katalog.kube")

BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
# While the API server does not answer at all, retry at least this often: a refused connection
# costs it nothing, and its return is then noticed within seconds, not after a 30 s backoff
# chosen during a long outage. Answers it does give (5xx, 429) back off up to BACKOFF_MAX.
RECONNECT_MAX = 5.0
# A first 403 (or 400) is retried this soon (half of it fixed), and repeated ones back off
# exponentially from there (1-2 s, 2-4 s, 4-8 s, ...) to backoff_max: a readiness flip right after
# a transient refusal must not wait a whole backoff_max to reach Consul, also when the refusal
# outlasts the first retry (a 2 s RBAC blip met the 1-2 s retry and then waited 48-60 s: issue 18
# defect 7, simulator seeds 8, 9, 1004), while a lasting refusal still costs one request per
# backoff_max after a few tries.
FIRST_REFUSAL_RETRY = 2.0


class KubeMetrics(Protocol):
    def request_error(self, kind: str) -> None: ...

    def watch_restart(self, reason: str) -> None: ...


class NoMetrics:
    """The default when nobody collects metrics."""

    def request_error(self, kind: str) -> None:
        pass

    def watch_restart(self, reason: str) -> None:
        pass


class WatchRetry:
    def __init__(self, pod: str, *, backoff_initial: float, backoff_max: float, reconnect_max: float,
                 rng: Callable[[], float], metrics: KubeMetrics) -> None:
        self._pod = pod  # namespace/name, for log lines
        self.backoff_max = backoff_max
        self._failure_backoff = Backoff(backoff_initial, backoff_max, rng)
        self._reconnect_backoff = Backoff(backoff_initial, min(reconnect_max, backoff_max), rng)
        self._restart_backoff = Backoff(backoff_initial, backoff_max, rng)
        self._refusal_backoff = Backoff(FIRST_REFUSAL_RETRY, backoff_max, rng)
        self._metrics = metrics
        self._problem: str | None = None
        self._fruitless = 0  # watch restarts (cut off, 410) in a row without an event between
        self._state = "starting"  # "connected" or "failing:<kind>": logs only on changes

    # -- requests -------------------------------------------------------------------------

    def connected(self, sink: ReadinessSink) -> None:
        self._failure_backoff.reset()
        self._reconnect_backoff.reset()
        self._refusal_backoff.reset()
        if self._state != "connected":
            if self._state == "starting":
                log.info("watching pod %s through the Kubernetes API", self._pod)
            else:
                log.info("Kubernetes API reachable again; watching pod %s", self._pod)
            self._state = "connected"
        if self._problem is not None:
            self._problem = None
            sink.problem(None)

    def failed(self, exc: KubernetesError, sink: ReadinessSink) -> float:
        """Report the failure (logging only changes) and return how long to back off."""
        kind, problem, permanent = classify(exc)
        self._metrics.request_error(kind)
        state = f"failing:{kind}:{problem}" if permanent else f"failing:{kind}"
        if not permanent:
            self._refusal_backoff.reset()  # refusals in a row back off; another failure ends the row
        if state != self._state:
            if permanent:
                log.error("%s; retrying within %gs, backing off to every %gs while refused", problem,
                          FIRST_REFUSAL_RETRY, self.backoff_max)
            else:
                log.warning("%s; keeping the last known readiness and retrying with backoff", problem)
            self._state = state
        if problem != self._problem:
            self._problem = problem
            sink.problem(problem)
        if permanent:
            # Permissions or a bad request: a refusal may be transient (an RBAC update rolling
            # out, an authorizer webhook's hiccup), so the first is retried soon; repeated ones
            # need a change of configuration: then do not storm (capped exponential backoff).
            return self._refusal_backoff.next_delay()
        if exc.reason == "unreachable":
            return self._reconnect_backoff.next_delay()  # no answer at all: see RECONNECT_MAX
        # The server answers again (if only with errors): the reconnect delay starts afresh.
        self._reconnect_backoff.reset()
        return self._failure_backoff.next_delay()

    # -- watch streams ----------------------------------------------------------------------

    def restart_delay(self) -> float | None:
        """Before a watch restarts (cut off, ended, 410): None at once, else how long to wait.
        Restarting again before a single event (a server that keeps cutting streams or answering
        410) backs off, so it cannot become a hot loop."""
        delay = self._restart_backoff.next_delay() if self._fruitless else None
        self._fruitless += 1
        return delay

    def stream_ended(self, lasted: float) -> None:
        """A long stream: restarting at once costs one request per backoff_max at most."""
        if lasted >= self.backoff_max:
            self.stream_works()

    def stream_works(self) -> None:
        """An event came: the next restart need not wait."""
        self._fruitless = 0
        self._restart_backoff.reset()


def classify(exc: KubernetesError) -> tuple[str, str, bool]:
    """(metrics kind, problem text for the sink, whether only a config change can fix it)."""
    status = exc.status
    if status is None:
        return "unreachable", f"Kubernetes API unreachable: {exc}", False
    if status == 401:
        return "unauthorized", str(exc), False  # the token may be rotated any moment: keep trying
    if status == 403:
        return "forbidden", str(exc), True
    if status == 429 or status >= 500:
        return "server_error", f"Kubernetes API unreachable: {exc}", False
    return "client_error", f"Kubernetes API rejected the request: {exc}", True
