"""The README's first command: the demo runs on a real node by default (as root, with a
runtime) and names the kubelet and runtime that ran the pod; `--pod-runner` on the real control
plane with the pod runner as kubelet, and says which."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.consul, pytest.mark.kube]

REPO = Path(__file__).resolve().parent.parent


def _env(kube_binaries: dict[str, str], consul_bin: str) -> dict[str, str]:
    return dict(os.environ, CONSUL_BIN=consul_bin, ETCD_BIN=kube_binaries["etcd"],
                KUBE_APISERVER_BIN=kube_binaries["kube-apiserver"],
                KUBE_CONTROLLER_MANAGER_BIN=kube_binaries["kube-controller-manager"],
                KUBECTL_BIN=kube_binaries["kubectl"])


def _version(kube_binaries: dict[str, str]) -> str:
    return subprocess.run([kube_binaries["kube-apiserver"], "--version"], capture_output=True, text=True,
                          check=True).stdout.split()[-1]  # "Kubernetes v1.34.4"


def test_demo_runs_on_a_real_node_and_names_the_kubelet_and_runtime(
        kube_binaries: dict[str, str], node_binaries: dict[str, str], node_image_archives: dict[str, Path],
        consul_bin: str) -> None:
    env = dict(_env(kube_binaries, consul_bin), KUBELET_BIN=node_binaries["kubelet"],
               KUBE_SCHEDULER_BIN=node_binaries["kube-scheduler"])
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py")], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    containerd = subprocess.run(["containerd", "--version"], capture_output=True, text=True).stdout.split()[2]
    assert lines[0].startswith(f"demo on a real node: kubelet {_version(kube_binaries)}, containerd {containerd}, "
                               f"runc "), lines[0]
    assert "the kubelet started both containers (image localhost/katalog-sidecar:node)" in result.stdout
    assert "instance deregistered from the catalog" in result.stdout
    assert "katalog-sidecar exited with code 0" in result.stdout
    assert lines[-1] == "demo completed; every process it started is stopped."


def test_demo_with_the_pod_runner_names_the_apiserver_version(kube_binaries: dict[str, str],
                                                              consul_bin: str) -> None:
    env = _env(kube_binaries, consul_bin)
    version = _version(kube_binaries)
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--pod-runner"], env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"Kubernetes {version}: a real kube-apiserver"), lines[0]
    assert "instance deregistered from the catalog" in result.stdout
    assert "katalog-sidecar exited with code 0" in result.stdout
    assert lines[-1] == "demo completed; every process it started is stopped."
