"""Shared fixtures: real Consul agents and the sidecar as a user runs it."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from consul_agents import AclDevAgent, ConsulAgent, ServerAndClient, ServerAndClients, find_consul  # noqa: E402
from sidecar_process import Sidecar  # noqa: E402


@pytest.fixture(scope="session")
def consul_bin() -> str:
    binary = find_consul()
    if binary is None:
        message = "no consul binary: run scripts/provide-consul.sh or set CONSUL_BIN"
        if os.environ.get("CI"):
            pytest.fail(message + " (integration tests may not be skipped in CI)")
        pytest.skip(message)
    return binary


@pytest.fixture(scope="session")
def toxiproxy_bin() -> str:
    from toxiproxy import find_toxiproxy

    binary = find_toxiproxy()
    if binary is None:
        message = "no toxiproxy-server binary: run scripts/provide-toxiproxy.sh or set TOXIPROXY_BIN"
        if os.environ.get("CI"):
            pytest.fail(message + " (integration tests may not be skipped in CI)")
        pytest.skip(message)
    return binary


@pytest.fixture
def toxiproxy(toxiproxy_bin: str, tmp_path: Path) -> Iterator[Any]:
    """A toxiproxy-server on loopback (tests/toxiproxy.py), stopped after the test."""
    from toxiproxy import Toxiproxy

    with Toxiproxy(toxiproxy_bin, tmp_path / "toxiproxy.log") as server:
        yield server


@pytest.fixture
def dev_agent(consul_bin: str, tmp_path: Path) -> Iterator[ConsulAgent]:
    agent = ConsulAgent(consul_bin, tmp_path, "dev", "127.0.0.1", [], dev=True).start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def server_client(consul_bin: str, tmp_path: Path) -> Iterator[ServerAndClient]:
    pair = ServerAndClient(consul_bin, tmp_path)
    try:
        yield pair.start()
    finally:
        pair.stop()


@pytest.fixture
def two_nodes(consul_bin: str, tmp_path: Path) -> Iterator[ServerAndClients]:
    """A server and two client agents, nodes `node-a` and `node-b`."""
    agents = ServerAndClients(consul_bin, tmp_path)
    try:
        yield agents.start()
    finally:
        agents.stop()


@pytest.fixture
def acl_agent(consul_bin: str, tmp_path: Path) -> Iterator[AclDevAgent]:
    """A dev agent with ACLs on, default deny, bootstrapped with a management token."""
    agent = AclDevAgent(consul_bin, tmp_path).start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def run_sidecar(tmp_path: Path) -> Iterator[Callable[..., Sidecar]]:
    """Starts `katalog-sidecar run` with an environment; kills any left running after the test."""
    started: list[Sidecar] = []

    def start(env: dict[str, str], name: str = "sidecar") -> Sidecar:
        sidecar = Sidecar(env, tmp_path / f"{name}.log").start()
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in started:
        sidecar.stop()


# --- a real Kubernetes control plane (tests/kube_control_plane.py, tests/pod_runner.py) -----


@pytest.fixture(scope="session")
def kube_binaries() -> dict[str, str]:
    from kube_control_plane import find_kube_binaries

    found = find_kube_binaries()
    if found is None:
        message = ("no Kubernetes control-plane binaries: run `eval \"$(scripts/provide-kube.sh)\"` "
                   "or set ETCD_BIN, KUBE_APISERVER_BIN, KUBE_CONTROLLER_MANAGER_BIN and KUBECTL_BIN")
        if os.environ.get("CI"):
            pytest.fail(message + " (integration tests may not be skipped in CI)")
        pytest.skip(message)
    return found


@pytest.fixture
def control_plane(kube_binaries: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """etcd + kube-apiserver + kube-controller-manager, stopped after the test."""
    from kube_control_plane import ControlPlane

    with ControlPlane(kube_binaries, tmp_path) as cp:
        yield cp


@pytest.fixture
def katalog_cluster(kube_binaries: dict[str, str], consul_bin: str, tmp_path: Path) -> Iterator[Any]:
    """A control plane, a Consul server + the node's client agent, and a pod runner on that node."""
    from katalog_cluster import KatalogCluster

    with KatalogCluster(kube_binaries, consul_bin, tmp_path) as cluster:
        yield cluster


# --- helm (scripts/provide-helm.sh): tests/test_kube_real_helm.py, the chart's rules in test_alert_rules.py


@pytest.fixture(scope="session")
def helm_bin() -> str:
    """The real helm: $HELM_BIN, else the newest cached build."""
    found = os.environ.get("HELM_BIN")
    if not found:
        cache = Path(os.environ.get("KATALOG_CACHE_DIR", Path.home() / ".cache" / "katalog-sidecar"))
        found = next((str(p) for p in sorted(cache.glob("helm-*/helm"), reverse=True) if os.access(p, os.X_OK)), None)
    if not found:
        message = "no helm binary: run `export HELM_BIN=$(scripts/provide-helm.sh)`"
        if os.environ.get("CI"):
            pytest.fail(message + " (integration tests may not be skipped in CI)")
        pytest.skip(message)
    return found


# --- real nodes: containerd + kubelet (tests/kube_node.py, tests/katalog_nodes.py) ----------


@pytest.fixture(scope="session")
def node_binaries(kube_binaries: dict[str, str]) -> dict[str, str]:
    from kube_node import NodeUnavailable, find_node_binaries

    try:
        return find_node_binaries()
    except NodeUnavailable as exc:
        message = f"no real node: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message + " (integration tests may not be skipped in CI)")
        pytest.skip(message)


@pytest.fixture(scope="session")
def node_image_archives(node_binaries: dict[str, str]) -> dict[str, Path]:
    """The pause, app and project images as archives (built once, then cached)."""
    from node_images import all_archives

    return all_archives()


@pytest.fixture
def node_cluster(kube_binaries: dict[str, str], node_binaries: dict[str, str], node_image_archives: dict[str, Path],
                 consul_bin: str, tmp_path: Path) -> Iterator[Any]:
    """Control plane + scheduler, a Consul server, and 4 real nodes each with its client agent."""
    from katalog_nodes import NodeCluster

    with NodeCluster(kube_binaries, node_binaries, consul_bin, tmp_path, nodes=4,
                     archives=node_image_archives) as cluster:
        yield cluster
