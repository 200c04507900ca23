"""The local demo: a pod's whole life against a real Consul agent, with measured latencies.

By default on a real node where this machine can run one (root, containerd and runc, kubelet
and kube-scheduler from scripts/provide-kube.sh): a real control plane, a kubelet with
containerd running the project's image built from the Dockerfile, the node's own Consul client
agent. The classic example's pod template is applied with kubectl (through
tests/node_overlay.py), the kubelet runs its probes, preStop and SIGTERM, and
`kubectl delete pod` ends it. Where a real node cannot run, it says why in one line and uses
the pod runner (tests/pod_runner.py) as the kubelet instead (also with `--pod-runner`). With
`--fake-kube`, the fake Kubernetes API and a Consul dev agent (for a machine that cannot build
the control plane). Either way it plays start -> app ready -> deletion -> SIGTERM, prints a
timeline, and stops everything it started.
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
    if "--pod-runner" not in argv:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from kube_node import NodeUnavailable, find_node_binaries

        try:
            node_binaries = find_node_binaries()
        except NodeUnavailable as exc:
            print(f"demo: no real node on this machine ({exc}); the pod runner stands in for the kubelet\n",
                  flush=True)
        else:
            return real_node_demo(node_binaries)
    return real_kube_demo()


def real_node_demo(node_binaries: dict[str, str]) -> int:
    """The pod on a real node: kubelet + containerd, the project's image, the node's agent."""
    import subprocess
    import threading

    from katalog_cluster import example_pod
    from katalog_nodes import NodeCluster
    from kube_node import runtime_versions
    from node_images import all_archives

    from bench.harness import provide_kube

    kubelet_version = subprocess.run([node_binaries["kubelet"], "--version"], capture_output=True, text=True,
                                     timeout=30).stdout.strip()
    rt = runtime_versions()
    print(f"demo on a real node: kubelet {kubelet_version.removeprefix('Kubernetes ')}, containerd {rt['containerd']}, "
          f"runc {rt['runc']}", flush=True)
    t_setup = time.monotonic()
    archives = all_archives(log=True)  # the project's image from the Dockerfile: built once, then cached
    binaries, consul = provide_kube(), provide_consul()
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"  +{(time.monotonic() - started) * 1000:8.1f} ms  {text}", flush=True)

    ok = False
    sidecar_log: list[str] = []
    with tempfile.TemporaryDirectory(prefix="katalog-demo-") as tmp:
        cluster = NodeCluster(binaries, node_binaries, consul, Path(tmp), nodes=1, archives=archives)
        try:
            cluster.start()
            node = cluster.nodes[0]
            agent = cluster.agents[node.ip]
            v = cluster.versions()
            print(f"Kubernetes {cluster.control_plane.version()}: kube-apiserver, etcd, kube-controller-manager and "
                  f"kube-scheduler on {cluster.control_plane.url}; node {node.name} is a kubelet {v['kubelet']} "
                  f"with {v['runtime']} (up in {time.monotonic() - t_setup:.1f} s)", flush=True)
            print(f"Consul {agent.get('/v1/agent/self')['Config']['Version']}: a server and the node's client agent "
                  f"at {agent.http}\n", flush=True)
            started = time.monotonic()
            server, api, kubectl = cluster.server, cluster.api, cluster.control_plane.kubectl
            pod_doc = example_pod("web-0")
            for container in pod_doc["spec"]["containers"]:
                if container["name"] == "web":  # the demo's app starts unready; the demo switches it
                    container.setdefault("env", []).append({"name": "APP_READY", "value": "false"})
            cluster.apply(*cluster.example_docs("rbac.yaml"), _overlaid(cluster, pod_doc))
            say("kubectl apply: rbac.yaml and the classic example's pod template as pod web-0")
            pod = _wait(lambda: _started(api), "the kubelet to start the pod's containers")
            say(f"kube-scheduler bound it to {pod['spec']['nodeName']}; the kubelet started both containers "
                f"(image {_image_of(pod, 'katalog-sidecar')}), pod IP {pod['status']['podIP']}")
            logs = subprocess.Popen([cluster.control_plane.binaries["kubectl"], f"--kubeconfig={cluster.control_plane.kubeconfig}",
                                     "logs", "-f", "web-0", "-c", "katalog-sidecar"], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            threading.Thread(target=lambda: sidecar_log.extend(logs.stdout or []), daemon=True).start()
            sid = "default:web-0:web"
            line = _wait(lambda: _exec_gate(kubectl, passing=False, contains="not ready"), "the gate to fail")
            say(f"readiness-gate (kubectl exec, as the kubelet's exec probe runs it) fails: {line}")
            wait_catalog(server, "web", lambda e: instance_status(e, sid) == "critical", timeout=60)
            say(f"catalog lists {sid} at {pod['status']['podIP']}:8080 (named port 'http'), critical")

            t0 = time.monotonic()
            kubectl("exec", "web-0", "-c", "web", "--", "app-ready", "on")
            say("kubectl exec web-0 -c web -- app-ready on: the app answers its httpGet probe (period 5s)")
            _wait(lambda: _container_ready(api, "web"), "the app container to be ready")
            say(f"the kubelet writes the app container ready        [{(time.monotonic() - t0) * 1000:.1f} ms]")
            passing_at = wait_catalog(server, "web", lambda e: instance_status(e, sid) == "passing", timeout=60)
            say(f"instance passing in the catalog                  [{(passing_at - t0) * 1000:.1f} ms after the app]")
            _wait(lambda: _pod_ready(api), "the pod to be Ready")
            say(f"pod Ready: the kubelet's readiness-gate probe passed [{(time.monotonic() - t0) * 1000:.1f} ms after the app]")

            final: dict[str, object] = {}
            watcher = threading.Thread(target=_watch_until_gone, args=(api, final), daemon=True)
            watcher.start()
            t0 = time.monotonic()
            kubectl("delete", "pod", "web-0", "--wait=false")
            say("kubectl delete pod web-0: deletionTimestamp set (grace period 30s)")
            critical_at = wait_catalog(server, "web", lambda e: instance_status(e, sid) != "passing", timeout=30)
            say(f"instance no longer passing in the catalog: drains [{(critical_at - t0) * 1000:.1f} ms after the delete]")
            gone_at = wait_catalog(server, "web", lambda e: instance_status(e, sid) is None, timeout=30)
            say(f"instance deregistered from the catalog           [{(gone_at - t0) * 1000:.1f} ms after the delete]")
            watcher.join(90)
            code = final.get("katalog-sidecar")
            say(f"the kubelet ran the app's preStop (sleep 5), sent SIGTERM; katalog-sidecar exited with code {code}, "
                f"pod deleted [{(time.monotonic() - t0) * 1000:.1f} ms after the delete]")
            leftovers = agent.get("/v1/agent/services")
            say(f"the node's agent holds {len(leftovers)} service(s) now")
            ok = code == 0 and not leftovers and bool(final.get("gone"))
        finally:
            files = _container_log(cluster, "katalog-sidecar")  # before stop(): the node's /var/log
            cluster.stop()
        print(f"\nThe sidecar's log ({'the kubelet' + chr(39) + 's log file' if files else 'kubectl logs -f'}; "
              f"one line per transition):")
        print("    " + "".join(files or sidecar_log).rstrip().replace("\n", "\n    "))
        print(f"\ndemo {'completed' if ok else 'FAILED'}; every process it started is stopped.")
        return 0 if ok else 1


def _container_log(cluster: Any, container: str) -> list[str]:
    """web-0's container log as the kubelet wrote it (CRI format: time, stream, tag, text)."""
    lines: list[str] = []
    for node in cluster.nodes:
        for path in sorted((node.scratch / "var-log" / "pods").glob(f"default_web-0_*/{container}/*.log")):
            lines += [line.split(" ", 3)[3] + "\n" for line in path.read_text(errors="replace").splitlines()
                      if line.count(" ") >= 3]
    return lines


def _overlaid(cluster: Any, doc: dict[str, Any]) -> dict[str, Any]:
    from node_overlay import for_this_machine

    return for_this_machine(doc, cluster.control_plane.url)


def _get_pod(api: Any) -> dict[str, Any] | None:
    try:
        return dict(api.get("/api/v1/namespaces/default/pods/web-0"))
    except Exception:  # noqa: BLE001 - absent or the API is busy: not yet
        return None


def _started(api: Any) -> dict[str, Any] | None:
    pod = _get_pod(api)
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    return pod if statuses and all("running" in (s.get("state") or {}) for s in statuses) else None


def _image_of(pod: dict[str, Any], container: str) -> str:
    return str(next(c["image"] for c in pod["spec"]["containers"] if c["name"] == container))


def _container_ready(api: Any, name: str) -> bool:
    pod = _get_pod(api) or {}
    return any(s["name"] == name and s.get("ready") for s in (pod.get("status") or {}).get("containerStatuses") or [])


def _pod_ready(api: Any) -> bool:
    pod = _get_pod(api) or {}
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions") or [])


def _exec_gate(kubectl: Any, passing: bool, contains: str) -> str | None:
    result = kubectl("exec", "web-0", "-c", "katalog-sidecar", "--", "readiness-gate", check=False)
    line = result.stdout.strip()
    return line if (result.returncode == 0) == passing and contains in line else None


def _watch_until_gone(api: Any, final: dict[str, object]) -> None:
    """Records each container's exit code from the pod's statuses (a watch: the kubelet's last
    status write comes just before it deletes the pod), until the pod is deleted."""
    try:
        for event in api.watch_lines("/api/v1/namespaces/default/pods", timeout=90,
                                     fieldSelector="metadata.name=web-0"):
            pod = event.get("object") or {}
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                terminated = (status.get("state") or {}).get("terminated")
                if terminated:
                    final[status["name"]] = terminated.get("exitCode")
            if event.get("type") == "DELETED":
                final["gone"] = True
                return
    except Exception as exc:  # noqa: BLE001 - the demo says what went wrong
        final["error"] = repr(exc)


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
