"""The pod runner itself, on a real control plane: probes as written, downward-API env and
mounts, and kubelet-like termination (SIGKILL at the grace period, then the final delete)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_control_plane import ControlPlane
from pod_runner import PodRunner, RunningPod, process_image
from waiting import wait_until

pytestmark = pytest.mark.kube

NS = "default"
IMAGE = "example.test/shell"


@pytest.fixture
def runner(control_plane: ControlPlane, tmp_path: Path) -> Iterator[PodRunner]:
    with PodRunner(control_plane.api, tmp_path, {"node-t": "127.66.0.1"},
                   images={IMAGE: process_image(["sh", "-c"])}) as pod_runner:
        yield pod_runner


def pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": IMAGE, "args": [script],
                 "env": [{"name": "READY_FILE", "value": "/data/ready"},
                         {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                         {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                         {"name": "TIER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}}],
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    container.update(spec.pop("container", {}))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"tier": "back"}},
            "spec": {"containers": [container], "volumes": [{"name": "data", "emptyDir": {}}], **spec}}


def api_ready(cp: ControlPlane, name: str) -> str:
    status = cp.api.get(f"/api/v1/namespaces/{NS}/pods/{name}").get("status", {})
    return next((c["status"] for c in status.get("conditions", []) if c["type"] == "Ready"), "")


def started(runner: PodRunner, name: str) -> RunningPod:
    def get() -> RunningPod | None:
        try:
            found = runner.pod(NS, name)
        except KeyError:
            return None
        return found if found.container("main").ctx is not None else None
    return wait_until(get, 30, f"{name} started")  # type: ignore[no-any-return]


def test_env_mounts_and_probe_thresholds_as_written(control_plane: ControlPlane, runner: PodRunner) -> None:
    probe = {"exec": {"command": ["sh", "-c", 'test -f "$READY_FILE"']}, "periodSeconds": 1,
             "failureThreshold": 3, "successThreshold": 2, "timeoutSeconds": 1}
    control_plane.api.post(f"/api/v1/namespaces/{NS}/pods",
                           pod("p0", "env > \"$(dirname \"$READY_FILE\")/env\"; exec sleep 600",
                               container={"readinessProbe": probe}))
    running = started(runner, "p0")
    env = running.env("main")
    assert (env["MY_NAME"], env["MY_IP"], env["TIER"]) == ("p0", running.ip, "back")
    ready_file = Path(env["READY_FILE"])
    assert ready_file.parent == running.mounts_by_volume["data"]  # /data is the emptyDir's directory
    wait_until(lambda: (ready_file.parent / "env").exists(), 10, "the container ran with its env")
    pod_status = control_plane.api.get(f"/api/v1/namespaces/{NS}/pods/p0")["status"]
    assert pod_status["podIP"] == running.ip and pod_status["hostIP"] == "127.66.0.1"
    assert api_ready(control_plane, "p0") == "False"

    ready_file.touch()
    runs = running.probe_runs("main")
    wait_until(lambda: api_ready(control_plane, "p0") == "True", 20, "Ready after successes")
    assert running.probe_runs("main") - runs >= 2  # successThreshold 2: never on the first success
    ready_file.unlink()
    runs = running.probe_runs("main")
    wait_until(lambda: api_ready(control_plane, "p0") == "False", 20, "unready after failures")
    assert running.probe_runs("main") - runs >= 3  # failureThreshold 3


def test_sigterm_ignored_means_sigkill_at_the_grace_period_then_the_pod_is_gone(
        control_plane: ControlPlane, runner: PodRunner) -> None:
    control_plane.api.post(f"/api/v1/namespaces/{NS}/pods",
                           pod("p1", "trap '' TERM; while :; do sleep 0.2; done", terminationGracePeriodSeconds=2))
    running = started(runner, "p1")
    control_plane.api.delete(f"/api/v1/namespaces/{NS}/pods/p1")  # the pod's own grace period
    assert running.terminated.wait(30)
    main = running.container("main")
    assert main.exit_code == 137, main.exit_code  # 128 + SIGKILL
    wait_until(lambda: not control_plane.api.get(f"/api/v1/namespaces/{NS}/pods")["items"], 20,
               "the runner deleted the pod for good")
