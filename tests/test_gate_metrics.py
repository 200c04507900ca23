"""The gate's metrics: open or not, the closed reason (bounded), and app ready -> gate open."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from http_app import ToggleApp
from sidecar_process import base_env, wait_until
from test_status_and_metrics import _free_port, _scrape

from readiness_gate import state as status_state
from sidecar import gate_metrics as gm
from sidecar.metrics import Metrics

# The lines the sync loop writes today (sidecar.syncer.gate_line, readiness_gate.state.evaluate).
LINES = [
    (False, status_state.STARTING, "starting", gm.STARTING),
    (False, status_state.SYNCING, "waiting for the first readiness observation (kubernetes)", gm.STARTING),
    (False, status_state.SYNCING, "waiting for the first readiness observation: Kubernetes API unreachable: "
                                  "cannot connect to https://10.96.0.1:443", gm.KUBERNETES_UNAVAILABLE),
    (False, status_state.SYNCING, "waiting for the first readiness observation: forbidden: the service account "
                                  "cannot list pods in namespace shop; grant get, list, watch on pods",
     gm.KUBERNETES_FORBIDDEN),
    (False, status_state.CONFIG_ERROR, "config error: POD_IP='x': not an IP address", gm.CONFIG_ERROR),
    (False, status_state.SYNCING, "KATALOG_SERVICES: service 'web' uses container port 'grpc', which no container "
                                  "of the pod declares (named ports: http)", gm.CONFIG_ERROR),
    (False, status_state.SYNCING, "waiting for the pod's annotations", gm.STARTING),
    (False, status_state.SYNCING, "waiting for the agent at http://10.0.0.1:8500: cannot connect to the agent",
     gm.AGENT_UNREACHABLE),
    (False, status_state.SYNCING, "Consul refused web: Permission denied (fix CONSUL_HTTP_TOKEN / "
                                  "CONSUL_HTTP_TOKEN_FILE (ACL policy))", gm.CONSUL_REFUSED),
    (False, status_state.SYNCING, "check critical because the app is not ready: not ready: app", gm.APP_NOT_READY),
    (False, status_state.SYNCING, "agent accepted web but the catalog cannot be read: No cluster leader",
     gm.SERVERS_UNREACHABLE),
    (False, status_state.SYNCING, "agent accepted web but the catalog does not list shop:web-0:web yet",
     gm.NOT_CONFIRMED),
    (False, status_state.SYNCING, "waiting for the catalog to confirm the registration", gm.NOT_CONFIRMED),
    (False, status_state.DRAINING, "draining: SIGTERM: instances critical, deregistering", gm.DRAINING),
    (False, status_state.STOPPED, "draining: drained and deregistered", gm.DRAINING),
    (False, status_state.SUPERSEDED, "superseded: shop:web-0:web on this agent now belongs to pod UID u2, not to "
                                     "this pod (u1): a newer pod with this name on this node", gm.SUPERSEDED),
    (False, status_state.WORKER_DOWN, "worker down: the readiness worker is crash-looping (last failure: boom): the "
                                      "app's readiness is not being followed", gm.WORKER_DOWN),
    (False, status_state.SYNCING, "something this version never says", gm.OTHER),
    (True, status_state.CONFIRMED, "ok: web passing in the catalog", ""),
    (True, status_state.SYNCING, "ok (latched): agent accepted web but the catalog cannot be read", ""),
]


@pytest.mark.parametrize(("passes", "phase", "line", "reason"), LINES, ids=[x[3] or "open" for x in LINES])
def test_closed_reason_of_each_gate_line(passes: bool, phase: str, line: str, reason: str) -> None:
    assert gm.closed_reason(passes, phase, line) == reason


def _values(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in metrics.registry.collect() for s in family.samples}


def test_wait_is_counted_once_per_app_ready_from_ready_to_open() -> None:
    now = [100.0]
    metrics = Metrics()
    gate = gm.GateMetrics(metrics, clock=lambda: now[0])
    gate.gate(False, status_state.SYNCING, "check critical because the app is not ready: not ready: app")
    gate.app_ready(True)
    now[0] = 103.0
    gate.app_ready(True)  # the same readiness again does not restart the wait
    gate.gate(False, status_state.SYNCING, "agent accepted web but the catalog cannot be read: x")
    now[0] = 107.5
    gate.gate(True, status_state.CONFIRMED, "ok: web passing in the catalog")
    gate.gate(True, status_state.CONFIRMED, "ok: web passing in the catalog")  # heartbeat: nothing new
    values = _values(metrics)
    assert values[("katalog_gate_wait_seconds_count", ())] == 1
    assert values[("katalog_gate_wait_seconds_sum", ())] == 7.5
    assert values[("katalog_gate_open", ())] == 1
    assert {k[1][0][1] for k, v in values.items() if k[0] == "katalog_gate_closed_reason" and v} == set()
    # Closed again and reopened without the app turning ready again (continuous mode): no new wait.
    gate.gate(False, status_state.SYNCING, "agent accepted web but the catalog cannot be read: x")
    gate.gate(True, status_state.CONFIRMED, "ok: web passing in the catalog")
    assert _values(metrics)[("katalog_gate_wait_seconds_count", ())] == 1
    # A new app-ready (after not ready) is a new wait.
    gate.app_ready(False)
    gate.gate(False, status_state.SYNCING, "check critical because the app is not ready: not ready: app")
    now[0] = 200.0
    gate.app_ready(True)
    now[0] = 200.25
    gate.gate(True, status_state.CONFIRMED, "ok: web passing in the catalog")
    values = _values(metrics)
    assert values[("katalog_gate_wait_seconds_count", ())] == 2
    assert values[("katalog_gate_wait_seconds_sum", ())] == 7.75


def test_a_gate_open_before_the_app_is_seen_ready_is_no_wait() -> None:
    """Services with a fixed health pass without the app: there is no app-ready to count from."""
    metrics = Metrics()
    gate = gm.GateMetrics(metrics, clock=lambda: 5.0)
    gate.gate(True, status_state.CONFIRMED, "ok: web passing in the catalog")
    assert _values(metrics)[("katalog_gate_wait_seconds_count", ())] == 0


def _closed_reasons(url: str) -> set[str]:
    return {dict(labels)["reason"] for (name, labels), value in _scrape(url).items()
            if name == "katalog_gate_closed_reason" and value == 1}


@pytest.mark.consul
def test_gate_metrics_of_a_running_sidecar_through_agent_and_server_outages(server_client, run_sidecar,
                                                                           tmp_path: Path) -> None:
    """Real sidecar, real Consul server + client agent, a real app it probes over HTTP."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with ToggleApp() as app:
        server_client.client.stop()
        env = base_env(tmp_path, server_client.client.addr, KATALOG_READINESS_SOURCE="http",
                       KATALOG_READINESS_HTTP_URL=app.url, KATALOG_READINESS_PROBE_INTERVAL="200ms",
                       KATALOG_METRICS_ADDR=f"127.0.0.1:{port}")
        sidecar = run_sidecar(env)
        # The agent is down: that outranks the app's own readiness in the gate, and in the label.
        sidecar.wait_gate(passing=False, contains="waiting for the agent")
        wait_until(lambda: _closed_reasons(url) == {gm.AGENT_UNREACHABLE}, what="reason agent_unreachable")
        assert _scrape(url)[("katalog_gate_open", ())] == 0

        app.ready = True
        ready_at = time.monotonic()
        server_client.server.stop()
        server_client.client.start(wait_for_leader=False)
        sidecar.wait_gate(passing=False, contains="the catalog cannot be read", timeout=30)
        wait_until(lambda: _closed_reasons(url) == {gm.SERVERS_UNREACHABLE}, what="reason servers_unreachable")
        # The label says servers_unreachable only once the app was seen ready: the wait is running.
        running_since = time.monotonic()
        time.sleep(1.0)
        assert _scrape(url)[("katalog_gate_wait_seconds_count", ())] == 0

        restarted_at = time.monotonic()
        server_client.server.start()
        sidecar.wait_gate(passing=True, timeout=60)
        opened_at = time.monotonic()
        metrics = wait_until(lambda: (m := _scrape(url))[("katalog_gate_wait_seconds_count", ())] and m,
                             what="gate wait recorded")
        assert metrics[("katalog_gate_open", ())] == 1
        assert _closed_reasons(url) == set()
        assert metrics[("katalog_gate_wait_seconds_count", ())] == 1
        # Bounds from the test's own clock: the sidecar saw the app ready after `ready_at` and
        # before `running_since`; the gate cannot have opened before the server restarted.
        assert restarted_at - running_since <= metrics[("katalog_gate_wait_seconds_sum", ())] <= opened_at - ready_at
