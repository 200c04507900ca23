"""`katalog-sidecar explain POD` (and `kubectl katalog explain POD`) end to end: a real control
plane, real Consul (a server and the node's client agent, ACLs on), the example pod run by the
pod runner, and explain run as the operator would, with a kubeconfig that may only get pods and
list events (no exec, no secrets). One cluster walks through every gate-closed state, and a pod that fails open."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from katalog_cluster import KatalogCluster, example_pod
from waiting import wait_until

from sidecar import explain as ex
from sidecar import gate_reasons as reasons

pytestmark = [pytest.mark.consul, pytest.mark.kube]

NS = "default"
BIN = Path(sys.executable).parent
ACL = 'acl {{ enabled = true, default_policy = "allow", down_policy = "allow"{extra} }}'
ROOT_TOKEN = "root-token-for-tests"  # noqa: S105 - a test cluster's management token


@pytest.fixture
def cluster(kube_binaries: dict[str, str], consul_bin: str, tmp_path: Path) -> Any:
    """KatalogCluster with ACLs on (default allow), so a token of its own can be refused."""
    c = KatalogCluster(kube_binaries, consul_bin, tmp_path, app_ready_default=False)
    c.consul.server.extra += ["-hcl", ACL.format(extra=f', tokens {{ initial_management = "{ROOT_TOKEN}" }}')]
    c.consul.client.extra += ["-hcl", ACL.format(extra="")]
    with c:
        yield c


def _operator_kubeconfig(cluster: KatalogCluster, tmp_path: Path) -> Path:
    """A service account that may get pods and list events, nothing else: what explain needs."""
    kubectl = cluster.control_plane.kubectl
    kubectl("create", "serviceaccount", "operator")
    kubectl("create", "role", "explain", "--verb=get", "--resource=pods")
    kubectl("create", "role", "events", "--verb=list", "--resource=events")
    for role in ("explain", "events"):
        kubectl("create", "rolebinding", f"operator-{role}", f"--role={role}", "--serviceaccount=default:operator")
    token = kubectl("create", "token", "operator").stdout.strip()
    admin = json.loads(cluster.control_plane.kubeconfig.read_text())
    admin["users"] = [{"name": "admin", "user": {"token": token}}]
    path = tmp_path / "operator-kubeconfig"
    path.write_text(json.dumps(admin))
    return path


def _deny_token(cluster: KatalogCluster) -> str:
    server = cluster.consul.server.http
    headers = {"X-Consul-Token": ROOT_TOKEN}
    policy = requests.put(f"{server}/v1/acl/policy", headers=headers, timeout=10, json={
        "Name": "no-service-writes", "Rules": 'service_prefix "" { policy = "read" }'})
    policy.raise_for_status()
    token = requests.put(f"{server}/v1/acl/token", headers=headers, timeout=10, json={
        "Description": "refused", "Policies": [{"ID": policy.json()["ID"]}]})
    token.raise_for_status()
    return str(token.json()["SecretID"])


def _pod(name: str, token: str | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    pod = copy.deepcopy(example_pod(name))
    pod["metadata"].setdefault("annotations", {}).update(annotations or {})
    if token is not None:
        sidecar = next(c for c in pod["spec"]["containers"] if c["name"] == "katalog-sidecar")
        sidecar["env"] = [e for e in sidecar["env"] if e["name"] != "CONSUL_HTTP_TOKEN_FILE"]
        sidecar["env"].append({"name": "CONSUL_HTTP_TOKEN", "value": token})
    return pod


def _run(cluster: KatalogCluster, name: str, *, token: str | None = None, app_ready: bool = True,
         annotations: dict[str, str] | None = None) -> None:
    """Starts the pod; its app stays unready unless told (a latched gate would not close again)."""
    cluster.apply(_pod(name, token, annotations))

    def started() -> bool:
        try:
            cluster.runner.pod(NS, name).set_app_ready("web", app_ready)
        except (AssertionError, StopIteration, KeyError, LookupError):
            return False
        return True

    wait_until(started, timeout=60, interval=0.2, what=f"{name}'s app started")


def _explain(kubeconfig: Path, pod: str, consul: str | None = None) -> tuple[int, dict[str, Any]]:
    args = [str(BIN / "katalog-sidecar"), "explain", pod, "-n", NS, "--kubeconfig", str(kubeconfig),
            "--output", "json", "--timeout", "3"]
    if consul:
        args += ["--consul", consul]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def _explained(kubeconfig: Path, pod: str, verdict: str, consul: str | None = None, has: str = "") -> dict[str, Any]:
    """Waits until explain reaches `verdict`, with `has` in some line of the chain (the sidecar
    and the pod runner need a moment: an app not ready yet is not registered yet)."""
    found: list[dict[str, Any]] = []

    def check() -> bool:
        code, report = _explain(kubeconfig, pod, consul)
        found[:] = [report]
        lines = [line for step in report["steps"] for line in step["lines"]]
        return (report["verdict"] == verdict and code == (0 if report["ready"] else 1)
                and any(has in line for line in lines))

    try:
        wait_until(check, timeout=60, interval=0.5, what=f"explain {pod}: {verdict}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\nlast report: {json.dumps(found[-1], indent=1)}") from None
    return found[-1]


def _cannot_explain(kubeconfig: Path, tmp_path: Path) -> None:
    """No such pod, no kubeconfig: one line saying so, exit 2, no traceback."""
    result = subprocess.run([str(BIN / "katalog-sidecar"), "explain", "nope", "--kubeconfig", str(kubeconfig)],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr.strip()) == (2, "explain: not found: /api/v1/namespaces/default/pods/nope")
    missing = subprocess.run([str(BIN / "katalog-sidecar"), "explain", "web", "--kubeconfig", str(tmp_path / "none")],
                             capture_output=True, text=True, timeout=60)
    assert (missing.returncode, missing.stderr.strip()) == (
        2, f"explain: kubeconfig {tmp_path / 'none'}: No such file or directory")


def _step(report: dict[str, Any], title: str) -> dict[str, Any]:
    return next(s for s in report["steps"] if s["title"].startswith(title))


def test_explain_in_every_gate_closed_state(cluster: KatalogCluster, tmp_path: Path) -> None:
    kubeconfig = _operator_kubeconfig(cluster, tmp_path)
    _cannot_explain(kubeconfig, tmp_path)
    server = cluster.consul.server.http
    node = cluster.consul.client.name
    cluster.apply_example("rbac-condition.yaml")  # the sidecar's Events need create on events

    # Confirmed: Ready, every link ok.
    _run(cluster, "web-ok")
    report = _explained(kubeconfig, "web-ok", ex.OPEN)
    assert report["ready"] is True
    assert [s["ok"] for s in report["steps"]] == [True] * 5
    assert f"web: registered on node {node}" in "\n".join(_step(report, "node's agent")["lines"])
    assert report["facts"]["configured"][0]["service_id"] == "default:web-ok:web"
    # Also as a kubectl plugin, through the real kubectl's plugin lookup, in plain text.
    # (kubectl takes no flags before a plugin's name; the plugin reads $KUBECONFIG as kubectl does.)
    text = subprocess.run([cluster.control_plane.binaries["kubectl"], "katalog", "explain", "web-ok"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "KUBECONFIG": str(kubeconfig)})
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("pod default/web-ok: Ready\n")
    assert "verdict: open" in text.stdout

    # The app is not ready: its own readiness, not Consul's.
    _run(cluster, "web-app", app_ready=False)
    report = _explained(kubeconfig, "web-app", reasons.APP_NOT_READY, has="check default:web-app:web:readiness: critical (not ready: web)")
    assert "the app is not ready (web)" in report["why"]
    assert "  check default:web-app:web:readiness: critical (not ready: web)" in _step(report, "node's agent")["lines"]

    # 403: the token's policy refuses the registration; the sidecar's Warning Event says so.
    _run(cluster, "web-denied", token=_deny_token(cluster))
    report = _explained(kubeconfig, "web-denied", reasons.CONSUL_REFUSED)
    assert "Permission denied" in report["why"] and "CONSUL_HTTP_TOKEN" in report["why"]
    assert "ACL token's policy" in report["next"]
    assert "NOT registered on this agent" in "\n".join(_step(report, "node's agent")["lines"])

    # Not confirmed: the node's agent has lost its servers (it left and came back without
    # joining); it accepts the registration, the servers' catalog never gets it.
    client = cluster.consul.client
    client.stop()
    joined = client.extra
    client.extra = [a for a in joined if not a.startswith("-retry-join")]
    client.start(wait_for_leader=False)
    _run(cluster, "web-isolated")
    report = _explained(kubeconfig, "web-isolated", reasons.NOT_CONFIRMED, consul=server, has="web: registered on node")
    assert "web not in the catalog although the agent has it: the node's agent knows no servers" in report["why"]
    assert "the agent knows no Consul servers" in "\n".join(_step(report, "node's agent")["lines"])

    # Agent down: nothing answers at $HOST_IP:8500; the servers' catalog is asked instead.
    client.stop()
    _run(cluster, "web-noagent")
    report = _explained(kubeconfig, "web-noagent", reasons.AGENT_UNREACHABLE, consul=server)
    assert f"the agent at http://{client.host}:8500 does not answer" in report["why"]
    assert report["facts"]["agent"]["error"].startswith("cannot connect")

    # Servers down: the agent is back and accepts, the catalog cannot be read.
    client.extra = joined
    client.start()
    cluster.consul.server.stop()
    _run(cluster, "web-noservers")
    report = _explained(kubeconfig, "web-noservers", reasons.SERVERS_UNREACHABLE)
    assert "the catalog cannot be read" in report["why"]
    assert "registered on node" in "\n".join(_step(report, "node's agent")["lines"])
    # Failed open: a pod annotated fail-open-after 3s turns Ready all the same, and says so.
    _run(cluster, "web-failopen", annotations={"katalog-sidecar.io/fail-open-after": "3s"})
    report = _explained(kubeconfig, "web-failopen", ex.FAILED_OPEN)
    assert report["ready"] is True
    assert report["why"].startswith("the gate FAILED OPEN: failed open after 3s: Consul has not confirmed")
    assert any(e["reason"] == "ConsulGateFailedOpen" and e["type"] == "Warning" for e in report["facts"]["events"])
    assert not cluster.runner.pod(NS, "web-noservers").ready()  # without the annotation: held
    # ... and once the servers are back, both are confirmed and Ready.
    cluster.consul.server.start()
    _explained(kubeconfig, "web-noservers", ex.OPEN)
    _explained(kubeconfig, "web-failopen", ex.OPEN)
