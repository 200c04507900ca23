"""A rolling update decided by the real Deployment controller, against real Consul agents,
sampling the catalog's passing instances throughout.

Two clusters run it (both from tests/): `katalog_nodes.NodeCluster`, real nodes (containerd +
kubelet, one per loopback address, each with its own Consul client agent) with
kube-scheduler; or `katalog_cluster.KatalogCluster`, the pod runner standing in for the
kubelet on one node with one client agent. The examples (`examples/rbac.yaml` and an example
Deployment: 3 replicas, maxSurge 1, maxUnavailable 0) are applied with kubectl (on real nodes
through tests/node_overlay.py: images and hostNetwork); `kubectl rollout restart` starts the
rollout. Nothing here decides which pod goes when: the controller does, from the pods' Ready
conditions, which come from the manifest's own probes (`readiness-gate` for the sidecar).

What a sample counts, read from the Consul servers' catalog (`/v1/health/service/web`):
- `healthy`: instances whose checks are *all* passing (the service's and its node's
  `serfHealth`), what a Consul client resolving `web` gets;
- `service_healthy`: instances whose *service* checks are passing (the sidecar's), whatever
  Consul's failure detector says about their node;
- `nodes_failing`: nodes whose node checks (serfHealth) are not passing at that moment.
Pods are read from the API server (the same for the pod runner and real kubelets): `created`
counts new pods, `deleted` old pods whose deletion started (or that are gone).

The gate wait (`gate_wait`): once the rollout is done, each new pod's sidecar is scraped at its
metrics port for `katalog_gate_wait_seconds` (app seen ready -> gate passes, one observation
per pod here). p50/p99 are `histogram_quantile` over the buckets summed across the new pods,
what an operator's `histogram_quantile(q, sum by (le) (increase(...)))` shows on a dashboard
(so bounded by the buckets); each pod's own wait (`_sum` of its single observation) is kept
beside them.
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

from bench.harness import REPO, instance_status

SERVICE = "web"
NAMESPACE = "default"
REPLICAS = 3
SELECTOR = "app.kubernetes.io/name=web"


@dataclass
class Sample:
    t: float
    healthy: int | None  # instances with every check passing in the catalog; None while it cannot be read
    agent_healthy: int | None  # passing instances in the client agents' own views; None: no answer in time
    created: int  # new pods created since the rollout started
    deleted: int  # old pods whose deletion the controller started
    servers_up: bool
    service_healthy: int | None = None  # instances whose service checks pass (node checks aside)
    nodes_failing: list[str] = field(default_factory=list)  # nodes whose serfHealth is not passing


@dataclass
class RolloutResult:
    samples: list[Sample] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    completed: bool = False
    duration: float = 0.0
    final_ids: set[str] = field(default_factory=set)
    new_ids: set[str] = field(default_factory=set)
    kube_version: str = ""
    kubelet: str = ""  # who ran the pods: "kubelet v1.34.4, containerd 1.6.20" or "pod runner"
    gate_wait: dict[str, Any] = field(default_factory=dict)  # gate_waits(): the new pods' katalog_gate_wait_seconds

    @property
    def min_healthy(self) -> int:
        return min(s.healthy for s in self.samples if s.healthy is not None)

    @property
    def min_service_healthy(self) -> int:
        return min(s.service_healthy for s in self.samples if s.service_healthy is not None)

    def to_json(self) -> dict[str, Any]:
        return {"samples": [asdict(s) for s in self.samples], "events": self.events, "completed": self.completed,
                "duration": self.duration, "min_healthy": self.min_healthy,
                "min_service_healthy": self.min_service_healthy, "final_ids": sorted(self.final_ids),
                "kube_version": self.kube_version, "kubelet": self.kubelet, "gate_wait": self.gate_wait}


def short_samples(result: RolloutResult) -> tuple[list[Sample], list[Sample]]:
    """Samples where the catalog listed fewer than `REPLICAS` instances with every check
    passing: (those explained by a node's failing serfHealth, those not explained). The
    headline claims the second list is empty and `min_service_healthy >= REPLICAS`."""
    short = [s for s in result.samples if s.healthy is not None and s.healthy < REPLICAS]
    return [s for s in short if s.nodes_failing], [s for s in short if not s.nodes_failing]


def claim_violations(result: RolloutResult) -> list[str]:
    """What breaks the headline's claim in `result` (empty: it held). Prints the samples a
    node's failing serfHealth explains, so a run shows them."""
    if not any(s.healthy is not None for s in result.samples):
        return ["the catalog was never read"]
    problems = []
    if result.min_service_healthy < REPLICAS:
        problems.append(f"service checks: only {result.min_service_healthy} passing at the minimum")
    node_faults, unexplained = short_samples(result)
    problems += [f"t={s.t}: {s.healthy} passing, no node failing" for s in unexplained]
    if node_faults:
        print(f"{len(node_faults)} samples with a node's serfHealth failing: "
              f"{[(s.t, s.healthy, s.nodes_failing) for s in node_faults[:5]]}")
    return problems


class Consul:
    """The Consul side of either cluster: its server and the client agents of its nodes."""

    def __init__(self, cluster: Any) -> None:
        if hasattr(cluster, "agents"):  # katalog_nodes.NodeCluster
            self.server, self.agents = cluster.server, list(cluster.agents.values())
        else:  # katalog_cluster.KatalogCluster: one node, one client agent
            self.server, self.agents = cluster.consul.server, [cluster.consul.client]


def who_ran_it(cluster: Any) -> str:
    if hasattr(cluster, "versions"):
        v = cluster.versions()
        return f"kubelet {v['kubelet']}, {v['runtime']}, runc {v['runc']}"
    return "pod runner (tests/pod_runner.py)"


def _pods(cluster: Any) -> list[dict[str, Any]]:
    return list(cluster.control_plane.api.get(f"/api/v1/namespaces/{NAMESPACE}/pods",
                                              labelSelector=SELECTOR, timeout=2.0)["items"])


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions") or [])


def _wait_ready_pods(cluster: Any, count: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        pods = [p for p in _pods(cluster) if not p["metadata"].get("deletionTimestamp") and _ready(p)]
        if len(pods) == count:
            return pods
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pods)} of {count} pods Ready after {timeout}s")
        time.sleep(0.2)


def _sid(pod: dict[str, Any]) -> str:
    return f"{pod['metadata']['namespace']}:{pod['metadata']['name']}:{SERVICE}"


GATE_WAIT = "katalog_gate_wait_seconds"


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets {le: count} (with +Inf): linear
    interpolation inside the bucket the rank falls in; the highest finite bound if it falls in
    +Inf. None without observations."""
    bounds = sorted(buckets)
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if le == float("inf"):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def _metrics_port(pod: dict[str, Any]) -> int:
    for container in pod["spec"].get("containers", []) + pod["spec"].get("initContainers", []):
        for port in container.get("ports") or []:
            if port.get("name") == "metrics":
                return int(port["containerPort"])
    return 9464  # KATALOG_METRICS_ADDR's default


def gate_waits(pods: list[dict[str, Any]]) -> dict[str, Any]:
    """`katalog_gate_wait_seconds` of these pods' sidecars, scraped from their /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    summed: dict[float, float] = {}
    per_pod: dict[str, float | None] = {}
    errors: dict[str, str] = {}
    for pod in pods:
        name = pod["metadata"]["name"]
        url = f"http://{(pod.get('status') or {}).get('podIP')}:{_metrics_port(pod)}/metrics"
        try:
            text = requests.get(url, timeout=3).text
        except requests.RequestException as exc:
            errors[name] = str(exc)
            continue
        count = total = 0.0
        for family in text_string_to_metric_families(text):
            if family.name != GATE_WAIT:
                continue
            for s in family.samples:
                if s.name == f"{GATE_WAIT}_bucket":
                    le = float(s.labels["le"])
                    summed[le] = summed.get(le, 0.0) + s.value
                elif s.name == f"{GATE_WAIT}_count":
                    count = s.value
                elif s.name == f"{GATE_WAIT}_sum":
                    total = s.value
        per_pod[name] = round(total, 3) if count == 1 else None  # exact only for a single observation
    observations = summed.get(float("inf"), 0.0)
    return {"source": f"histogram_quantile over {GATE_WAIT}_bucket summed across the new pods' sidecars",
            "p50": histogram_quantile(0.5, summed), "p99": histogram_quantile(0.99, summed),
            "observations": observations, "per_pod": per_pod, "errors": errors,
            "buckets": {str(k): v for k, v in sorted(summed.items())}}


class _Sampler(threading.Thread):
    """Samples Consul and the pods 10 times a second, and logs what changed as events."""

    def __init__(self, cluster: Any, result: RolloutResult, started: float, state: dict[str, Any],
                 old_uids: set[str]) -> None:
        super().__init__(daemon=True)
        self.cluster, self.result, self.started, self.state, self.old_uids = cluster, result, started, state, old_uids
        self.consul = Consul(cluster)
        self.stop_event = threading.Event()
        self.session = requests.Session()
        self.seen: dict[str, str] = {}  # uid -> last phase we logged
        self.names: dict[str, str] = {}  # uid -> pod name
        self.created = 0
        self.deleted: set[str] = set()

    def event(self, text: str) -> None:
        self.result.events.append((round(time.monotonic() - self.started, 3), text))

    def _catalog(self) -> tuple[int, int, list[str]] | None:
        try:
            entries = self.session.get(f"{self.consul.server.http}/v1/health/service/{SERVICE}", timeout=0.5).json()
        except (requests.RequestException, ValueError):
            return None
        if not isinstance(entries, list):
            return None  # e.g. "No cluster leader" while a server starts
        healthy = service_healthy = 0
        failing: set[str] = set()
        for entry in entries:
            service_checks = [c for c in entry["Checks"] if c.get("ServiceID")]
            node_checks = [c for c in entry["Checks"] if not c.get("ServiceID")]
            service_ok = all(c["Status"] == "passing" for c in service_checks)
            node_ok = all(c["Status"] == "passing" for c in node_checks)
            healthy += service_ok and node_ok
            service_healthy += service_ok
            if not node_ok:
                failing.add(entry["Node"]["Node"])
        return healthy, service_healthy, sorted(failing)

    def _agent_passing(self) -> int | None:
        total = 0
        for agent in self.consul.agents:
            try:
                checks = self.session.get(f"{agent.http}/v1/agent/checks", timeout=0.5).json()
            except (requests.RequestException, ValueError):
                return None  # a sample we could not take is a gap, not "zero passing"
            by_service: dict[str, bool] = {}
            for check in checks.values():
                sid = check.get("ServiceID")
                if sid:
                    by_service[sid] = by_service.get(sid, True) and check["Status"] == "passing"
            total += sum(by_service.values())
        return total

    def _pods(self) -> tuple[int, int] | None:
        try:
            pods = _pods(self.cluster)
        except (requests.RequestException, ValueError, KeyError, OSError):
            return None
        present = set()
        for pod in pods:
            uid = pod["metadata"]["uid"]
            present.add(uid)
            self.names[uid] = pod["metadata"]["name"]
            phase = "terminating" if pod["metadata"].get("deletionTimestamp") else \
                "ready" if _ready(pod) else "started" if (pod.get("status") or {}).get("podIP") else "pending"
            if uid in self.old_uids and phase == "terminating":
                self.deleted.add(uid)
            self._log(uid, phase)
        for uid in list(self.seen):
            if uid not in present and self.seen[uid] != "terminated":
                if uid in self.old_uids:
                    self.deleted.add(uid)
                self._log(uid, "terminated")
        created = sum(1 for uid in self.seen if uid not in self.old_uids)
        return created, len(self.deleted)

    def _log(self, uid: str, phase: str) -> None:
        if self.seen.get(uid) != phase:
            self.seen[uid] = phase
            self.event(f"{'old' if uid in self.old_uids else 'new'} pod {self.names[uid]} {phase}")

    def run(self) -> None:
        last = (0, 0)
        while not self.stop_event.is_set():
            up = self.state["servers_up"]
            pods = self._pods()
            last = pods if pods is not None else last
            catalog = self._catalog() if up else None
            self.result.samples.append(Sample(
                t=round(time.monotonic() - self.started, 3),
                healthy=catalog[0] if catalog else None, agent_healthy=self._agent_passing(),
                created=last[0], deleted=last[1], servers_up=up,
                service_healthy=catalog[1] if catalog else None, nodes_failing=catalog[2] if catalog else []))
            self.stop_event.wait(0.1)


def run_rollout(cluster: Any, example: str = "deployment-classic-sidecar.yaml", servers_down_for: float | None = None,
                timeout: float = 240.0) -> RolloutResult:
    """Applies the example, waits until it is available, then restarts the Deployment. With
    `servers_down_for`, the Consul server is stopped before the rollout starts and brought back
    that many seconds later. Returns when the controller has finished and every old pod is gone."""
    result = RolloutResult(kube_version=cluster.control_plane.version(), kubelet=who_ran_it(cluster))
    cp, consul = cluster.control_plane, Consul(cluster)
    cluster.apply_example("rbac.yaml", example, namespace=NAMESPACE)
    old = _wait_ready_pods(cluster, REPLICAS, timeout=240)
    cp.kubectl("rollout", "status", "deployment/web", "--timeout=120s", timeout=130)
    old_uids = {p["metadata"]["uid"] for p in old}
    started = time.monotonic()
    state: dict[str, Any] = {"servers_up": True}
    sampler = _Sampler(cluster, result, started, state, old_uids)
    timer: threading.Timer | None = None

    def old_gone() -> bool:
        return not any(p["metadata"]["uid"] in old_uids for p in _pods(cluster))

    try:
        sampler.event("old replicas available")
        sampler.start()
        if servers_down_for is not None:
            consul.server.stop()
            state["servers_up"] = False
            sampler.event("Consul server stopped")
            # Flag it up before starting: a sample flagged "down" never sees its return.
            timer = threading.Timer(servers_down_for, lambda: (state.update(servers_up=True),
                                                               sampler.event("Consul server starting"),
                                                               consul.server.start()))
            timer.start()
        rollout_started = time.monotonic()
        cp.kubectl("rollout", "restart", "deployment/web")
        sampler.event("kubectl rollout restart")
        status = cp.kubectl("rollout", "status", "deployment/web", f"--timeout={int(timeout)}s", check=False,
                            timeout=timeout + 10)
        sampler.event(f"kubectl rollout status exited {status.returncode}")
        deadline = time.monotonic() + 60
        while not old_gone() and time.monotonic() < deadline:
            time.sleep(0.1)
        result.duration = time.monotonic() - rollout_started
        result.completed = status.returncode == 0 and old_gone()
        time.sleep(0.3)
    except subprocess.TimeoutExpired:
        result.completed = False
    finally:
        if timer is not None:
            timer.cancel()  # a failed rollout must not start a server after its fixture stopped
            timer.join(timeout=60)
        sampler.stop_event.set()
        sampler.join(timeout=5)
    new_pods = [p for p in _pods(cluster) if p["metadata"]["uid"] not in old_uids
                and not p["metadata"].get("deletionTimestamp")]
    result.new_ids = {_sid(p) for p in new_pods}
    result.gate_wait = gate_waits(new_pods)
    entries = requests.get(f"{consul.server.http}/v1/health/service/{SERVICE}", timeout=5).json()
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
                label="passing in the client agents' views")
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
    first = next(iter(results.values()))
    axes[-1, 0].set_xlabel(f"seconds since the rollout started (Deployment controller of kube-controller-manager "
                           f"{first.kube_version};\npods run by {first.kubelet or 'the pod runner'})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


SERVERS_DOWN_FOR = 15.0
SCENARIOS = (("Consul healthy", None), (f"Consul server down for the first {SERVERS_DOWN_FOR:g} s", SERVERS_DOWN_FOR))


NODES = REPLICAS + 1  # hostNetwork pods with ports: one per node, and maxSurge 1 needs a spare


def run_scenarios(binary: str, log: Callable[[str], None] = print, real_node: bool | None = None
                  ) -> dict[str, RolloutResult]:
    """Both rollouts, each on a fresh cluster: real nodes where this machine can run them
    (`real_node=None`: decide; True: must), else the pod runner (said in one line)."""
    import tempfile

    from bench.harness import provide_kube

    kube = provide_kube()
    node_binaries = None
    if real_node is not False:
        from kube_node import NodeUnavailable, find_node_binaries

        try:
            node_binaries = find_node_binaries()
        except NodeUnavailable as exc:
            if real_node:
                raise
            log(f"rollout: no real node here ({exc}); the pod runner runs the pods")
    results: dict[str, RolloutResult] = {}
    for title, down_for in SCENARIOS:
        with tempfile.TemporaryDirectory(prefix="katalog-rollout-") as tmp:
            if node_binaries is not None:
                from katalog_nodes import NodeCluster

                cluster: Any = NodeCluster(kube, node_binaries, binary, Path(tmp), nodes=NODES)
            else:
                from katalog_cluster import KatalogCluster

                cluster = KatalogCluster(kube, binary, Path(tmp))
            with cluster:
                results[title] = run_rollout(cluster, servers_down_for=down_for)
        r = results[title]
        gw = r.gate_wait
        log(f"rollout, {title} ({r.kubelet}): completed={r.completed} min passing={r.min_healthy} "
            f"(service checks: {r.min_service_healthy}) duration={r.duration:.2f}s "
            f"end state = new pods only: {r.final_ids == r.new_ids}; gate wait p50={gw.get('p50')} "
            f"p99={gw.get('p99')} s (histogram_quantile), per pod {gw.get('per_pod')}")
    return results


def load(path: Path) -> RolloutResult:
    data = json.loads(path.read_text())
    return RolloutResult(samples=[Sample(**s) for s in data["samples"]], events=[tuple(e) for e in data["events"]],
                         completed=data["completed"], duration=data["duration"], final_ids=set(data["final_ids"]),
                         kube_version=data.get("kube_version", ""), kubelet=data.get("kubelet", ""),
                         gate_wait=data.get("gate_wait", {}))


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
