"""The project's cluster on real nodes: the control plane plus kube-scheduler, a Consul server,
and N nodes (containerd + kubelet, tests/kube_node.py), each with its own Consul client agent
at the node's address on port 8500 (the DaemonSet agent's role), so the examples'
`http://$HOST_IP:8500` reaches the pod's own node's agent.

    with NodeCluster(kube_binaries, node_binaries, consul_bin, tmp_path, nodes=4) as cluster:
        cluster.apply_example("rbac.yaml", "deployment-classic-sidecar.yaml")   # via the overlay
        pods = cluster.wait_for_pods("default", 3, ready=True)

The examples go through tests/node_overlay.py (images, hostNetwork; its doc lists every change).
Teardown (also when start-up or a test fails): nodes first (everything they run is killed and
their cgroups removed), then the Consul agents, then the scheduler and the control plane.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from consul_agents import ConsulAgent, random_loopback
from kube_control_plane import ControlPlane, KubeApi
from kube_node import (
    Node,
    NodeUnavailable,
    Scheduler,
    add_node_tokens,
    claim_node_ips,
    prepare_image_store,
    runtime_versions,
)
from node_images import PAUSE_IMAGE, all_archives
from node_overlay import for_this_machine

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
CONSUL_TOKEN_SECRET = "katalog-consul-token"  # noqa: S105 - the Secret's name, not a token
AGENT_PORT = 8500


def consul_node_name(ip: str) -> str:
    return "node-" + ip.replace(".", "-")


class NodeCluster:
    def __init__(self, binaries: Mapping[str, str], node_binaries: Mapping[str, str], consul_bin: str,
                 workdir: Path, *, nodes: int = 4, archives: Mapping[str, Path] | None = None) -> None:
        self.workdir = workdir
        self.archives = dict(archives) if archives is not None else None
        self.control_plane = ControlPlane(binaries, workdir)
        self.scheduler = Scheduler(node_binaries["kube-scheduler"], self.control_plane.workdir,
                                   self.control_plane.kubeconfig)
        suffix = random.randint(1000, 9999)
        self.server = ConsulAgent(consul_bin, workdir, f"server-{suffix}", random_loopback(),
                                  ["-server", "-bootstrap-expect=1"])
        self.claims = claim_node_ips(nodes)
        try:
            add_node_tokens(self.control_plane, [c.ip for c in self.claims])
            self.nodes = [Node(node_binaries, workdir, claim, self.control_plane, PAUSE_IMAGE) for claim in self.claims]
            self.agents = {claim.ip: ConsulAgent(consul_bin, workdir, consul_node_name(claim.ip), claim.ip, [])
                           for claim in self.claims}
        except BaseException:
            for claim in self.claims:
                claim.release()
            raise
        for agent in self.agents.values():
            agent.http_port = AGENT_PORT
        self.node_binaries = dict(node_binaries)

    @property
    def api(self) -> KubeApi:
        return self.control_plane.api

    def agent_of(self, pod: Mapping[str, Any]) -> ConsulAgent:
        return self.agents[pod["spec"]["nodeName"]]

    def start(self, log: Callable[[str], None] = lambda _text: None) -> NodeCluster:
        try:
            archives = self.archives if self.archives is not None else all_archives()
            self.control_plane.start()
            self.scheduler.start()
            self.server.start()
            join = [f"-retry-join={self.server.host}:{self.server.serf_lan_port}", "-retry-interval=1s"]
            for agent in self.agents.values():
                agent.extra = join
            self._parallel([lambda a=a: a.start() for a in self.agents.values()])  # type: ignore[misc]
            log(f"control plane, scheduler and Consul up; starting {len(self.nodes)} nodes")
            store = prepare_image_store(self.node_binaries, archives, PAUSE_IMAGE)
            self._parallel([lambda n=n: self._bring_up(n, store) for n in self.nodes])  # type: ignore[misc]
            self.control_plane.kubectl("create", "secret", "generic", CONSUL_TOKEN_SECRET,
                                       "--from-literal=token=anonymous")
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _bring_up(node: Node, image_store: Path) -> None:
        node.start(image_store=image_store)
        node.wait_ready()
        node.untaint()

    @staticmethod
    def _parallel(jobs: list[Callable[[], Any]]) -> None:
        errors: list[BaseException] = []

        def run(job: Callable[[], Any]) -> None:
            try:
                job()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(job,), daemon=True) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    # -- applying the examples ------------------------------------------------------------------

    def example_docs(self, name: str) -> list[dict[str, Any]]:
        """A file of examples/ as this machine runs it (tests/node_overlay.py)."""
        with (EXAMPLES / name).open(encoding="utf-8") as handle:
            return [for_this_machine(doc, self.control_plane.url) for doc in yaml.safe_load_all(handle) if doc]

    def apply_example(self, *names: str, namespace: str = "default") -> None:
        docs = [doc for name in names for doc in self.example_docs(name)]
        self.apply(*docs, namespace=namespace)

    def apply(self, *objects: Mapping[str, Any], namespace: str = "default") -> None:
        manifest = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        self.control_plane.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(manifest))

    # -- reading pods ----------------------------------------------------------------------------

    def pods(self, namespace: str = "default", selector: str = "") -> list[dict[str, Any]]:
        params = {"labelSelector": selector} if selector else {}
        return list(self.api.get(f"/api/v1/namespaces/{namespace}/pods", **params)["items"])

    def wait_for_pods(self, namespace: str, count: int, *, ready: bool = True, timeout: float = 180.0,
                      selector: str = "") -> list[dict[str, Any]]:
        """Exactly `count` pods not being deleted (and Ready)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [p for p in self.pods(namespace, selector) if not p["metadata"].get("deletionTimestamp")
                     and (not ready or pod_ready(p))]
            if len(found) == count:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(found)} of {count} pods in {namespace} {'ready' if ready else 'present'} "
                                   f"after {timeout}s: {[(p['metadata']['name'], pod_summary(p)) for p in self.pods(namespace)]}"
                                   f"\n{self.logs()}")
            time.sleep(0.2)

    def versions(self) -> dict[str, str]:
        """The kubelet's and runtime's versions as the nodes report them, and runc's."""
        reported = self.nodes[0].versions()
        return {**reported, "runc": runtime_versions()["runc"]}

    def logs(self) -> str:
        return "\n".join([self.control_plane.logs(), f"--- kube-scheduler ---\n{self.scheduler.tail()}"]
                         + [n.logs() for n in self.nodes])

    def stop(self) -> None:
        errors: list[BaseException] = []
        for step in [*(n.stop for n in self.nodes), *(a.stop for a in self.agents.values()), self.server.stop,
                     self.scheduler.stop, self.control_plane.stop]:
            try:
                step()
            except BaseException as exc:  # noqa: BLE001 - every step runs; the first error is raised
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> NodeCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def pod_ready(pod: Mapping[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def pod_summary(pod: Mapping[str, Any]) -> str:
    status = pod.get("status") or {}
    containers = [(c["name"], c.get("ready"), next(iter(c.get("state") or {"?": 0})))
                  for c in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])]
    return f"{status.get('phase')} node={pod['spec'].get('nodeName')} {containers}"


__all__ = ["NodeCluster", "NodeUnavailable", "pod_ready", "pod_summary"]
