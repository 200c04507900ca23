"""katalog-sync and katalog-sidecar on one agent, as during a migration: neither touches the
other's instances. A katalog-sync-shaped instance (registered here as katalog-sync's daemon
registers one) survives a whole life of ours: registration, readiness flips, an annotation
edit, a sidecar SIGKILL and restart (adoption), an agent restart that keeps its state, and the
drain at deletion. katalog-sync's own clean-up rule, applied to the agent, spares ours.

Real Consul (a server and a client agent, so the client restarts with its data dir), the fake
API server for the pod watch.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from consul_agents import ConsulAgent, ServerAndClient
from fakekube import FakeKube, make_pod
from sidecar_process import wait_until
from test_e2e_annotations import KS, NS, POD, POD_IP, annotated_env

pytestmark = [pytest.mark.consul, pytest.mark.timeout(180)]

OURS = f"{NS}:{POD}:hw"
THEIRS = f"katalog-sync_hw_{NS}_{POD}"  # katalog-sync's ID: katalog-sync_<service>_<namespace>_<pod>
OTHER_POD = f"katalog-sync_hw_{NS}_hw-5d8f7-zzzzz"  # a pod katalog-sync alone still serves


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKube]:
    fake = FakeKube(tmp_path / "kube-token").start()
    try:
        yield fake
    finally:
        fake.stop()


def register_as_katalog_sync(agent: ConsulAgent, service_id: str, pod: str) -> None:
    """The registration katalog-sync's daemon makes: its meta marker, one TTL check named like
    the service, readiness as a JSON map in the notes."""
    agent.register_raw({
        "ID": service_id, "Name": "hw", "Address": POD_IP, "Port": 8080, "Tags": ["v2"],
        "Meta": {"external-source": "kubernetes", "external-sync-source": "katalog-sync",
                 "external-k8s-link": f"{NS}/{pod}", "external-k8s-namespace": NS, "external-k8s-pod": pod},
        "Check": {"CheckID": service_id, "TTL": "10m", "Status": "passing", "Notes": json.dumps({"hw": True})},
    })
    # Its next sync refreshes the TTL with the readiness map as output (which the agent persists).
    requests.put(f"{agent.http}/v1/agent/check/update/{service_id}", timeout=10,
                 data=json.dumps({"Status": "passing", "Output": json.dumps({"hw": True})})).raise_for_status()


def katalog_sync_view(agent: ConsulAgent) -> dict[str, Any]:
    """katalog-sync's instances on the agent, and their checks: what must not change."""
    services = {sid: svc for sid, svc in agent.agent_services().items() if sid.startswith("katalog-sync_")}
    checks = agent.get("/v1/agent/checks")
    return {sid: (svc, checks[sid]["Status"], checks[sid]["Output"], checks[sid]["Notes"])
            for sid, svc in services.items()}


def katalog_sync_cleanup(agent: ConsulAgent, serving: dict[str, set[str]]) -> list[str]:
    """katalog-sync's documented clean-up: deregister every agent instance that carries its
    marker meta and whose pod (external-k8s-link) does not list the service any more."""
    removed = []
    for sid, svc in agent.agent_services().items():
        if (svc.get("Meta") or {}).get("external-sync-source") != "katalog-sync":
            continue
        if svc["Service"] in serving.get(svc["Meta"].get("external-k8s-link", ""), set()):
            continue
        requests.put(f"{agent.http}/v1/agent/service/deregister/{sid}", timeout=10).raise_for_status()
        removed.append(sid)
    return removed


def ours_passing(agent: ConsulAgent) -> bool:
    return OURS in agent.passing_ids("hw")


def test_katalog_sync_instances_survive_our_whole_life(server_client: ServerAndClient, kube: FakeKube, run_sidecar,
                                                       tmp_path: Path) -> None:
    agent = server_client.client
    register_as_katalog_sync(agent, THEIRS, POD)
    register_as_katalog_sync(agent, OTHER_POD, "hw-5d8f7-zzzzz")
    wait_until(lambda: {THEIRS, OTHER_POD} <= agent.passing_ids("hw"), what="katalog-sync's instances in the catalog")
    before = katalog_sync_view(agent)
    assert set(before) == {THEIRS, OTHER_POD}

    def unchanged(step: str) -> None:
        assert katalog_sync_view(agent) == before, f"katalog-sync's instances changed after: {step}"
        assert set(before) <= agent.passing_ids("hw"), f"katalog-sync's instances not passing after: {step}"

    pod = make_pod(POD, NS, containers=("hw", "katalog-sidecar"), ports={"http": 8080})
    pod["metadata"]["annotations"] = {KS + "service-names": "hw", KS + "service-tags": "v2"}
    kube.create_pod(pod)
    env = annotated_env(tmp_path, agent, kube, KATALOG_DRAIN_TIMEOUT="10s")
    sidecar = run_sidecar(env)
    sidecar.wait_gate(passing=True)
    # Both tools' instances of the same pod: same address and port, different IDs and meta.
    assert agent.passing_ids("hw") == {OURS, THEIRS, OTHER_POD}
    unchanged("registration")

    kube.set_container_ready(NS, POD, "hw", False)
    wait_until(lambda: not ours_passing(agent), what="ours critical")
    kube.set_container_ready(NS, POD, "hw", True)
    wait_until(lambda: ours_passing(agent), what="ours passing again")
    unchanged("readiness flips")

    kube.annotate_pod(NS, POD, KS + "service-tags", "v3")
    wait_until(lambda: agent.agent_services()[OURS]["Tags"] == ["v3"], what="our tags edited")
    unchanged("an annotation edit")

    sidecar.signal(signal.SIGKILL)
    sidecar.proc.wait(timeout=10)  # type: ignore[union-attr]
    restarted = run_sidecar(env, name="restarted")
    restarted.wait_gate(passing=True)
    assert sorted(agent.agent_services()) == sorted([OURS, THEIRS, OTHER_POD])  # adopted, no duplicate
    unchanged("a sidecar SIGKILL and restart")

    agent.restart()
    wait_until(lambda: ours_passing(agent), timeout=30, what="ours back after the agent restart")
    unchanged("an agent restart that keeps its state")

    # katalog-sync's clean-up pass, as its daemon runs it every sync: it knows only its other pod.
    assert katalog_sync_cleanup(agent, {f"{NS}/hw-5d8f7-zzzzz": {"hw"}}) == [THEIRS]
    assert OURS in agent.agent_services()
    before.pop(THEIRS)
    unchanged("katalog-sync's clean-up")

    kube.set_deletion_timestamp(NS, POD, grace_seconds=30)
    wait_until(lambda: OURS not in agent.agent_services(), what="ours drained and deregistered")
    assert "critical in the catalog: traffic drains" in restarted.logs()
    restarted.signal(signal.SIGTERM)
    assert restarted.proc.wait(timeout=10) == 0  # type: ignore[union-attr]
    unchanged("our drain at deletion")
    assert sorted(agent.agent_services()) == [OTHER_POD]
