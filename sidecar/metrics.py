"""Prometheus metrics and the liveness endpoint (`/metrics`, `/healthz`)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from sidecar.errors import ConsulError
from sidecar.supervision import RESTARTING, WorkerStatus

log = logging.getLogger("katalog.metrics")

PHASES = ("starting", "syncing", "confirmed", "draining", "stopped", "config-error", "failed-open")


class _Loop(Protocol):
    last_loop: float


class Metrics:
    """Everything takes its registry and clock as arguments, so tests need no patching."""

    def __init__(self, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry or CollectorRegistry()
        self._clock = clock
        r = self.registry
        self.sync_state = Gauge("katalog_sync_state", "1 for the sidecar's current phase.", ["phase"], registry=r)
        self.confirmation_latency = Histogram(
            "katalog_confirmation_latency_seconds", "From pushing a change to the agent to seeing it in the catalog.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.last_confirmed = Gauge("katalog_last_confirmation_timestamp_seconds",
                                    "Unix time of the last confirmation by the catalog.", registry=r)
        self.consul_errors = Counter("katalog_consul_errors_total", "Failed calls to the Consul agent, by kind.",
                                     ["kind"], registry=r)
        self.kube_errors = Counter("katalog_kubernetes_errors_total", "Failed Kubernetes API requests, by kind.",
                                   ["kind"], registry=r)
        self.watch_restarts = Counter("katalog_watch_restarts_total", "Restarts of the pod watch, by reason.",
                                      ["reason"], registry=r)
        self.consul_requests = Counter("katalog_consul_requests_total",
                                       "Calls to the Consul agent, by target: agent (stays on the node) or "
                                       "servers (health/catalog reads the agent forwards).", ["target"], registry=r)
        self.consul_in_flight = Gauge("katalog_consul_requests_in_flight",
                                      "Calls to the agent open right now (blocking queries included), by target.",
                                      ["target"], registry=r)
        self.worker_restarts = Counter("katalog_worker_restarts_total",
                                       "Restarts of a worker thread after an unexpected exception, by worker.",
                                       ["worker"], registry=r)
        # The gate (fed by sidecar.gate_metrics): open or not, why closed, app ready -> gate open.
        self.gate_open = Gauge("katalog_gate_open", "1 while the readiness gate passes, 0 while it holds the pod.",
                               registry=r)
        self.gate_closed_reason = Gauge("katalog_gate_closed_reason",
                                        "1 for the reason the gate is closed now (all 0 while it is open).",
                                        ["reason"], registry=r)
        self.gate_failed_open = Gauge("katalog_gate_failed_open",
                                      "1 while the gate passes only because KATALOG_FAIL_OPEN_AFTER ran out "
                                      "(Consul has not confirmed).", registry=r)
        self.gate_wait = Histogram(
            "katalog_gate_wait_seconds", "From the app turning ready (as the sidecar saw it) to the gate passing.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800),
            registry=r)
        self._server: ThreadingHTTPServer | None = None

    def phase(self, phase: str) -> None:
        for name in PHASES:
            self.sync_state.labels(name).set(1 if name == phase else 0)

    def consul_error(self, exc: ConsulError) -> None:
        self.consul_errors.labels(type(exc).__name__.removeprefix("Consul").lower()).inc()

    def consul_request(self, target: str, delta: int) -> None:
        if delta > 0:
            self.consul_requests.labels(target).inc()
        self.consul_in_flight.labels(target).inc(delta)

    def confirmed(self, latency: float) -> None:
        self.confirmation_latency.observe(latency)
        self.last_confirmed.set(time.time())

    # KubeMetrics protocol of sidecar.kube.source
    def request_error(self, kind: str) -> None:
        self.kube_errors.labels(kind).inc()

    def watch_restart(self, reason: str) -> None:
        self.watch_restarts.labels(reason).inc()

    def worker_restart(self, worker: str) -> None:
        self.worker_restarts.labels(worker).inc()

    def serve(self, address: tuple[str, int], loop: _Loop, stuck_after: float = 60.0,
              workers: Callable[[], list[WorkerStatus]] = list) -> None:
        """`/healthz`: 503 when the sync loop is stuck or a worker is down waiting for its
        restart; 200 otherwise, listing workers that have been restarted."""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path == "/metrics":
                    self._reply(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    age = metrics._clock() - loop.last_loop
                    statuses = workers()
                    restarted = "".join(f"worker {w.describe()}\n" for w in statuses if w.restarts)
                    down = [w.name for w in statuses if w.state == RESTARTING]
                    if age > stuck_after:
                        self._reply(503, f"sync loop stuck for {age:.0f}s\n{restarted}".encode(), "text/plain")
                    elif down:
                        self._reply(503, f"worker {', '.join(down)} down, restarting\n{restarted}".encode(), "text/plain")
                    else:
                        self._reply(200, f"ok\n{restarted}".encode(), "text/plain")
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:  # scrapes are not operator news
                pass

        try:
            self._server = _Server(address, Handler)
        except OSError as exc:
            # Metrics are for operators; syncing the pod matters more. Say so once and go on.
            log.error("KATALOG_METRICS_ADDR=%s:%d: cannot listen (%s); running without /metrics and /healthz",
                      address[0], address[1], exc.strerror or exc)
            return
        self._server.daemon_threads = True
        # Nothing calls shutdown() (the process exits), so the loop need not wake to check for
        # it: the default 0.5s poll was a quarter of an idle sidecar's CPU.
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 3600},
                         name="metrics", daemon=True).start()
        host, port = str(self._server.server_address[0]), self._server.server_address[1]
        log.info("metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, port)


class _Server(ThreadingHTTPServer):
    """IPv6 too (`[::]:9464` on IPv6-only clusters); handler errors logged, not printed."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print a traceback to stderr, outside the configured log format.
        log.debug("metrics request from %s failed", client_address, exc_info=True)
