"""Blocking-query hygiene: index clamped and reset, a minimum interval, no tight loop when the
servers' answers carry no usable X-Consul-Index (a proxy that strips it, a buggy server)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sidecar.config import load_config
from sidecar.consul.api import ConsulAgent
from sidecar.consul.blocking import MIN_INTERVAL, STALLED_INTERVAL_CAP, BlockingIndex
from sidecar.consul.watchers import Confirmer, Expectation
from sidecar.registration import CRITICAL, PASSING, build_instances


def test_index_advances_clamps_and_resets() -> None:
    index = BlockingIndex()
    assert index.started(0.0) == 0  # the first read is a plain read
    index.returned(0)  # no header: clamped, the next read still blocks
    assert index.started(1.0) == 1
    index.returned(120)
    assert index.started(2.0) == 120
    index.returned(120)  # the wait ran out: same index
    assert index.started(3.0) == 120
    index.returned(7)  # backwards (a snapshot restore, a lagging server): read afresh
    assert index.started(4.0) == 0
    index.returned(9)
    assert index.started(5.0) == 9
    index.reset()
    assert index.index == 0


def test_interval_is_kept_and_grows_only_while_answers_do_not_advance() -> None:
    index = BlockingIndex()
    assert index.delay(0.0) == 0.0  # nothing sent yet
    index.started(10.0)
    index.returned(5)
    assert index.delay(10.0) == pytest.approx(MIN_INTERVAL)
    assert index.delay(10.0 + MIN_INTERVAL) == 0.0  # a blocking read that waited needs no pause
    delays = []
    for i in range(12):
        index.started(20.0 + i)
        index.returned(0)
        delays.append(index.delay(20.0 + i))
    # Doubling (with a little jitter below it) up to the cap: about a read a second at most.
    assert all(d <= min(MIN_INTERVAL * 2 ** (i + 1), STALLED_INTERVAL_CAP) + 1e-9 for i, d in enumerate(delays))
    assert STALLED_INTERVAL_CAP * 0.75 <= delays[-1] <= STALLED_INTERVAL_CAP
    index.started(40.0)
    index.returned(6)  # progress again: back to the minimum
    assert index.delay(40.0) == pytest.approx(MIN_INTERVAL)


class _NoIndexAgent(BaseHTTPRequestHandler):
    """An agent behind a proxy that strips X-Consul-Index: every read answers at once."""

    answers: dict[str, Any] = {}
    counts: Counter[str] = Counter()

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.path.split("?")[0]
        kind = next((k for k in self.answers if path.startswith(k)), "other")
        self.counts[kind] += 1
        body = json.dumps(self.answers.get(kind, [])).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def no_index_agent() -> Iterator[tuple[str, type[_NoIndexAgent]]]:
    handler = type("Handler", (_NoIndexAgent,), {"answers": {}, "counts": Counter()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


SID = "shop:web-0:web"
LISTED = {"Node": {"Node": "node-a"}, "Services": [
    {"ID": SID, "Service": "web", "Address": "10.0.0.5", "Port": 8080, "Meta": {"k8s-pod-uid": "uid-1"}}]}


@pytest.mark.parametrize("stuck_in", ["service", "checks"])
def test_confirmer_without_consul_index_makes_a_bounded_number_of_requests(no_index_agent, stuck_in: str) -> None:
    addr, handler = no_index_agent
    handler.answers.update({
        "/v1/agent/checks": {f"{SID}:readiness": {"Node": "node-a", "ServiceID": SID}},
        # Never the wanted state: the service is missing, or its check stays critical.
        "/v1/catalog/node-services/": LISTED if stuck_in == "checks" else {"Node": {"Node": "node-a"}, "Services": []},
        "/v1/health/node/": [{"CheckID": f"{SID}:readiness", "ServiceID": SID, "Status": CRITICAL}],
    })
    config = load_config({"POD_NAME": "web-0", "POD_NAMESPACE": "shop", "POD_IP": "10.0.0.5", "POD_UID": "uid-1",
                          "KATALOG_SERVICES": "web:8080", "KATALOG_READINESS_SOURCE": "fixed",
                          "CONSUL_HTTP_ADDR": addr})
    (inst,) = build_instances(config, None, None)
    posts: list[tuple[str, Any]] = []
    confirmer = Confirmer(ConsulAgent(config.consul), 10.0, lambda kind, payload: posts.append((kind, payload)))
    confirmer.start()
    confirmer.expect(Expectation(1, (inst,), {SID: {inst.readiness_check_id: PASSING, inst.liveness_check_id: PASSING}}))
    window = 3.0
    time.sleep(window)
    confirmer.stop()
    server_reads = sum(n for kind, n in handler.counts.items() if kind != "/v1/agent/checks")
    # Intervals 0.05 s doubling to 1 s: about 7 reads in 3 s. Without hygiene: thousands.
    assert 3 <= server_reads <= 12, handler.counts
    assert handler.counts["/v1/agent/checks"] <= 2, handler.counts  # the node is learned once
    assert posts and posts[-1][0] == "confirm-pending"
    assert all(kind == "confirm-pending" for kind, _ in posts)
