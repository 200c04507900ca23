"""inject, lint, the condition gate and Events through a real kube-apiserver, the real Deployment
controller and the pod runner: a plain Deployment is injected with the one-line pipeline,
applied, runs, rolls, and its pods' Events tell the story."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from sidecar_process import SIDECAR
from waiting import wait_until

from sidecar.manifests import CONDITION_TYPE

pytestmark = [pytest.mark.consul, pytest.mark.kube, pytest.mark.timeout(420)]

SERVICE = "web"
REPLICAS = 2
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

PLAIN = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "web", "labels": {"app.kubernetes.io/name": "web"}},
    "spec": {
        "replicas": REPLICAS,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "selector": {"matchLabels": {"app.kubernetes.io/name": "web"}},
        "template": {
            "metadata": {"labels": {"app.kubernetes.io/name": "web"}},
            "spec": {
                "serviceAccountName": "web",
                "containers": [{
                    "name": "web", "image": "nginxinc/nginx-unprivileged:1.27",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1, "timeoutSeconds": 2},
                }],
            },
        },
    },
}


def kubectl(cluster: Any, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return cluster.control_plane.kubectl(*args, stdin=stdin, check=check, timeout=240)


def inject_live(cluster: Any, *flags: str) -> str:
    """kubectl get deploy web -o yaml | katalog-sidecar inject ... - | kubectl apply -f -  (lint in between)."""
    live = kubectl(cluster, "get", "deploy", "web", "-o", "yaml").stdout
    injected = subprocess.run([SIDECAR, "inject", "--services", "web:http", "--token-secret", "katalog-consul-token",
                               *flags, "-"], input=live, capture_output=True, text=True, timeout=60)
    assert injected.returncode == 0 and injected.stderr == "injected Deployment/web\n", injected.stderr
    linted = subprocess.run([SIDECAR, "lint", "-"], input=injected.stdout, capture_output=True, text=True, timeout=60)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    applied = kubectl(cluster, "apply", "-f", "-", stdin=injected.stdout)
    assert "deployment.apps/web configured" in applied.stdout
    return injected.stdout


def with_sidecar(pod: Any) -> bool:
    return any(c.name == "katalog-sidecar" for c in pod.containers)


def story(cluster: Any, pod: str) -> list[tuple[str, str, int]]:
    """`kubectl get events --field-selector involvedObject.name=<pod>`: (type, reason, count), oldest first."""
    out = kubectl(cluster, "get", "events", "--field-selector", f"involvedObject.name={pod}", "-o", "json").stdout
    items = sorted(json.loads(out)["items"], key=lambda e: (e.get("firstTimestamp") or "", e["metadata"]["name"]))
    return [(e["type"], e["reason"], int(e.get("count") or 1)) for e in items]


def reasons(cluster: Any, pod: str) -> list[str]:
    return [reason for _, reason, _ in story(cluster, pod)]


def start_plain(cluster: Any) -> None:
    cluster.apply_example("rbac-condition.yaml")  # read pods, patch pods/status, write Events
    kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump(PLAIN))
    cluster.runner.wait_for_pods("default", REPLICAS, ready=True, timeout=120)


def rolled(cluster: Any, timeout: float = 240) -> list[Any]:
    kubectl(cluster, "rollout", "status", "deploy/web", f"--timeout={int(timeout)}s")
    return cluster.runner.wait_for_pods("default", REPLICAS, ready=True, timeout=120, where=with_sidecar)


def test_an_injected_deployment_runs_rolls_and_tells_its_story(katalog_cluster: Any) -> None:
    cluster = katalog_cluster
    start_plain(cluster)
    manifest = inject_live(cluster)
    pods = rolled(cluster)
    assert cluster.consul.server.passing_ids(SERVICE) == {f"default:{p.name}:{SERVICE}" for p in pods}
    for pod in pods:
        assert pod.probe_runs("katalog-sidecar") >= 1, "the injected exec probe made it Ready"
        wait_until(lambda pod=pod: reasons(cluster, pod.name)[:2] == ["Registered", "Confirmed"], 30,
                   f"{pod.name}: Registered, Confirmed")
        assert all(kind == "Normal" for kind, _, _ in story(cluster, pod.name))
    # inject again on what is now live: nothing to add.
    again = subprocess.run([SIDECAR, "inject", "--services", "web:http", "-"],
                           input=kubectl(cluster, "get", "deploy", "web", "-o", "yaml").stdout,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stderr == "unchanged Deployment/web: it already has the sidecar\n"
    assert "katalog-sidecar" in manifest

    # A rolling update replaces every pod; each old one drains and says so.
    kubectl(cluster, "rollout", "restart", "deploy/web")
    new = rolled(cluster)
    assert not {p.name for p in new} & {p.name for p in pods}
    for old in pods:
        wait_until(lambda old=old: reasons(cluster, old.name)[-2:] == ["Draining", "Deregistered"], 60,
                   f"{old.name}: Draining, Deregistered")
    assert cluster.consul.server.passing_ids(SERVICE) == {f"default:{p.name}:{SERVICE}" for p in new}


def test_condition_gate_makes_pods_ready_through_the_condition_and_the_staleness_probe(katalog_cluster: Any) -> None:
    """Ready takes both: the readinessGate condition True and the sidecar's readinessProbe (the gate's
    staleness bound in condition mode, issue 18 defect 2) passing."""
    cluster = katalog_cluster
    start_plain(cluster)
    inject_live(cluster, "--gate", "condition")
    pods = rolled(cluster)
    for pod in pods:
        assert pod.probe_runs("katalog-sidecar") > 0, "the staleness probe runs in condition mode too"
        status = cluster.api.get(f"/api/v1/namespaces/default/pods/{pod.name}")["status"]
        condition = next(c for c in status["conditions"] if c["type"] == CONDITION_TYPE)
        assert (condition["status"], condition["reason"]) == ("True", "Confirmed")
        assert condition["message"] == "ok (latched): web passing in the catalog"
    victim = pods[0]
    kubectl(cluster, "delete", "pod", victim.name, "--wait=false")
    wait_until(lambda: reasons(cluster, victim.name)[-2:] == ["Draining", "Deregistered"], 60, "drain events")
    assert victim.terminated.wait(60)
    assert victim.container("katalog-sidecar").exit_code == 0


def test_a_forced_fault_shows_a_warning(katalog_cluster: Any) -> None:
    """Condition mode with a Role that forgot pods/status: the pod stays NotReady (the rollout
    holds) and its Events carry a Warning that names the missing permission."""
    cluster = katalog_cluster
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "half"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                      {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "half"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "half"},
               "subjects": [{"kind": "ServiceAccount", "name": "web"}]}
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web"}}
    cluster.apply(account, role, binding)
    plain = json.loads(json.dumps(PLAIN))
    plain["spec"]["replicas"] = 1
    kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump(plain))
    cluster.runner.wait_for_pods("default", 1, ready=True, timeout=120)
    inject_live(cluster, "--gate", "condition")
    (pod,) = cluster.runner.wait_for_pods("default", 1, ready=False, timeout=120, where=with_sidecar)
    wait_until(lambda: ("Warning", "KubernetesForbidden") in [(t, r) for t, r, _ in story(cluster, pod.name)], 60,
               "a KubernetesForbidden Warning")
    out = kubectl(cluster, "get", "events", "--field-selector", f"involvedObject.name={pod.name}", "-o", "json").stdout
    warning = next(e for e in json.loads(out)["items"] if e["reason"] == "KubernetesForbidden")
    assert "cannot patch pods/status" in warning["message"] and "rbac-condition.yaml" in warning["message"]
    assert not pod.ready(), "without its condition the pod is never Ready"
    assert kubectl(cluster, "rollout", "status", "deploy/web", "--timeout=3s", check=False).returncode != 0


def test_the_condition_example_runs_as_it_is(katalog_cluster: Any) -> None:
    """examples/deployment-condition-gate.yaml with examples/rbac-condition.yaml, unchanged."""
    cluster = katalog_cluster
    for name in ("rbac-condition.yaml", "deployment-condition-gate.yaml"):
        done = kubectl(cluster, "apply", "--dry-run=server", "--validate=strict", "-f",
                       str(EXAMPLES / name))
        assert "(server dry run)" in done.stdout, done.stderr
    cluster.apply_example("rbac-condition.yaml", "deployment-condition-gate.yaml")
    pods = cluster.runner.wait_for_pods("default", 3, ready=True, timeout=180)
    assert cluster.consul.server.passing_ids(SERVICE) == {f"default:{p.name}:{SERVICE}" for p in pods}
    for pod in pods:
        assert pod.probe_runs("katalog-sidecar") > 0  # the staleness probe beside the condition
        gate = pod.exec("katalog-sidecar", ["readiness-gate"])
        assert gate.returncode == 0, gate.stdout
        wait_until(lambda pod=pod: reasons(cluster, pod.name)[:2] == ["Registered", "Confirmed"], 30, "events")

