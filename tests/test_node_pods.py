"""What the pod runner used to emulate, done by a real kubelet with containerd, on the examples'
pod templates (through tests/node_overlay.py) and the project's image:

- the exec gate: the kubelet runs `readiness-gate` every `periodSeconds` as written (counted
  by the kubelet's own prober metrics) and the pod is never Ready before the catalog lists
  the instance passing;
- the condition gate: a real `readinessGates` entry; containers ready first, the pod Ready only
  once the sidecar set the condition, i.e. once the catalog lists it passing;
- termination: classic (the app's preStop, SIGTERM to both at once, the sidecar drains and
  exits 0) and native (the sidecar gets SIGTERM only after the app exited), with the
  instance out of the catalog before the sidecar exits; SIGKILL at the grace period.

One cluster for the module (two nodes, each with its client agent); each test has its own
namespace and pod names, so instances never mix.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3
from katalog_cluster import example_pod
from waiting import wait_until

from sidecar.manifests import CONDITION_TYPE

pytestmark = [pytest.mark.consul, pytest.mark.kube, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def cluster(kube_binaries: dict[str, str], node_binaries: dict[str, str], node_image_archives: dict[str, Path],
            consul_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from katalog_nodes import NodeCluster

    with NodeCluster(kube_binaries, node_binaries, consul_bin, tmp_path_factory.mktemp("nodes"), nodes=2,
                     archives=node_image_archives) as nodes:
        yield nodes


def _started(cluster: Any, ns: str, name: str) -> dict[str, Any] | None:
    """The pod once the kubelet runs all its containers."""
    pod = _get(cluster, ns, name)
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    return pod if statuses and all("running" in (s.get("state") or {}) for s in statuses) else None


def _gone(cluster: Any, ns: str, name: str) -> None:
    """Deletes the pod and waits until it is gone: hostNetwork pods hold their node's ports."""
    cluster.control_plane.kubectl("delete", "pod", "-n", ns, name, "--ignore-not-found", "--wait=true",
                                  "--timeout=90s", timeout=120)


def _namespace(cluster: Any, name: str) -> str:
    cluster.control_plane.create_namespace(name)
    cluster.control_plane.kubectl("create", "secret", "generic", "katalog-consul-token", "-n", name,
                                  "--from-literal=token=anonymous")
    return name


def _pod(cluster: Any, namespace: str, name: str, example: str, app_env: dict[str, str] | None = None,
         **spec: Any) -> None:
    """A bare pod from an example's template (through the overlay); `app_env` for the test app
    (APP_READY=false: starts unready; APP_SIGTERM=ignore)."""
    doc = example_pod(name, example)
    doc["spec"].update(spec)
    for container in doc["spec"]["containers"]:
        if container["name"] == "web":
            container.setdefault("env", []).extend({"name": k, "value": v} for k, v in (app_env or {}).items())
    rbac = "rbac-condition.yaml" if "condition" in example else "rbac.yaml"
    cluster.apply(*cluster.example_docs(rbac), _overlay(cluster, doc), namespace=namespace)


def _overlay(cluster: Any, doc: dict[str, Any]) -> dict[str, Any]:
    from node_overlay import for_this_machine

    return for_this_machine(doc, cluster.control_plane.url)


def _get(cluster: Any, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return dict(cluster.api.get(f"/api/v1/namespaces/{namespace}/pods/{name}"))
    except Exception:  # noqa: BLE001 - gone (404) or not yet
        return None


def _conditions(pod: dict[str, Any] | None) -> dict[str, str]:
    return {c["type"]: c["status"] for c in ((pod or {}).get("status") or {}).get("conditions") or []}


def _passing(cluster: Any, sid: str) -> bool:
    entries = cluster.server.health("web")
    return any(e["Service"]["ID"] == sid and all(c["Status"] == "passing" for c in e["Checks"]) for e in entries)


def _probe_counts(cluster: Any, pod: dict[str, Any], container: str) -> dict[str, int]:
    """The kubelet's own count of readiness probe runs of `container`, by result."""
    urllib3.disable_warnings()
    node = pod["spec"]["nodeName"]
    text = requests.get(f"https://{node}:10250/metrics/probes", verify=False, timeout=10).text  # noqa: S501 - self-signed kubelet
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("prober_probe_total{") and f'container="{container}"' in line \
                and f'pod="{pod["metadata"]["name"]}"' in line and 'probe_type="Readiness"' in line:
            result = re.search(r'result="([a-z]+)"', line)
            if result:
                counts[result.group(1)] = counts.get(result.group(1), 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts


class _Watcher(threading.Thread):
    """Polls the pod and the catalog together; records the first time each becomes true."""

    def __init__(self, cluster: Any, namespace: str, name: str) -> None:
        super().__init__(daemon=True)
        self.cluster, self.namespace, self.name = cluster, namespace, name
        self.sid = f"{namespace}:{name}:web"
        self.ready_while_not_passing = 0
        self.first_passing: float | None = None
        self.first_ready: float | None = None
        self.containers_ready_first: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            passing = _passing(self.cluster, self.sid)  # the catalog first: a Ready read after it is later
            conditions = _conditions(_get(self.cluster, self.namespace, self.name))
            now = time.monotonic()
            if passing and self.first_passing is None:
                self.first_passing = now
            if conditions.get("ContainersReady") == "True" and self.containers_ready_first is None:
                self.containers_ready_first = now
            if conditions.get("Ready") == "True":
                self.first_ready = self.first_ready or now
                if self.first_passing is None:
                    self.ready_while_not_passing += 1
            self.stop.wait(0.05)


def test_the_kubelet_runs_the_exec_gate_as_written_and_holds_ready_until_confirmed(cluster: Any) -> None:
    ns = _namespace(cluster, "exec-gate")
    watcher = _Watcher(cluster, ns, "web-0")
    watcher.start()
    try:
        _pod(cluster, ns, "web-0", "deployment-classic-sidecar.yaml", app_env={"APP_READY": "false"})
        pod = wait_until(lambda: _started(cluster, ns, "web-0"), 120, "the pod to start")
        wait_until(lambda: _probe_counts(cluster, pod, "katalog-sidecar").get("failed", 0) >= 1, 60,
                   "the kubelet to run readiness-gate")
        # periodSeconds: 2 as written: over 10 s, 5 runs (±1 for where the window falls).
        before = sum(_probe_counts(cluster, pod, "katalog-sidecar").values())
        time.sleep(10)
        runs = sum(_probe_counts(cluster, pod, "katalog-sidecar").values()) - before
        assert 4 <= runs <= 6, runs
        assert _conditions(_get(cluster, ns, "web-0")).get("Ready") == "False"
        cluster.control_plane.kubectl("exec", "-n", ns, "web-0", "-c", "web", "--", "app-ready", "on")
        wait_until(lambda: watcher.first_ready, 60, "the pod to become Ready")
        counts = _probe_counts(cluster, pod, "katalog-sidecar")
    finally:
        watcher.stop.set()
        watcher.join(5)
        _gone(cluster, ns, "web-0")
    assert watcher.ready_while_not_passing == 0
    assert watcher.first_passing is not None and watcher.first_ready is not None
    assert watcher.first_ready >= watcher.first_passing
    assert counts.get("successful", 0) >= 1 and counts.get("failed", 0) >= 4, counts


def test_the_condition_gate_through_a_real_readiness_gate(cluster: Any) -> None:
    ns = _namespace(cluster, "condition-gate")
    watcher = _Watcher(cluster, ns, "web-0")
    watcher.start()
    try:
        _pod(cluster, ns, "web-0", "deployment-condition-gate.yaml", app_env={"APP_READY": "false"})
        wait_until(lambda: _started(cluster, ns, "web-0"), 120, "the pod to start")
        cluster.control_plane.kubectl("exec", "-n", ns, "web-0", "-c", "web", "--", "app-ready", "on")
        wait_until(lambda: watcher.first_ready, 90, "the pod to become Ready")
        pod = _get(cluster, ns, "web-0")
    finally:
        watcher.stop.set()
        watcher.join(5)
        _gone(cluster, ns, "web-0")
    assert pod is not None and pod["spec"]["readinessGates"] == [{"conditionType": CONDITION_TYPE}]
    assert _conditions(pod)[CONDITION_TYPE] == "True"
    assert watcher.ready_while_not_passing == 0
    assert watcher.first_passing is not None and watcher.first_ready is not None
    assert watcher.first_ready >= watcher.first_passing
    # The kubelet combined the gate with container readiness: containers ready, then the pod.
    assert watcher.containers_ready_first is not None and watcher.containers_ready_first <= watcher.first_ready


def _terminated(pod: dict[str, Any], container: str) -> dict[str, Any] | None:
    status = pod.get("status") or {}
    for entry in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        if entry["name"] == container:
            return (entry.get("state") or {}).get("terminated")
    return None


def _delete_and_follow(cluster: Any, ns: str, name: str, grace: int | None = None) -> dict[str, dict[str, Any]]:
    """Deletes the pod and follows its statuses with a watch until it is gone: the last
    terminated state of each container (the kubelet writes them just before it deletes it)."""
    final: dict[str, dict[str, Any]] = {}
    gone = threading.Event()

    def follow() -> None:
        for event in cluster.api.watch_lines(f"/api/v1/namespaces/{ns}/pods", timeout=120,
                                             fieldSelector=f"metadata.name={name}"):
            obj = event.get("object") or {}
            for container in ("web", "katalog-sidecar"):
                state = _terminated(obj, container)
                if state:
                    final[container] = state
            if event.get("type") == "DELETED":
                gone.set()
                return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    time.sleep(0.5)  # the watch is open
    args = ["delete", "pod", "-n", ns, name, "--wait=false"] + ([f"--grace-period={grace}"] if grace else [])
    final["deleted_at"] = {"t": datetime.now().astimezone()}
    cluster.control_plane.kubectl(*args)
    assert gone.wait(120), f"pod {ns}/{name} not deleted within 120 s"
    return final


def _at(state: dict[str, Any], key: str) -> datetime:
    return datetime.fromisoformat(str(state[key]).replace("Z", "+00:00"))


@pytest.mark.parametrize("example", ["deployment-classic-sidecar.yaml", "deployment-native-sidecar.yaml"])
def test_termination_order_and_the_drain_on_a_real_kubelet(cluster: Any, example: str) -> None:
    ns = _namespace(cluster, "term-" + example.split("-")[1])
    _pod(cluster, ns, "web-0", example)
    sid = f"{ns}:web-0:web"
    wait_until(lambda: _conditions(_get(cluster, ns, "web-0")).get("Ready") == "True", 120, "the pod to be Ready")
    assert _passing(cluster, sid)
    final = _delete_and_follow(cluster, ns, "web-0")
    web, sidecar = final["web"], final["katalog-sidecar"]
    assert sidecar["exitCode"] == 0, sidecar
    assert web["exitCode"] == 0, web  # the test app ends on SIGTERM with 0
    deleted = final["deleted_at"]["t"]
    # The app's preStop (sleep 5) ran before its SIGTERM.
    assert (_at(web, "finishedAt") - deleted).total_seconds() >= 4, (deleted, web)
    if "native" in example:  # SIGTERM to a native sidecar only after the app has exited
        assert _at(sidecar, "finishedAt") >= _at(web, "finishedAt"), (web, sidecar)
    else:  # classic: no preStop, so SIGTERM at once; drained and gone before the app's preStop ended
        assert _at(sidecar, "finishedAt") <= _at(web, "finishedAt"), (web, sidecar)
    assert all(e["Service"]["ID"] != sid for e in cluster.server.health("web"))
    assert not [s for a in cluster.agents.values() for s in a.agent_services() if s.startswith(f"{ns}:")]


def test_sigkill_at_the_grace_period(cluster: Any) -> None:
    """An app that ignores SIGTERM, a grace period of 3 s, shorter than its preStop (sleep 5):
    the kubelet cuts the preStop at the grace period, sends SIGTERM with its 2 s minimum, then
    SIGKILL (exit 137); the sidecar, SIGTERMed at once, has drained and exited 0 by then."""
    ns = _namespace(cluster, "sigkill")
    _pod(cluster, ns, "web-0", "deployment-classic-sidecar.yaml", app_env={"APP_SIGTERM": "ignore"},
         terminationGracePeriodSeconds=3)
    wait_until(lambda: _conditions(_get(cluster, ns, "web-0")).get("Ready") == "True", 120, "the pod to be Ready")
    final = _delete_and_follow(cluster, ns, "web-0")
    assert final["web"]["exitCode"] == 137, final["web"]
    assert final["katalog-sidecar"]["exitCode"] == 0, final["katalog-sidecar"]
    lasted = (_at(final["web"], "finishedAt") - final["deleted_at"]["t"]).total_seconds()
    assert 2 <= lasted <= 8, lasted  # grace 3 s + the 2 s minimum after a cut preStop, in whole seconds
