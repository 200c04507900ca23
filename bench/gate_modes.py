"""Exec gate vs pod condition: confirmation -> pod Ready, and a rolling update's duration.

    python -m bench.gate_modes [--rounds 3] [--replicas 3] [--runner | --node]

`--node` takes both figures on real nodes (kubelet + containerd, see `measure_on_nodes`);
`--runner` through the real control plane and the pod runner. Without either:

Real `katalog-sidecar run` processes and a real Consul dev agent; the Kubernetes side is the
fake API server (tests/fakekube.py) plus a kubelet timing stand-in in this file:

- exec gate: the kubelet's prober runs the real `readiness-gate` when the container starts and
  then every `periodSeconds` (2, as in the examples); the pod is Ready at the end of the first
  run that exits 0;
- condition: the pod is Ready when the API server holds the condition True (the sidecar's
  PATCH of pods/status; a kubelet reacts to that update through its own pod watch, which this
  stand-in does not add).

"Confirmed" is the moment the sidecar's status file turns to phase `confirmed` (its `since`).
A rolling update is the Deployment controller's maxSurge 1 / maxUnavailable 0 loop: create a new
pod, wait until it is Ready, delete an old one (deletionTimestamp, then SIGTERM), repeat.
Prints JSON. Everything it starts is stopped before it returns.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.harness import GATE, ConsulAgent, FakeKube, PodSidecar, provide_consul  # noqa: E402
from sidecar.manifests import CONDITION_TYPE  # noqa: E402

PERIOD_S = 2.0
NS = "prod"


class Prober(threading.Thread):
    """kubelet's readiness prober for one container: the gate now, then every period."""

    def __init__(self, pod: PodSidecar, period: float) -> None:
        super().__init__(daemon=True)
        self.pod, self.period = pod, period
        self.ready_at: float | None = None
        self.runs = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        import subprocess

        while not self.stop_event.is_set():
            started = time.monotonic()
            done = subprocess.run([GATE], env=self.pod.env, capture_output=True, timeout=10)
            self.runs += 1
            if done.returncode == 0 and self.ready_at is None:
                self.ready_at = time.time()
            if self.stop_event.wait(max(0.0, self.period - (time.monotonic() - started))):
                return


def _confirmed_at(pod: PodSidecar) -> float | None:
    try:
        status = json.loads((pod.workdir / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return float(status["since"]) if status.get("phase") == "confirmed" else None


def _wait(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(interval)


def _ready_at(kube: FakeKube, pod: PodSidecar, mode: str, prober: Prober | None) -> float:
    if mode == "exec":
        assert prober is not None
        return float(_wait(lambda: prober.ready_at, 60, f"{pod.name}: gate never passed", 0.01))
    return float(_wait(lambda: time.time() if (kube.condition(NS, pod.name, CONDITION_TYPE) or {}).get("status") == "True"
                       else None, 60, f"{pod.name}: condition never True"))


def rollout(agent: ConsulAgent, kube: FakeKube, workdir: Path, mode: str, replicas: int, round_: int) -> dict[str, Any]:
    """One rolling update of `replicas` pods in `mode`; (confirmed -> Ready) of each new pod."""
    env = {"KATALOG_HEARTBEAT_INTERVAL": "1s", "KATALOG_CONFIRM_WAIT": "2s", "KATALOG_EVENTS": "false"}
    if mode == "condition":
        env["KATALOG_GATE"] = "condition"
    pods: list[PodSidecar] = []
    probers: list[Prober] = []

    def start(name: str, ip: str) -> tuple[PodSidecar, Prober | None]:
        pod = PodSidecar(workdir, agent, kube, name, namespace=NS, pod_ip=ip, **env)
        pod.create_pod(ready=True)
        pod.start()
        pods.append(pod)
        prober = Prober(pod, PERIOD_S) if mode == "exec" else None
        if prober is not None:
            prober.start()
            probers.append(prober)
        return pod, prober

    lags: list[float] = []
    try:
        old = [start(f"{mode}-{round_}-old-{i}", f"10.3.{round_}.{10 + i}") for i in range(replicas)]
        for pod, prober in old:
            _ready_at(kube, pod, mode, prober)
        began = time.monotonic()
        for i in range(replicas):
            pod, prober = start(f"{mode}-{round_}-new-{i}", f"10.4.{round_}.{10 + i}")
            ready = _ready_at(kube, pod, mode, prober)
            confirmed = _wait(lambda pod=pod: _confirmed_at(pod), 10, f"{pod.name}: status file never confirmed")
            lags.append((ready - confirmed) * 1000)
            victim = old[i][0]
            kube.set_deletion_timestamp(NS, victim.name, grace_seconds=30)
            victim.terminate(timeout=30)
            kube.delete_pod(NS, victim.name)
        duration = time.monotonic() - began
    finally:
        for prober in probers:
            prober.stop_event.set()
        for pod in pods:
            pod.kill()
        for prober in probers:
            prober.join(timeout=15)
    return {"confirmed_to_ready_ms": lags, "duration_s": duration,
            "probe_runs": sum(p.runs for p in probers)}


def measure(rounds: int, replicas: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    from bench.run import summarize

    results: dict[str, Any] = {"period_s": PERIOD_S, "replicas": replicas, "rounds": rounds}
    with tempfile.TemporaryDirectory(prefix="katalog-gate-modes-") as tmp:
        agent = ConsulAgent(provide_consul(), Path(tmp), "dev", "127.0.0.1", [], dev=True).start()
        try:
            with FakeKube(Path(tmp) / "token") as kube:
                for mode in ("exec", "condition"):
                    lags: list[float] = []
                    durations: list[float] = []
                    runs = 0
                    for r in range(rounds):
                        one = rollout(agent, kube, Path(tmp) / mode / str(r), mode, replicas, r)
                        lags += one["confirmed_to_ready_ms"]
                        durations.append(one["duration_s"])
                        runs += one["probe_runs"]
                        log(f"{mode} round {r}: rollout {one['duration_s']:.2f}s, confirmed->Ready "
                            + ", ".join(f"{x:.0f}" for x in one["confirmed_to_ready_ms"]) + " ms")
                    results[mode] = {"confirmed_to_ready_ms": summarize(lags), "rollout_s": summarize(durations),
                                     "samples_ms": lags, "rollouts_s": durations, "probe_runs": runs}
        finally:
            agent.stop()
    return results


def measure_with_runner(rounds: int, replicas: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The same two figures through the real control plane and the pod runner (tests/): a plain
    Deployment injected with `katalog-sidecar inject` (exec gate, or `--gate condition`), then
    `kubectl rollout restart` timed to `kubectl rollout status`; confirmed -> Ready per new pod,
    Ready as the runner (kubelet stand-in) reports it, sampled every 20 ms."""
    import subprocess

    import yaml
    from katalog_cluster import KatalogCluster  # type: ignore[import-not-found]
    from kube_control_plane import find_kube_binaries  # type: ignore[import-not-found]

    from bench.harness import SIDECAR, provide_consul
    from bench.run import summarize

    binaries = find_kube_binaries()
    if binaries is None:
        raise SystemExit("no Kubernetes control-plane binaries (scripts/provide-kube.sh)")
    sys.path.insert(0, str(REPO / "tests"))
    from test_kube_real_native import PLAIN  # type: ignore[import-not-found]

    results: dict[str, Any] = {"period_s": PERIOD_S, "replicas": replicas, "rounds": rounds, "runner": True}
    for mode in ("exec", "condition"):
        lags: list[float] = []
        durations: list[float] = []
        with tempfile.TemporaryDirectory(prefix="katalog-gate-modes-runner-") as tmp, \
                KatalogCluster(binaries, provide_consul(), Path(tmp)) as cluster:
            kubectl = cluster.control_plane.kubectl
            cluster.apply_example("rbac-condition.yaml")
            plain = json.loads(json.dumps(PLAIN))
            plain["spec"]["replicas"] = replicas
            kubectl("apply", "-f", "-", stdin=yaml.safe_dump(plain))
            cluster.runner.wait_for_pods("default", replicas, ready=True, timeout=180)
            live = kubectl("get", "deploy", "web", "-o", "yaml").stdout
            flags = ["--gate", "condition"] if mode == "condition" else []
            injected = subprocess.run([SIDECAR, "inject", "--services", "web:http", "--token-secret",
                                       "katalog-consul-token", *flags, "-"], input=live, capture_output=True,
                                      text=True, timeout=60, check=True).stdout
            kubectl("apply", "-f", "-", stdin=injected)
            kubectl("rollout", "status", "deploy/web", "--timeout=300s", timeout=320)
            for r in range(rounds):
                seen: dict[str, float] = {}
                stop = threading.Event()

                def sample(seen: dict[str, float] = seen, stop: threading.Event = stop) -> None:
                    while not stop.is_set():
                        for pod in cluster.runner.running("default"):
                            if pod.name not in seen and not pod.terminating and pod.ready():
                                seen[pod.name] = time.time()
                        stop.wait(0.02)

                before = {p.name for p in cluster.runner.running("default")}
                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                began = time.monotonic()
                kubectl("rollout", "restart", "deploy/web")
                kubectl("rollout", "status", "deploy/web", "--timeout=300s", timeout=320)
                durations.append(time.monotonic() - began)
                stop.set()
                sampler.join(5)
                for pod in cluster.runner.running("default"):
                    if pod.name in before or pod.name not in seen or pod.terminating:
                        continue
                    try:
                        status = json.loads(Path(pod.env("katalog-sidecar")["KATALOG_STATUS_FILE"]).read_text())
                    except (OSError, ValueError, KeyError):
                        continue
                    if status.get("phase") == "confirmed":
                        lags.append((seen[pod.name] - float(status["since"])) * 1000)
                log(f"runner, {mode} round {r}: rollout {durations[-1]:.2f}s; confirmed->Ready so far "
                    + ", ".join(f"{x:.0f}" for x in lags) + " ms")
        results[mode] = {"confirmed_to_ready_ms": summarize(lags), "rollout_s": summarize(durations),
                         "samples_ms": lags, "rollouts_s": durations}
    return results


def measure_on_nodes(rounds: int, replicas: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The same two figures on real nodes (tests/katalog_nodes.py: kubelet + containerd, the
    project's image, one node per replica plus one for the surge, each with its client agent):
    the classic example (exec gate) and the condition example applied through the machine's
    overlay, `kubectl rollout restart` timed to `kubectl rollout status`; confirmed -> Ready per
    new pod, Ready as the real kubelet reports it (pod condition, sampled every 20 ms), confirmed
    from the sidecar's status file read in its container (`kubectl exec ... cat`).
    bench/condition_trace.py breaks the condition's figure down stage by stage."""
    sys.path.insert(0, str(REPO / "tests"))
    from katalog_nodes import NodeCluster, pod_ready  # type: ignore[import-not-found]
    from kube_node import find_node_binaries  # type: ignore[import-not-found]

    from bench.harness import provide_consul, provide_kube
    from bench.run import summarize

    node_binaries = find_node_binaries()
    examples = {"exec": ("rbac.yaml", "deployment-classic-sidecar.yaml"),
                "condition": ("rbac-condition.yaml", "deployment-condition-gate.yaml")}
    results: dict[str, Any] = {"period_s": PERIOD_S, "replicas": replicas, "rounds": rounds, "real_node": True}
    for mode in ("exec", "condition"):
        lags: list[float] = []
        durations: list[float] = []
        with tempfile.TemporaryDirectory(prefix="katalog-gate-modes-node-") as tmp, \
                NodeCluster(provide_kube(), node_binaries, provide_consul(), Path(tmp), nodes=replicas + 1) as cluster:
            results["kubelet"] = cluster.versions()
            kubectl = cluster.control_plane.kubectl
            docs = [d for name in examples[mode] for d in cluster.example_docs(name)]
            for doc in docs:
                if doc["kind"] == "Deployment":
                    doc["spec"]["replicas"] = replicas
            cluster.apply(*docs)
            kubectl("rollout", "status", "deploy/web", "--timeout=300s", timeout=320)
            for r in range(rounds):
                seen: dict[str, float] = {}
                stop = threading.Event()

                def sample(seen: dict[str, float] = seen, stop: threading.Event = stop) -> None:
                    while not stop.is_set():
                        try:
                            pods = cluster.pods("default", "app.kubernetes.io/name=web")
                        except Exception:  # noqa: BLE001 - a busy API: next sample
                            pods = []
                        for pod in pods:
                            name = pod["metadata"]["name"]
                            if name not in seen and not pod["metadata"].get("deletionTimestamp") and pod_ready(pod):
                                seen[name] = time.time()
                        stop.wait(0.02)

                before = {p["metadata"]["name"] for p in cluster.pods("default")}
                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                began = time.monotonic()
                kubectl("rollout", "restart", "deploy/web")
                kubectl("rollout", "status", "deploy/web", "--timeout=300s", timeout=320)
                durations.append(time.monotonic() - began)
                stop.set()
                sampler.join(5)
                for pod in cluster.pods("default", "app.kubernetes.io/name=web"):
                    name = pod["metadata"]["name"]
                    if name in before or name not in seen or pod["metadata"].get("deletionTimestamp"):
                        continue
                    out = kubectl("exec", name, "-c", "katalog-sidecar", "--", "cat", "/run/katalog/status.json",
                                  check=False)
                    try:
                        status = json.loads(out.stdout)
                    except ValueError:
                        continue
                    if status.get("phase") == "confirmed":
                        lags.append((seen[name] - float(status["since"])) * 1000)
                log(f"real node, {mode} round {r}: rollout {durations[-1]:.2f}s; confirmed->Ready so far "
                    + ", ".join(f"{x:.0f}" for x in lags) + " ms")
        results[mode] = {"confirmed_to_ready_ms": summarize(lags), "rollout_s": summarize(durations),
                         "samples_ms": lags, "rollouts_s": durations}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rolling updates per mode")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--runner", action="store_true",
                        help="through the real control plane and the pod runner (scripts/provide-kube.sh)")
    parser.add_argument("--node", action="store_true",
                        help="on real nodes: kubelet + containerd (root; scripts/node.sh provides them)")
    args = parser.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    how = measure_on_nodes if args.node else measure_with_runner if args.runner else measure
    results = how(args.rounds, args.replicas, log=log)
    print(json.dumps({k: ({kk: vv for kk, vv in v.items() if kk != "samples_ms"} if isinstance(v, dict) else v)
                      for k, v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
