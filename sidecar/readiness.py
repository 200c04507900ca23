"""Readiness sources: where the app's readiness comes from.

A source runs in its own thread and reports to a `ReadinessSink`: an `Observation` whenever
what it sees changes, and a problem text (or None when it clears) when it cannot see. The
sync loop does the rest, so every source plugs into the same place: the Kubernetes watch
(sidecar.kube.source), an HTTP or TCP probe of the app, or a fixed status.
"""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import requests
import urllib3

from sidecar.config import Config

if TYPE_CHECKING:
    from sidecar.kube.source import KubeMetrics


@dataclass(frozen=True)
class Observation:
    """What a source currently sees. `detail` becomes check output: keep it stable text."""

    ready: bool
    detail: str
    terminating: bool = False  # deletionTimestamp is set: drain now
    deleted: bool = False  # the pod object is gone
    grace_period: float | None = None  # deletionGracePeriodSeconds, when known
    # metadata.deletionTimestamp in seconds since the epoch (the API server's wall clock): the
    # deletion's time plus its grace period, when the kubelet SIGKILLs at the earliest
    # (sidecar.kube.pod_readiness.deletion_time). A process restarted during the termination
    # learns from it how much of the grace period is left.
    deletion_at: float | None = None
    # The same moment on the core's own clock (monotonic), set by the driver (`on_clock`): the
    # core reads no clock. Derived, so not part of what makes two observations differ.
    deletion_deadline: float | None = field(default=None, compare=False)
    pod_uid: str | None = None
    container_ports: Mapping[str, int] | None = field(default=None, compare=False)
    # The pod's katalog-sidecar.io/ and katalog-sync.wish.com/ annotations (None: not a pod
    # watch), and the first containerPort of its spec: configuration that may change.
    annotations: tuple[tuple[str, str], ...] | None = None
    first_port: int | None = None


def on_clock(observation: Observation, now: float, wall_now: float) -> Observation:
    """`observation` with `deletion_deadline` on the clock that reads `now`, from its wall-clock
    `deletion_at` and `wall_now` (read at the same moment as `now`). The drain bounds what a
    skewed node clock can do with it (sidecar.core.terminate.drain_deadline)."""
    if observation.deletion_at is None:
        return observation
    remaining = observation.deletion_at - wall_now
    if not math.isfinite(remaining):
        return observation
    return replace(observation, deletion_deadline=now + remaining)


class ReadinessSink(Protocol):
    def observe(self, observation: Observation) -> None: ...

    def problem(self, message: str | None) -> None: ...


class ReadinessSource(Protocol):
    def run(self, stop: threading.Event, sink: ReadinessSink) -> None: ...


class FixedSource:
    """A constant status, for pods whose readiness Consul need not follow."""

    def __init__(self, ready: bool) -> None:
        self._ready = ready

    def run(self, stop: threading.Event, sink: ReadinessSink) -> None:
        detail = "fixed status: ready" if self._ready else "fixed status: not ready"
        sink.observe(Observation(ready=self._ready, detail=detail))
        stop.wait()


class _ProbeSource:
    """Probes the app every `interval`; reports only changes, so a steady app costs nothing."""

    def __init__(self, interval: float, timeout: float) -> None:
        self._interval = interval
        self._timeout = timeout

    def probe(self) -> tuple[bool, str]:
        raise NotImplementedError

    def run(self, stop: threading.Event, sink: ReadinessSink) -> None:
        last: Observation | None = None
        while not stop.is_set():
            ready, detail = self.probe()
            observation = Observation(ready=ready, detail=detail)
            if observation != last:
                sink.observe(observation)
                last = observation
            stop.wait(self._interval)


class HttpProbeSource(_ProbeSource):
    """Behaves like kubelet's `httpGet` probe, so the app answers it as it answers kubelet:
    no proxy from the environment, the certificate not verified, 200 <= status < 400 ready."""

    def __init__(self, url: str, interval: float, timeout: float) -> None:
        super().__init__(interval, timeout)
        self._url = url
        self._session = requests.Session()
        self._session.trust_env = False  # HTTP_PROXY and friends are meant for the app's own calls
        self._session.verify = False  # kubelet skips verification: the app's cert may be self-signed
        # Not verifying is this source's documented behaviour: no urllib3 warning on every probe.
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    def probe(self) -> tuple[bool, str]:
        try:
            response = self._session.get(self._url, timeout=self._timeout, allow_redirects=False)
        except requests.Timeout:
            return False, f"HTTP probe {self._url}: timed out"
        except requests.RequestException:
            return False, f"HTTP probe {self._url}: connection failed"
        response.close()
        if 200 <= response.status_code < 400:
            return True, f"HTTP probe {self._url}: {response.status_code}"
        return False, f"HTTP probe {self._url}: {response.status_code}"


class TcpProbeSource(_ProbeSource):
    def __init__(self, host: str, port: int, interval: float, timeout: float) -> None:
        super().__init__(interval, timeout)
        self._host = host
        self._port = port

    def probe(self) -> tuple[bool, str]:
        target = f"{self._host}:{self._port}"
        try:
            with socket.create_connection((self._host, self._port), timeout=self._timeout):
                return True, f"TCP probe {target}: connected"
        except OSError:
            return False, f"TCP probe {target}: connection failed"


def make_source(config: Config, metrics: KubeMetrics | None = None) -> ReadinessSource:
    r = config.readiness
    if r.source == "fixed":
        return FixedSource(r.fixed_ready)
    if r.source == "http":
        assert r.http_url is not None  # guaranteed by load_config
        return HttpProbeSource(r.http_url, r.probe_interval, r.probe_timeout)
    if r.source == "tcp":
        assert r.tcp_host is not None and r.tcp_port is not None
        return TcpProbeSource(r.tcp_host, r.tcp_port, r.probe_interval, r.probe_timeout)
    from sidecar.kube.source import KubernetesSource  # imported lazily: only this source needs it

    return KubernetesSource.from_config(config, metrics)
