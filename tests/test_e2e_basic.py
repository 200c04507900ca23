"""End to end: the real `katalog-sidecar run`, the real `readiness-gate`, a real Consul."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from sidecar_process import base_env, wait_until

pytestmark = pytest.mark.consul

SERVICE_ID = "shop:web-7d4b9c-x2k8p:web"


def test_register_confirm_gate_and_deregister_on_sigterm(dev_agent, run_sidecar, tmp_path: Path) -> None:
    env = base_env(tmp_path, dev_agent.addr, KATALOG_SERVICES="web:8080,admin:9000",
                   KATALOG_TAGS="v1,blue", KATALOG_META="team=payments",
                   KATALOG_SERVICE_ADMIN_TAGS="internal", KATALOG_SERVICE_ADMIN_META="tier=ops")
    sidecar = run_sidecar(env)

    line = sidecar.wait_gate(passing=True, timeout=15)
    assert line == "ok (latched): web, admin passing in the catalog"
    # No charset guesser loaded (4 MB per pod), and no warning about its absence either.
    assert "charset_normalizer" not in Path(f"/proc/{sidecar.proc.pid}/maps").read_text()
    assert "Warning" not in sidecar.logs()

    [web] = dev_agent.health("web")
    assert web["Service"]["ID"] == SERVICE_ID
    assert (web["Service"]["Address"], web["Service"]["Port"]) == ("10.42.0.17", 8080)
    assert web["Service"]["Tags"] == ["v1", "blue"]
    assert web["Service"]["Meta"] == {
        "external-source": "kubernetes", "managed-by": "katalog-sidecar", "k8s-namespace": "shop",
        "k8s-pod": "web-7d4b9c-x2k8p", "k8s-pod-uid": "3f1c6c1e-8a51-4c1e-9a5e-2f1d1f0b7a11", "team": "payments",
    }
    checks = {c["CheckID"]: c for c in web["Checks"] if c["ServiceID"]}
    assert {cid: c["Status"] for cid, c in checks.items()} == {
        f"{SERVICE_ID}:readiness": "passing", f"{SERVICE_ID}:liveness": "passing"}
    assert checks[f"{SERVICE_ID}:readiness"]["Output"] == "fixed status: ready"
    [admin] = dev_agent.health("admin")
    assert (admin["Service"]["Port"], admin["Service"]["Tags"]) == (9000, ["internal"])
    assert admin["Service"]["Meta"]["tier"] == "ops" and admin["Service"]["Meta"]["team"] == "payments"

    code, report = sidecar.status()
    assert code == 0 and "web (shop:web-7d4b9c-x2k8p:web) at 10.42.0.17:8080: registered, readiness passing, confirmed" in report

    assert sidecar.terminate() == 0
    assert dev_agent.health("web") == [] and dev_agent.health("admin") == []
    assert dev_agent.agent_services() == {}
    code, line = sidecar.gate()
    assert code == 1 and "drained and deregistered" in line
    logs = sidecar.logs()
    assert "shop:web-7d4b9c-x2k8p:web critical in the catalog: traffic drains" in logs
    assert "shop:web-7d4b9c-x2k8p:web removed from the catalog" in logs


def test_gate_fails_with_reason_before_confirmation_when_agent_is_down(consul_bin, tmp_path: Path, run_sidecar) -> None:
    from consul_agents import ConsulAgent

    agent = ConsulAgent(consul_bin, tmp_path, "late", "127.0.0.1", [], dev=True)
    sidecar = run_sidecar(base_env(tmp_path, agent.addr))
    line = sidecar.wait_gate(passing=False, contains="waiting for the agent at")
    assert f"http://{agent.addr}" in line and "cannot connect" in line
    agent.start()
    try:
        sidecar.wait_gate(passing=True, timeout=20)
        assert agent.passing_ids("web") == {SERVICE_ID}
        assert sidecar.terminate() == 0
    finally:
        agent.stop()


def test_app_not_ready_keeps_gate_failing_and_check_critical(dev_agent, run_sidecar, tmp_path: Path) -> None:
    sidecar = run_sidecar(base_env(tmp_path, dev_agent.addr, KATALOG_READINESS_FIXED="not-ready"))
    line = sidecar.wait_gate(passing=False, contains="check critical because the app is not ready")
    assert line == "check critical because the app is not ready: fixed status: not ready"
    entry = wait_until(lambda: dev_agent.health("web"), what="instance in catalog")[0]
    statuses = {c["CheckID"]: c["Status"] for c in entry["Checks"] if c["ServiceID"]}
    assert statuses == {f"{SERVICE_ID}:readiness": "critical", f"{SERVICE_ID}:liveness": "passing"}


def test_http_probe_source_follows_the_app(dev_agent, run_sidecar, tmp_path: Path) -> None:
    from http_app import ToggleApp

    with ToggleApp() as app:
        sidecar = run_sidecar(base_env(tmp_path, dev_agent.addr, KATALOG_READINESS_SOURCE="http",
                                       KATALOG_READINESS_HTTP_URL=app.url, KATALOG_READINESS_PROBE_INTERVAL="100ms",
                                       KATALOG_GATE_MODE="continuous"))
        sidecar.wait_gate(passing=False, contains="app is not ready: HTTP probe")
        app.ready = True
        sidecar.wait_gate(passing=True)
        assert dev_agent.passing_ids("web") == {SERVICE_ID}
        app.ready = False
        line = sidecar.wait_gate(passing=False, contains="not ready")
        assert line.endswith(": 503")
        assert dev_agent.passing_ids("web") == set()


def test_restarted_sidecar_adopts_its_registration(dev_agent, run_sidecar, tmp_path: Path) -> None:
    env = base_env(tmp_path, dev_agent.addr)
    first = run_sidecar(env, name="first")
    first.wait_gate(passing=True)
    first.signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    second = run_sidecar(env, name="second")
    second.wait_gate(passing=True)
    assert [e["Service"]["ID"] for e in dev_agent.health("web")] == [SERVICE_ID]
    assert list(dev_agent.agent_services()) == [SERVICE_ID]


def test_servers_down_agent_accepts_but_gate_waits_for_the_catalog(server_client, run_sidecar, tmp_path: Path) -> None:
    client, server = server_client.client, server_client.server
    server.stop()
    sidecar = run_sidecar(base_env(tmp_path, client.addr))
    # The agent took the registration (its local view) ...
    wait_until(lambda: SERVICE_ID in client.agent_services(), what="registration in the agent")
    # ... but the catalog never confirmed it, and the gate says so. The first line may be the generic
    # "waiting for the catalog" before the first catalog read fails; the specific one must follow.
    sidecar.wait_gate(passing=False, contains="agent accepted web but the catalog")
    for _ in range(5):
        assert sidecar.gate()[0] == 1
    server.start()
    sidecar.wait_gate(passing=True, timeout=60)
    assert server.passing_ids("web") == {SERVICE_ID}
    assert sidecar.terminate() == 0
    assert server.health("web") == []
