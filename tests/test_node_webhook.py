"""The admission webhook injecting pods that real kubelets run (issue 20's done-when, on the real
node): the real `katalog-sidecar webhook` process on loopback, registered with the real
apiserver (tests/kube_webhook.py); two real nodes (containerd + kubelet, each with its Consul
client agent, tests/katalog_nodes.py).

A Deployment written without the sidecar (the classic example's app alone, through
tests/node_overlay.py) is created in an opted-in namespace. The webhook injects the sidecar,
with what this machine needs as `--sidecar-env` (node_overlay.webhook_args); the pods run on
the real kubelets, register in their own node's agent and are confirmed (Ready through the
injected exec gate); a rolling update replaces the pod, the old instance deregistered; scaled
to 0 the pods drain and leave nothing in the catalog or the agents.

One replica on two nodes: hostNetwork pods of one port fit one per node, so the surge pod of
the rollout takes the other node. Kept to one cluster and one Deployment for wall time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from kube_webhook import LABEL, OWN, WebhookProcess, app_deployment, has_sidecar, namespace, webhook_configuration
from node_images import SIDECAR_IMAGE
from node_overlay import METRICS_PORT, for_this_machine, webhook_args
from waiting import wait_until

pytest.importorskip("cryptography")
pytestmark = [pytest.mark.consul, pytest.mark.kube, pytest.mark.timeout(600),
              pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")]

NS = "shop"


@pytest.fixture
def cluster(kube_binaries: dict[str, str], node_binaries: dict[str, str], node_image_archives: dict[str, Path],
            consul_bin: str, tmp_path: Path) -> Iterator[tuple[Any, WebhookProcess]]:
    from katalog_nodes import NodeCluster

    with NodeCluster(kube_binaries, node_binaries, consul_bin, tmp_path / "nodes", nodes=2,
                     archives=node_image_archives) as nodes:
        cp = nodes.control_plane
        namespace(cp, OWN)
        hook = WebhookProcess(cp, tmp_path, *webhook_args(cp.url), "--check-interval", "0", image=SIDECAR_IMAGE)
        cp.api.post("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
                    webhook_configuration(hook.port))
        try:
            yield nodes, hook.start()
        finally:
            hook.stop()


def app_only(api_url: str) -> dict[str, Any]:
    """The classic example's app alone (kube_webhook.app_deployment), overlaid for this machine."""
    return for_this_machine(app_deployment(), api_url)


def _live(cluster: Any) -> list[dict[str, Any]]:
    return [p for p in cluster.pods(NS) if not p["metadata"].get("deletionTimestamp")]


def _catalog(cluster: Any) -> dict[str, bool]:
    """Instance ID -> all its checks passing, for every instance of `web` in the servers' catalog."""
    return {e["Service"]["ID"]: all(c["Status"] == "passing" for c in e["Checks"]) for e in cluster.server.health("web")}


def _in_agents(cluster: Any) -> set[str]:
    return {sid for agent in cluster.agents.values() for sid in agent.agent_services() if sid.startswith(f"{NS}:")}


def _confirmed(cluster: Any, pod: dict[str, Any]) -> str:
    """The pod's instance: injected, in its own node's agent, passing in the catalog."""
    name = pod["metadata"]["name"]
    sid = f"{NS}:{name}:web"
    assert has_sidecar(pod), pod["spec"]
    sidecar = next(c for c in pod["spec"]["containers"] if c["name"] == "katalog-sidecar")
    assert sidecar["env"][-2:] == [{"name": "KATALOG_METRICS_ADDR", "value": f"$(POD_IP):{METRICS_PORT}"},
                                   {"name": "KATALOG_KUBE_API_URL", "value": cluster.control_plane.url}]
    assert sid in cluster.agent_of(pod).agent_services(), f"{sid} not in the agent of {pod['spec']['nodeName']}"
    assert _catalog(cluster).get(sid) is True, _catalog(cluster)
    # $(POD_IP) was expanded by the kubelet: the sidecar's /metrics answers on the pod's IP.
    metrics = requests.get(f"http://{pod['status']['podIP']}:{METRICS_PORT}/metrics", timeout=5)
    assert metrics.status_code == 200 and "katalog_gate_open 1.0" in metrics.text
    return sid


def test_a_deployment_in_an_opted_in_namespace_gets_the_sidecar_runs_rolls_and_drains(
        cluster: tuple[Any, WebhookProcess]) -> None:
    nodes, hook = cluster
    cp = nodes.control_plane
    timings: dict[str, float] = {}
    started = time.monotonic()
    namespace(cp, NS, {LABEL: "enabled"})
    nodes.apply(*nodes.example_docs("rbac.yaml"), app_only(cp.url), namespace=NS)

    [first] = nodes.wait_for_pods(NS, 1, ready=True, timeout=120)
    timings["created -> Ready"] = time.monotonic() - started
    old = _confirmed(nodes, first)
    assert nodes.versions()["kubelet"].startswith("v1.34"), nodes.versions()

    # A rolling update (a template annotation bump, as `kubectl rollout restart` does): the new
    # pod is injected too, and the old one drains out of the catalog and its agent.
    started = time.monotonic()
    cp.kubectl("-n", NS, "patch", "deployment", "web", "--type=merge",
               "-p", '{"spec":{"template":{"metadata":{"annotations":{"example.com/restarted":"1"}}}}}')
    [second] = wait_until(lambda: _replaced(nodes, first), 120, "the new pod Ready and the old one terminating")
    timings["rollout -> new Ready, old terminating"] = time.monotonic() - started
    assert second["spec"]["nodeName"] != first["spec"]["nodeName"]  # the surge pod took the free node
    new = _confirmed(nodes, second)
    wait_until(lambda: old not in _catalog(nodes) and old not in _in_agents(nodes), 60,
               f"{old} deregistered")
    timings["rollout -> old deregistered"] = time.monotonic() - started
    assert _catalog(nodes) == {new: True}

    # Scaled to 0: the pod drains; nothing of the namespace is left in the catalog or the agents.
    started = time.monotonic()
    cp.kubectl("-n", NS, "scale", "deployment", "web", "--replicas=0")
    wait_until(lambda: not nodes.pods(NS), 90, "the pod gone")
    timings["scale 0 -> pod gone"] = time.monotonic() - started
    assert _catalog(nodes) == {} and _in_agents(nodes) == set()
    assert hook.metric("katalog_webhook_reviews_total", 'result="injected"') == 2
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})


def _replaced(cluster: Any, old: dict[str, Any]) -> list[dict[str, Any]] | None:
    """[the new pod] once it is the only live one and Ready (the old one deleted or terminating)."""
    from katalog_nodes import pod_ready

    live = _live(cluster)
    return live if len(live) == 1 and live[0]["metadata"]["name"] != old["metadata"]["name"] and pod_ready(live[0]) else None
