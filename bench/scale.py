"""Consul at scale: what confirmation costs the servers during a rollout of N pods of one service.

One Consul server and several client agents (distinct node names, own loopback addresses).
N *virtual pods* of one service are spread over the clients; each runs the sidecar's own
classes in this process: its own `ConsulAgent` (its own connection, as a sidecar process has),
the product's `Confirmer` thread, `registration_payload`, and the product's `Drainer`. Only the
catalog reads differ between designs:

- `service`: today's (before this branch) confirmation read, a blocking
  `/v1/health/service/<name>` filtered to the instance: it wakes on every change of any
  instance of the service.
- `node`: the product's: `/v1/catalog/node-services/<node>` then `/v1/health/node/<node>`,
  filtered to the instance: a blocking read wakes only for changes on its node.
- `cached`: one shared watch per agent: an unfiltered `/v1/health/service/<name>?cached`
  through the agent's cache (one server query per agent and service; each sidecar filters
  the whole service locally).
- `none`: the baseline: the same writes (register, pushes, critical, deregister) and no
  read at all, so the others' cost of confirming is what they add to it.

The rollout: N old pods passing; then waves of ceil(surge x N) new pods, all at once or at a
fixed pace (pods ready per second). Each new pod writes to its agent (register, both checks
passing) and then starts confirming, in the sidecar's order; a wave's confirmations run
concurrently, and the previous wave's old pods drain at the same time (a Deployment creates
the next new pods as the old ones terminate). A confirmation's latency runs from its pod's
last status push to the confirmer's "confirmed".

Measured on the server: `consul.rpc.query` (blocking-query RPCs the servers answered; in
1.16 each answer re-evaluates the query at least once) and `consul.rpc.request` from Consul's
own telemetry, CPU seconds of the server process, and bytes it wrote (/proc/<pid>/io wchar:
sockets and its Raft log). On the client side: catalog reads answered (each one a server
query execution that returned).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from consul_agents import ServerAndClients, find_consul  # noqa: E402

from sidecar.config import Config, load_config  # noqa: E402
from sidecar.consul.api import ConsulAgent  # noqa: E402
from sidecar.consul.catalog_view import CatalogReads  # noqa: E402
from sidecar.consul.drain import Drainer  # noqa: E402
from sidecar.consul.watchers import Confirmer, Expectation  # noqa: E402
from sidecar.errors import ConsulError, ConsulNotFound  # noqa: E402
from sidecar.registration import (  # noqa: E402
    CRITICAL,
    LIVENESS_RUNNING,
    PASSING,
    TERMINATING,
    Instance,
    registration_payload,
)

SERVICE = "web"
DESIGNS = ("service", "node", "cached", "none")
Entries = list[dict[str, Any]]


# --- the designs' reads ----------------------------------------------------------------------

class ServiceScopedReads:
    """Before this branch: the instance read from /v1/health/service/<name>, filtered to its ID
    (the answer narrowed to this node here, so both designs accept exactly the same state)."""

    def __init__(self, agent: ConsulAgent, cached: bool = False) -> None:
        self._agent = agent
        self._cached = cached

    def node_of_service(self, service_id: str, timeout: float | None = None) -> str | None:
        return self._agent.node_of_service(service_id, timeout)

    def _read(self, node: str, name: str, service_id: str, index: int, wait: float,
              timeout: float | None) -> tuple[int, Entries]:
        # The shared watch: no filter (a filter would make one agent-cache entry per sidecar).
        params = [("cached", "")] if self._cached else [("filter", f'Service.ID == "{service_id}"')]
        read = self._agent.read_servers(f"/v1/health/service/{name}", params, index, wait, timeout)
        entries = [e for e in read.data or [] if isinstance(e, dict)]
        return read.index, [e for e in entries if (e.get("Node") or {}).get("Node") == node
                            and (e.get("Service") or {}).get("ID") == service_id]

    def node_instance(self, node: str, service_name: str, service_id: str, index: int = 0,
                      wait: float = 0.0, timeout: float | None = None) -> tuple[int, Entries]:
        index, entries = self._read(node, service_name, service_id, index, wait, timeout)
        return index, [e["Service"] for e in entries]

    def node_checks(self, node: str, service_name: str, service_id: str, index: int = 0,
                    wait: float = 0.0, timeout: float | None = None) -> tuple[int, Entries]:
        index, entries = self._read(node, service_name, service_id, index, wait, timeout)
        return index, [c for e in entries for c in e.get("Checks") or [] if c.get("ServiceID") == service_id]


class CountingReads:
    """Counts the server-bound reads a design makes (each one an answered query execution)."""

    def __init__(self, inner: CatalogReads, counter: Callable[[], None]) -> None:
        self._inner = inner
        self._count = counter

    def node_of_service(self, service_id: str, timeout: float | None = None) -> str | None:
        return self._inner.node_of_service(service_id, timeout)  # agent-local: not counted

    def node_instance(self, node: str, service_name: str, service_id: str, index: int = 0,
                      wait: float = 0.0, timeout: float | None = None) -> tuple[int, Entries]:
        self._count()
        return self._inner.node_instance(node, service_name, service_id, index, wait, timeout)

    def node_checks(self, node: str, service_name: str, service_id: str, index: int = 0,
                    wait: float = 0.0, timeout: float | None = None) -> tuple[int, Entries]:
        self._count()
        return self._inner.node_checks(node, service_name, service_id, index, wait, timeout)


def design_reads(design: str, agent: ConsulAgent) -> CatalogReads:
    if design in ("node", "none"):
        return agent  # the product's own reads
    if design == "service":
        return ServiceScopedReads(agent)
    if design == "cached":
        return ServiceScopedReads(agent, cached=True)
    raise ValueError(design)


# --- parameters ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScaleParams:
    sizes: tuple[int, ...] = (1, 100, 300, 1000, 2000)
    designs: tuple[str, ...] = ("service", "node")
    # Nodes grow with N at a fixed density, as in a real cluster (Kubernetes allows 110 pods a
    # node by default; 25 is a busy node). A node-scoped read wakes for its node's changes, so
    # its cost follows pods per node, not N: a fixed handful of nodes would make it grow with N.
    pods_per_node: int = 25
    min_clients: int = 2
    max_clients: int = 80  # ~40 MB each; beyond this the machine, not Consul, is measured
    surge: float = 0.25
    confirm_wait: float = 10.0
    # A run (one design, one N) still going after this is stopped and reported as such, and
    # larger N are not tried for that design: the machine cannot show more.
    budget_s: float = 240.0
    budget_per_pod_s: float = 0.3  # the harness's own pace grows with N: a run's budget too
    # Designs not run above a size: (design, largest N).
    max_n: tuple[tuple[str, int], ...] = (("cached", 300),)
    idle_s: float = 5.0
    # N = 1 is the latency baseline: one rollout gives one sample, so it is repeated.
    single_repeats: int = 20
    # False: every design gets a fresh server and agents. Shared agents carry one design's
    # leftovers into the next: after `service`, the agents keep each sidecar's streaming view
    # (a server subscription) open ~20 min, and the server keeps feeding it every change of the
    # next design's rollout. That made `node` look as costly as `service` in the first runs.
    shared_agents: bool = False
    # New pods' readiness, in pods per second (0: every pod of a wave at once). A burst makes
    # this 2-core machine, not Consul, the bottleneck: the driver, the server and the agents all
    # queue for the CPU, so latency measures the queue. A fixed pace keeps the change rate the
    # same at every N (as pods that start over a few seconds do), so latency vs N shows what
    # the design adds: each change wakes every confirmer waiting on the same query.
    pace: float = 0.0


SCALE_PRESETS: dict[str, ScaleParams] = {
    # A healthy rollout: 10 new pods ready a second across the cluster, old ones scaled down
    # as new ones become available. The latency target is read here.
    "full": ScaleParams(designs=("none", "service", "node", "cached"), pace=10.0),
    # The servers lag (or come back): every new pod of a wave at once, old ones drained per wave.
    # On this 2-core machine the burst queues for the CPU; the servers' work is what it shows.
    "burst": ScaleParams(sizes=(1, 100, 300, 1000), designs=("none", "service", "node", "cached"), pace=0.0,
                         max_n=(("cached", 100), ("service", 300))),
    "quick": ScaleParams(sizes=(1, 30, 100, 300), budget_s=120.0, idle_s=3.0, designs=("none", "service", "node", "cached"),
                         pace=10.0),
    # `bench.sh --all` (bench/all.py): every figure group in one invocation, so this group gets
    # minutes, not the hour `full` takes. The designs the targets read: `node` (the product) and
    # `none` (the same writes, no read: what confirmation adds); N up to 500 at `full`'s pace.
    # With N = 300 as well it took 618 s at load average 6-7.6 (N = 300 alone ~3 min).
    "all": ScaleParams(sizes=(1, 100, 500), designs=("none", "node"), pace=10.0),
    "smoke": ScaleParams(sizes=(8,), pods_per_node=4, budget_s=60.0, idle_s=0.5, designs=("none", "service", "node"),
                         pace=20.0),
}


# --- the world -------------------------------------------------------------------------------

def telemetry_args() -> list[str]:
    return ["-hcl", 'telemetry { prometheus_retention_time = "1h", disable_hostname = true }']


def quiet_args() -> list[str]:
    # Thousands of connections from one address; agents log at warn so logging is not measured.
    return ["-log-level=warn", "-hcl", "limits { http_max_conns_per_client = 8000, rpc_max_conns_per_client = 1000 }"]


def server_metrics(http: str) -> dict[str, float]:
    text = requests.get(f"{http}/v1/agent/metrics", params={"format": "prometheus"}, timeout=30).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        try:
            found[name] = float(value)
        except ValueError:
            continue
    return found


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_wchar(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


@dataclass
class ServerSnapshot:
    rpc_query: float
    rpc_request: float
    grpc_streams: float  # streaming-backend subscriptions opened (blocking /v1/health/service)
    open_streams: float  # ... and open now (the agents keep idle views ~20 min)
    cpu_s: float
    wchar: int
    clients_cpu_s: float

    @staticmethod
    def take(agents: ServerAndClients) -> ServerSnapshot:
        m = server_metrics(agents.server.http)
        pid = agents.server.proc.pid if agents.server.proc else 0
        clients = sum(proc_cpu_s(c.proc.pid) for c in agents.clients.values() if c.proc is not None)
        streams = sum(v for k, v in m.items() if k.startswith("consul_grpc_server_stream_count"))
        open_streams = sum(v for k, v in m.items() if k.startswith("consul_grpc_server_streams"))
        return ServerSnapshot(m.get("consul_rpc_query", 0.0), m.get("consul_rpc_request", 0.0), streams,
                              open_streams, proc_cpu_s(pid), proc_wchar(pid), clients)

    def minus(self, before: ServerSnapshot) -> dict[str, float]:
        return {"rpc_query": self.rpc_query - before.rpc_query, "rpc_request": self.rpc_request - before.rpc_request,
                "grpc_streams": self.grpc_streams - before.grpc_streams, "open_streams": self.open_streams,
                "cpu_s": round(self.cpu_s - before.cpu_s, 3), "bytes_written": self.wchar - before.wchar,
                "clients_cpu_s": round(self.clients_cpu_s - before.clients_cpu_s, 3)}


class VirtualPod:
    """One pod's sidecar, in this process: its own agent connection and the product's classes."""

    def __init__(self, index: int, version: str, node: str, config: Config, design: str, count: Callable[[], None]) -> None:
        uid = str(uuid.uuid4())
        self.instance = Instance(
            name=SERVICE, service_id=f"bench:web-{version}-{index}:{SERVICE}",
            address=f"10.{1 + index // 65000}.{(index // 250) % 250}.{index % 250 + 1}", port=8080, tags=(),
            meta=(("k8s-namespace", "bench"), ("k8s-pod", f"web-{version}-{index}"), ("k8s-pod-uid", uid),
                  ("managed-by", "katalog-sidecar")))
        self.node = node
        self.design = design
        self.config = config
        self.agent = ConsulAgent(config.consul)
        self.reads = CountingReads(design_reads(design, self.agent), count)
        self.confirmed = threading.Event()
        self.pushed_at = 0.0
        self.confirmed_at = 0.0
        self.confirmer: Confirmer | None = None

    @property
    def wanted(self) -> dict[str, dict[str, str]]:
        inst = self.instance
        return {inst.service_id: {inst.readiness_check_id: PASSING, inst.liveness_check_id: PASSING}}

    def start_confirming(self) -> None:
        """After the pod's writes, as the sidecar's loop posts its expectation after them."""
        if self.design == "none":
            return
        def post(kind: str, payload: Any) -> None:
            if kind == "confirmed" and not self.confirmed.is_set():
                self.confirmed_at = time.monotonic()
                self.confirmed.set()

        self.confirmer = Confirmer(self.agent, self.config.confirm_wait, post, reads=self.reads)
        self.confirmer.start()
        self.confirmer.expect(Expectation(1, (self.instance,), self.wanted))

    def register_and_push(self) -> None:
        inst = self.instance
        for attempt in range(5):  # as the sync loop would: retry a slow or refused agent
            try:
                self.agent.register_service(registration_payload(inst, self.config))
                self.agent.update_ttl_check(inst.liveness_check_id, PASSING, LIVENESS_RUNNING)
                self.agent.update_ttl_check(inst.readiness_check_id, PASSING, "app ready")
            except ConsulError:
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))
                continue
            self.pushed_at = time.monotonic()
            if self.design == "none":  # the baseline: the same writes, nothing read back
                self.confirmed_at = self.pushed_at
                self.confirmed.set()
            return

    def become_ready(self) -> None:
        self.register_and_push()
        self.start_confirming()

    @property
    def latency(self) -> float | None:
        """Last status push -> confirmed (0 when the confirmer saw it before the push returned)."""
        if not self.confirmed.is_set() or not self.pushed_at:
            return None
        return max(0.0, self.confirmed_at - self.pushed_at)

    def stop(self) -> None:
        if self.confirmer is not None:
            self.confirmer.stop()

    def drain(self, timeout: float = 60.0) -> bool:
        if self.design == "none":
            inst = self.instance
            for check_id in (inst.readiness_check_id, inst.liveness_check_id):
                self.agent.update_ttl_check(check_id, CRITICAL, TERMINATING)
            self.agent.deregister_service(inst.service_id)
            return True
        drainer = Drainer(self.agent, time.monotonic, time.monotonic() + timeout, reads=self.reads)
        return drainer.run((self.instance,)).complete


@dataclass
class RunResult:
    design: str
    n: int
    clients: int
    completed: bool
    duration_s: float
    server: dict[str, float]
    client_reads: int
    confirm_ms: list[float] = field(default_factory=list)
    drains_ok: int = 0
    drains: int = 0
    idle_server: dict[str, float] = field(default_factory=dict)
    baseline_server: dict[str, float] = field(default_factory=dict)
    note: str = ""
    driver_cpu_s: float = 0.0  # this process: the virtual pods' own work
    pace: float = 0.0


def _configs(agents: ServerAndClients, confirm_wait: float) -> dict[str, Config]:
    configs = {}
    for node, client in agents.clients.items():
        configs[node] = load_config({
            "POD_NAME": "bench", "POD_NAMESPACE": "bench", "POD_IP": "10.0.0.1", "KATALOG_SERVICES": f"{SERVICE}:8080",
            "KATALOG_READINESS_SOURCE": "fixed", "CONSUL_HTTP_ADDR": client.addr, "KATALOG_CHECK_TTL": "10m",
            "KATALOG_CONFIRM_WAIT": f"{confirm_wait}s",
            # The machine is shared and a full run loads it: a slow answer is not what is measured.
            "KATALOG_CONSUL_TIMEOUT": "30s"})
    return configs


def rollout(agents: ServerAndClients, design: str, n: int, params: ScaleParams,
            log: Callable[[str], None], idle: bool = True) -> RunResult:
    """One rollout of N pods; `idle`: also measure the idle windows before and after."""
    configs = _configs(agents, params.confirm_wait)
    nodes = sorted(configs)
    reads = [0]
    lock = threading.Lock()

    def count() -> None:
        with lock:
            reads[0] += 1

    def pods(version: str) -> list[VirtualPod]:
        return [VirtualPod(i, version, nodes[i % len(nodes)], configs[nodes[i % len(nodes)]], design, count)
                for i in range(n)]

    pool = ThreadPoolExecutor(max_workers=64)
    # What the agents cost the servers on their own (anti-entropy, coordinates): the baseline.
    idle_s = params.idle_s if idle else 0.0
    quiet = ServerSnapshot.take(agents)
    time.sleep(idle_s)
    baseline = ServerSnapshot.take(agents).minus(quiet)
    # The old version, passing (not measured).
    old = pods(f"{design}-old")
    list(pool.map(lambda p: p.register_and_push(), old))
    wave = max(1, math.ceil(n * params.surge))
    new = pods(f"{design}-new")
    drains: list[bool] = []
    started = time.monotonic()
    budget = params.budget_s + params.budget_per_pod_s * n
    deadline = started + budget
    before = ServerSnapshot.take(agents)
    driver_before = time.process_time()
    reads[0] = 0
    completed = True
    draining: list[Any] = []
    drain_pool = ThreadPoolExecutor(max_workers=max(1, wave))

    def replace(pod: VirtualPod, old_pod: VirtualPod) -> Any:
        # Paced: the Deployment scales the old pods down as the new ones become available.
        pod.become_ready()
        if not pod.confirmed.wait(max(0.0, deadline - time.monotonic())):
            return None
        pod.stop()
        return drain_pool.submit(old_pod.drain)

    for first in range(0, n, wave):
        batch = new[first:first + wave]
        if params.pace > 0:
            t0 = time.monotonic()
            pending = []
            for i, pod in enumerate(batch):
                time.sleep(max(0.0, t0 + i / params.pace - time.monotonic()))
                pending.append(pool.submit(replace, pod, old[first + i]))
            draining += [d for d in (f.result() for f in pending) if d is not None]
        else:
            list(pool.map(lambda p: p.become_ready(), batch))
        for pod in batch:
            if not pod.confirmed.wait(max(0.0, deadline - time.monotonic())):
                completed = False
                break
        if not completed:
            break
        if params.pace == 0:
            # This wave is available: its old counterparts drain while the next wave starts.
            for pod in batch:
                pod.stop()
            draining += [drain_pool.submit(p.drain) for p in old[first:first + wave]]
    for future in draining:
        try:
            drains.append(bool(future.result(timeout=max(1.0, deadline + 60 - time.monotonic()))))
        except TimeoutError:
            drains.append(False)
    duration = time.monotonic() - started
    driver_cpu = time.process_time() - driver_before
    after = ServerSnapshot.take(agents)
    client_reads = reads[0]
    for pod in new:
        pod.stop()
    # Steady state: nothing pending, so no server-bound query should be made at all.
    time.sleep(idle_s)
    idle_after = ServerSnapshot.take(agents).minus(after)
    server = after.minus(before)
    # What the agents cost the servers on their own (gossip, anti-entropy, coordinates) over the
    # same time is not the rollout's: subtracted, so a run with more nodes is not charged for it.
    idle_rate = baseline["cpu_s"] / idle_s if idle_s > 0 else 0.0
    server["cpu_s_net"] = round(max(0.0, server["cpu_s"] - idle_rate * duration), 3)
    result = RunResult(design, n, len(nodes), completed, round(duration, 2), server, client_reads,
                       sorted(round(p.latency * 1000, 2) for p in new if p.latency is not None),
                       sum(drains), len(old), idle_after, baseline, driver_cpu_s=round(driver_cpu, 2), pace=params.pace)
    if not completed:
        result.note = f"stopped after {budget:.0f}s with {sum(p.confirmed.is_set() for p in new)} of {n} confirmed"
    log(f"  {design:8s} N={n:5d}: {'done' if completed else 'STOPPED'} in {duration:6.1f}s, "
        f"server rpc.query {result.server['rpc_query']:.0f} streams {result.server['grpc_streams']:.0f}, "
        f"cpu {result.server['cpu_s']:.2f}s (clients {result.server['clients_cpu_s']:.2f}s, driver {driver_cpu:.2f}s), "
        f"client reads {client_reads}, confirm p50 {pct(result.confirm_ms, 50):.1f} ms p99 {pct(result.confirm_ms, 99):.1f} ms")
    # Clean the catalog for the next run (not measured).
    def remove(pod: VirtualPod) -> None:
        try:
            pod.agent.deregister_service(pod.instance.service_id)
        except ConsulNotFound:
            pass  # drained already
        except ConsulError as exc:
            log(f"  cleanup: {exc}")

    list(pool.map(remove, old + new))
    pool.shutdown()
    drain_pool.shutdown(wait=False, cancel_futures=True)
    return result


def merge(results: Sequence[RunResult]) -> RunResult:
    """Repeated runs of one size as one: server figures per rollout (the mean), every sample kept."""
    first, k = results[0], len(results)
    if k == 1:
        return first

    def mean(key: str) -> dict[str, float]:
        dicts = [getattr(r, key) for r in results]
        return {name: sum(d[name] for d in dicts) / k for name in dicts[0]}

    idle_runs = [r for r in results if r.idle_server]

    return RunResult(first.design, first.n, first.clients, all(r.completed for r in results),
                     round(sum(r.duration_s for r in results) / k, 3), mean("server"),
                     round(sum(r.client_reads for r in results) / k), sorted(ms for r in results for ms in r.confirm_ms),
                     sum(r.drains_ok for r in results), sum(r.drains for r in results), idle_runs[0].idle_server,
                     idle_runs[0].baseline_server, f"mean of {k} rollouts; latency samples from all of them",
                     round(sum(r.driver_cpu_s for r in results) / k, 3), first.pace)


def latency(run: dict[str, Any], q: int) -> float:
    """A run's confirmation latency percentile: from its samples, or as recorded (p50/p99)."""
    if run.get("confirm_ms"):
        return pct(run["confirm_ms"], q)
    value = run.get(f"confirm_p{q}_ms")
    return float(value) if value is not None else float("nan")


def net_cpu(run: dict[str, Any]) -> float:
    server = run["server"]
    return float(server["cpu_s_net"] if server.get("cpu_s_net") is not None else server["cpu_s"])


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


# --- the whole benchmark ---------------------------------------------------------------------

def run_scale(params: ScaleParams, out_dir: Path, charts_dir: Path | None, workdir: Path, preset: str = "custom",
              log: Callable[[str], None] = print) -> dict[str, Any]:
    binary = find_consul()
    if binary is None:
        raise RuntimeError("no consul binary: run scripts/provide-consul.sh or set CONSUL_BIN")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    runs: list[RunResult] = []
    stopped: dict[str, str] = {}
    started = time.monotonic()

    def save() -> dict[str, Any]:
        # After every run, so an interrupted benchmark keeps what it measured.
        results = {
            "meta": {"preset": preset, "params": asdict(params), "duration_s": round(time.monotonic() - started, 1),
                     "nproc": os.cpu_count(), "loadavg_end": os.getloadavg(), "stopped": stopped,
                     "driver": "in-process virtual pods: the product's ConsulAgent, Confirmer, Drainer and "
                               "registration_payload, one agent connection per pod; real Consul 1.16.1 agents"},
            "runs": [asdict(r) for r in runs],
        }
        results["model"] = model(results)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "scale.json").write_text(json.dumps(results, indent=1))
        (out_dir / "scale.md").write_text(render_table(results))
        return results

    for n in params.sizes:
        limits = dict(params.max_n)
        todo = [d for d in params.designs if d not in stopped and n <= limits.get(d, n)]
        if not todo:
            break
        clients = min(params.max_clients, max(params.min_clients, math.ceil(n / params.pods_per_node)))
        nodes = [f"node-{i:02d}" for i in range(clients)]
        log(f"N = {n}: 1 server + {len(nodes)} clients")
        groups = [todo] if params.shared_agents else [[design] for design in todo]
        for group in groups:
            where = workdir / f"n{n}-{'-'.join(group)}"
            where.mkdir(parents=True, exist_ok=True)
            agents = ServerAndClients(binary, where, nodes, server_extra=telemetry_args() + quiet_args(),
                                      client_extra=quiet_args())
            try:
                agents.start()
                for design in group:
                    repeats = params.single_repeats if n == 1 else 1
                    result = merge([rollout(agents, design, n, params, log, idle=i == 0) for i in range(repeats)])
                    runs.append(result)
                    if not result.completed:
                        stopped[design] = f"N={n}: {result.note}"
                    save()
            finally:
                agents.stop()
                shutil.rmtree(where, ignore_errors=True)
    results = save()
    if charts_dir is not None:
        render_charts(results, charts_dir, log)
    return results


def slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(y) on log(x): 1 is linear, 2 quadratic."""
    pts = [(math.log(x), math.log(y)) for x, y in points if x > 1 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else None


# The model's cluster: 10,000 pods of one service on 1,000 nodes; a health/service entry of
# one instance is ~3.9 KB as JSON (node, serfHealth and the two TTL checks: measured on 1.16.1).
MODEL_PODS, MODEL_NODES, ENTRY_KB = 10_000, 1_000, 3.9


def confirm_cpu_s(results: dict[str, Any], run: dict[str, Any]) -> float | None:
    """Server CPU a design added to the same rollout's writes (the `none` run at the same N)."""
    base = [r for r in results["runs"] if r["design"] == "none" and r["n"] == run["n"]]
    if not base:
        return None
    return max(0.0, net_cpu(run) - net_cpu(base[0]))


def model(results: dict[str, Any]) -> dict[str, Any]:
    """Per-design fits of the measured runs, extrapolated to MODEL_PODS on MODEL_NODES.

    Assumptions (also in BENCHMARKS.md): the log-log slope measured up to the largest N holds
    beyond it; the node design's per-pod cost depends on pods per node, measured at
    `pods_per_node` (25), which is pessimistic for 10 a node; server CPU is charged per
    rollout net of the server's idle rate.
    """
    out: dict[str, Any] = {}
    per_node = MODEL_PODS / MODEL_NODES
    for design in DESIGNS:
        runs = [r for r in results["runs"] if r["design"] == design and r["completed"] and r["n"] > 1]
        if not runs:
            continue
        q_slope = slope([(r["n"], r["server"]["rpc_query"]) for r in runs])
        a_slope = slope([(r["n"], r["client_reads"]) for r in runs])
        cpu_slope = slope([(r["n"], net_cpu(r)) for r in runs])
        added = [(r["n"], confirm_cpu_s(results, r)) for r in runs]
        confirm_slope = slope([(n, c) for n, c in added if c is not None])
        largest = max(runs, key=lambda r: r["n"])
        n_max = largest["n"]
        grow = MODEL_PODS / n_max
        fit = {"answers_slope": a_slope, "query_slope": q_slope, "cpu_slope": cpu_slope,
               "confirm_cpu_slope": confirm_slope, "confirm_cpu_s": dict((str(n), c) for n, c in added),
               "largest_n": n_max,
               "queries_per_pod_at_largest": largest["server"]["rpc_query"] / n_max,
               "answers_per_pod_at_largest": largest["client_reads"] / n_max,
               "server_cpu_s_per_pod_at_largest": net_cpu(largest) / n_max,
               "cpu_ms_per_answer_at_largest": 1000 * net_cpu(largest) / max(1.0, largest["client_reads"])}
        if a_slope is not None and cpu_slope is not None:
            fit["rollout_at_model"] = {"answers": largest["client_reads"] * grow ** a_slope,
                                       "server_cpu_s": net_cpu(largest) * grow ** cpu_slope}
        if design == "none":
            out[design] = fit
            continue
        # Agent restart storm: every sidecar of one node re-registers and confirms at once.
        if design == "node":
            # Each confirmation: the instance, then its checks, woken by each of the node's
            # ~3 changes a pod (register, two pushes); node-scoped answers of ~1.5 KB.
            answers = per_node * (2 + 3 * per_node)
            storm = {"server_answers": answers, "server_mb": answers * 1.5 / 1000}
        elif design == "service":
            # Each sidecar's blocking read opens a streaming view of the whole service: the
            # servers send every sidecar a snapshot of all N instances, then every change.
            storm = {"server_answers": per_node * (2 + 3 * per_node),
                     "server_mb": per_node * MODEL_PODS * ENTRY_KB / 1000}
        else:
            # One view per agent: one snapshot of the service, then every change; the agent
            # sends each sidecar the whole service on every wake.
            storm = {"server_answers": 1 + 3 * per_node, "server_mb": MODEL_PODS * ENTRY_KB / 1000,
                     "agent_to_sidecars_mb": per_node * 3 * per_node * MODEL_PODS * ENTRY_KB / 1000}
        fit["agent_restart_storm_at_model"] = storm
        fit["all_agents_restarted_at_model_server_mb"] = storm["server_mb"] * MODEL_NODES
        out[design] = fit
    return out


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pace(value: float | None) -> str:
    return "n/a" if value is None else ("burst" if value == 0 else f"{value:g}")


def render_table(results: dict[str, Any]) -> str:
    lines = ["| design | N | nodes | done | query answers | per pod | server rpc.query | server streams | server CPU s (net) | "
             "server MB written | client agents CPU s | driver CPU s | rollout s | pace pods/s | confirm p50 ms | "
             "confirm p99 ms | drains ok | idle rpc.query (baseline) | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        s = r["server"]
        idle, base = (r.get("idle_server") or {}).get("rpc_query"), (r.get("baseline_server") or {}).get("rpc_query")
        written = "n/a" if s.get("bytes_written") is None else f"{s['bytes_written'] / 1e6:.1f}"
        net = "n/a" if s.get("cpu_s_net") is None else f"{s['cpu_s_net']:.2f}"
        idle_text = "n/a" if idle is None else f"{idle:.0f} ({base:.0f})"
        drains = "n/a" if r.get("drains") is None else f"{r['drains_ok']}/{r['drains']}"
        lines.append(f"| {r['design']} | {r['n']} | {r['clients']} | {'yes' if r['completed'] else '**no**'} | {r['client_reads']} | "
                     f"{r['client_reads'] / r['n']:.1f} | {s['rpc_query']:.0f} | {s['grpc_streams']:.0f} | "
                     f"{s['cpu_s']:.2f} ({net}) | {written} | {s['clients_cpu_s']:.2f} | "
                     f"{_num(r.get('driver_cpu_s'))} | {_num(r.get('duration_s'), 1)} | {_pace(r.get('pace'))} | "
                     f"{latency(r, 50):.1f} | {latency(r, 99):.1f} | {drains} | {idle_text} | {r.get('note', '')} |")
    lines.append("")
    for design, fit in results.get("model", {}).items():
        keys = ("answers_slope", "query_slope", "cpu_slope", "confirm_cpu_slope")
        fmt = {k: ("n/a" if fit[k] is None else f"{fit[k]:.2f}") for k in keys}
        lines.append(f"- {design}: log-log slope vs N of query answers {fmt['answers_slope']}, of server rpc.query "
                     f"{fmt['query_slope']}, of server CPU {fmt['cpu_slope']}, of the server CPU it adds to the "
                     f"writes alone {fmt['confirm_cpu_slope']} (N up to {fit['largest_n']})")
        at = fit.get("rollout_at_model")
        storm = fit.get("agent_restart_storm_at_model")
        if at and storm:
            lines.append(f"  - model, {MODEL_PODS} pods on {MODEL_NODES} nodes: a rollout ~{at['answers']:,.0f} query answers, "
                         f"~{at['server_cpu_s']:,.0f} server CPU s; one agent restart ~{storm['server_mb']:,.1f} MB "
                         f"from the servers, all agents restarted ~{fit['all_agents_restarted_at_model_server_mb']:,.0f} MB")
    for design, why in results["meta"].get("stopped", {}).items():
        lines.append(f"- {design} stopped at {why}")
    return "\n".join(lines) + "\n"


def render_charts(results: dict[str, Any], charts_dir: Path, log: Callable[[str], None] = print) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed (pip install matplotlib): no charts")
        return []
    charts_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    (queries, cpu), (written, lat_ax) = axes
    for design in DESIGNS:
        runs = sorted((r for r in results["runs"] if r["design"] == design), key=lambda r: r["n"])
        if not runs:
            continue
        done = [r for r in runs if r["completed"]]
        ns = [r["n"] for r in done]
        if design != "none":
            queries.plot(ns, [max(1.0, r["client_reads"]) for r in done], marker="o", label=design)
        cpu.plot(ns, [max(0.01, net_cpu(r)) for r in done], marker="o", label=design)
        maybe = [(r["n"], confirm_cpu_s(results, r)) for r in done if design != "none"]
        added = [(n, c) for n, c in maybe if c is not None]
        if added:
            cpu.plot([n for n, _ in added], [max(0.01, c) for _, c in added], marker=".", ls=":",
                     color=cpu.lines[-1].get_color(), label=f"{design}: added to the writes")
        with_bytes = [r for r in done if r["server"].get("bytes_written") is not None]
        if with_bytes:
            written.plot([r["n"] for r in with_bytes], [max(0.01, r["server"]["bytes_written"] / 1e6) for r in with_bytes],
                         marker="o", label=design)
        if design != "none":
            lat_ax.plot(ns, [max(0.1, latency(r, 50)) for r in done], marker="o", label=f"{design} p50")
            lat_ax.plot(ns, [max(0.1, latency(r, 99)) for r in done], marker="^", ls="--", label=f"{design} p99")
        for r in runs:
            if not r["completed"]:
                queries.annotate(f"{design} stopped", (r["n"], max(1.0, r["client_reads"])), fontsize=7)
                queries.plot([r["n"]], [max(1.0, r["client_reads"])], marker="x", color="red")
    all_n = sorted({r["n"] for r in results["runs"] if r["n"] > 1})
    if all_n:
        base = all_n[0]
        ref = [r for r in results["runs"] if r["n"] == base and r["design"] == "node"]
        if ref:
            y0 = max(1.0, ref[0]["client_reads"])
            queries.plot(all_n, [y0 * n / base for n in all_n], color="grey", ls=":", lw=1, label="slope 1 (linear)")
            queries.plot(all_n, [y0 * (n / base) ** 2 for n in all_n], color="grey", ls="-.", lw=1, label="slope 2")
    single = [r for r in results["runs"] if r["n"] == 1 and r["design"] == "node" and r["confirm_ms"]]
    if single:
        lat_ax.axhline(5 * latency(single[0], 99), color="grey", ls=":", lw=1, label="target: 5x node's p99 at N = 1")
    queries.set(xscale="log", yscale="log", xlabel="pods of the service (N)", ylabel="query answers per rollout",
                title="Confirmation query executions per rollout")
    written.set(xscale="log", yscale="log", xlabel="N", ylabel="MB written by the server per rollout",
                title="Server bytes written (sockets + Raft log)")
    cpu.set(xscale="log", yscale="log", xlabel="N", ylabel="server CPU seconds per rollout (net of idle)",
            title="Server CPU per rollout")
    lat_ax.set(xscale="log", yscale="log", xlabel="N", ylabel="ms", title="Confirmation latency (push -> confirmed)")
    for ax in (queries, cpu, written, lat_ax):
        ax.legend(fontsize=7)
        ax.grid(True, which="both", lw=0.3)
    params = results.get("meta", {}).get("params", {})
    pace = float(params.get("pace", 0.0))
    fig.suptitle("rollout: " + ("every pod of a wave at once (burst)" if pace == 0 else f"{pace:g} new pods ready a second")
                 + f"; 1 server, {params.get('pods_per_node', 25)} pods per client agent")
    fig.tight_layout()
    preset = results.get("meta", {}).get("preset", "full")
    path = charts_dir / ("bench-consul-scale.png" if preset in ("full", "custom") else f"bench-consul-scale-{preset}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log(f"chart: {path}")
    return [str(path)]


def main(argv: Sequence[str] | None = None) -> int:
    # SIGTERM ends the run like Ctrl-C: every agent it started is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(SCALE_PRESETS), default="full")
    parser.add_argument("--sizes", help="comma-separated N, overriding the preset's")
    parser.add_argument("--designs", help=f"comma-separated, of {', '.join(DESIGNS)}")
    parser.add_argument("--pods-per-node", type=int, help="virtual pods per client agent (node)")
    parser.add_argument("--budget", type=float, help="seconds a run may take before it is stopped")
    parser.add_argument("--pace", type=float, help="new pods ready per second within a wave (0: all at once)")
    parser.add_argument("--shared-agents", action="store_true",
                        help="run every design of one N on the same agents (carries one design's leftovers into the next)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    parser.add_argument("--charts", type=Path, default=REPO / "docs" / "img", help="'-' for none")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp") / f"katalog-scale-{os.getpid()}")
    parser.add_argument("--from-json", type=Path, help="no run: the model, table and charts from a scale.json")
    args = parser.parse_args(argv)
    charts = None if str(args.charts) == "-" else args.charts
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        results["model"] = model(results)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scale.json").write_text(json.dumps(results, indent=1))
        (args.out / "scale.md").write_text(render_table(results))
        if charts is not None:
            render_charts(results, charts)
        print(render_table(results))
        return 0
    params = SCALE_PRESETS[args.preset]
    overrides: dict[str, Any] = {}
    if args.sizes:
        overrides["sizes"] = tuple(int(x) for x in args.sizes.split(","))
    if args.designs:
        overrides["designs"] = tuple(d for d in args.designs.split(",") if d in DESIGNS)
    if args.pods_per_node:
        overrides["pods_per_node"] = args.pods_per_node
    if args.budget:
        overrides["budget_s"] = args.budget
    if args.pace is not None:
        overrides["pace"] = args.pace
    if args.shared_agents:
        overrides["shared_agents"] = True
    if overrides:
        params = ScaleParams(**{**asdict(params), **overrides})
    results = run_scale(params, args.out, charts, args.workdir, preset=args.preset,
                        log=lambda s: print(s, file=sys.stderr, flush=True))
    print(render_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
