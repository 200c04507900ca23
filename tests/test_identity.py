"""Identity: an ID names a pod, not its incarnation. Two client agents with different node
names prove that confirmation and removal are about this agent's node and this pod's UID."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from consul_agents import ConsulAgent
from sidecar_process import base_env, wait_until

pytestmark = pytest.mark.consul

SID = "shop:web-0:web"


def pod_env(tmp_path: Path, agent: ConsulAgent, uid: str, ip: str, **extra: str) -> dict[str, str]:
    return base_env(tmp_path, agent.addr, POD_NAME="web-0", POD_UID=uid, POD_IP=ip, **extra)


def instances(agent: ConsulAgent) -> dict[tuple[str, str], dict[str, Any]]:
    """(node, ID) -> {address, uid, status} of every `web` instance the servers list."""
    found = {}
    for entry in agent.health("web"):
        service = entry["Service"]
        own = [c for c in entry["Checks"] if c.get("ServiceID") == service["ID"]]
        status = "passing" if own and all(c["Status"] == "passing" for c in own) else "critical"
        found[(entry["Node"]["Node"], service["ID"])] = {
            "address": service["Address"], "uid": service["Meta"].get("k8s-pod-uid"), "status": status}
    return found


def register_lingering(agent: ConsulAgent, uid: str, ip: str) -> None:
    """What a lost node's agent (or an incomplete drain) leaves in the catalog: the previous
    incarnation of web-0, same ID, its own UID and address, still passing."""
    agent.register_raw({
        "ID": SID, "Name": "web", "Address": ip, "Port": 8080,
        "Meta": {"k8s-pod-uid": uid, "k8s-pod": "web-0", "k8s-namespace": "shop"},
        "Checks": [{"CheckID": f"{SID}:readiness", "TTL": "10m", "Status": "passing"},
                   {"CheckID": f"{SID}:liveness", "TTL": "10m", "Status": "passing"}],
    })


class Sampler:
    """Reads the servers' view of `web` every few ms while a step runs."""

    def __init__(self, agent: ConsulAgent) -> None:
        self.agent = agent
        self.samples: list[dict[tuple[str, str], dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(instances(self.agent))
            except Exception:  # noqa: BLE001 - a failed sample is a gap, not a finding
                pass
            self._stop.wait(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def test_statefulset_pod_recreated_on_another_node_while_the_old_entry_lingers(two_nodes, run_sidecar,
                                                                                 tmp_path: Path) -> None:
    node_a, node_b, server = two_nodes.clients["node-a"], two_nodes.clients["node-b"], two_nodes.server
    register_lingering(node_a, "uid-old", "10.42.0.5")
    # The new incarnation runs on node-b. Health answers are sorted by node name: node-a's
    # lingering entry comes first, which is what blocked the gate when only entries[0] counted.
    sidecar = run_sidecar(pod_env(tmp_path, node_b, "uid-new", "10.42.1.9"))
    sidecar.wait_gate(passing=True, timeout=20)
    assert instances(server) == {
        ("node-a", SID): {"address": "10.42.0.5", "uid": "uid-old", "status": "passing"},
        ("node-b", SID): {"address": "10.42.1.9", "uid": "uid-new", "status": "passing"},
    }
    # Its drain is about node-b: it completes although node-a still lists the ID, and leaves
    # node-a's entry to node-a's agent (the reaper, or the node's removal).
    assert sidecar.terminate() == 0, sidecar.logs()
    assert instances(server) == {("node-a", SID): {"address": "10.42.0.5", "uid": "uid-old", "status": "passing"}}
    assert "removed from the catalog" in sidecar.logs()


def test_same_node_force_delete_the_old_sidecar_leaves_the_new_pod_alone(two_nodes, run_sidecar,
                                                                          tmp_path: Path) -> None:
    node_a, server = two_nodes.clients["node-a"], two_nodes.server
    old = run_sidecar(pod_env(tmp_path / "old", node_a, "uid-old", "10.42.0.5"), name="old")
    old.wait_gate(passing=True, timeout=20)
    # Force delete: the StatefulSet controller recreates web-0 at once, on the same node, while
    # the old pod's containers are still being stopped. Same ID, new UID and address.
    new = run_sidecar(pod_env(tmp_path / "new", node_a, "uid-new", "10.42.0.6"), name="new")
    new.wait_gate(passing=True, timeout=20)
    wanted = {("node-a", SID): {"address": "10.42.0.6", "uid": "uid-new", "status": "passing"}}
    assert instances(server) == wanted
    with Sampler(server) as sampler:
        assert old.terminate() == 0, old.logs()
        time.sleep(0.5)
    assert len(sampler.samples) >= 5
    broken = [s for s in sampler.samples if s != wanted]
    assert not broken, broken[:3]  # never critical, never gone: no blip for the new pod
    assert "now belongs to pod UID uid-new on this agent, not to this pod (uid-old): leaving it alone" in old.logs()
    assert SID in node_a.agent_services()
    logs = new.logs()
    assert "registering it again" not in logs and "agent no longer knows" not in logs, logs
    new.wait_gate(passing=True)


def test_two_clusters_share_a_datacenter_without_a_cluster_name(two_nodes, run_sidecar, tmp_path: Path) -> None:
    node_a, node_b, server = two_nodes.clients["node-a"], two_nodes.clients["node-b"], two_nodes.server
    # The same namespace and pod name in two clusters, no KATALOG_CLUSTER_NAME: the same ID.
    first = run_sidecar(pod_env(tmp_path / "c1", node_a, "uid-c1", "10.1.0.5"), name="cluster-1")
    second = run_sidecar(pod_env(tmp_path / "c2", node_b, "uid-c2", "10.2.0.5"), name="cluster-2")
    first.wait_gate(passing=True, timeout=20)
    second.wait_gate(passing=True, timeout=20)
    other = {("node-b", SID): {"address": "10.2.0.5", "uid": "uid-c2", "status": "passing"}}
    with Sampler(server) as sampler:
        assert first.terminate() == 0, first.logs()
    assert instances(server) == other
    assert all(s.get(("node-b", SID)) == other[("node-b", SID)] for s in sampler.samples)
    code, _ = second.gate()
    assert code == 0
    second.signal(signal.SIGTERM)
    assert second.proc is not None and second.proc.wait(timeout=30) == 0
    wait_until(lambda: instances(server) == {}, what="both removed")
