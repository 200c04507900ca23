"""Messages and behaviours that did not match the real thing (issue 10, item 8): the HTTPS hint,
the `http` readiness source against kubelet's httpGet, IPv6 metrics, and docs that drift.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from test_config import VALID

from sidecar.config import SETTINGS, load_config
from sidecar.consul.api import ConsulAgent
from sidecar.errors import ConsulUnavailable
from sidecar.kube.source import WATCH_RESTART_REASONS
from sidecar.metrics import Metrics
from sidecar.readiness import HttpProbeSource
from sidecar.status import StatusWriter

pytestmark = pytest.mark.timeout(60)
README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


# -- the HTTPS hint on a reset connection -------------------------------------------------------


class AgentThenReset:
    """Answers the first `answers` requests like an agent, then resets every connection after
    reading the request: what an agent that restarts does to the sidecar's next call."""

    def __init__(self, answers: int) -> None:
        self._answers = answers
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.addr = f"127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                while length and len(body) < int(length.group(1)):
                    body += conn.recv(65536)
                if self._answers > 0:
                    self._answers -= 1
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                else:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST

    def close(self) -> None:
        self._sock.close()


def _agent(addr: str) -> ConsulAgent:
    return ConsulAgent(load_config(dict(VALID, CONSUL_HTTP_ADDR=addr)).consul)


@pytest.mark.parametrize(("answers", "hinted"), [(0, True), (1, False)], ids=["never-answered", "answered-before"])
def test_https_hint_only_when_the_port_never_answered_plain_http(answers: int, hinted: bool) -> None:
    server = AgentThenReset(answers)
    try:
        agent = _agent(server.addr)
        for _ in range(answers):
            agent.update_ttl_check("web:readiness", "passing", "ok")
        with pytest.raises(ConsulUnavailable) as info:
            agent.update_ttl_check("web:readiness", "passing", "ok")
    finally:
        server.close()
    message = str(info.value)
    assert message.startswith(f"the agent at http://{server.addr} reset the connection")
    assert ("use https://" in message) is hinted, message


# -- the http readiness source behaves like kubelet's httpGet -------------------------------------


class _App(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(self.status)
        self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def app() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def serve(status: int, tls: tuple[Path, Path] | None = None) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), type("App", (_App,), {"status": status}))
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            server.socket = context.wrap_socket(server.socket, server_side=True)
            scheme = "https"
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"{scheme}://127.0.0.1:{server.server_address[1]}/ready"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("status", "ready"), [(200, True), (204, True), (301, True), (302, True), (399, True),
                                               (400, False), (404, False), (503, False)])
def test_http_probe_is_ready_from_200_to_399_as_kubelet(app: Any, status: int, ready: bool) -> None:
    url = app(status)
    assert HttpProbeSource(url, 1.0, 2.0).probe() == (ready, f"HTTP probe {url}: {status}")


def test_http_probe_ignores_proxy_variables(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    url = app(200)
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "")
    assert HttpProbeSource(url, 1.0, 2.0).probe()[0] is True


def test_http_probe_does_not_verify_the_certificate(app: Any, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=app",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    url = app(200, tls=(cert, key))  # self-signed, and for another name than 127.0.0.1
    assert HttpProbeSource(url, 1.0, 2.0).probe() == (True, f"HTTP probe {url}: 200")


# -- metrics on IPv6 ---------------------------------------------------------------------------------


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_metrics_listen_on_ipv6(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "katalog.metrics")
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
    config = load_config(dict(VALID, KATALOG_METRICS_ADDR=f"[::1]:{port}"))
    assert config.metrics_addr == ("::1", port)

    class Loop:
        last_loop = 0.0

    Metrics(clock=lambda: 0.0).serve(config.metrics_addr, Loop())
    assert requests.get(f"http://[::1]:{port}/healthz", timeout=5).text == "ok\n"
    assert f"metrics on http://[::1]:{port}/metrics" in caplog.text


def test_metrics_addr_all_ipv6_addresses_parses() -> None:
    assert load_config(dict(VALID, KATALOG_METRICS_ADDR="[::]:9464")).metrics_addr == ("::", 9464)


# -- docs that must agree with the code ---------------------------------------------------------


def test_heartbeat_staleness_in_the_docs_is_what_the_status_file_says(tmp_path: Path) -> None:
    helps = {s.env: s.help for s in SETTINGS}
    text = helps["KATALOG_HEARTBEAT_INTERVAL"]
    assert "three intervals" in text and "never sooner than after 10s" in text
    for interval, expected in ((1.0, 10.0), (5.0, 15.0), (10.0, 30.0)):
        writer = StatusWriter(tmp_path / "s.json", gate_mode="latch", heartbeat_interval=interval, agent="a", pod="p")
        writer.write(phase="syncing", message="")
        assert (tmp_path / "s.json").read_text().count(f'"stale_after":{expected}') == 1
    assert text in README  # the generated table is current


def test_watch_restart_reasons_in_the_readme_are_the_ones_counted() -> None:
    line = next(x for x in README.splitlines() if x.startswith("| `katalog_watch_restarts_total{reason}`"))
    listed = line.split("|")[2].split(": ", 1)[1].strip()  # "expired (410), inactivity, ..."
    assert tuple(item.split(" ")[0] for item in listed.split(", ")) == WATCH_RESTART_REASONS


def test_the_docs_no_longer_promise_a_bookmark_a_minute() -> None:
    assert "bookmark about once a minute" not in README
    helps = {s.env: s.help for s in SETTINGS}
    assert "bookmarks only once something changed since the watch began" in helps["KATALOG_KUBE_WATCH_INACTIVITY"]
