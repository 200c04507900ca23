"""Figure 8's gate-wait rows: the sidecars' own katalog_gate_wait_seconds, scraped and turned
into p50/p99 as Prometheus' histogram_quantile would (bench/rollout.py gate_waits)."""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import rollout  # noqa: E402
from bench import run as bench  # noqa: E402
from sidecar.metrics import Metrics  # noqa: E402

INF = float("inf")


@pytest.mark.parametrize(("q", "buckets", "expected"), [
    (0.5, {0.5: 0, 1: 1, 2.5: 2, 5: 3, INF: 3}, 1.75),  # rank 1.5 in (1, 2.5]: 1 + 1.5 * 0.5
    (0.99, {0.5: 0, 1: 1, 2.5: 2, 5: 3, INF: 3}, 4.925),  # rank 2.97 in (2.5, 5]
    (0.5, {1: 1, INF: 1}, 0.5),  # the first bucket's lower bound is 0
    (0.99, {10: 2, 30: 2, INF: 3}, 30.0),  # in +Inf: the highest finite bound
    (0.5, {1: 0, INF: 0}, None),  # no observations
])
def test_histogram_quantile_as_prometheus(q: float, buckets: dict[float, float], expected: float | None) -> None:
    got = rollout.histogram_quantile(q, buckets)
    assert got == pytest.approx(expected) if expected is not None else got is None


def _serve(texts: list[bytes]) -> list[ThreadingHTTPServer]:
    servers = []
    for text in texts:
        class Handler(BaseHTTPRequestHandler):
            body = text

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self.send_response(200)
                self.send_header("Content-Length", str(len(self.body)))
                self.end_headers()
                self.wfile.write(self.body)

            def log_message(self, *_args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    return servers


def test_gate_waits_of_three_sidecars_and_the_table_rows() -> None:
    """Three sidecars' real /metrics text (sidecar.metrics.Metrics), one wait each."""
    texts = []
    for wait in (0.8, 1.7, 17.2):
        metrics = Metrics()
        metrics.gate_wait.observe(wait)
        texts.append(generate_latest(metrics.registry))
    servers = _serve(texts)
    try:
        pods = [{"metadata": {"name": f"web-{i}"}, "status": {"podIP": "127.0.0.1"},
                 "spec": {"containers": [{"name": "katalog-sidecar", "ports": [
                     {"name": "metrics", "containerPort": s.server_address[1]}]}]}} for i, s in enumerate(servers)]
        got = rollout.gate_waits(pods)
    finally:
        for server in servers:
            server.shutdown()
    assert got["observations"] == 3 and got["errors"] == {}
    assert got["per_pod"] == {"web-0": 0.8, "web-1": 1.7, "web-2": 17.2}
    # Buckets ... 0.5, 1, 2.5, 5, 10, 30: rank 1.5 falls in (1, 2.5] (one below), rank 2.97 in (10, 30].
    assert got["p50"] == pytest.approx(1 + 1.5 * 0.5)
    assert got["p99"] == pytest.approx(10 + 20 * 0.97)
    rows = bench.gate_wait_rows(got)
    assert [(r["stat"], r["value"], r["unit"]) for r in rows] == [
        ("p50", pytest.approx(1750), "ms"), ("p99", pytest.approx(29400), "ms")]
    assert rows[0]["spread"] == "per pod (exact): 800, 1700, 17200 ms; n=3"
    table = bench.render_table({"targets": rows})
    assert ("| 8. ... gate wait, app ready -> gate open (katalog_gate_wait_seconds, histogram_quantile) | p50 | 1750.0 ms |"
            in table)
    assert bench.gate_wait_rows({}) == [] and bench.gate_wait_rows(None) == []
