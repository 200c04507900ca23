"""A rolling update decided by the real Deployment controller, against real Consul agents,
sampling the catalog's passing instances throughout.

The cluster is `tests/katalog_cluster.py`: etcd, kube-apiserver and kube-controller-manager
built from source, a Consul server plus the node's client agent, and the pod runner standing
in for kubelet. `examples/rbac.yaml` and an example Deployment (3 replicas, maxSurge 1,
maxUnavailable 0) are applied unchanged with kubectl; `kubectl rollout restart` starts the
rollout. Nothing here decides which pod goes when: the controller does, from the pods' Ready
conditions, which come from the manifest's own probes (`readiness-gate` for the sidecar).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench.harness import REPO, ServerAndClient, instance_status

SERVICE = "web"
NAMESPACE = "default"
REPLICAS = 3


@dataclass
class Sample:
    t: float
    healthy: int | None  # passing instances in the catalog; None while it cannot be read
    agent_healthy: int | None  # passing instances in the client agent's own view; None: no answer in time
    created: int  # new pods created since the rollout started
    deleted: int  # old pods whose deletion the controller started
    servers_up: bool


@dataclass
class RolloutResult:
    samples: list[Sample] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    completed: bool = False
    duration: float = 0.0
    final_ids: set[str] = field(default_factory=set)
    new_ids: set[str] = field(default_factory=set)
    kube_version: str = ""

    @property
    def min_healthy(self) -> int:
        return min(s.healthy for s in self.samples if s.healthy is not None)

    def to_json(self) -> dict[str, Any]:
        return {"samples": [asdict(s) for s in self.samples], "events": self.events, "completed": self.completed,
                "duration": self.duration, "min_healthy": self.min_healthy, "final_ids": sorted(self.final_ids),
                "kube_version": self.kube_version}


def _sid(pod: Any) -> str:
    return f"{pod.namespace}:{pod.name}:{SERVICE}"


class _Sampler(threading.Thread):
    """Samples Consul and the pods 10 times a second, and logs what changed as events."""

    def __init__(self, cluster: Any, result: RolloutResult, started: float, state: dict[str, Any],
                 old_uids: set[str]) -> None:
        super().__init__(daemon=True)
        self.cluster, self.result, self.started, self.state, self.old_uids = cluster, result, started, state, old_uids
        self.pair: ServerAndClient = cluster.consul
        self.stop_event = threading.Event()
        self.session = requests.Session()
        self.seen: dict[str, str] = {}  # uid -> last phase we logged

    def event(self, text: str) -> None:
        self.result.events.append((round(time.monotonic() - self.started, 3), text))

    def _passing(self, url: str) -> int | None:
        try:
            entries = self.session.get(f"{url}/v1/health/service/{SERVICE}", timeout=0.5).json()
        except (requests.RequestException, ValueError):
            return None
        if not isinstance(entries, list):
            return None
        return sum(1 for e in entries if all(c["Status"] == "passing" for c in e["Checks"]))

    def _agent_passing(self) -> int | None:
        try:
            checks = self.session.get(f"{self.pair.client.http}/v1/agent/checks", timeout=0.5).json()
        except (requests.RequestException, ValueError):
            return None  # a sample we could not take is a gap, not "zero passing"
        by_service: dict[str, bool] = {}
        for check in checks.values():
            sid = check.get("ServiceID")
            if sid:
                by_service[sid] = by_service.get(sid, True) and check["Status"] == "passing"
        return sum(by_service.values())

    def _pods(self) -> tuple[int, int]:
        runner = self.cluster.runner
        with runner.lock:
            pods = list(runner.pods.values()) + list(runner.finished)
        created = deleted = 0
        for pod in pods:
            phase = "terminated" if pod.terminated.is_set() else "terminating" if pod.terminating else \
                "ready" if pod.ready() else "started"
            if pod.uid in self.old_uids:
                deleted += pod.terminating
            else:
                created += 1
            if self.seen.get(pod.uid) != phase:
                self.seen[pod.uid] = phase
                self.event(f"{'old' if pod.uid in self.old_uids else 'new'} pod {pod.name} {phase}")
        return created, deleted

    def run(self) -> None:
        while not self.stop_event.is_set():
            up = self.state["servers_up"]
            created, deleted = self._pods()
            self.result.samples.append(Sample(
                t=round(time.monotonic() - self.started, 3),
                healthy=self._passing(self.pair.server.http) if up else None,
                agent_healthy=self._agent_passing(), created=created, deleted=deleted, servers_up=up))
            self.stop_event.wait(0.1)


def run_rollout(cluster: Any, example: str = "deployment-classic-sidecar.yaml", servers_down_for: float | None = None,
                timeout: float = 240.0) -> RolloutResult:
    """Applies the example, waits until it is available, then restarts the Deployment. With
    `servers_down_for`, the Consul server is stopped before the rollout starts and brought back
    that many seconds later. Returns when the controller has finished and every old pod is gone."""
    result = RolloutResult(kube_version=cluster.control_plane.version())
    cp, runner = cluster.control_plane, cluster.runner
    cluster.apply_example("rbac.yaml", example, namespace=NAMESPACE)
    old = runner.wait_for_pods(NAMESPACE, REPLICAS, ready=True, timeout=180)
    cp.kubectl("rollout", "status", "deployment/web", "--timeout=120s", timeout=130)
    old_uids = {p.uid for p in old}
    started = time.monotonic()
    state: dict[str, Any] = {"servers_up": True}
    sampler = _Sampler(cluster, result, started, state, old_uids)
    timer: threading.Timer | None = None
    try:
        sampler.event("old replicas available")
        sampler.start()
        if servers_down_for is not None:
            cluster.consul.server.stop()
            state["servers_up"] = False
            sampler.event("Consul server stopped")
            # Flag it up before starting: a sample flagged "down" never sees its return.
            timer = threading.Timer(servers_down_for, lambda: (state.update(servers_up=True),
                                                               sampler.event("Consul server starting"),
                                                               cluster.consul.server.start()))
            timer.start()
        rollout_started = time.monotonic()
        cp.kubectl("rollout", "restart", "deployment/web")
        sampler.event("kubectl rollout restart")
        status = cp.kubectl("rollout", "status", "deployment/web", f"--timeout={int(timeout)}s", check=False,
                            timeout=timeout + 10)
        sampler.event(f"kubectl rollout status exited {status.returncode}")
        deadline = time.monotonic() + 60
        while any(not p.terminated.is_set() for p in old) and time.monotonic() < deadline:
            time.sleep(0.1)
        result.duration = time.monotonic() - rollout_started
        result.completed = status.returncode == 0 and all(p.terminated.is_set() for p in old)
        time.sleep(0.3)
    except subprocess.TimeoutExpired:
        result.completed = False
    finally:
        if timer is not None:
            timer.cancel()  # a failed rollout must not start a server after its fixture stopped
            timer.join(timeout=60)
        sampler.stop_event.set()
        sampler.join(timeout=5)
    result.new_ids = {_sid(p) for p in runner.running(NAMESPACE) if p.uid not in old_uids and not p.terminating}
    entries = requests.get(f"{cluster.consul.server.http}/v1/health/service/{SERVICE}", timeout=5).json()
    result.final_ids = {e["Service"]["ID"] for e in entries if instance_status(entries, e["Service"]["ID"]) == "passing"}
    return result


def save(result: RolloutResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=1))


def render(results: dict[str, RolloutResult], path: Path) -> None:
    """The rollout timeline chart the README embeds (matplotlib: a bench-only dependency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(9, 3.2 * len(results)), squeeze=False)
    for ax, (title, result) in zip(axes[:, 0], results.items(), strict=True):
        t0 = result.samples[0].t  # the rollout starts when the old replicas are available
        t = [s.t - t0 for s in result.samples]
        ax.step(t, [s.healthy if s.healthy is not None else float("nan") for s in result.samples], where="post",
                label="passing in the catalog (servers)", color="tab:green", linewidth=2)
        ax.step(t, [s.agent_healthy if s.agent_healthy is not None else float("nan") for s in result.samples],
                where="post", linestyle="--", color="tab:olive",
                label="passing in the client agent's view")
        ax.step(t, [REPLICAS + s.created - s.deleted for s in result.samples], where="post", color="tab:blue",
                alpha=0.6, label="pods not terminating")
        down = [s.t for s in result.samples if not s.servers_up]
        if down:
            ax.axvspan(min(down) - t0, max(down) - t0, color="tab:red", alpha=0.12, label="Consul server down")
        ax.set_ylim(0, 5.5)
        ax.set_xlim(left=0)
        ax.set_ylabel("instances / pods")
        ax.set_title(f"{title}: min passing {result.min_healthy}, rollout took {result.duration:.1f} s")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    kube = next(iter(results.values())).kube_version
    axes[-1, 0].set_xlabel(f"seconds since the rollout started (Deployment controller of kube-controller-manager "
                           f"{kube})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


SERVERS_DOWN_FOR = 15.0
SCENARIOS = (("Consul healthy", None), (f"Consul server down for the first {SERVERS_DOWN_FOR:g} s", SERVERS_DOWN_FOR))


def run_scenarios(binary: str, log: Callable[[str], None] = print) -> dict[str, RolloutResult]:
    """Both rollouts, each on a fresh control plane and Consul server + client pair."""
    import tempfile

    from katalog_cluster import KatalogCluster

    from bench.harness import provide_kube

    kube = provide_kube()
    results: dict[str, RolloutResult] = {}
    for title, down_for in SCENARIOS:
        with tempfile.TemporaryDirectory(prefix="katalog-rollout-") as tmp, \
                KatalogCluster(kube, binary, Path(tmp)) as cluster:
            results[title] = run_rollout(cluster, servers_down_for=down_for)
        r = results[title]
        log(f"rollout, {title}: completed={r.completed} min passing={r.min_healthy} duration={r.duration:.2f}s "
            f"end state = new pods only: {r.final_ids == r.new_ids}")
    return results


def load(path: Path) -> RolloutResult:
    data = json.loads(path.read_text())
    return RolloutResult(samples=[Sample(**s) for s in data["samples"]], events=[tuple(e) for e in data["events"]],
                         completed=data["completed"], duration=data["duration"], final_ids=set(data["final_ids"]),
                         kube_version=data.get("kube_version", ""))


def main(argv: list[str]) -> int:
    """Runs both rollout scenarios and renders docs/img/rollout.png (`--render-only`: from the
    samples the last run saved in bench/out/)."""
    from bench.harness import provide_consul

    paths = [REPO / "bench" / "out" / f"rollout-{'healthy' if down is None else 'servers-down'}.json"
             for _title, down in SCENARIOS]
    if "--render-only" in argv:
        results = {title: load(path) for (title, _down), path in zip(SCENARIOS, paths, strict=True)}
    else:
        results = run_scenarios(provide_consul())
        for result, path in zip(results.values(), paths, strict=True):
            save(result, path)
    render(results, REPO / "docs" / "img" / "rollout.png")
    print("chart: docs/img/rollout.png")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
