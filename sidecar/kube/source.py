"""The default readiness source: watch the sidecar's own pod through the Kubernetes API.

Three layers, as in kopf: `run` reconnects forever with capped, jittered backoff; `_list`
and `_watch` keep one list-then-watch going (relist only on 410); `_handle` deals with one
event. While the API cannot be reached the sink gets a problem text but no not-ready
observation: the sync loop keeps the last known status, so an API outage never pulls
healthy pods out of Consul.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from sidecar import annotations as pod_annotations
from sidecar.config import Config
from sidecar.errors import ConfigError, KubernetesError
from sidecar.kube.client import KubeClient, StreamBrokenError, WatchInactiveError
from sidecar.kube.pod_readiness import container_ports, deletion_time, grace_seconds, observe_pod
from sidecar.kube.watch_retry import (
    BACKOFF_INITIAL,
    BACKOFF_MAX,
    FIRST_REFUSAL_RETRY,
    RECONNECT_MAX,
    KubeMetrics,
    NoMetrics,
    WatchRetry,
)
from sidecar.readiness import Observation, ReadinessSink

__all__ = ["BACKOFF_INITIAL", "BACKOFF_MAX", "FIRST_REFUSAL_RETRY", "RECONNECT_MAX", "WATCH_RESTART_REASONS",
           "KubeMetrics", "KubernetesSource", "NoMetrics", "wait_or_stop"]

log = logging.getLogger("katalog.kube")

WATCH_TIMEOUT = 300.0  # server-side watch length; client-go picks 5-10 min the same way
# The reasons of katalog_watch_restarts_total (the README lists them).
WATCH_RESTART_REASONS = ("expired", "inactivity", "broken", "ended")


def wait_or_stop(stop: threading.Event, seconds: float) -> None:
    """The default backoff sleep: returns at once when `stop` is set."""
    stop.wait(seconds)


class _ExpiredError(Exception):
    """The resourceVersion is too old (410): list again."""


class _PodGoneError(Exception):
    """The pod is deleted (or replaced by a new one of the same name): stop watching."""


class KubernetesSource:
    """Lists then watches one pod and reports its app readiness to a sink. `run` once per instance."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        pod_name: str,
        own_container: str,
        excluded: Collection[str],
        inactivity_timeout: float,
        *,
        expected_uid: str | None = None,
        watch_timeout: float = WATCH_TIMEOUT,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        sleep: Callable[[threading.Event, float], None] = wait_or_stop,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        reconnect_max: float = RECONNECT_MAX,
        metrics: KubeMetrics | None = None,
        annotated_exclusions: bool = False,
    ) -> None:
        self._client = client
        # With services from the pod's annotations, their excluded containers count too, and
        # an edit to them applies to the very event that carries it.
        self._annotated_exclusions = annotated_exclusions
        self._namespace = namespace
        self._name = pod_name
        self._own = own_container
        self._excluded = tuple(excluded)
        # The client applies the timeout; kept here to describe it in logs.
        self._inactivity = inactivity_timeout
        self._watch_timeout = watch_timeout
        self._sleep = sleep
        self._rng = rng
        self._clock = clock
        self._metrics: KubeMetrics = metrics or NoMetrics()
        # What to report and how long to wait on failures (sidecar.kube.watch_retry).
        self._retry = WatchRetry(self.pod, backoff_initial=backoff_initial, backoff_max=backoff_max,
                                 reconnect_max=reconnect_max, rng=rng, metrics=self._metrics)
        self._uid = expected_uid
        self._rv: str | None = None
        self._last: Observation | None = None
        self._said: set[str] = set()  # one-time log lines (unknown event types)
        self._closer: threading.Thread | None = None
        # The first observation waits until the watch is open too: with a Role that allows
        # list but not watch, registering would follow a pod the sidecar cannot see change.
        self._first: dict[str, Any] | None = None

    @classmethod
    def from_config(cls, config: Config, metrics: KubeMetrics | None = None) -> KubernetesSource:
        k = config.kubernetes
        if not k.api_url:
            raise ConfigError(["KATALOG_KUBE_API_URL is not set and not running in a cluster"])
        client = KubeClient(k.api_url, k.token_file, k.ca_file, k.timeout, watch_inactivity=k.watch_inactivity)
        return cls(
            client,
            config.pod_namespace,
            config.pod_name,
            config.readiness.container_name,
            config.readiness.exclude_containers,
            k.watch_inactivity,
            expected_uid=config.pod_uid,
            metrics=metrics,
            annotated_exclusions=config.service_source != "environment",
        )

    @property
    def pod(self) -> str:
        return f"{self._namespace}/{self._name}"

    def run(self, stop: threading.Event, sink: ReadinessSink) -> None:
        """Report until `stop` is set or the pod is deleted."""
        # A blocked read ignores `stop`; closing the client from another thread ends it at once.
        # Once per instance: the supervisor may call run() again after a failure.
        if self._closer is None:
            self._closer = threading.Thread(target=self._close_on, args=(stop,), name="kube-watch-stop", daemon=True)
            self._closer.start()
        while not stop.is_set():
            try:
                rv = self._rv if self._rv is not None else self._list(sink)
                self._watch(stop, sink, rv)
            except _PodGoneError:
                return
            except _ExpiredError:
                self._relist(stop)
            except KubernetesError as exc:
                if stop.is_set():
                    return
                if exc.status == 410:  # HTTP 410 on a watch: same as an ERROR event with 410
                    self._relist(stop)
                else:
                    self._sleep(stop, self._on_failure(exc, sink))

    # -- list and watch ---------------------------------------------------------------

    def _list(self, sink: ReadinessSink) -> str:
        pod, rv = self._client.list_pod(self._namespace, self._name)
        self._connected(sink)
        if pod is None:
            log.warning("pod %s not found: deleted, or POD_NAME/POD_NAMESPACE are wrong", self.pod)
            sink.observe(Observation(ready=False, detail="pod not found", terminating=True, deleted=True, pod_uid=self._uid))
            raise _PodGoneError()
        if self._is_our_pod(pod):
            if self._last is None:
                self._first = pod  # reported once the watch is open (see __init__)
            else:
                self._pod_changed(pod, sink)
        self._rv = rv
        return rv

    def _relist(self, stop: threading.Event) -> None:
        log.info("resourceVersion %s of pod %s expired; listing the pod again", self._rv, self.pod)
        self._metrics.watch_restart("expired")
        self._rv = None
        self._fruitless_restart(stop)

    def _fruitless_restart(self, stop: threading.Event) -> None:
        delay = self._retry.restart_delay()
        if delay is not None:
            self._sleep(stop, delay)

    def _watch(self, stop: threading.Event, sink: ReadinessSink, rv: str) -> None:
        """One watch stream from `rv`. Returns when it ends normally, goes silent or breaks."""
        timeout = max(1, round(self._watch_timeout * (0.9 + 0.2 * self._rng())))  # jitter: no herd
        events = self._client.watch_pod(self._namespace, self._name, rv, timeout)
        began = self._clock()
        self._connected(sink)
        if self._first is not None:
            self._pod_changed(self._first, sink)
            self._first = None  # only once delivered: a restarted run() delivers it again
        try:
            with contextlib.closing(events):
                for event in events:
                    self._handle(event, sink)
        except WatchInactiveError:
            # Silence is not an outage: a real API server sends bookmarks only once something
            # changed since the watch began, so a quiet pod's watch ends here every inactivity
            # period. Resume from the same resourceVersion at once; a failing reconnect reports.
            log.debug("watch of pod %s silent for %gs; restarting it", self.pod, self._inactivity)
            self._metrics.watch_restart("inactivity")
            return
        except StreamBrokenError:
            self._metrics.watch_restart("broken")
            if stop.is_set():
                return
            log.debug("watch of pod %s was cut off; restarting it", self.pod)
            self._stream_ended(stop, began)
            return
        # Ended by the server after timeoutSeconds, or by a proxy at any moment.
        self._metrics.watch_restart("ended")
        if not stop.is_set():
            self._stream_ended(stop, began)

    def _stream_ended(self, stop: threading.Event, began: float) -> None:
        """Back off before the next watch unless this one was worth it (as kopf does after
        every end of a stream): a proxy that closes streams at once must not get a hot loop."""
        self._retry.stream_ended(self._clock() - began)
        self._fruitless_restart(stop)

    def _handle(self, event: dict[str, Any], sink: ReadinessSink) -> None:
        kind = event.get("type")
        obj = event.get("object")
        obj = obj if isinstance(obj, dict) else {}
        if kind in ("ADDED", "MODIFIED", "DELETED") and not self._is_our_pod(obj):
            return
        if kind in ("ADDED", "MODIFIED", "BOOKMARK"):
            if kind != "BOOKMARK":
                self._pod_changed(obj, sink)
            else:
                log.debug("bookmark in the watch of pod %s: resourceVersion %.40s", self.pod, _resource_version(obj))
            self._rv = _resource_version(obj) or self._rv
            self._retry.stream_works()
        elif kind == "DELETED":
            self._deleted(obj, sink)
        elif kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise _ExpiredError()
            message = str(obj.get("message") or "no message")[:300]
            raise KubernetesError(f"the pod watch failed: {message}", status=code if isinstance(code, int) else 500, reason=str(obj.get("reason") or ""))
        elif f"type:{kind}" not in self._said:
            self._said.add(f"type:{kind}")
            log.warning("skipping watch events of unknown type %.40r", kind)

    def _is_our_pod(self, obj: dict[str, Any]) -> bool:
        return is_pod(obj, self._name, self._namespace, self._said)

    def _pod_changed(self, pod: dict[str, Any], sink: ReadinessSink) -> None:
        meta = pod.get("metadata")
        uid = meta.get("uid") if isinstance(meta, dict) and isinstance(meta.get("uid"), str) else None
        if self._uid and uid and uid != self._uid:
            # Same name, new pod (e.g. a StatefulSet): ours is gone, and we missed its DELETED.
            self._deleted(pod, sink)
        self._uid = self._uid or uid
        excluded = self._excluded
        if self._annotated_exclusions:
            annotations = (pod.get("metadata") or {}).get("annotations")
            relevant = pod_annotations.relevant(annotations if isinstance(annotations, dict) else {})
            excluded += pod_annotations.excluded_containers(dict(relevant))
        self._send(observe_pod(pod, self._own, excluded), sink)

    def _deleted(self, pod: dict[str, Any], sink: ReadinessSink) -> None:
        meta = pod.get("metadata")
        grace = meta.get("deletionGracePeriodSeconds") if isinstance(meta, dict) else None
        log.info("pod %s deleted; stopping the watch", self.pod)
        self._send(
            Observation(
                ready=False,
                detail="pod deleted",
                terminating=True,
                deleted=True,
                grace_period=grace_seconds(grace),
                deletion_at=deletion_time(meta.get("deletionTimestamp")) if isinstance(meta, dict) else None,
                pod_uid=self._uid,
                container_ports=container_ports(pod),
            ),
            sink,
        )
        raise _PodGoneError()

    def _send(self, observation: Observation, sink: ReadinessSink) -> None:
        # Only changes go out: a steady pod costs the sync loop (and Consul) nothing.
        if observation != self._last:
            sink.observe(observation)
            self._last = observation  # after delivery: if the sink failed, a restart sends it again

    # -- failures -----------------------------------------------------------------

    def _connected(self, sink: ReadinessSink) -> None:
        self._retry.connected(sink)

    def _on_failure(self, exc: KubernetesError, sink: ReadinessSink) -> float:
        """Report the failure (logging only changes) and return how long to back off."""
        return self._retry.failed(exc, sink)

    def _close_on(self, stop: threading.Event) -> None:
        stop.wait()
        self._client.close()


def _resource_version(obj: dict[str, Any]) -> str | None:
    meta = obj.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    # Opaque, compared only for equality; anything but a non-empty string is junk.
    return rv if isinstance(rv, str) and rv else None


def is_pod(obj: dict[str, Any], name: str, namespace: str, said: set[str]) -> bool:
    """Skips junk (logged once per kind, in `said`): read as a pod, an object without containers
    would make the app look ready, and one naming another pod would drain this one."""
    meta, spec = obj.get("metadata"), obj.get("spec")
    if not isinstance(meta, dict) or meta.get("name") != name or meta.get("namespace", namespace) != namespace:
        problem = f"is not pod {namespace}/{name}"
    elif not isinstance(spec, dict) or not isinstance(spec.get("containers"), list) or not spec["containers"]:
        problem = "has no spec.containers"
    else:
        return True
    if f"junk:{problem}" not in said:
        said.add(f"junk:{problem}")
        log.warning("skipping an object from the Kubernetes API that %s", problem)
    return False
