"""The sidecar against a real kube-apiserver: real RBAC with real service-account tokens, API
server restarts (a crash and a graceful stop), and a 410 after etcd compaction. Pods are the
example's pod template, run by the pod runner."""

from __future__ import annotations

import copy
import signal
import time
from typing import Any

import pytest
from katalog_cluster import KatalogCluster, example_docs, example_pod
from waiting import wait_until

pytestmark = [pytest.mark.consul, pytest.mark.kube]

NS, POD = "default", "web-0"
SID = f"{NS}:{POD}:web"
HINT = "grant get, list, watch on pods (see examples/rbac.yaml)"


def rbac(verbs: list[str] | None = None, resource_names: list[str] | None = None,
         bind: bool = True) -> list[dict[str, Any]]:
    """examples/rbac.yaml, with the Role's verbs or resourceNames changed (or no binding)."""
    docs = copy.deepcopy(example_docs("rbac.yaml"))
    for doc in docs:
        if doc["kind"] == "Role":
            rule = doc["rules"][0]
            rule["verbs"] = verbs or rule["verbs"]
            if resource_names is not None:
                rule["resourceNames"] = resource_names
    return [d for d in docs if bind or d["kind"] != "RoleBinding"]


def gate(cluster: KatalogCluster) -> tuple[int, str]:
    result = cluster.runner.pod(NS, POD).exec("katalog-sidecar", ["readiness-gate"])
    return result.returncode, result.stdout.strip()


def wait_gate_line(cluster: KatalogCluster, contains: str, timeout: float = 60) -> str:
    def line() -> str | None:
        code, text = gate(cluster)
        return text if code != 0 and contains in text else None
    try:
        return str(wait_until(line, timeout, f"gate line with {contains!r}"))
    except TimeoutError:
        raise AssertionError(f"gate says {gate(cluster)}") from None


def start_pod(cluster: KatalogCluster, *rbac_docs: dict[str, Any]) -> Any:
    cluster.apply(*rbac_docs, example_pod(POD))
    return wait_until(lambda: _started(cluster), 60, "the pod's sidecar started")


def _started(cluster: KatalogCluster) -> Any:
    try:
        pod = cluster.runner.pod(NS, POD)
    except KeyError:
        return None
    return pod if pod.container("katalog-sidecar").ctx is not None else None


def test_no_binding_gives_the_403_gate_line(katalog_cluster: KatalogCluster) -> None:
    start_pod(katalog_cluster, *rbac(bind=False))
    line = wait_gate_line(katalog_cluster, "forbidden")
    assert f"forbidden: the service account cannot list pods in namespace {NS}; {HINT}" in line, line
    assert katalog_cluster.consul.client.agent_services() == {}  # nothing registered without the pod


def test_403_gate_line_quotes_the_api_servers_message(katalog_cluster: KatalogCluster) -> None:
    start_pod(katalog_cluster, *rbac(bind=False))
    line = wait_gate_line(katalog_cluster, "forbidden")
    assert line.endswith(f'(API server: pods "{POD}" is forbidden: User "system:serviceaccount:{NS}:web" cannot list '
                         f'resource "pods" in API group "" in the namespace "{NS}")'), line


def test_get_list_without_watch_logs_the_missing_verb(katalog_cluster: KatalogCluster) -> None:
    """What the gate should do then is issue 10 item 8's to decide; the log names the verb."""
    pod = start_pod(katalog_cluster, *rbac(verbs=["get", "list"]))
    # The list succeeds, so the instance registers; the first watch is refused at once.
    wait_until(lambda: "cannot watch pods" in pod.log("katalog-sidecar"), 20,
               f"the log names the missing verb:\n{pod.log('katalog-sidecar')[-2000:]}")


def test_role_restricted_by_resource_names_is_enough(katalog_cluster: KatalogCluster) -> None:
    """The sidecar sends a metadata.name field selector with its list and watch, which is what
    a Role with `resourceNames` requires."""
    start_pod(katalog_cluster, *rbac(resource_names=[POD]))
    wait_until(lambda: gate(katalog_cluster)[0] == 0, 60, f"gate green: {gate(katalog_cluster)}")
    assert katalog_cluster.consul.server.passing_ids("web") == {SID}


def test_role_restricted_to_another_name_is_forbidden(katalog_cluster: KatalogCluster) -> None:
    start_pod(katalog_cluster, *rbac(resource_names=["some-other-pod"]))
    line = wait_gate_line(katalog_cluster, "forbidden")
    assert f"forbidden: the service account cannot list pods in namespace {NS}; {HINT}" in line, line


def _follows_readiness(cluster: KatalogCluster, ready: bool, timeout: float = 90) -> None:
    """The app's readiness (its own httpGet probe, then pod status) reaches the catalog."""
    pod = cluster.runner.pod(NS, POD)
    pod.set_app_ready("web", ready)
    wanted = {SID} if ready else set()
    wait_until(lambda: cluster.consul.server.passing_ids("web") == wanted, timeout,
               f"catalog passing == {wanted}; sidecar log:\n{pod.log('katalog-sidecar')[-3000:]}")


@pytest.mark.parametrize("crash", [True, False], ids=["crash", "graceful"])
def test_apiserver_restart_the_watch_resumes(katalog_cluster: KatalogCluster, crash: bool) -> None:
    start_pod(katalog_cluster, *rbac())
    wait_until(lambda: katalog_cluster.consul.server.passing_ids("web") == {SID}, 60, "registered")
    katalog_cluster.control_plane.restart_apiserver(crash=crash)
    _follows_readiness(katalog_cluster, False)
    _follows_readiness(katalog_cluster, True)
    pod = katalog_cluster.runner.pod(NS, POD)
    assert pod.container("katalog-sidecar").exit_code is None  # it never exited


def test_410_after_etcd_compaction_relists_and_follows(katalog_cluster: KatalogCluster) -> None:
    cp = katalog_cluster.control_plane
    start_pod(katalog_cluster, *rbac())
    wait_until(lambda: katalog_cluster.consul.server.passing_ids("web") == {SID}, 60, "registered")
    # Other objects change after the pod's last event, so its watch resumes from a revision
    # that compaction removes while the API server is down.
    for i in range(5):
        cp.api.post(f"/api/v1/namespaces/{NS}/configmaps",
                    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"churn-{i}"}})
    cp.apiserver.stop(signal.SIGKILL)
    cp.etcd.compact()
    cp.apiserver.start_and_wait()
    _follows_readiness(katalog_cluster, False)
    log = katalog_cluster.runner.pod(NS, POD).log("katalog-sidecar")
    assert "410" in log or "expired" in log.lower() or "too old" in log, log[-3000:]
    _follows_readiness(katalog_cluster, True)


def test_real_bookmarks_move_the_resume_point(katalog_cluster: KatalogCluster) -> None:
    """The real watch cache sends a bookmark about a minute into a watch once other pods have
    changed; the sidecar takes its resourceVersion, so after an API server crash it resumes
    from there, not from its own pod's last change (seen in the API server's audit log)."""
    cp = katalog_cluster.control_plane
    user = f"system:serviceaccount:{NS}:web"
    pod = start_pod(katalog_cluster, *rbac())
    wait_until(lambda: pod.ready(), 60, "the pod Ready (its last status change)")
    wait_until(lambda: cp.apiserver.pod_watches(user), 30, "the sidecar's watch")
    time.sleep(1)  # the runner's last status write has reached the sidecar
    pod_rv = int(cp.api.get(f"/api/v1/namespaces/{NS}/pods/{POD}")["metadata"]["resourceVersion"])
    # Our own watch, opened alongside the sidecar's, tells when the cache sends bookmarks.
    ours = cp.api.watch_lines(f"/api/v1/namespaces/{NS}/pods", timeout=150.0, allowWatchBookmarks="true",
                              fieldSelector=f"metadata.name={POD}", resourceVersion=str(pod_rv))
    # Another pod changes (on a node the runner does not serve, so nothing runs it).
    other = cp.api.post(f"/api/v1/namespaces/{NS}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "elsewhere"},
        "spec": {"nodeName": "not-served", "containers": [{"name": "c", "image": "example.invalid/c:1"}]}})
    bookmark = next(e for e in ours if e["type"] == "BOOKMARK")
    assert int(bookmark["object"]["metadata"]["resourceVersion"]) >= int(other["metadata"]["resourceVersion"])
    time.sleep(3)  # the sidecar's watch started within a second or two of ours
    # The sidecar's pod itself has not changed: only a bookmark can have moved its resume point.
    assert int(cp.api.get(f"/api/v1/namespaces/{NS}/pods/{POD}")["metadata"]["resourceVersion"]) == pod_rv
    watches = cp.apiserver.pod_watches(user)
    cp.apiserver.stop(signal.SIGKILL)
    cp.apiserver.start_and_wait()
    resumed = wait_until(lambda: cp.apiserver.pod_watches(user)[len(watches):], 60, "the sidecar's next watch")
    assert int(resumed[0]["resourceVersion"]) >= int(other["metadata"]["resourceVersion"]) > pod_rv, resumed
