"""The simulation's models behave as the real agent, catalog and apiserver do (facts doc)."""

from __future__ import annotations

import random
from typing import Any

from sim.clock import VirtualClock
from sim.consul_model import CRITICAL, PASSING, AgentModel, ConsulServers, Reply
from sim.kube_model import Pod, PodApi

NODE = "node-a"


def _world(persist: bool = True) -> tuple[VirtualClock, ConsulServers, AgentModel]:
    clock = VirtualClock()
    servers = ConsulServers(clock)
    return clock, servers, AgentModel(NODE, clock, servers, random.Random(1), persist=persist)


def _payload(uid: str = "u1") -> dict[str, Any]:
    return {"ID": "web-p", "Name": "web", "Address": "10.0.0.1", "Port": 8080, "Meta": {"k8s-pod-uid": uid},
            "Checks": [{"CheckID": "web-p:readiness", "TTL": "150s"},
                       {"CheckID": "web-p:liveness", "TTL": "15s", "DeregisterCriticalServiceAfter": "1m"}]}


def _run_until(clock: VirtualClock, until: float) -> None:
    while (t := clock.next_time()) is not None and t <= until:
        clock.step()
    clock.now = max(clock.now, until)


def test_new_checks_start_critical_and_reregistration_keeps_status() -> None:
    clock, _servers, agent = _world()
    assert agent.register(_payload()).ok
    assert agent.checks["web-p:liveness"].status == CRITICAL
    agent.update_check("web-p:liveness", PASSING, "running")
    agent.register(_payload())
    assert agent.checks["web-p:liveness"].status == PASSING
    assert agent.checks["web-p:liveness"].output == "running"


def test_ttl_expiry_then_reaper_counts_from_the_first_critical_moment() -> None:
    clock, _servers, agent = _world()
    agent.register(_payload())
    agent.update_check("web-p:liveness", PASSING, "running")
    agent.update_check("web-p:readiness", PASSING, "ready")
    _run_until(clock, clock.now + 16)
    assert agent.checks["web-p:liveness"].status == CRITICAL
    since = agent.checks["web-p:liveness"].critical_since
    # Refreshing the critical check keeps it alive on the TTL but not out of the reaper's reach.
    for _ in range(20):  # 1 min, plus up to one 30 s reaper interval
        _run_until(clock, clock.now + 5)
        if "web-p" in agent.services:
            agent.update_check("web-p:liveness", CRITICAL, "TTL expired")
            assert agent.checks["web-p:liveness"].critical_since == since
    assert "web-p" not in agent.services
    assert agent.reaped and agent.reaped[0][2] == "u1"


def test_unknown_check_update_is_500_without_ttl() -> None:
    _clock, _servers, agent = _world()
    reply = agent.update_check("nope", PASSING, "")
    assert reply.status == 500 and "does not have associated TTL" in reply.text


def test_restart_with_state_restores_only_unexpired_ttl_state() -> None:
    clock, _servers, agent = _world(persist=True)
    agent.register(_payload())
    agent.update_check("web-p:liveness", PASSING, "running")
    agent.update_check("web-p:readiness", PASSING, "ready")
    agent.stop()
    _run_until(clock, clock.now + 20)
    agent.start()
    assert agent.checks["web-p:liveness"].status == CRITICAL  # 15 s TTL expired while down
    assert agent.checks["web-p:readiness"].status == PASSING  # 150 s TTL did not


def test_restart_without_state_loses_everything_and_the_catalog_follows() -> None:
    clock, servers, agent = _world(persist=False)
    agent.register(_payload())
    _run_until(clock, clock.now + 1)
    assert servers.instance(NODE, "web-p")[0] is not None
    agent.stop()
    agent.start()
    assert agent.services == {}
    _run_until(clock, clock.now + 1)
    assert servers.instance(NODE, "web-p")[0] is None


def test_servers_down_the_agent_accepts_and_syncs_later() -> None:
    clock, servers, agent = _world()
    servers.up = False
    assert agent.register(_payload()).ok
    _run_until(clock, clock.now + 5)
    assert servers.instance(NODE, "web-p")[0] is None
    servers.up = True
    _run_until(clock, clock.now + 16)
    assert servers.instance(NODE, "web-p")[0] is not None


def test_health_node_blocks_until_a_check_on_the_node_changes() -> None:
    clock, servers, agent = _world()
    agent.register(_payload())
    _run_until(clock, clock.now + 1)
    first = servers.read(NODE, "checks")
    got: list[Reply] = []
    servers.blocking_read(NODE, "checks", first.index, 60.0, got.append)
    services_index = servers.read(NODE, "services").index
    seen_services: list[Reply] = []
    servers.blocking_read(NODE, "services", services_index, 60.0, seen_services.append)
    _run_until(clock, clock.now + 2)
    assert got == []
    agent.update_check("web-p:readiness", PASSING, "ready")
    _run_until(clock, clock.now + 1)
    assert len(got) == 1 and got[0].index > first.index
    assert seen_services == []  # node-services does not wake on a status change


def test_agent_service_hash_wait_wakes_on_reregistration_with_new_meta() -> None:
    clock, _servers, agent = _world()
    agent.register(_payload("u1"))
    first = agent.service("web-p")
    got: list[Reply] = []
    agent.wait_service("web-p", first.body["ContentHash"], 60.0, got.append)
    agent.update_check("web-p:readiness", PASSING, "ready")
    assert got == []
    agent.register(_payload("u2"))
    assert len(got) == 1 and got[0].body["Meta"]["k8s-pod-uid"] == "u2"


def test_watch_replays_history_and_old_rv_gets_410() -> None:
    clock = VirtualClock()
    api = PodApi(clock)
    api.create(Pod("p", "u1", NODE))
    code, listed = api.list_pod("p")
    rv = int(listed["metadata"]["resourceVersion"])
    api.set_ready("p", True)
    events: list[dict[str, Any]] = []
    ends: list[int | None] = []
    api.watch_pod("p", rv, events.append, ends.append)
    assert [e["type"] for e in events] == ["MODIFIED"]
    api.expire_history()
    api.set_ready("p", False)
    stale: list[dict[str, Any]] = []
    api.watch_pod("p", rv, stale.append, ends.append)
    assert stale[0]["type"] == "ERROR" and stale[0]["object"]["code"] == 410
    api.set_status_code(403)
    assert 403 in ends
    assert api.watch_pod("p", api.rv, events.append, ends.append) == 403


def test_a_stopping_agent_ends_its_long_polls() -> None:
    _clock, _servers, agent = _world()
    agent.register(_payload())
    got: list[Reply] = []
    agent.wait_service("web-p", agent.service("web-p").body["ContentHash"], 60.0, got.append)
    agent.stop()
    assert [r.status for r in got] == [0]
