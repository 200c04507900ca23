"""A pod's world on one machine: a real Consul agent, the fake Kubernetes API, real sidecars.

Shared by the demo (scripts/demo.py) and the benchmark (bench/run.py), and built on the
same Consul provisioning and fake API server as the tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from consul_agents import ConsulAgent, ServerAndClient, find_consul  # noqa: E402
from fakekube import FakeKube, make_pod  # noqa: E402

SIDECAR = shutil.which("katalog-sidecar") or "katalog-sidecar"
GATE = shutil.which("readiness-gate") or "readiness-gate"

__all__ = ["ConsulAgent", "ServerAndClient", "FakeKube", "PodSidecar", "find_consul", "make_pod", "wait_catalog", "provide_consul",
           "provide_kube"]


def provide_consul() -> str:
    binary = find_consul()
    if binary:
        return binary
    out = subprocess.run(["bash", str(REPO / "scripts" / "provide-consul.sh")], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def provide_kube() -> dict[str, str]:
    """etcd, kube-apiserver, kube-controller-manager and kubectl: found, or built once by
    scripts/provide-kube.sh (about 5 minutes on 2 cores, then cached)."""
    from kube_control_plane import BINARIES, find_kube_binaries

    found = find_kube_binaries()
    if found:
        return found
    out = subprocess.run(["bash", str(REPO / "scripts" / "provide-kube.sh")], check=True, stdout=subprocess.PIPE,
                         text=True)
    exports = dict(line.removeprefix("export ").split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    return {name: exports[var] for name, var in BINARIES.items()}


def wait_catalog(agent: ConsulAgent, service: str, predicate: Callable[[list[dict[str, Any]]], bool],
                 timeout: float = 10.0) -> float:
    """Block (Consul blocking queries, not polling) until `predicate(health entries)` holds.

    Returns the monotonic time at which the answer that satisfied it arrived.
    """
    deadline = time.monotonic() + timeout
    index = 0
    session = requests.Session()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"catalog condition on {service!r} not met within {timeout}s")
        params: dict[str, str] = {}
        if index:
            params = {"index": str(index), "wait": f"{max(1, int(remaining * 1000))}ms"}
        response = session.get(f"{agent.http}/v1/health/service/{service}", params=params, timeout=remaining + 5)
        arrived = time.monotonic()
        response.raise_for_status()
        if predicate(response.json()):
            return arrived
        new_index = int(response.headers.get("X-Consul-Index", "0"))
        index = new_index if new_index > index else 0 if new_index < index else index


def instance_status(entries: list[dict[str, Any]], service_id: str) -> str | None:
    """'passing', 'critical' (any check not passing) or None when absent."""
    for entry in entries:
        if entry["Service"]["ID"] == service_id:
            return "passing" if all(c["Status"] == "passing" for c in entry["Checks"]) else "critical"
    return None


class PodSidecar:
    """One pod in the fake API plus its `katalog-sidecar run` process."""

    def __init__(self, workdir: Path, agent: ConsulAgent, kube: FakeKube, name: str, namespace: str = "demo",
                 service: str = "web", pod_ip: str = "10.42.0.10", **env: str) -> None:
        self.name, self.namespace, self.service = name, namespace, service
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kube = kube
        self.service_id = f"{namespace}:{name}:{service}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("KATALOG_", "CONSUL_", "POD_"))}
        self.env.update({
            "POD_NAME": name, "POD_NAMESPACE": namespace, "POD_IP": pod_ip,
            "CONSUL_HTTP_ADDR": agent.addr,
            "KATALOG_SERVICES": f"{service}:http",
            "KATALOG_READINESS_SOURCE": "kubernetes",
            "KATALOG_KUBE_API_URL": kube.url,
            "KATALOG_KUBE_TOKEN_FILE": str(kube.token_file),
            "KATALOG_STATUS_FILE": str(self.workdir / "status.json"),
            "KATALOG_METRICS_ADDR": "off",
            "KATALOG_HEARTBEAT_INTERVAL": "2s",
        })
        self.env.update(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "sidecar.log"

    def create_pod(self, ready: bool = False) -> None:
        self.kube.create_pod(make_pod(self.name, self.namespace, containers=("app", "katalog-sidecar"),
                                      ready={"app": ready, "katalog-sidecar": True}, ports={"http": 8080}))

    def start(self) -> PodSidecar:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([SIDECAR, "run"], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def gate(self) -> tuple[int, str]:
        result = subprocess.run([GATE], env=self.env, capture_output=True, text=True, timeout=10)
        return result.returncode, result.stdout.strip()

    def wait_gate(self, passing: bool, timeout: float = 15.0, contains: str = "") -> str:
        deadline = time.monotonic() + timeout
        while True:
            code, line = self.gate()
            if (code == 0) == passing and contains in line:
                return line
            if time.monotonic() > deadline:
                raise TimeoutError(f"gate did not {'pass' if passing else 'fail'}: {line}")
            time.sleep(0.05)

    def set_app_ready(self, ready: bool) -> None:
        self.kube.set_container_ready(self.namespace, self.name, "app", ready)

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
