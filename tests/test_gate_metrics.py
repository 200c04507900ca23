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
from sidecar import gate_reasons as r
from sidecar.metrics import Metrics


def _values(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in metrics.registry.collect() for s in family.samples}


def test_wait_is_counted_once_per_app_ready_from_ready_to_open() -> None:
    now = [100.0]
    metrics = Metrics()
    gate = gm.GateMetrics(metrics, clock=lambda: now[0])
    gate.gate(False, status_state.SYNCING, "check critical because the app is not ready: not ready: app",
              r.APP_NOT_READY)
    gate.app_ready(True)
    now[0] = 103.0
    gate.app_ready(True)  # the same readiness again does not restart the wait
    gate.gate(False, status_state.SYNCING, "agent accepted web but the catalog cannot be read: x",
              r.SERVERS_UNREACHABLE)
    now[0] = 107.5
    gate.gate(True, status_state.CONFIRMED, "ok: web passing in the catalog", r.OPEN)
    gate.gate(True, status_state.CONFIRMED, "ok: web passing in the catalog", r.OPEN)  # heartbeat: nothing new
    values = _values(metrics)
    assert values[("katalog_gate_wait_seconds_count", ())] == 1
    assert values[("katalog_gate_wait_seconds_sum", ())] == 7.5
    assert values[("katalog_gate_open", ())] == 1
    assert {k[1][0][1] for k, v in values.items() if k[0] == "katalog_gate_closed_reason" and v} == set()
    # Closed again and reopened without the app turning ready again (continuous mode): no new wait.
    gate.gate(False, status_state.SYNCING, "agent accepted web but the catalog cannot be read: x",
              r.SERVERS_UNREACHABLE)
    gate.gate(True, status_state.CONFIRMED, "ok: web passing in the catalog", r.OPEN)
    assert _values(metrics)[("katalog_gate_wait_seconds_count", ())] == 1
    # A new app-ready (after not ready) is a new wait.
    gate.app_ready(False)
    gate.gate(False, status_state.SYNCING, "check critical because the app is not ready: not ready: app",
              r.APP_NOT_READY)
    now[0] = 200.0
    gate.app_ready(True)
    now[0] = 200.25
    gate.gate(True, status_state.CONFIRMED, "ok: web passing in the catalog", r.OPEN)
    values = _values(metrics)
    assert values[("katalog_gate_wait_seconds_count", ())] == 2
    assert values[("katalog_gate_wait_seconds_sum", ())] == 7.75


def test_the_reason_label_is_the_verdicts_code_and_every_value_is_exported() -> None:
    """The label is the code the verdict carries, whatever the line says: no reading of words."""
    metrics = Metrics()
    gate = gm.GateMetrics(metrics)
    gate.gate(False, status_state.SYNCING, "a line in words this module never reads", r.CONSUL_REFUSED)
    reasons = {dict(labels)["reason"]: v for (name, labels), v in _values(metrics).items()
               if name == "katalog_gate_closed_reason"}
    assert tuple(reasons) == r.CLOSED_REASONS  # all 13, in their order: the series set never changes
    assert {k for k, v in reasons.items() if v} == {r.CONSUL_REFUSED}


def test_a_gate_open_before_the_app_is_seen_ready_is_no_wait() -> None:
    """Services with a fixed health pass without the app: there is no app-ready to count from."""
    metrics = Metrics()
    gate = gm.GateMetrics(metrics, clock=lambda: 5.0)
    gate.gate(True, status_state.CONFIRMED, "ok: web passing in the catalog", r.OPEN)
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
        wait_until(lambda: _closed_reasons(url) == {r.AGENT_UNREACHABLE}, what="reason agent_unreachable")
        assert _scrape(url)[("katalog_gate_open", ())] == 0

        app.ready = True
        ready_at = time.monotonic()
        server_client.server.stop()
        server_client.client.start(wait_for_leader=False)
        sidecar.wait_gate(passing=False, contains="the catalog cannot be read", timeout=30)
        wait_until(lambda: _closed_reasons(url) == {r.SERVERS_UNREACHABLE}, what="reason servers_unreachable")
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
