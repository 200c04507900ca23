"""A Deployment-style rolling update, driven through the fake Kubernetes API against a real
Consul server + client pair, sampling the catalog's healthy instances throughout.

Like the Deployment controller with maxSurge 1 / maxUnavailable 0: create a new pod, wait
until it is *available* (its app is ready and the real `readiness-gate` exits 0), then
delete one old pod (deletionTimestamp, then SIGTERM as kubelet sends it), and repeat.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench.harness import FakeKube, PodSidecar, ServerAndClient, instance_status

SERVICE = "web"


@dataclass
class Sample:
    t: float
    healthy: int | None  # passing instances in the catalog; None while it cannot be read
    agent_healthy: int | None  # passing instances in the client agent's own view; None: no answer in time
    created: int
    deleted: int
    servers_up: bool


@dataclass
class RolloutResult:
    samples: list[Sample] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    completed: bool = False
    duration: float = 0.0
    final_ids: set[str] = field(default_factory=set)
    new_ids: set[str] = field(default_factory=set)

    @property
    def min_healthy(self) -> int:
        return min(s.healthy for s in self.samples if s.healthy is not None)

    def to_json(self) -> dict[str, Any]:
        return {"samples": [asdict(s) for s in self.samples], "events": self.events, "completed": self.completed,
                "duration": self.duration, "min_healthy": self.min_healthy, "final_ids": sorted(self.final_ids)}


class _Sampler(threading.Thread):
    def __init__(self, pair: ServerAndClient, result: RolloutResult, started: float, state: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.pair, self.result, self.started, self.state = pair, result, started, state
        self.stop_event = threading.Event()
        self.session = requests.Session()

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

    def run(self) -> None:
        while not self.stop_event.is_set():
            up = self.state["servers_up"]
            self.result.samples.append(Sample(
                t=round(time.monotonic() - self.started, 3),
                healthy=self._passing(self.pair.server.http) if up else None,
                agent_healthy=self._agent_passing(),
                created=self.state["created"], deleted=self.state["deleted"], servers_up=up))
            self.stop_event.wait(0.05)


def run_rollout(pair: ServerAndClient, kube: FakeKube, workdir: Path, replicas: int = 3,
                servers_down_for: float | None = None, available_timeout: float = 60.0) -> RolloutResult:
    """Runs the rollout; with `servers_down_for`, the Consul server is stopped before it starts
    and brought back that many seconds later."""
    result = RolloutResult()
    started = time.monotonic()
    state: dict[str, Any] = {"servers_up": True, "created": 0, "deleted": 0}
    pods: list[PodSidecar] = []

    def event(text: str) -> None:
        result.events.append((round(time.monotonic() - started, 3), text))

    def new_pod(name: str, ip: str) -> PodSidecar:
        pod = PodSidecar(workdir, pair.client, kube, name, namespace="prod", service=SERVICE, pod_ip=ip,
                         KATALOG_HEARTBEAT_INTERVAL="1s", KATALOG_CONFIRM_WAIT="2s")
        pod.create_pod(ready=True)
        pod.start()
        pods.append(pod)
        state["created"] += 1
        event(f"created {name}")
        return pod

    sampler = _Sampler(pair, result, started, state)
    timer: threading.Timer | None = None
    try:
        old = [new_pod(f"web-old-{i}", f"10.1.0.{10 + i}") for i in range(replicas)]
        for pod in old:
            pod.wait_gate(passing=True, timeout=30)
        event("old replicas available")
        sampler.start()
        if servers_down_for is not None:
            pair.server.stop()
            state["servers_up"] = False
            event("Consul server stopped")
            # Flag it up before starting: nothing may depend on the server until start() begins,
            # so a sample flagged "down" can never see the consequences of its return.
            timer = threading.Timer(servers_down_for, lambda: (state.update(servers_up=True),
                                                               event("Consul server starting"),
                                                               pair.server.start()))
            timer.start()
        rollout_started = time.monotonic()
        for i in range(replicas):
            pod = new_pod(f"web-new-{i}", f"10.2.0.{10 + i}")
            result.new_ids.add(pod.service_id)
            pod.wait_gate(passing=True, timeout=available_timeout)  # available: app ready and gate open
            event(f"web-new-{i} available")
            victim = old[i]
            kube.set_deletion_timestamp("prod", victim.name, grace_seconds=30)
            code = victim.terminate(timeout=30)  # kubelet: SIGTERM to every container
            kube.delete_pod("prod", victim.name)
            state["deleted"] += 1
            event(f"deleted {victim.name} (sidecar exit {code})")
        result.duration = time.monotonic() - rollout_started
        result.completed = True
        time.sleep(0.3)
    finally:
        if timer is not None:
            timer.cancel()  # a failed rollout must not start a server after its fixture stopped
            timer.join(timeout=60)
        sampler.stop_event.set()
        sampler.join(timeout=5)
        for pod in pods:
            pod.kill()
    entries = requests.get(f"{pair.server.http}/v1/health/service/{SERVICE}", timeout=5).json()
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
        ax.step(t, [s.created - s.deleted for s in result.samples], where="post", color="tab:blue", alpha=0.6,
                label="pods existing")
        down = [s.t for s in result.samples if not s.servers_up]
        if down:
            ax.axvspan(min(down) - t0, max(down) - t0, color="tab:red", alpha=0.12, label="Consul server down")
        ax.set_ylim(0, 5.5)
        ax.set_xlim(left=0)
        ax.set_ylabel("instances / pods")
        ax.set_title(f"{title}: min passing {result.min_healthy}, rollout took {result.duration:.1f} s")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    axes[-1, 0].set_xlabel("seconds since the rollout started")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


SCENARIOS = (("Consul healthy", None), ("Consul server down for the first 8 s", 8.0))


def run_scenarios(binary: str, log: Callable[[str], None] = print) -> dict[str, RolloutResult]:
    """Both rollouts, each on a fresh server + client pair and fake API."""
    import tempfile

    results: dict[str, RolloutResult] = {}
    for title, down_for in SCENARIOS:
        with tempfile.TemporaryDirectory(prefix="katalog-rollout-") as tmp:
            pair = ServerAndClient(binary, Path(tmp)).start()
            try:
                with FakeKube(Path(tmp) / "token") as kube:
                    results[title] = run_rollout(pair, kube, Path(tmp), servers_down_for=down_for)
            finally:
                pair.stop()
        r = results[title]
        log(f"rollout, {title}: completed={r.completed} min passing={r.min_healthy} duration={r.duration:.2f}s "
            f"end state = new pods only: {r.final_ids == r.new_ids}")
    return results


def main() -> int:
    """Runs both rollout scenarios against real Consul agents and renders docs/img/rollout.png."""
    from bench.harness import REPO, provide_consul

    results = run_scenarios(provide_consul())
    for (_title, down_for), result in zip(SCENARIOS, results.values(), strict=True):
        save(result, REPO / "bench" / "out" / f"rollout-{'healthy' if down_for is None else 'servers-down'}.json")
    render(results, REPO / "docs" / "img" / "rollout.png")
    print("chart: docs/img/rollout.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
