"""The README's first command: the demo runs on the real control plane and says which."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.consul, pytest.mark.kube]

REPO = Path(__file__).resolve().parent.parent


def test_demo_runs_on_the_real_apiserver_and_names_its_version(kube_binaries: dict[str, str],
                                                                consul_bin: str) -> None:
    env = dict(os.environ, CONSUL_BIN=consul_bin, ETCD_BIN=kube_binaries["etcd"],
               KUBE_APISERVER_BIN=kube_binaries["kube-apiserver"],
               KUBE_CONTROLLER_MANAGER_BIN=kube_binaries["kube-controller-manager"],
               KUBECTL_BIN=kube_binaries["kubectl"])
    version = subprocess.run([kube_binaries["kube-apiserver"], "--version"], capture_output=True, text=True,
                             check=True).stdout.split()[-1]  # "Kubernetes v1.34.4"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py")], env=env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"Kubernetes {version}: a real kube-apiserver"), lines[0]
    assert "instance deregistered from the catalog" in result.stdout
    assert "katalog-sidecar exited with code 0" in result.stdout
    assert lines[-1] == "demo completed; every process it started is stopped."
