"""`katalog-sidecar status` for every state, and the metrics and liveness endpoints."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
from fakekube import FakeKube, make_pod
from prometheus_client.parser import text_string_to_metric_families
from sidecar_process import SIDECAR, base_env, wait_until

from readiness_gate import state
from sidecar.metrics import Metrics
from sidecar.status_report import render

NOW = 1_800_000_000.0
WEB = {"name": "web", "id": "shop:web-0:web", "address": "10.0.0.5:8080", "registered": True,
       "readiness": "passing", "readiness_output": "all 2 containers ready", "confirmed": True}


def status_doc(**fields: object) -> dict[str, object]:
    doc: dict[str, object] = {"schema": 1, "pid": 1, "pod": "shop/web-0", "agent": "http://10.0.0.1:8500",
                              "gate_mode": "latch", "stale_after": 15.0, "updated_at": NOW - 2, "since": NOW - 65,
                              "ever_confirmed": False, "services": [], "phase": state.SYNCING, "message": ""}
    doc.update(fields)
    return doc


STATES = [
    ("starting", status_doc(phase=state.STARTING, message="starting"), ["phase:      starting", "gate:       FAIL"]),
    ("config error", status_doc(phase=state.CONFIG_ERROR, message="POD_IP='x': not an IP address"),
     ["gate:       FAIL", "config error: POD_IP='x': not an IP address"]),
    ("waiting for the agent", status_doc(message="waiting for the agent at http://10.0.0.1:8500: cannot connect",
                                         last_error="waiting for the agent at http://10.0.0.1:8500: cannot connect",
                                         services=[dict(WEB, registered=False, readiness=None, confirmed=False)]),
     ["waiting for the agent at http://10.0.0.1:8500", "not registered, readiness not pushed, NOT confirmed",
      "last error: waiting for the agent"]),
    ("app not ready", status_doc(message="check critical because the app is not ready: not ready: app",
                                 services=[dict(WEB, readiness="critical", readiness_output="not ready: app")]),
     ["readiness critical", "check output: not ready: app", "app is not ready"]),
    ("catalog not confirming", status_doc(message="agent accepted web but the catalog does not list shop:web-0:web yet",
                                          services=[dict(WEB, confirmed=False)]),
     ["NOT confirmed in the catalog", "the catalog does not list"]),
    ("kubernetes unreachable", status_doc(message="web passing in the catalog", phase=state.CONFIRMED,
                                          ever_confirmed=True, source_problem="Kubernetes API unreachable: refused",
                                          services=[WEB]),
     ["readiness:  cannot see the app: Kubernetes API unreachable", "gate:       PASS"]),
    ("confirmed", status_doc(phase=state.CONFIRMED, ever_confirmed=True, message="web passing in the catalog",
                             services=[WEB]),
     ["phase:      confirmed since 2027-01-15T07:58:55Z (65s ago)", "gate:       PASS (latch mode): ok (latched): web passing in the catalog",
      "web (shop:web-0:web) at 10.0.0.5:8080: registered, readiness passing, confirmed in the catalog"]),
    ("draining", status_doc(phase=state.DRAINING, message="SIGTERM: instances critical, deregistering"),
     ["phase:      draining", "draining: SIGTERM"]),
    ("stopped", status_doc(phase=state.STOPPED, message="drained and deregistered"), ["draining: drained and deregistered"]),
    ("hung", status_doc(phase=state.CONFIRMED, updated_at=NOW - 300, message="web passing"),
     ["heartbeat:  5m ago", "heartbeat stale 300s: sidecar hung?"]),
]


@pytest.mark.parametrize(("case", "doc", "expected"), STATES, ids=[s[0] for s in STATES])
def test_status_report_for_each_state(case, doc, expected) -> None:
    ok, line = state.evaluate(doc, NOW, lambda _pid: True)
    text = render(doc, ok, line, NOW)
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in:\n{text}"


def test_status_command_without_file(tmp_path: Path) -> None:
    result = subprocess.run([SIDECAR, "status", "--file", str(tmp_path / "none.json")], capture_output=True,
                            text=True, timeout=20)
    assert result.returncode == 1
    assert result.stdout.startswith(f"no status file at {tmp_path / 'none.json'}")


def test_healthz_fails_when_the_sync_loop_is_stuck() -> None:
    class Loop:
        last_loop = 0.0

    clock = [100.0]
    metrics = Metrics(clock=lambda: clock[0])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    loop = Loop()
    loop.last_loop = 95.0
    metrics.serve(("127.0.0.1", port), loop, stuck_after=60.0)
    url = f"http://127.0.0.1:{port}"
    assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
    clock[0] = 200.0
    response = requests.get(f"{url}/healthz", timeout=5)
    assert (response.status_code, response.text) == (503, "sync loop stuck for 105s\n")
    assert requests.get(f"{url}/nope", timeout=5).status_code == 404


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(url, timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.consul
def test_metrics_of_a_running_sidecar(dev_agent, run_sidecar, tmp_path: Path) -> None:
    port = _free_port()
    with FakeKube(tmp_path / "token") as kube:
        kube.create_pod(make_pod("web-0", "shop", ports={"http": 8080}))
        env = base_env(tmp_path, dev_agent.addr, POD_NAME="web-0", KATALOG_READINESS_SOURCE="kubernetes",
                       KATALOG_KUBE_API_URL=kube.url, KATALOG_KUBE_TOKEN_FILE=str(kube.token_file),
                       KATALOG_METRICS_ADDR=f"127.0.0.1:{port}")
        env.pop("POD_UID")  # another UID would mean the pod was replaced
        sidecar = run_sidecar(env)
        sidecar.wait_gate(passing=True)
        url = f"http://127.0.0.1:{port}/metrics"
        metrics = wait_until(lambda: (m := _scrape(url)).get(("katalog_confirmation_latency_seconds_count", ())) and m,
                             what="confirmation latency recorded")
        assert metrics[("katalog_sync_state", (("phase", "confirmed"),))] == 1.0
        assert metrics[("katalog_sync_state", (("phase", "syncing"),))] == 0.0
        assert metrics[("katalog_last_confirmation_timestamp_seconds", ())] > time.time() - 60
        assert metrics[("katalog_consul_requests_total", (("target", "agent"),))] >= 3
        assert metrics[("katalog_consul_requests_total", (("target", "servers"),))] >= 1
        # Idle in latch mode: no server-bound query open, only the agent watch.
        assert metrics[("katalog_consul_requests_in_flight", (("target", "servers"),))] == 0
        assert metrics[("katalog_consul_requests_in_flight", (("target", "agent"),))] == 1

        kube.break_watches()
        wait_until(lambda: _scrape(url).get(("katalog_watch_restarts_total", (("reason", "broken"),))),
                   what="watch restart counted")
        kube.stop()
        wait_until(lambda: any(k[0] == "katalog_kubernetes_errors_total" for k in _scrape(url)),
                   what="kubernetes error counted")
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).text == "ok\n"
        dev_agent.stop()
        wait_until(lambda: _scrape(url).get(("katalog_consul_errors_total", (("kind", "unavailable"),))),
                   what="consul error counted")


@pytest.mark.consul
def test_busy_metrics_port_is_reported_and_the_sidecar_carries_on(dev_agent, run_sidecar, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        sidecar = run_sidecar(base_env(tmp_path, dev_agent.addr, KATALOG_METRICS_ADDR=f"127.0.0.1:{port}"))
        sidecar.wait_gate(passing=True)
    assert (f"KATALOG_METRICS_ADDR=127.0.0.1:{port}: cannot listen (Address already in use); "
            "running without /metrics and /healthz") in sidecar.logs()
    assert "Traceback" not in sidecar.logs()


@pytest.mark.consul
def test_proxy_variables_meant_for_the_app_are_ignored(dev_agent, run_sidecar, tmp_path: Path) -> None:
    """A proxy that does not exist would break every call if the sidecar used it."""
    sidecar = run_sidecar(base_env(tmp_path, dev_agent.addr, HTTP_PROXY="http://127.0.0.1:9", NO_PROXY="",
                                   http_proxy="http://127.0.0.1:9", no_proxy=""))
    sidecar.wait_gate(passing=True)
