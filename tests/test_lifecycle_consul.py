"""Faults on the Consul side, against real agents: restarts, server outages, sidecar crashes."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
from sidecar_process import base_env, wait_until

pytestmark = pytest.mark.consul

SERVICE_ID = "shop:web-7d4b9c-x2k8p:web"


class CatalogSampler:
    """Samples the servers' view of one service every few ms in the background."""

    def __init__(self, agent, service: str, interval: float = 0.02) -> None:
        self.agent, self.service, self.interval = agent, service, interval
        self.samples: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                entries = self.agent.health(self.service)
                statuses = {e["Service"]["ID"]: ("passing" if all(c["Status"] == "passing" for c in e["Checks"])
                                                 else "critical") for e in entries}
                self.samples.append((time.monotonic(), statuses))
            except Exception:  # noqa: BLE001 - a failed sample is just a gap
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> CatalogSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def test_dev_agent_restart_loses_state_and_the_sidecar_registers_again(dev_agent, run_sidecar, tmp_path: Path) -> None:
    sidecar = run_sidecar(base_env(tmp_path, dev_agent.addr, KATALOG_SERVICES="web:8080,admin:9000"))
    sidecar.wait_gate(passing=True)
    dev_agent.stop()
    sidecar.wait_gate(passing=True)  # latch: an agent blip does not make the pod NotReady
    dev_agent.start()
    answered = time.monotonic()
    wait_until(lambda: dev_agent.passing_ids("web") == {SERVICE_ID}, timeout=10, interval=0.02,
               what="instance passing again after the agent restart")
    took = time.monotonic() - answered
    assert took < 5.0, f"re-registration took {took:.2f}s after the agent answered"
    wait_until(lambda: dev_agent.passing_ids("admin") == {"shop:web-7d4b9c-x2k8p:admin"}, what="admin too")
    # Both services' watchers saw the restart; it is handled (and logged) at most once. (When
    # the agent comes back empty, a watcher may first see the instance missing, which
    # re-registers it through the same path.)
    logs = sidecar.logs()
    assert logs.count("answers again: re-registering and re-pushing status") <= 1
    assert "answers again" in logs or "agent no longer knows" in logs


def test_client_agent_restart_with_state_kept(server_client, run_sidecar, tmp_path: Path) -> None:
    client, server = server_client.client, server_client.server
    sidecar = run_sidecar(base_env(tmp_path, client.addr))
    sidecar.wait_gate(passing=True)
    client.restart()
    wait_until(lambda: sidecar.logs().count("answers again") >= 1, timeout=10, what="restart noticed")
    wait_until(lambda: server.passing_ids("web") == {SERVICE_ID}, timeout=10, what="passing after restart")
    assert [e["Service"]["ID"] for e in server.health("web")] == [SERVICE_ID]


def test_servers_down_after_confirmation_latch_keeps_ready_continuous_fails(server_client, run_sidecar,
                                                                              tmp_path: Path) -> None:
    client, server = server_client.client, server_client.server
    latch = run_sidecar(base_env(tmp_path / "a", client.addr, POD_NAME="latch-0"), name="latch")
    continuous = run_sidecar(base_env(tmp_path / "b", client.addr, POD_NAME="cont-0", KATALOG_GATE_MODE="continuous",
                                      KATALOG_RECONFIRM_INTERVAL="1s"), name="continuous")
    latch.wait_gate(passing=True)
    continuous.wait_gate(passing=True)
    server.stop()
    line = continuous.wait_gate(passing=False, contains="catalog cannot be read", timeout=20)
    assert line.startswith("agent accepted web but the catalog cannot be read")
    for _ in range(3):
        code, line = latch.gate()
        assert code == 0 and line.startswith("ok (latched)")
    server.start()
    continuous.wait_gate(passing=True, timeout=60)
    assert server.passing_ids("web") == {"shop:latch-0:web", "shop:cont-0:web"}


def test_sidecar_restart_adopts_without_flapping(dev_agent, run_sidecar, tmp_path: Path) -> None:
    env = base_env(tmp_path, dev_agent.addr)
    first = run_sidecar(env, name="first")
    first.wait_gate(passing=True)
    index_before = dev_agent.catalog_index("web")
    with CatalogSampler(dev_agent, "web") as sampler:
        first.signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
        second = run_sidecar(env, name="second")
        second.wait_gate(passing=True)
        time.sleep(0.3)
    assert sampler.samples, "no catalog samples taken"
    assert all(statuses == {SERVICE_ID: "passing"} for _, statuses in sampler.samples), \
        [s for s in sampler.samples if s[1] != {SERVICE_ID: "passing"}][:3]
    assert list(dev_agent.agent_services()) == [SERVICE_ID]
    # Same service, same checks, same statuses: adopting wrote nothing new to the catalog.
    assert dev_agent.catalog_index("web") == index_before


@pytest.mark.slow
def test_sigkill_liveness_goes_critical_and_the_agent_reaps_but_long_unready_is_not_reaped(
        dev_agent, run_sidecar, tmp_path: Path) -> None:
    killed = run_sidecar(base_env(tmp_path / "k", dev_agent.addr, POD_NAME="killed-0", KATALOG_CHECK_TTL="5s"),
                         name="killed")
    unready = run_sidecar(base_env(tmp_path / "u", dev_agent.addr, POD_NAME="unready-0", KATALOG_CHECK_TTL="5s",
                                   KATALOG_READINESS_FIXED="not-ready"), name="unready")
    killed.wait_gate(passing=True)
    unready.wait_gate(passing=False, contains="app is not ready")
    killed.signal(signal.SIGKILL)
    killed_at = time.monotonic()

    def liveness(sid: str) -> str | None:
        for e in dev_agent.health("web"):
            if e["Service"]["ID"] == sid:
                return {c["CheckID"]: c["Status"] for c in e["Checks"]}[f"{sid}:liveness"]
        return None

    wait_until(lambda: liveness("shop:killed-0:web") == "critical", timeout=15, what="liveness critical at TTL")
    assert time.monotonic() - killed_at >= 4.0  # not before the TTL ran out
    # DeregisterCriticalServiceAfter is 1m at least, and the reaper runs every 30s.
    wait_until(lambda: liveness("shop:killed-0:web") is None, timeout=150, interval=1.0, what="instance reaped")
    # Meanwhile the unready app's instance, whose sidecar lives, is still there (critical, not reaped).
    assert liveness("shop:unready-0:web") == "passing"
    ids = {e["Service"]["ID"] for e in dev_agent.health("web")}
    assert ids == {"shop:unready-0:web"}
