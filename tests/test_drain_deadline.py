"""The drain keeps its deadline, always tries to deregister, gives every instance its own
attempt, and its exit code and last words say what is really left. Default timeouts
(KATALOG_CONSUL_TIMEOUT 5 s, KATALOG_DRAIN_TIMEOUT 20 s) unless the deadline is the point."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from counting_proxy import CountingProxy
from sidecar_process import base_env, wait_until

from sidecar.consul.drain import Drainer
from sidecar.errors import ConsulServerError
from sidecar.registration import Instance

pytestmark = [pytest.mark.consul, pytest.mark.timeout(120)]

SHORTENED = ("KATALOG_CHECK_TTL", "KATALOG_HEARTBEAT_INTERVAL", "KATALOG_CONFIRM_WAIT", "KATALOG_DRAIN_TIMEOUT")


def default_env(tmp_path: Path, agent_addr: str, **overrides: str) -> dict[str, str]:
    env = base_env(tmp_path, agent_addr)
    for key in SHORTENED:
        env.pop(key)
    env.update(overrides)
    return env


@pytest.fixture
def proxy_to(request: pytest.FixtureRequest) -> Iterator[Any]:
    started: list[CountingProxy] = []

    def start(agent: Any) -> CountingProxy:
        proxy = CountingProxy(agent.host, agent.http_port).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def test_hung_agent_drain_keeps_a_3s_deadline_and_still_tries_to_deregister(dev_agent, proxy_to, run_sidecar,
                                                                          tmp_path: Path) -> None:
    proxy = proxy_to(dev_agent)
    sidecar = run_sidecar(default_env(tmp_path, proxy.addr, KATALOG_DRAIN_TIMEOUT="3s"))
    sidecar.wait_gate(passing=True)
    assert dev_agent.proc is not None
    os.killpg(dev_agent.proc.pid, signal.SIGSTOP)  # the agent hangs: connections accepted, never answered
    try:
        start = time.monotonic()
        sidecar.signal(signal.SIGTERM)
        assert sidecar.proc is not None
        code = sidecar.proc.wait(timeout=30)
        took = time.monotonic() - start
    finally:
        os.killpg(dev_agent.proc.pid, signal.SIGCONT)
    # Every attempt was clipped to the time left (a KATALOG_CONSUL_TIMEOUT of 5 s would not fit).
    assert took < 3.0 + 1.5, f"drain took {took:.1f}s with a 3s deadline"
    writes = [s.path for s in proxy.between(start, start + took) if s.method == "PUT"]
    assert "/v1/agent/service/deregister/shop:web-7d4b9c-x2k8p:web" in writes, writes
    assert code == 1
    logs = sidecar.logs()
    assert ("drain incomplete before the deadline: the liveness check goes critical within 15s and the agent "
            "reaps the instance 60s after that (still registered with the agent: shop:web-7d4b9c-x2k8p:web)") in logs


def test_drain_deadline_counts_from_sigterm_not_from_the_end_of_an_agent_call_in_flight(
        dev_agent, proxy_to, run_sidecar, tmp_path: Path) -> None:
    # TTL refreshes every second or so, so a call is soon in flight to a hung agent; it holds
    # the loop for KATALOG_CONSUL_TIMEOUT (5 s) before the loop sees SIGTERM.
    proxy = proxy_to(dev_agent)
    sidecar = run_sidecar(default_env(tmp_path, proxy.addr, KATALOG_DRAIN_TIMEOUT="8s", KATALOG_CHECK_TTL="3s"))
    sidecar.wait_gate(passing=True)
    assert dev_agent.proc is not None and sidecar.proc is not None
    os.killpg(dev_agent.proc.pid, signal.SIGSTOP)
    try:
        hung_at = time.monotonic()
        wait_until(lambda: any(s.method == "PUT" for s in proxy.between(hung_at, time.monotonic())), timeout=10,
                   what="an agent write in flight to the hung agent")
        start = time.monotonic()
        sidecar.signal(signal.SIGTERM)
        code = sidecar.proc.wait(timeout=30)
        took = time.monotonic() - start
    finally:
        os.killpg(dev_agent.proc.pid, signal.SIGCONT)
    # Counted from the end of the call in flight it would be ~5 s + 8 s; the kubelet counts from SIGTERM.
    assert took < 8.0 + 1.5, f"drain ended {took:.1f}s after SIGTERM with an 8s budget"
    assert code == 1  # the agent never answered: nothing could be confirmed


def test_servers_down_every_instance_gets_its_attempts_and_the_exit_says_what_is_left(
        server_client, proxy_to, run_sidecar, tmp_path: Path) -> None:
    client, server = server_client.client, server_client.server
    proxy = proxy_to(client)
    sidecar = run_sidecar(default_env(tmp_path, proxy.addr, KATALOG_SERVICES="web:8080,admin:9000"))
    sidecar.wait_gate(passing=True)
    server.stop()
    start = time.monotonic()
    code = sidecar.terminate(timeout=60)
    took = time.monotonic() - start
    assert took < 20.0 + 2.0, f"drain took {took:.1f}s with the default 20s deadline"
    seen = proxy.between(start, start + took)
    for name in ("web", "admin"):
        sid = f"shop:web-7d4b9c-x2k8p:{name}"
        # Confirmation reads this agent's node, filtered to the instance.
        reads = [s for s in seen if s.method == "GET" and s.path.startswith(("/v1/catalog/node-services/",
                                                                               "/v1/health/node/"))
                 and quote_plus(sid) in s.path]
        deregister = [s for s in seen if s.path == f"/v1/agent/service/deregister/{sid}"]
        assert deregister, f"{sid} was never deregistered"
        # At least one catalog read to confirm critical (before) and one to confirm removal (after).
        assert any(s.time < deregister[0].time for s in reads), f"{sid}: no attempt to confirm critical"
        assert any(s.time > deregister[0].time for s in reads), f"{sid}: no attempt to confirm removal"
    # The agent removed both: nothing is left to the TTL or the reaper, only the agent's sync.
    assert client.agent_services() == {}
    assert code == 1
    logs = sidecar.logs()
    assert "no time left" not in logs
    assert ("the agent deregistered shop:web-7d4b9c-x2k8p:web, shop:web-7d4b9c-x2k8p:admin but the catalog did not "
            "confirm the removal; the agent removes it from the catalog once it reaches the servers") in logs
    assert "reaper" not in logs.split("SIGTERM", 1)[1]
    wait_until(lambda: "removal from the catalog not confirmed yet" in (tmp_path / "run" / "status.json").read_text(),
               timeout=1, what="the final status")


# --- the outcome, in-process: which phases failed decides nothing, what is left does --------


class _Agent:
    """An agent whose catalog cannot confirm the critical phase but does confirm the removal."""

    def __init__(self) -> None:
        self.registered = True

    def update_ttl_check(self, check_id: str, status: str, output: str, timeout: float | None = None) -> None:
        pass

    def deregister_service(self, service_id: str, timeout: float | None = None) -> None:
        self.registered = False

    def node_of_service(self, sid: str, timeout: float | None = None) -> str | None:
        return "node-a" if self.registered else None

    def agent_service(self, sid: str, content_hash: str = "", wait: float = 0.0,
                      timeout: float | None = None) -> tuple[str, dict[str, Any] | None]:
        return ("", {"ID": sid, "Meta": {}}) if self.registered else ("", None)

    def node_instance(self, node: str, name: str, sid: str, index: int = 0, wait: float = 0.0,
                      timeout: float | None = None) -> tuple[int, list[dict[str, Any]]]:
        if self.registered:
            raise ConsulServerError("GET /v1/catalog/node-services/node-a: No cluster leader", status=500)
        return 7, []

    def node_checks(self, node: str, name: str, sid: str, index: int = 0, wait: float = 0.0,
                    timeout: float | None = None) -> tuple[int, list[dict[str, Any]]]:
        raise ConsulServerError("GET /v1/health/node/node-a: No cluster leader", status=500)


class _Clock:
    """Advances a little on every reading, so the retries run out of time without sleeping long."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.05
        return self.now


def test_removed_and_confirmed_is_a_complete_drain_even_if_critical_was_not_confirmed() -> None:
    inst = Instance("web", "shop:p:web", "10.0.0.1", 8080, (), ())
    clock = _Clock()
    result = Drainer(_Agent(), clock, deadline=1.0).run((inst,))  # type: ignore[arg-type]
    assert result.removed == ["shop:p:web"] and result.complete
