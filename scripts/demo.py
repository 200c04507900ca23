"""The local demo: a pod's whole life against a real Consul agent, with measured latencies.

By default on a real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager
built by scripts/provide-kube.sh) with the pod runner as kubelet: the example pod template is
applied with kubectl, the sidecar's real command and the manifest's probes run, and
`kubectl delete pod` ends it. With `--fake-kube`, the fake Kubernetes API and a Consul dev
agent instead (for a machine that cannot build the control plane). Either way it plays
start -> app ready -> deletion -> SIGTERM, prints a timeline, and stops everything it started.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import ConsulAgent, FakeKube, PodSidecar, instance_status, provide_consul, wait_catalog  # noqa: E402


def main(argv: list[str]) -> int:
    if "--fake-kube" in argv:
        return fake_kube_demo()
    return real_kube_demo()


def real_kube_demo() -> int:
    from katalog_cluster import KatalogCluster, example_pod

    from bench.harness import provide_kube

    started = time.monotonic()
    rows: list[tuple[float, str]] = []

    def say(text: str) -> None:
        rows.append((time.monotonic() - started, text))
        print(f"  +{rows[-1][0] * 1000:8.1f} ms  {text}", flush=True)

    binaries, consul = provide_kube(), provide_consul()
    ok = False
    with tempfile.TemporaryDirectory(prefix="katalog-demo-") as tmp:
        cluster = KatalogCluster(binaries, consul, Path(tmp), app_ready_default=False)
        pod = None
        try:
            cluster.start()
            print(f"Kubernetes {cluster.control_plane.version()}: a real kube-apiserver, etcd and "
                  f"kube-controller-manager on {cluster.control_plane.url}; the pod runner is the kubelet of "
                  f"node-a ({cluster.consul.client.host})", flush=True)
            print(f"Consul {cluster.consul.client.get('/v1/agent/self')['Config']['Version']}: a server and "
                  f"the node's client agent at {cluster.consul.client.http}\n", flush=True)
            started = time.monotonic()
            server = cluster.consul.server
            cluster.apply(*_rbac_docs(), example_pod("web-0"))
            say("kubectl apply: rbac.yaml and the classic example's pod template as pod web-0")
            pod = _wait(lambda: _runner_pod(cluster), "the pod to start")
            say(f"pod runner: bound to node-a, pod IP {pod.ip}, containers started (app not ready yet)")
            sid = f"default:{pod.name}:web"
            line = _wait(lambda: _gate(pod, passing=False, contains="not ready"), "the gate to fail")
            say(f"readiness-gate (the manifest's exec probe) fails: {line}")
            wait_catalog(server, "web", lambda e: instance_status(e, sid) == "critical", timeout=60)
            say(f"catalog lists {sid} at {pod.ip}:8080 (named port 'http'), critical")

            t0 = time.monotonic()
            pod.set_app_ready("web", True)
            say("the app starts answering its httpGet readiness probe (period 5s)")
            _wait(lambda: cluster.api.get("/api/v1/namespaces/default/pods/web-0")["status"]["containerStatuses"][0]
                  ["ready"] or None, "the app container to be ready")
            say(f"kubelet (pod runner) writes the app container ready    [{(time.monotonic() - t0) * 1000:.1f} ms]")
            passing_at = wait_catalog(server, "web", lambda e: instance_status(e, sid) == "passing", timeout=60)
            say(f"instance passing in the catalog                  [{(passing_at - t0) * 1000:.1f} ms after the app]")
            _wait(lambda: pod.ready() or None, "the pod to be Ready")
            say(f"pod Ready: readiness-gate passed                 [{(time.monotonic() - t0) * 1000:.1f} ms after the app]")

            t0 = time.monotonic()
            cluster.control_plane.kubectl("delete", "pod", "web-0", "--wait=false")
            say("kubectl delete pod web-0: deletionTimestamp set (grace period 30s)")
            critical_at = wait_catalog(server, "web", lambda e: instance_status(e, sid) != "passing", timeout=30)
            say(f"instance no longer passing in the catalog: drains [{(critical_at - t0) * 1000:.1f} ms after the delete]")
            gone_at = wait_catalog(server, "web", lambda e: instance_status(e, sid) is None, timeout=30)
            say(f"instance deregistered from the catalog           [{(gone_at - t0) * 1000:.1f} ms after the delete]")
            pod.terminated.wait(60)
            code = pod.container("katalog-sidecar").exit_code
            say(f"app ran its preStop (sleep 5) and got SIGTERM; katalog-sidecar exited with code {code}")
            leftovers = cluster.consul.client.get("/v1/agent/services")
            say(f"agent holds {len(leftovers)} service(s) now; the API server has deleted the pod")
            ok = code == 0 and not leftovers
        finally:
            cluster.stop()
            if pod is not None:
                print("\nThe sidecar's log (one line per transition):")
                print("    " + pod.log("katalog-sidecar").rstrip().replace("\n", "\n    "))
        print(f"\ndemo {'completed' if ok else 'FAILED'}; every process it started is stopped.")
        return 0 if ok else 1


def _rbac_docs() -> list[dict[str, Any]]:
    from katalog_cluster import example_docs

    return example_docs("rbac.yaml")


def _runner_pod(cluster: Any) -> Any:
    try:
        pod = cluster.runner.pod("default", "web-0")
    except KeyError:
        return None
    return pod if all(c.handle is not None for c in pod.containers) else None


def _gate(pod: Any, passing: bool, contains: str) -> str | None:
    result = pod.exec("katalog-sidecar", ["readiness-gate"])
    line = result.stdout.strip()
    return line if (result.returncode == 0) == passing and contains in line else None


def _wait(probe: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def fake_kube_demo() -> int:
    started = time.monotonic()
    rows: list[tuple[float, str]] = []

    def say(text: str) -> None:
        rows.append((time.monotonic() - started, text))
        print(f"  +{rows[-1][0] * 1000:8.1f} ms  {text}", flush=True)

    binary = provide_consul()
    with tempfile.TemporaryDirectory(prefix="katalog-demo-") as tmp:
        work = Path(tmp)
        agent = ConsulAgent(binary, work, "demo-node", "127.0.0.1", [], dev=True)
        kube = FakeKube(work / "token")
        pod = None
        try:
            agent.start()
            kube.start()
            print(f"Consul dev agent {agent.get('/v1/agent/self')['Config']['Version']} at {agent.http}; "
                  f"fake Kubernetes API at {kube.url}\n")
            pod = PodSidecar(work, agent, kube, "web-5f7c9-abcde", KATALOG_SERVICES="web:http")
            pod.create_pod(ready=False)
            say("pod created; its app container is not ready yet")
            pod.start()
            say("katalog-sidecar started")
            line = pod.wait_gate(passing=False, contains="app is not ready")
            say(f"readiness-gate fails: {line}")
            wait_catalog(agent, "web", lambda e: instance_status(e, pod.service_id) == "critical")
            say(f"catalog lists {pod.service_id} at 10.42.0.10:8080 (named port 'http'), critical")

            t0 = time.monotonic()
            pod.set_app_ready(True)
            say("kubelet marks the app container ready (watch event)")
            passing_at = wait_catalog(agent, "web", lambda e: instance_status(e, pod.service_id) == "passing")
            say(f"instance passing in the catalog            [{(passing_at - t0) * 1000:.1f} ms after the event]")
            line = pod.wait_gate(passing=True)
            say(f"readiness-gate passes: {line}           [{(time.monotonic() - t0) * 1000:.1f} ms after the event]")

            t0 = time.monotonic()
            kube.set_deletion_timestamp("demo", pod.name, grace_seconds=30)
            say("pod deleted: deletionTimestamp set (grace period 30s)")
            critical_at = wait_catalog(agent, "web", lambda e: instance_status(e, pod.service_id) == "critical")
            say(f"instance critical in the catalog: drains   [{(critical_at - t0) * 1000:.1f} ms after the event]")
            gone_at = wait_catalog(agent, "web", lambda e: instance_status(e, pod.service_id) is None)
            say(f"instance deregistered from the catalog     [{(gone_at - t0) * 1000:.1f} ms after the event]")
            line = pod.wait_gate(passing=False)
            say(f"readiness-gate fails: {line}")
            code = pod.terminate()
            say(f"SIGTERM: katalog-sidecar exited with code {code}")
            leftovers = agent.get("/v1/agent/services")
            say(f"agent holds {len(leftovers)} service(s) now")
            ok = code == 0 and not leftovers
        finally:
            if pod is not None:
                pod.kill()
            kube.stop()
            agent.stop()
            print("\nThe sidecar's log (one line per transition):")
            print("    " + pod.log_path.read_text().rstrip().replace("\n", "\n    "))
        print(f"\ndemo {'completed' if ok else 'FAILED'}; every process it started is stopped.")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
