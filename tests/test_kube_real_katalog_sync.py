"""Through the real stack: a pod annotated as a katalog-sync user annotates it today, with
katalog-sidecar added in place of katalog-sync's sidecar, registers exactly what katalog-sync's
rules give; an annotation edit made with kubectl applies to the running pod.

Real kube-apiserver and controller manager, the pod runner standing in for the kubelet (it
runs the sidecar's real command and the manifest's exec readiness probe), real Consul (the
node's client agent and a server). The pod is the classic example's pod template with
`KATALOG_SERVICES` removed, so only the annotations configure it.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from katalog_cluster import KatalogCluster, example_docs, example_pod
from test_katalog_sync_rules import KS, katalog_sync_expects
from waiting import wait_until

pytestmark = [pytest.mark.consul, pytest.mark.kube]

NS, POD = "default", "web-0"
TOOL_META = {"external-source", "managed-by", "k8s-namespace", "k8s-pod", "k8s-pod-uid"}
ANNOTATIONS = {
    KS + "service-names": "web,web-admin,web-dns", KS + "service-port-web-admin": "9100",
    KS + "service-tags": "v2,blue", KS + "service-tags-web-dns": "dns", KS + "service-meta": "team:payments",
    KS + "service-meta-web-admin": "team:sre,internal:yes", KS + "service-health-web-dns": "warning",
    KS + "sidecar": "katalog-sync-sidecar", KS + "sync-interval": "2s",
}


def katalog_sync_user_pod() -> dict[str, Any]:
    """The example's pod template, configured by katalog-sync's annotations only."""
    pod = example_pod(POD)
    pod["metadata"]["annotations"] = {**pod["metadata"].get("annotations", {}), **ANNOTATIONS}
    for container in pod["spec"]["containers"]:
        if container["name"] == "katalog-sidecar":
            container["env"] = [e for e in container["env"] if e["name"] != "KATALOG_SERVICES"]
    return pod


def as_katalog_sync_saw_it(pod: dict[str, Any]) -> dict[str, Any]:
    """The same pod before the migration: katalog-sync's sidecar where ours is."""
    before = copy.deepcopy(pod)
    for entry in before["spec"]["containers"] + before["status"].get("containerStatuses", []):
        if entry["name"] == "katalog-sidecar":
            entry["name"] = "katalog-sync-sidecar"
    return before


def catalog(cluster: KatalogCluster, names: list[str]) -> list[tuple[str, int, tuple[str, ...], dict[str, str], str]]:
    seen = []
    for name in names:
        for entry in cluster.consul.server.health(name):
            svc = entry["Service"]
            if svc["Meta"].get("k8s-pod") != POD:
                continue
            [status] = [c["Status"] for c in entry["Checks"] if c["CheckID"].endswith(":readiness")]
            seen.append((svc["Service"], svc["Port"], tuple(svc["Tags"] or ()),
                         {k: v for k, v in svc["Meta"].items() if k not in TOOL_META}, status))
    return seen


def test_a_katalog_sync_pod_with_our_sidecar_registers_what_katalog_sync_would(katalog_cluster: KatalogCluster) -> None:
    cluster = katalog_cluster
    cluster.apply(*example_docs("rbac.yaml"), katalog_sync_user_pod())
    [pod] = cluster.runner.wait_for_pods(NS, 1, ready=True, timeout=120)  # the gate (exec probe) passed
    gate = pod.exec("katalog-sidecar", ["readiness-gate"])
    assert gate.returncode == 0 and gate.stdout.strip() == \
        "ok (latched): web passing, web-admin passing, web-dns warning in the catalog", gate.stdout + gate.stderr

    live = cluster.api.get(f"/api/v1/namespaces/{NS}/pods/{POD}")
    expected = katalog_sync_expects(as_katalog_sync_saw_it(live))
    names = ["web", "web-admin", "web-dns"]
    assert catalog(cluster, names) == expected
    assert [e[1] for e in expected] == [8080, 9100, 8080]  # the example's containerPort `http`, the override
    assert all(svc[0]["Address"] == pod.ip for svc in ([e["Service"]] for n in names
                                                          for e in cluster.consul.server.health(n)))

    # An edit with kubectl reaches the running pod: re-registered, confirmed, no restart.
    cluster.control_plane.kubectl("annotate", "pod", POD, "--overwrite", f"{KS}service-tags=v3",
                                  f"{KS}service-port-web-admin=9200")
    wait_until(lambda: catalog(cluster, ["web", "web-admin"])[:2] == [
        ("web", 8080, ("v3",), {"team": "payments"}, "passing"),
        ("web-admin", 9200, ("v3",), {"team": "sre", "internal": "yes"}, "passing")], 30, "the edit in the catalog")
    assert pod.exec("katalog-sidecar", ["readiness-gate"]).returncode == 0

    cluster.control_plane.kubectl("delete", "pod", POD, "--wait=false")
    wait_until(lambda: catalog(cluster, names) == [], 40, "drained and deregistered")


def test_what_consul_accepts_registers_tags_with_slash_and_space_non_dns_names_and_colliding_meta(
        katalog_cluster: KatalogCluster) -> None:
    """Issue 20: each of these refused the whole pod; katalog-sync and Consul accept them."""
    cluster = katalog_cluster
    pod = katalog_sync_user_pod()
    pod["metadata"]["annotations"] = {KS + "service-names": "hw_service",
                                      KS + "service-tags": "urlprefix-/api,env prod",
                                      KS + "service-meta": "managed-by:helm,team:payments"}
    cluster.apply(*example_docs("rbac.yaml"), pod)
    [running] = cluster.runner.wait_for_pods(NS, 1, ready=True, timeout=120)
    [entry] = [e for e in cluster.consul.server.health("hw_service") if e["Service"]["Meta"].get("k8s-pod") == POD]
    assert entry["Service"]["Tags"] == ["urlprefix-/api", "env prod"]
    assert entry["Service"]["Meta"]["managed-by"] == "katalog-sidecar"  # ours wins
    assert entry["Service"]["Meta"]["team"] == "payments"
    assert all(c["Status"] == "passing" for c in entry["Checks"] if c["CheckID"].startswith(f"{NS}:{POD}"))
    log = running.log("katalog-sidecar")
    assert "service name 'hw_service' is not a DNS label" in log and "Consul's DNS interface will not answer" in log
    assert "meta key 'managed-by' is set by katalog-sidecar itself: the item is ignored" in log
