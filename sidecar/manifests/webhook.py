"""`katalog-sidecar webhook`: the mutating admission webhook server (HTTPS, AdmissionReview v1).

- Reviews (`POST /inject`) are answered by `sidecar.manifests.admission`, i.e. by `inject`'s code.
- Certificates, one of:
  - its own (default): a CA kept in a Secret of its namespace (created by the first replica,
    shared by all), a serving certificate per replica issued from it, and the CA bundle written
    into its MutatingWebhookConfiguration. The serving certificate is renewed at two thirds of
    its life; the CA at two thirds of its own, in an order that never leaves the apiserver
    trusting a bundle without the CA of a certificate being served: the new CA is added to the
    bundle, the apiserver is given time to pick the bundle up, and only then is the new CA
    stored and used (the old one stays in the bundle until it expires). A new certificate goes
    into a new TLS context that new connections use; connections already open finish on the
    old one, so no request is dropped.
  - files (`--cert-dir`, e.g. a cert-manager Certificate's Secret mounted there: `tls.crt`,
    `tls.key`), re-read when they change; cert-manager's CA injector then writes the bundle.
- A periodic check lists opted-in pods that run without the sidecar (admitted while the
  webhook was down, with `failurePolicy: Ignore`), puts a Warning Event on each and counts them
  in `katalog_webhook_pods_without_sidecar`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from sidecar.manifests import admission
from sidecar.manifests.inject import InjectOptions
from sidecar.manifests.webhook_kube import ApiError, Kube

log = logging.getLogger("katalog.webhook")

_MAX_BODY = 3 * 1024 * 1024  # the apiserver's own request limit for an object is 3 MiB
_CA_FILE, _CA_KEY, _PREVIOUS = "ca.crt", "ca.key", "previous-ca.crt"


@dataclass
class WebhookSettings:
    options: InjectOptions
    namespace: str  # its own: never injected
    listen: tuple[str, int] = ("0.0.0.0", 8443)
    kube: Kube | None = None
    webhook_config: str = "katalog-sidecar"
    ca_secret: str = "katalog-sidecar-webhook-ca"
    hosts: list[str] = field(default_factory=list)  # the serving certificate's names
    cert_dir: Path | None = None  # certificates from files (cert-manager) instead of its own
    cert_lifetime: float = 7 * 86400.0
    ca_lifetime: float = 365 * 86400.0
    bundle_propagation: float = 5.0  # time for the apiserver to pick up a new caBundle
    check_interval: float = 60.0
    metrics_addr: tuple[str, int] | None = ("0.0.0.0", 9465)
    reporter: str = "katalog-sidecar-webhook"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reviews = Counter("katalog_webhook_reviews_total", "Admission reviews answered, by result.",
                               ["result"], registry=self.registry)
        self.latency = Histogram("katalog_webhook_review_seconds", "Time to answer one review (after reading it).",
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
                                 registry=self.registry)
        self.without_sidecar = Gauge("katalog_webhook_pods_without_sidecar",
                                     "Opted-in pods running without the sidecar at the last check.",
                                     registry=self.registry)
        self.missed = Counter("katalog_webhook_missed_injections_total",
                              "Opted-in pods found without the sidecar (each counted once).", registry=self.registry)
        self.rotations = Counter("katalog_webhook_certificate_rotations_total",
                                 "Serving certificates put in use, by kind.", ["kind"], registry=self.registry)
        self.expiry = Gauge("katalog_webhook_certificate_expiry_timestamp_seconds",
                            "When the serving certificate in use expires.", registry=self.registry)
        self.errors = Counter("katalog_webhook_kubernetes_errors_total", "Failed Kubernetes API calls, by task.",
                              ["task"], registry=self.registry)


class TlsContexts:
    """The TLS context new connections get; replaced whole when the certificate changes."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.current: ssl.SSLContext | None = None
        self.base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.base.minimum_version = ssl.TLSVersion.TLSv1_2
        self.base.sni_callback = self._pick  # called for every handshake, with or without SNI

    def _pick(self, sock: ssl.SSLObject, _name: str | None, _base: ssl.SSLContext) -> None:
        if self.current is not None:
            sock.context = self.current
        return None

    def use(self, cert_pem: bytes, key_pem: bytes) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load(context, cert_pem, key_pem)
        if self.current is None:  # the dispatching context holds a certificate too
            self._load(self.base, cert_pem, key_pem)
        self.current = context

    def _load(self, context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
        # load_cert_chain reads files: a private scratch directory (0700), removed right after.
        with tempfile.TemporaryDirectory(dir=self.workdir) as scratch:
            cert, key = Path(scratch) / "tls.crt", Path(scratch) / "tls.key"
            cert.write_bytes(cert_pem)
            key.touch(mode=0o600)
            key.write_bytes(key_pem)
            context.load_cert_chain(cert, key)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the apiserver reuses its connections
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s " + format, self.client_address[0], *args)

    def do_GET(self) -> None:  # noqa: N802 - the base class's naming
        ready = self.server.tls.current is not None
        self._send(200 if ready else 503, b"ok\n" if ready else b"no certificate yet\n", "text/plain")

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?")[0] != "/inject":
            self._send(404, b"not found\n", "text/plain")
            return
        try:
            length = int(self.headers.get("Content-Length", "-1"))
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_BODY:
            self._send(400, b"a Content-Length up to 3 MiB is required\n", "text/plain")
            return
        raw = self.rfile.read(length)
        start = time.perf_counter()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        answer, result = admission.review(body, self.server.settings.options, self.server.settings.namespace)
        payload = json.dumps(answer, separators=(",", ":")).encode()
        self.server.metrics.latency.observe(time.perf_counter() - start)
        self.server.metrics.reviews.labels(result).inc()
        if result == "invalid":
            self._send(400, b"not an AdmissionReview\n", "text/plain")
            return
        self._send(200, payload, "application/json")

    def _send(self, code: int, payload: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, settings: WebhookSettings, tls: TlsContexts, metrics: Metrics) -> None:
        self.settings, self.tls, self.metrics = settings, tls, metrics
        host, port = settings.listen
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        # Headers and body go out in two writes: without this, Nagle's algorithm holds the body
        # for the client's delayed ACK (40 ms on Linux) on every answer.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(30)  # a client that stops sending does not hold a thread for ever
        # The handshake happens on the handler's thread (first read), never in the accept loop.
        return self.tls.base.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address


class Webhook:
    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.stop = threading.Event()
        self.workdir = Path(tempfile.mkdtemp(prefix="katalog-webhook-"))
        self.tls = TlsContexts(self.workdir)
        self.server: _Server | None = None
        self._serving_ca: bytes | None = None  # the CA that signed the certificate in use
        self._renew_at = 0.0
        self._pending_ca: tuple[Any, float] | None = None  # (a new CA, when it may be used)
        self._life = 3600.0
        self._cert_mtime: tuple[float, float] | None = None
        self._reported: set[str] = set()

    # -- certificates ------------------------------------------------------------------------------

    def refresh_certificates(self) -> None:
        if self.settings.cert_dir is not None:
            self._refresh_from_files(self.settings.cert_dir)
        else:
            self._refresh_own()

    def _refresh_from_files(self, directory: Path) -> None:
        cert, key = directory / "tls.crt", directory / "tls.key"
        stamp = (cert.stat().st_mtime, key.stat().st_mtime)
        if stamp == self._cert_mtime:
            return
        self.tls.use(cert.read_bytes(), key.read_bytes())
        self._cert_mtime = stamp
        from sidecar.manifests.certs import KeyPair

        self.metrics.expiry.set(KeyPair(cert.read_bytes(), b"").not_after)
        self.metrics.rotations.labels("files").inc()
        log.info("serving the certificate in %s", directory)

    def _refresh_own(self) -> None:
        from sidecar.manifests import certs

        s = self.settings
        assert s.kube is not None
        secret = s.kube.read_secret(s.namespace, s.ca_secret)
        if secret is None:
            ca = certs.new_ca("katalog-sidecar-webhook-ca", s.ca_lifetime)
            s.kube.ensure_ca_bundle(s.webhook_config, ca.cert_pem, add=True)
            s.kube.create_secret(s.namespace, s.ca_secret, {_CA_FILE: ca.cert_pem, _CA_KEY: ca.key_pem})
            secret = s.kube.read_secret(s.namespace, s.ca_secret)
            assert secret is not None
        data = {k: _b64(v) for k, v in (secret.get("data") or {}).items()}
        ca = certs.KeyPair(data[_CA_FILE], data[_CA_KEY])
        now = time.time()
        if now >= ca.renew_at():
            # A new CA: into the bundle first (beside the old); once the apiserver has had time to
            # pick the bundle up, into the Secret, where every replica finds it. Meanwhile the
            # serving certificate keeps being renewed from the old CA (below).
            if self._pending_ca is None:
                fresh = certs.new_ca("katalog-sidecar-webhook-ca", s.ca_lifetime)
                s.kube.ensure_ca_bundle(s.webhook_config, fresh.cert_pem, add=True)
                self._pending_ca = (fresh, now + s.bundle_propagation)
            elif now >= self._pending_ca[1]:
                fresh = self._pending_ca[0]
                self._pending_ca = None
                if s.kube.replace_secret(secret, {_CA_FILE: fresh.cert_pem, _CA_KEY: fresh.key_pem,
                                                  _PREVIOUS: ca.cert_pem}):
                    log.info("new webhook CA (the previous one stays trusted until it expires)")
                return self._refresh_own()  # read back whichever CA won
        else:
            self._pending_ca = None
        pending = self._pending_ca[0].cert_pem if self._pending_ca else b""
        previous = data.get(_PREVIOUS, b"")
        if previous and certs.KeyPair(previous, b"").not_after < now:
            previous = b""
        bundle = pending + ca.cert_pem + previous
        if s.kube.ensure_ca_bundle(s.webhook_config, bundle) and self._serving_ca not in (None, ca.cert_pem):
            # The bundle had lost our CA (e.g. an upgrade rewrote the configuration).
            self.stop.wait(s.bundle_propagation)
        if self._serving_ca != ca.cert_pem or now >= self._renew_at:
            serving = certs.new_serving(ca, s.hosts, s.cert_lifetime)
            self.tls.use(serving.cert_pem, serving.key_pem)
            kind = "new-ca" if self._serving_ca not in (None, ca.cert_pem) else "renewal"
            self._serving_ca, self._renew_at, self._life = ca.cert_pem, serving.renew_at(), serving.not_after - serving.issued
            self.metrics.expiry.set(serving.not_after)
            self.metrics.rotations.labels(kind).inc()
            log.info("serving a new certificate (%s), valid until %s", kind,
                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(serving.not_after)))

    def _next_certificate_check(self) -> float:
        if self.settings.cert_dir is not None:
            return 10.0
        return min(max(self._life / 12, 0.5), 60.0)

    def _cert_loop(self) -> None:
        delay = 1.0
        while not self.stop.is_set():
            try:
                self.refresh_certificates()
                delay = 1.0
                wait = self._next_certificate_check()
            except (ApiError, OSError, KeyError, ValueError) as exc:
                self.metrics.errors.labels("certificates").inc()
                log.warning("certificates: %s (retrying)", exc)
                delay = min(delay * 2, 30.0)
                wait = delay * random.uniform(0.5, 1.0)
            self.stop.wait(wait)

    # -- the check -----------------------------------------------------------------------------------

    def check_once(self) -> list[str]:
        """Report every opted-in pod without the sidecar once; returns their namespace/name."""
        s = self.settings
        assert s.kube is not None
        found = s.kube.pods_without_sidecar(s.namespace)
        self.metrics.without_sidecar.set(len(found))
        names = []
        for pod in found:
            meta = pod["metadata"]
            names.append(f"{meta['namespace']}/{meta['name']}")
            if meta["uid"] in self._reported:
                continue
            s.kube.warn_not_injected(pod, s.reporter)
            self._reported.add(meta["uid"])
            self.metrics.missed.inc()
            log.warning("pod %s/%s is opted in but runs without the sidecar", meta["namespace"], meta["name"])
        return names

    def _check_loop(self) -> None:
        delay = 1.0
        while not self.stop.wait(self.settings.check_interval if delay == 1.0 else delay):
            try:
                self.check_once()
                delay = 1.0
            except (ApiError, OSError, KeyError, ValueError) as exc:
                self.metrics.errors.labels("check").inc()
                log.warning("check for pods without the sidecar: %s (retrying)", exc)
                delay = min(max(delay * 2, 2.0), self.settings.check_interval) * random.uniform(0.5, 1.0)

    # -- running ---------------------------------------------------------------------------------

    def start(self) -> Webhook:
        """Certificates first (the first attempt must succeed), then the server and the loops."""
        self.refresh_certificates()
        self.server = _Server(self.settings, self.tls, self.metrics)
        if self.settings.metrics_addr is not None:
            host, port = self.settings.metrics_addr
            start_http_server(port, host, registry=self.metrics.registry)
        threading.Thread(target=self.server.serve_forever, name="webhook-server", daemon=True).start()
        threading.Thread(target=self._cert_loop, name="webhook-certificates", daemon=True).start()
        if self.settings.kube is not None and self.settings.check_interval > 0:
            threading.Thread(target=self._check_loop, name="webhook-check", daemon=True).start()
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.stop.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        import shutil

        shutil.rmtree(self.workdir, ignore_errors=True)


def _b64(value: str) -> bytes:
    import base64

    return base64.b64decode(value)


def in_cluster_namespace() -> str:
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return os.environ.get("POD_NAMESPACE") or (path.read_text().strip() if path.exists() else "")
