"""The benchmark: latency, steady-state cost and scaling of katalog-sidecar against real Consul.

    python bench/run.py [--quick] [--out bench/out] [--charts docs/img]
    python bench/run.py --scale [--quick]   # Consul at scale: bench/scale.py
    python bench/run.py --flip-stages [--quick]   # figure 1's flips only, stage by stage: bench/flip_stages.py

Starts its own Consul dev agent and fake Kubernetes API (loopback only), runs real
`katalog-sidecar run` processes and the real `readiness-gate`, prints a markdown table, and
writes to --out `results.json` (every figure as n / p10 / p50 / p90 / p99 / min / max, plus the
raw samples) and `table.md`; charts go to --charts (matplotlib, optional). Every process it
starts is stopped before it returns, also on errors and Ctrl-C.

Latencies are measured from the moment the fake API hands the watch event to the sidecar's
connection (deletionTimestamp, readiness flips) or the moment SIGTERM is sent, to the arrival
of the Consul blocking query (on /v1/health/service/<name>, as bench.harness.wait_catalog)
whose answer first shows the new state.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import harness, rollout  # noqa: E402
from bench.harness import ConsulAgent, FakeKube, PodSidecar, instance_status, provide_consul  # noqa: E402

NS = "bench"
SERVICE = "web"
MS = 1000.0

# --- targets (README.md, "Performance": the targets table) -------------------------------------
TARGET_FLIP_P50_MS = 50.0
TARGET_FLIP_P99_MS = 250.0
TARGET_CRITICAL_P50_MS = 50.0
TARGET_RESTART_S = 2.0
TARGET_RSS_MB = 35.0
TARGET_IDLE_CPU_PCT = 0.1
TARGET_GATE_RATIO = 0.5  # CPU per run / a bare `python -c pass` of the same interpreter
TARGET_GATE_CPU_MS = 4.0  # issue 12: CPU per run
TARGET_FLIP_TO_FLOOR = 1.5  # issue 18: flip -> catalog p50 / the raw floor's p50, taken in the same run
PROBE_PERIOD_S = 2.0  # the examples' readinessProbe periodSeconds


@dataclass(frozen=True)
class Params:
    """How much to measure. `full` is the default; `quick` and `smoke` shrink every figure."""

    flips_single: int = 200  # fig 1: transitions on one pod (half ready->passing, half the reverse)
    scale_sizes: tuple[int, ...] = (1, 10, 50)  # fig 7
    scale_min_flips: int = 100  # fig 7: at least this many transitions per fleet size ...
    scale_min_flips_per_pod: int = 5  # ... and at least this many per pod
    flip_pause: tuple[float, float] = (0.02, 0.06)  # random pause between transitions (s)
    idle_pods: int = 20  # fig 4/5
    idle_seconds: float = 60.0
    scale_idle_seconds: float = 30.0  # fig 7: the idle window of each fleet size
    termination_pods: int = 20  # fig 2: pods deleted, and pods sent SIGTERM
    restarts: int = 5  # fig 3
    restart_down_s: float = 3.0  # fig 3: how long the agent stays down (a DaemonSet pod replaced takes seconds)
    gate_samples: int = 200  # fig 6: runs of each of gate and bare interpreter
    settle_seconds: float = 3.0  # after a fleet is confirmed, before an idle window
    rollouts: bool = True  # fig 8: the two rolling updates of bench/rollout.py
    fault_window_s: float = 20.0  # fig 9: the window measured in each fault state (0: skip fig 9)
    fault_settle_s: float = 6.0  # fig 9: in the fault state this long first (past one TTL refresh, 5 s)

    def flips_per_pod(self, n: int) -> int:
        if n == 1:
            return self.flips_single
        return max(self.scale_min_flips_per_pod, math.ceil(self.scale_min_flips / n))


PRESETS: dict[str, Params] = {
    "full": Params(),
    "quick": Params(flips_single=100, scale_min_flips=50, scale_min_flips_per_pod=2, idle_seconds=30.0,
                    scale_idle_seconds=10.0, termination_pods=10, restarts=3, gate_samples=100,
                    settle_seconds=2.0, fault_window_s=10.0),
    # For tests/test_bench_smoke.py: every figure present, seconds instead of minutes.
    "smoke": Params(flips_single=6, scale_sizes=(1, 2), scale_min_flips=4, scale_min_flips_per_pod=2,
                    flip_pause=(0.01, 0.02), idle_pods=2, idle_seconds=3.0, scale_idle_seconds=2.0,
                    termination_pods=2, restarts=1, restart_down_s=0.5, gate_samples=10, settle_seconds=0.5,
                    rollouts=False, fault_window_s=0.0),
}
# For `bench.sh --all --preset smoke` (bench/all.py): smoke, plus the rollouts (figure 8) and every
# fault state in 4 s windows (figure 9), so a smoke run of --all shows every part of the group runs.
PRESETS["smoke-all"] = replace(PRESETS["smoke"], rollouts=True, fault_window_s=4.0, fault_settle_s=1.0)


# --- statistics ----------------------------------------------------------------------------

def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(values: Iterable[float]) -> dict[str, float]:
    v = sorted(values)
    if not v:
        return {"n": 0}
    return {"n": len(v), "min": v[0], "p10": percentile(v, 10), "p50": percentile(v, 50),
            "p90": percentile(v, 90), "p99": percentile(v, 99), "max": v[-1], "mean": sum(v) / len(v)}


# --- processes and /proc -------------------------------------------------------------------

def console_script(name: str) -> str:
    """The installed script itself, not a version-manager shim (a pyenv shim costs a bash start)."""
    candidates = [Path(sysconfig.get_path("scripts")) / name, Path(sys.executable).parent / name]
    which = shutil.which(name)
    if which:
        candidates.append(Path(which))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK) and _ours(path):
            return str(path)
    return which or name


def _ours(path: Path) -> bool:
    """A Python launcher, or readiness-gate's /bin/sh trampoline; not a pyenv shim (bash)."""
    with path.open("rb") as handle:
        head = handle.read(400)
    return "python" in shebang(path)[0] or b"readiness-gate" in head


def shebang(path: Path) -> list[str]:
    with path.open("rb") as handle:
        first = handle.readline().decode(errors="replace").strip()
    return first[2:].split() if first.startswith("#!") else [""]


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """Time on CPU of each live thread, in ns from /proc/<pid>/task/*/schedstat."""
    times: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            times[int(task.name)] = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return times


def cpu_seconds_between(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds the process's threads spent between two `thread_cpu_ns` samples.

    Per thread, so a thread that ends inside the window cannot make the sum negative (a sum of
    live threads' totals drops by everything that thread ever used); the time such a thread
    spent inside the window is missed, which the /proc/<pid>/stat figure beside it still counts.
    """
    return sum(ns - before.get(tid, 0) for tid, ns in after.items()) / 1e9


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return math.nan


def scrape(port: int) -> dict[str, float]:
    """The sidecar's /metrics as {'name{labels}': value} (only what the bench reads)."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("katalog_consul_requests", "katalog_watch_restarts_total")):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def _restarts(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("katalog_watch_restarts_total"))


def _counter(metrics: dict[str, float], name: str, target: str) -> float:
    return metrics.get(f'{name}{{target="{target}"}}', 0.0)


# --- the world: Consul, fake API, sidecars -------------------------------------------------

class TimedKube(FakeKube):
    """The fake API, noting when a watch event for a pod leaves for the sidecar's connection.

    Only the newest watch of each pod counts: a watch the client gave up on stays registered
    in the fake until its timeoutSeconds, and its handler would note a later time."""

    def __init__(self, token_file: Path) -> None:
        super().__init__(token_file)
        self.emitted: dict[str, float] = {}
        self._newest: dict[str, Any] = {}

    def _open_watch(self, namespace: str, selector: dict[str, str], query: dict[str, str]) -> Any:
        watch, lines, code = super()._open_watch(namespace, selector, query)
        if watch is not None:
            self._newest[selector.get("metadata.name", "")] = watch
        return watch, lines, code

    def _next_lines(self, watch: Any, deadline: float) -> tuple[list[bytes], str | None]:
        lines, how = super()._next_lines(watch, deadline)
        name = watch.selector.get("metadata.name", "")
        if lines and self._newest.get(name) is watch:  # written to the socket right after this returns
            self.emitted[name] = time.monotonic()
        return lines, how


class CatalogWatch:
    """Consul blocking queries on /v1/health/service/<name>, as harness.wait_catalog, but the
    index is kept between waits: `sync()` before an action, then `wait()` catches the first
    answer after it, timed at its arrival."""

    def __init__(self, agent: ConsulAgent, service: str) -> None:
        self.agent, self.service = agent, service
        self.session = requests.Session()
        self.index = 0
        self.entries: list[dict[str, Any]] = []
        self.arrived = 0.0
        self.asked = 0.0  # when the last query was sent (monotonic)

    def _get(self, params: dict[str, str], timeout: float) -> None:
        response = self.session.get(f"{self.agent.http}/v1/health/service/{self.service}", params=params,
                                    timeout=timeout)
        arrived = time.monotonic()
        self.asked = arrived - response.elapsed.total_seconds()  # requests' clock starts as it sends
        response.raise_for_status()
        new_index = int(response.headers.get("X-Consul-Index", "0"))
        # Consul's rule: an index that went backwards means a reset (e.g. the agent restarted).
        self.index = new_index if new_index >= self.index else 0
        self.entries, self.arrived = response.json(), arrived

    def sync(self) -> None:
        self._get({}, timeout=10)

    def wait(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 15.0,
             tolerate_errors: bool = False) -> float:
        """Monotonic arrival time of the first answer satisfying `predicate` (maybe the cached one)."""
        deadline = time.monotonic() + timeout
        if self.arrived and predicate(self.entries):
            return self.arrived
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"catalog condition on {self.service!r} not met within {timeout}s")
            params = {"index": str(self.index), "wait": f"{max(1, int(remaining * 1000))}ms"} if self.index else {}
            try:
                self._get(params, timeout=remaining + 5)
            except (requests.RequestException, ValueError):
                if not tolerate_errors:
                    raise
                self.index, self.arrived = 0, 0.0
                time.sleep(0.005)
                continue
            if predicate(self.entries):
                return self.arrived


def index_of(agent: ConsulAgent, path: str) -> int:
    return int(requests.get(f"{agent.http}{path}", timeout=10).headers["X-Consul-Index"])


class IndexCounter(threading.Thread):
    """Counts changes of X-Consul-Index on `path` with blocking queries until `deadline`."""

    def __init__(self, agent: ConsulAgent, path: str, deadline: float) -> None:
        super().__init__(name=f"index:{path}", daemon=True)
        self.url, self.deadline = f"{agent.http}{path}", deadline
        self.start_index = self.end_index = index_of(agent, path)
        self.changes = 0
        self.error: str | None = None

    def run(self) -> None:
        session = requests.Session()
        index = self.start_index
        for _ in range(100_000):  # bounded; a window sees a handful of answers at most
            remaining = self.deadline - time.monotonic()
            if remaining <= 0.05:
                break
            try:
                response = session.get(self.url, params={"index": str(index), "wait": f"{int(remaining * 1000)}ms"},
                                       timeout=remaining + 5)
                new = int(response.headers["X-Consul-Index"])
            except (requests.RequestException, KeyError, ValueError) as exc:
                self.error = str(exc)
                break
            if new != index:
                self.changes += 1
                index = new
        self.end_index = index


@dataclass
class Fleet:
    pods: list[PodSidecar]
    metrics_ports: dict[str, int]

    @property
    def pids(self) -> dict[str, int]:
        return {p.name: p.proc.pid for p in self.pods if p.proc is not None}


class World:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.agent = ConsulAgent(provide_consul(), work, "bench-node", "127.0.0.1", [], dev=True)
        self.kube = TimedKube(work / "kube-token")
        self.started: list[PodSidecar] = []  # every sidecar ever started, for the final cleanup
        self.seq = 0

    def start(self) -> World:
        self.agent.start()
        self.kube.start()
        return self

    def stop(self) -> None:
        for pod in self.started:
            try:
                pod.kill()
            except Exception as exc:  # noqa: BLE001 - cleanup goes on whatever happens
                print(f"warning: could not kill {pod.name}: {exc}", file=sys.stderr)
        self.kube.stop()
        self.agent.stop()

    def consul_version(self) -> str:
        return str(self.agent.get("/v1/agent/self")["Config"]["Version"])

    def fleet(self, n: int, label: str, timeout: float | None = None) -> Fleet:
        """n pods (app ready) and their sidecars, returned once all are passing and confirmed."""
        from consul_agents import free_port  # tests/ is on sys.path through bench.harness

        pods: list[PodSidecar] = []
        ports: dict[str, int] = {}
        for _ in range(n):
            self.seq += 1
            name = f"{label}-{self.seq:04d}"
            ports[name] = free_port("127.0.0.1")
            pod = PodSidecar(self.work, self.agent, self.kube, name, namespace=NS, service=SERVICE,
                             pod_ip=f"10.42.{self.seq // 250}.{self.seq % 250 + 1}",
                             KATALOG_METRICS_ADDR=f"127.0.0.1:{ports[name]}",
                             KATALOG_HEARTBEAT_INTERVAL="5s")  # the product default, not the demo's 2s
            pod.create_pod(ready=True)
            self.started.append(pod)
            pod.start()
            pods.append(pod)
        timeout = timeout or 60.0 + 2.0 * n
        deadline = time.monotonic() + timeout
        watch = CatalogWatch(self.agent, SERVICE)
        restarts = 0
        while True:
            for pod in pods:
                if pod.proc is None or pod.proc.poll() is None:
                    continue
                # Other processes on the machine may take the free port we picked for /metrics
                # before the sidecar binds it: start it again on another port, a few times.
                if "Address already in use" not in tail(pod, 40) or restarts >= 5:
                    raise RuntimeError(f"sidecar {pod.name} exited {pod.proc.returncode}: {tail(pod)}")
                restarts += 1
                ports[pod.name] = free_port("127.0.0.1")
                pod.env["KATALOG_METRICS_ADDR"] = f"127.0.0.1:{ports[pod.name]}"
                print(f"warning: {pod.name}: metrics port taken; restarting on {ports[pod.name]}", file=sys.stderr)
                pod.start()
            try:
                watch.wait(lambda e: all(instance_status(e, p.service_id) == "passing" for p in pods),
                           timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    missing = [p for p in pods if instance_status(watch.entries, p.service_id) != "passing"]
                    raise TimeoutError(
                        f"{len(missing)} of {n} instances not passing in the catalog after {timeout:g}s: "
                        + ", ".join(f"{p.name} ({instance_status(watch.entries, p.service_id)}, {phase(p)})"
                                    for p in missing[:5]) + (f"\n{tail(missing[0])}" if missing else "")) from None
        for pod in pods:
            while phase(pod) != "confirmed":
                if pod.proc is not None and pod.proc.poll() is not None:
                    raise RuntimeError(f"sidecar {pod.name} exited {pod.proc.returncode}: {tail(pod)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"sidecar {pod.name} not confirmed: {phase(pod)}: {tail(pod)}")
                time.sleep(0.1)
        return Fleet(pods, ports)

    def dismiss(self, fleet: Fleet) -> None:
        """SIGTERM every sidecar at once (they drain and deregister), then forget the pods."""
        for pod in fleet.pods:
            if pod.proc is not None and pod.proc.poll() is None:
                pod.proc.terminate()
        for pod in fleet.pods:
            try:
                pod.terminate(timeout=40)
            except subprocess.TimeoutExpired:
                print(f"warning: {pod.name} ignored SIGTERM for 40s; killed", file=sys.stderr)
                pod.kill()
            try:
                self.kube.delete_pod(NS, pod.name)
            except KeyError:
                pass
        leftovers = [sid for sid in self.agent.agent_services() if sid.startswith(f"{NS}:")]
        for sid in leftovers:  # a drain that did not finish must not skew the next figure
            requests.put(f"{self.agent.http}/v1/agent/service/deregister/{sid}", timeout=10)


def phase(pod: PodSidecar) -> str:
    try:
        return str(json.loads((pod.workdir / "status.json").read_text()).get("phase"))
    except (OSError, ValueError):
        return "none"


def tail(pod: PodSidecar, lines: int = 15) -> str:
    try:
        return "\n".join(pod.log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- figures ------------------------------------------------------------------------------

def measure_flips(world: World, fleet: Fleet, per_pod: int, params: Params, rng: random.Random,
                  between: Callable[[], None] | None = None,
                  on_flip: Callable[[PodSidecar, str, float, float, float], None] | None = None) -> dict[str, list[float]]:
    """Fig 1/7: flip the app container of each pod, round-robin; ms from emit to catalog.
    `between` runs after each measured flip (the raw floor's sample); `on_flip(pod, wanted
    status, emitted, arrived, asked)` gets each measured flip's monotonic stamps, `asked` when its
    last catalog query was sent (bench/flip_stages.py)."""
    watch = CatalogWatch(world.agent, SERVICE)
    out: dict[str, list[float]] = {"ready_to_passing_ms": [], "not_ready_to_critical_ms": []}
    ready = {p.name: True for p in fleet.pods}

    def flip(pod: PodSidecar, measured: bool) -> None:
        want_ready = not ready[pod.name]
        want = "passing" if want_ready else "critical"
        watch.sync()
        world.kube.emitted.pop(pod.name, None)
        committed = time.monotonic()
        pod.set_app_ready(want_ready)
        arrived = watch.wait(lambda e, sid=pod.service_id, want=want: instance_status(e, sid) == want)
        emitted = world.kube.emitted.get(pod.name, committed)
        ready[pod.name] = want_ready
        if measured:
            out["ready_to_passing_ms" if want_ready else "not_ready_to_critical_ms"].append((arrived - emitted) * MS)
            if on_flip is not None:
                on_flip(pod, want, emitted, arrived, watch.asked)
            if between is not None:
                between()
        time.sleep(rng.uniform(*params.flip_pause))

    for _ in range(per_pod):
        for pod in fleet.pods:
            flip(pod, measured=True)
    for pod in fleet.pods:  # leave every app ready, as found
        if not ready[pod.name]:
            flip(pod, measured=False)
    for pod in fleet.pods:
        wait_phase(pod, "confirmed", 30)
    return out


FLOOR_SERVICE = "floor"
FLOOR_PUT_DELAY_S = 0.005  # the writer waits this long after being told, so the query is parked first

# The floor's writer: a process of its own, as the sidecar is, with the sidecar's HTTP stack
# (a requests.Session without proxy lookups). Told "<status>" on stdin, it waits FLOOR_PUT_DELAY_S,
# then PUTs and answers "<before the PUT> <PUT written> <answer read>" (time.monotonic(), which
# is CLOCK_MONOTONIC: the benchmark's clock too).
_FLOOR_WRITER = r"""
import http.client, sys, time
import requests
written = [0.0]
getresponse = http.client.HTTPConnection.getresponse
def stamped(conn):
    written[0] = time.monotonic()
    return getresponse(conn)
http.client.HTTPConnection.getresponse = stamped
session = requests.Session()
session.trust_env = False
url, delay = sys.argv[1], float(sys.argv[2])
for line in sys.stdin:
    time.sleep(delay)
    before = time.monotonic()
    code = session.put(url, json={"Status": line.strip()}, timeout=10).status_code
    print(before, written[0], time.monotonic(), code, flush=True)
"""


class FloorProbe:
    """The raw floor of a flip: one agent check update, seen by a waiting blocking query.

    What no sidecar can beat on this machine: a TTL check's status PUT to the same agent, timed
    from just before the PUT to the arrival of the health query's answer that shows it (the same
    CatalogWatch as the flips, on a service of its own, already waiting at the agent when the PUT
    is sent, as it is during a flip). The PUT comes from a small process of its own with the
    sidecar's HTTP client (requests), as a flip's comes from the sidecar: sent by the benchmark's
    own process, before its query was even asked (the first version), the floor was two round
    trips of a busy process and came out slower than the flips it bounds (ratio 0.5-0.9).
    `sample()` takes one; the flips take one after each of theirs, so both see the same load (on
    a shared machine, a floor taken a minute apart differed from the flips by more than the
    sidecar's share). Flip -> catalog p50 over this p50 is the sidecar's own share of a flip
    (issue 18: <= 1.5x). A sample whose query was not yet asked when the PUT began is taken again
    (counted in `late`): it would time a fresh query, not a waiting one."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.service_id = f"{FLOOR_SERVICE}-1"
        self.check = f"service:{self.service_id}"
        world.agent.register_raw({"Name": FLOOR_SERVICE, "ID": self.service_id, "Port": 1,
                                  "Check": {"CheckID": self.check, "TTL": "1h", "Status": "passing"}})
        self.watch = CatalogWatch(world.agent, FLOOR_SERVICE)
        self.writer = subprocess.Popen(
            [sys.executable, "-c", _FLOOR_WRITER, f"{world.agent.http}/v1/agent/check/update/{self.check}",
             str(FLOOR_PUT_DELAY_S)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.passing = True
        self.samples: list[float] = []
        self.parts: list[tuple[float, float, float]] = []  # (before the PUT, PUT written, answer arrived)
        self.late = 0  # samples taken again because the query was not yet waiting
        self.dropped = 0  # ... five times in a row: none kept for that flip
        self.sample(keep=False)  # warms the connection

    def sample(self, keep: bool = True) -> None:
        for _ in range(5):  # a late sample is taken again (a busy machine may delay our query by 5 ms)
            self.passing = not self.passing
            want = "passing" if self.passing else "critical"
            self.watch.sync()
            assert self.writer.stdin is not None and self.writer.stdout is not None
            self.writer.stdin.write(want + "\n")
            self.writer.stdin.flush()
            arrived = self.watch.wait(lambda e, want=want: instance_status(e, self.service_id) == want)
            before, written, _answered, code = self.writer.stdout.readline().split()
            if code != "200":
                raise RuntimeError(f"floor PUT answered HTTP {code}")
            if self.watch.asked <= float(before):
                if keep:
                    self.samples.append((arrived - float(before)) * MS)
                    self.parts.append((float(before), float(written), arrived))
                return
            self.late += 1
        self.dropped += 1 if keep else 0

    def close(self) -> None:
        if self.writer.stdin is not None:
            self.writer.stdin.close()
        try:
            self.writer.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.writer.kill()
        requests.put(f"{self.world.agent.http}/v1/agent/service/deregister/{self.service_id}", timeout=10)


def wait_phase(pod: PodSidecar, wanted: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while phase(pod) != wanted:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pod.name} not {wanted} within {timeout}s: {phase(pod)}: {tail(pod)}")
        time.sleep(0.05)


def measure_idle(world: World, fleet: Fleet, seconds: float, settle: float) -> dict[str, Any]:
    """Fig 4/5: catalog index changes, requests to agent and API, open server queries, RSS, CPU."""
    time.sleep(settle)
    deadline = time.monotonic() + 30
    while any(_counter(scrape(port), "katalog_consul_requests_in_flight", "servers") > 0
              for port in fleet.metrics_ports.values()):
        if time.monotonic() > deadline:
            break  # measured and reported as open server-bound queries
        time.sleep(0.5)
    pids = fleet.pids
    start = time.monotonic()
    counters = [IndexCounter(world.agent, "/v1/catalog/services", start + seconds),
                IndexCounter(world.agent, f"/v1/health/service/{SERVICE}", start + seconds)]
    scraped_at: dict[str, list[float]] = {name: [] for name in pids}

    def scrape_all() -> dict[str, dict[str, float]]:
        out = {}
        for name, port in fleet.metrics_ports.items():
            out[name] = scrape(port)
            scraped_at[name].append(time.monotonic())
        return out

    before = scrape_all()
    kube_before = len(world.kube.requests)
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    precise0 = {name: thread_cpu_ns(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    for c in counters:
        c.start()
    rss: dict[str, list[float]] = {name: [] for name in pids}
    for _ in range(int(seconds / 0.5) + 2):  # /proc reads only: they cost the sidecars nothing
        for name, pid in pids.items():
            rss[name].append(rss_mb(pid))
        remaining = t0 + seconds - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(5.0, remaining))
    cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    precise1 = {name: thread_cpu_ns(pid) for name, pid in pids.items()}
    t1 = time.monotonic()
    window = t1 - t0
    after = scrape_all()
    for c in counters:
        c.join(timeout=15)
    scrape_window = {name: ts[1] - ts[0] for name, ts in scraped_at.items()}
    kube_new = [r for r in world.kube.requests[kube_before:] if t0 <= r.time <= t1]
    per_pod_api = {name: 0 for name in pids}
    for r in kube_new:
        name = r.query.get("fieldSelector", "").partition("metadata.name=")[2].split(",")[0]
        per_pod_api[name] = per_pod_api.get(name, 0) + 1
    dead = [p.name for p in fleet.pods if p.proc is None or p.proc.poll() is not None]
    if dead:
        raise RuntimeError(f"sidecars died during the idle window: {dead}")
    per_minute = 60.0 / window
    return {
        "sidecars": len(pids),
        "window_s": window,
        "catalog_services_index_changes": counters[0].changes,
        "health_service_index_changes": counters[1].changes,
        "catalog_index_changes_per_min": (counters[0].changes + counters[1].changes) * per_minute,
        "index_before_after": {c.url.split("/v1", 1)[1]: [c.start_index, c.end_index] for c in counters},
        "agent_requests_per_sidecar": summarize(
            _counter(after[n], "katalog_consul_requests_total", "agent")
            - _counter(before[n], "katalog_consul_requests_total", "agent") for n in pids),
        "agent_requests_per_sidecar_per_min": summarize(
            (_counter(after[n], "katalog_consul_requests_total", "agent")
             - _counter(before[n], "katalog_consul_requests_total", "agent")) * 60.0 / scrape_window[n] for n in pids),
        "metrics_scrape_window_s": summarize(scrape_window.values()),
        "server_requests_per_sidecar": summarize(
            _counter(after[n], "katalog_consul_requests_total", "servers")
            - _counter(before[n], "katalog_consul_requests_total", "servers") for n in pids),
        "api_requests_per_sidecar": summarize(per_pod_api[n] for n in pids),
        "api_requests_total": len(kube_new),
        "servers_in_flight_per_sidecar": summarize(
            max(_counter(before[n], "katalog_consul_requests_in_flight", "servers"),
                _counter(after[n], "katalog_consul_requests_in_flight", "servers")) for n in pids),
        "agent_in_flight_per_sidecar": summarize(
            _counter(after[n], "katalog_consul_requests_in_flight", "agent") for n in pids),
        "rss_mb": summarize(max(v) for v in rss.values()),
        "cpu_pct_of_core": summarize((cpu1[n] - cpu0[n]) / window * 100.0 for n in pids),
        "cpu_tick_s": 1.0 / os.sysconf("SC_CLK_TCK"),
        "cpu_pct_of_core_schedstat": summarize(cpu_seconds_between(precise0[n], precise1[n]) / window * 100.0
                                               for n in pids),
        "watch_restarts_per_sidecar": summarize(_restarts(after[n]) - _restarts(before[n]) for n in pids),
    }


def measure_termination(world: World, pods: Sequence[PodSidecar], how: str) -> dict[str, list[float]]:
    """Fig 2: deletionTimestamp or SIGTERM, one pod at a time; ms to critical and to removed."""
    watch = CatalogWatch(world.agent, SERVICE)
    out: dict[str, list[float]] = {"critical_ms": [], "removed_ms": [], "exit_codes": []}
    for pod in pods:
        assert pod.proc is not None
        watch.sync()
        world.kube.emitted.pop(pod.name, None)
        t0 = time.monotonic()
        if how == "deletion":
            world.kube.set_deletion_timestamp(NS, pod.name, grace_seconds=30)
        else:
            pod.proc.send_signal(signal.SIGTERM)
        critical = watch.wait(lambda e, sid=pod.service_id: instance_status(e, sid) != "passing", timeout=30)
        removed = watch.wait(lambda e, sid=pod.service_id: instance_status(e, sid) is None, timeout=30)
        if how == "deletion":
            t0 = world.kube.emitted.get(pod.name, t0)
        else:
            out["exit_codes"].append(pod.proc.wait(timeout=30))
        out["critical_ms"].append((critical - t0) * MS)
        out["removed_ms"].append((removed - t0) * MS)
    return out


def measure_restarts(world: World, fleet: Fleet, n: int, down_s: float) -> dict[str, list[float]]:
    """Fig 3: stop the dev agent, keep it down `down_s`, start it (state lost); s from its first
    HTTP answer to the instance passing again."""
    agent = world.agent
    out: dict[str, list[float]] = {"to_passing_s": [], "to_leader_s": [], "down_s": []}
    ids = {p.service_id for p in fleet.pods}
    for _ in range(n):
        down_at = time.monotonic()
        agent.stop()
        time.sleep(down_s)
        with agent.log_path.open("ab") as log:  # as ConsulAgent.start, without its 100 ms polling
            agent.proc = subprocess.Popen(agent.args(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        answered = _first_answer(agent, "/v1/agent/self", lambda r: r.ok, timeout=60)
        leader: list[float] = []
        poller = threading.Thread(target=_note_leader, args=(agent, leader), daemon=True)
        poller.start()
        passing = CatalogWatch(agent, SERVICE).wait(
            lambda e: all(instance_status(e, sid) == "passing" for sid in ids), timeout=60, tolerate_errors=True)
        poller.join(timeout=65)
        out["down_s"].append(answered - down_at)
        out["to_passing_s"].append(passing - answered)
        out["to_leader_s"].append((leader[0] - answered) if leader else math.nan)
        for pod in fleet.pods:
            wait_phase(pod, "confirmed", 30)
        time.sleep(1.0)
    return out


def _note_leader(agent: ConsulAgent, into: list[float]) -> None:
    into.append(_first_answer(agent, "/v1/status/leader", lambda r: r.ok and bool(r.json()), timeout=60))


def _first_answer(agent: ConsulAgent, path: str, ok: Callable[[requests.Response], bool], timeout: float) -> float:
    session = requests.Session()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = session.get(f"{agent.http}{path}", timeout=1)
            arrived = time.monotonic()
            if ok(response):
                return arrived
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.005)
    raise TimeoutError(f"{agent.http}{path} did not answer within {timeout}s")


def _clean_interpreter(interpreter: str, workdir: Path) -> list[str]:
    """An empty venv of `interpreter` (no site-packages, no .pth); `-S` if that fails."""
    venv = workdir / "clean-venv"
    try:
        subprocess.run([interpreter, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True,
                       timeout=120)
    except (OSError, subprocess.SubprocessError):
        return [interpreter, "-S"]
    return [str(venv / "bin" / "python")]


def gate_interpreter(gate: Path) -> str:
    """The Python the gate script starts: `python3` next to it (as in a venv or the image), else PATH's."""
    beside = gate.parent / "python3"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("python3") or sys.executable


def cpu_per_run(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall ms, CPU ms, exit code) of one run: user + sys from the child's own rusage (wait4).

    The gate's /bin/sh replaces itself with Python (exec), so the rusage covers both.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return elapsed * MS, (usage.ru_utime + usage.ru_stime) * MS, proc.returncode


def measure_gate(pod: PodSidecar, samples: int, workdir: Path, warmup: int = 5) -> dict[str, Any]:
    """Fig 6: readiness-gate against a bare `python -c pass` of the gate's own interpreter, alternated."""
    gate = Path(console_script("readiness-gate"))
    interpreter = gate_interpreter(gate)
    # The same pair in a clean interpreter, as in an image: the installed script copied next to
    # an empty venv's python3 (no .pth hooks of this machine in the *bare* start; the gate
    # itself never runs `site`).
    clean = _clean_interpreter(interpreter, workdir)
    clean_gate = Path(clean[0]).parent / "readiness-gate"
    if len(clean) == 1:
        shutil.copy2(gate, clean_gate)
    argvs = {"gate": [str(gate)], "bare": [interpreter, "-c", "pass"],
             "gate_clean": [str(clean_gate)] if len(clean) == 1 else [*clean, str(gate)],
             "bare_clean": [*clean, "-c", "pass"]}
    envs = {k: pod.env for k in argvs}
    wall: dict[str, list[float]] = {k: [] for k in argvs}
    cpu: dict[str, list[float]] = {k: [] for k in argvs}
    codes: list[int] = []
    for i in range(warmup + samples):
        for kind in (("gate", "bare", "gate_clean", "bare_clean") if i % 2 else
                     ("bare", "gate", "bare_clean", "gate_clean")):
            elapsed, used, code = cpu_per_run(argvs[kind], envs[kind])
            if i >= warmup:
                wall[kind].append(elapsed)
                cpu[kind].append(used)
                if kind.startswith("gate"):
                    codes.append(code)
    result: dict[str, Any] = {"argv": argvs, "gate_exit_codes": sorted(set(codes))}
    for kind in argvs:
        result[f"{kind}_wall_ms"] = summarize(wall[kind])
        result[f"{kind}_cpu_ms"] = summarize(cpu[kind])
    result["wall_ratio"] = result["gate_wall_ms"]["p50"] / result["bare_wall_ms"]["p50"]
    result["cpu_ratio"] = result["gate_cpu_ms"]["p50"] / max(result["bare_cpu_ms"]["p50"], 1e-9)
    result["clean_wall_ratio"] = result["gate_clean_wall_ms"]["p50"] / result["bare_clean_wall_ms"]["p50"]
    result["clean_cpu_ratio"] = result["gate_clean_cpu_ms"]["p50"] / max(result["bare_clean_cpu_ms"]["p50"], 1e-9)
    # Ratios of interleaved pairs: robust to the load drifting during the run.
    pairs = [g / b for g, b in zip(wall["gate"], wall["bare"], strict=True) if b > 0]
    result["wall_ratio_pairs"] = summarize(pairs)
    cpu_pairs = [g / b for g, b in zip(cpu["gate_clean"], cpu["bare_clean"], strict=True) if b > 0]
    result["clean_cpu_ratio_pairs"] = summarize(cpu_pairs)
    # What kubelet's probe costs a pod: one run per periodSeconds (the examples' 2 s), as a
    # share of one core, comparable with the sidecar's own idle CPU (fig 5).
    result["probe_period_s"] = PROBE_PERIOD_S
    result["probe_cpu_pct_of_core"] = result["gate_clean_cpu_ms"]["p50"] / (PROBE_PERIOD_S * MS) * 100
    return result


# --- the run ------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    interp = gate_interpreter(Path(console_script("readiness-gate")))
    try:
        sidecar_python = subprocess.run([interp, "-c", "import sys; print(sys.version.split()[0])"],
                                        capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sidecar_python = "?"
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": sidecar_python, "python_executable": interp, "bench_python": platform.python_version(),
            "loadavg_start": list(os.getloadavg())}


def code_state() -> dict[str, Any]:
    """Which product code ran: HEAD, files differing from it, and a fingerprint of the sources
    (read-only git; the tree may be edited while the benchmark runs)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    sources = sorted([*REPO.glob("sidecar/*.py"), *REPO.glob("readiness_gate/*.py")])
    return {"head": git("rev-parse", "--short", "HEAD").strip(),
            "modified": [line.strip() for line in git("status", "--porcelain", "--", "sidecar", "readiness_gate",
                                                          "setup.cfg").splitlines() if line.strip()],
            "fingerprint": {str(p.relative_to(REPO)): p.stat().st_mtime_ns for p in sources}}

# --- fig 9: what each fault state costs ------------------------------------------------------
# A fault must never cost more than steady state by orders of magnitude (README.md, targets). One
# sidecar per state, confirmed first, then put into the fault; after `settle` seconds in it, its
# CPU (utime+stime, and schedstat) and the requests that reach Consul and the API server are
# counted over a window. Requests are counted where they arrive: a counting proxy in front of
# the Consul agent (tests/counting_proxy.py; "agent" = /v1/agent/*, "servers" = what the agent
# forwards), and the fake API's request log, or, while the API is down, a listener on its port
# that counts and resets every connection.

TARGET_FAULT_CPU_PCT = 0.5
TARGET_FAULT_RPS = 1.0
TARGET_FLAP_REGISTER_RPS = 0.2  # issue 18: register calls/s while writes fail and reads flap
FAULT_STATES = ("agent down", "servers down", "Kubernetes API down", "403 from Consul", "403 from the API",
                "drained, waiting for SIGTERM", "read flaps, writes failing", "slow agent, 3 s a write")
FLAP_S = 2.5  # read flaps: every blocking query cut this long after it starts (a mesh proxy's idle cut)
SLOW_WRITE_S = 3.0  # slow agent: every write held this long (under the 5 s timeout)


class _CountingRefuser:
    """Listens on a port and resets every connection, counting them: an API server that is gone,
    seen from its side."""

    def __init__(self, port: int) -> None:
        import socket

        self._socket_mod = socket
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.times: list[float] = []
        threading.Thread(target=self._accept, name="refuser", daemon=True).start()

    def _accept(self) -> None:
        import struct

        socket = self._socket_mod
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.times.append(time.monotonic())
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def close(self) -> None:
        try:
            self.sock.shutdown(self._socket_mod.SHUT_RDWR)  # wakes the blocked accept(), freeing the port
        except OSError:
            pass
        self.sock.close()


def measure_faults(window: float, settle: float, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fig 9: per fault state, CPU % of a core and requests/s of one sidecar."""
    from consul_agents import AclDevAgent, ServerAndClient, write_token_file  # tests/ is on sys.path via harness
    from counting_proxy import CountingProxy

    binary = provide_consul()
    out: dict[str, Any] = {"window_s": window, "settle_s": settle, "states": {}}
    with tempfile.TemporaryDirectory(prefix="katalog-bench-faults-") as tmp:
        work = Path(tmp)
        pair = ServerAndClient(binary, work)
        acl = AclDevAgent(binary, work, host="127.0.0.1")
        kube = FakeKube(work / "kube-token")
        proxies: list[CountingProxy] = []
        pods: list[PodSidecar] = []

        def confirmed_pod(label: str, consul: CountingProxy, **env: str) -> PodSidecar:
            pod = PodSidecar(work, consul, kube, f"fault-{label}", namespace=NS, service=SERVICE,
                             pod_ip=f"10.43.0.{len(pods) + 1}", KATALOG_HEARTBEAT_INTERVAL="5s", **env)
            pod.create_pod(ready=True)
            pods.append(pod)
            pod.start()
            pod.wait_gate(passing=True, timeout=60)
            return pod

        def measure(state: str, pod: PodSidecar, consul: CountingProxy, api: Callable[[float, float], int],
                    in_effect: Callable[[], bool] = lambda: True) -> None:
            deadline = time.monotonic() + 60
            while not in_effect():  # the sidecar has met the fault (e.g. its next TTL refresh failed)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{state}: the sidecar never met the fault: {pod.gate()[1]}\n{tail(pod)}")
                time.sleep(0.2)
            time.sleep(settle)
            assert pod.proc is not None
            pid = pod.proc.pid
            c0, p0, t0 = cpu_seconds(pid), thread_cpu_ns(pid), time.monotonic()
            time.sleep(window)
            c1, p1, t1 = cpu_seconds(pid), thread_cpu_ns(pid), time.monotonic()
            if pod.proc.poll() is not None:
                raise RuntimeError(f"{state}: the sidecar exited {pod.proc.returncode}: {tail(pod)}")
            seen = consul.between(t0, t1)
            agent = sum(1 for s in seen if s.target == "agent")
            registers = sum(1 for s in seen if s.method == "PUT" and s.path.startswith("/v1/agent/service/register"))
            api_n = api(t0, t1)
            span = t1 - t0
            entry = {"cpu_pct_of_core": (c1 - c0) / span * 100, "cpu_pct_of_core_schedstat": cpu_seconds_between(p0, p1) / span * 100,
                     "consul_agent_requests": agent, "consul_server_requests": len(seen) - agent,
                     "api_requests": api_n, "requests_per_s": (len(seen) + api_n) / span, "window_s": span,
                     "register_requests": registers, "register_per_s": registers / span,
                     "gate": pod.gate()[1]}
            out["states"][state] = entry
            log(f"[fault: {state}] CPU {entry['cpu_pct_of_core_schedstat']:.3f} % of a core, "
                f"{entry['requests_per_s']:.2f} req/s (agent {agent}, servers {len(seen) - agent}, API {api_n} "
                f"in {span:.0f}s)")

        def api_log(t0: float, t1: float) -> int:
            return sum(1 for r in kube.requests if t0 <= r.time <= t1)

        try:
            pair.start()
            kube.start()
            proxy = CountingProxy(pair.client.host, pair.client.http_port).start()
            proxies.append(proxy)
            log(f"fault states: one sidecar each, {settle:g}s in the fault, then {window:g}s measured")

            pod = confirmed_pod("agent", proxy)
            pair.client.stop()  # the proxy stays: it counts, and resets what it cannot forward
            measure("agent down", pod, proxy, api_log, lambda: "waiting for the agent" in pod.gate()[1])
            pair.client.start()
            pod.kill()

            pod = confirmed_pod("servers", proxy)
            pair.server.stop()
            measure("servers down", pod, proxy, api_log)
            pair.server.start()
            pod.kill()

            pod = confirmed_pod("api", proxy)
            port = int(kube.url.rsplit(":", 1)[1])
            kube.stop()
            refuser = _CountingRefuser(port)
            try:
                measure("Kubernetes API down", pod, proxy, lambda t0, t1: sum(1 for t in refuser.times if t0 <= t <= t1),
                        lambda: bool(refuser.times))
            finally:
                refuser.close()
            kube.start()
            pod.kill()

            pod = confirmed_pod("drained", proxy)
            kube.set_deletion_timestamp(NS, pod.name, grace_seconds=30)
            pod.wait_gate(passing=False, contains="drained and deregistered", timeout=30)
            measure("drained, waiting for SIGTERM", pod, proxy, api_log)
            pod.kill()

            # Read flaps: every blocking query cut after 2.5 s while every write gets a 500 (reads
            # work). A proxy of its own, so its rules touch no other state's pod.
            flaky = CountingProxy(pair.client.host, pair.client.http_port).start()
            proxies.append(flaky)
            pod = confirmed_pod("flaps", flaky)
            began = time.monotonic()
            flaky.refuse(500, body="rpc error making call: leadership lost while committing log")
            flaky.cut_long_polls(FLAP_S)
            measure("read flaps, writes failing", pod, flaky, api_log,
                    lambda: flaky.cuts > 0 and any(s.method == "PUT" for s in flaky.between(began, time.monotonic())))
            pod.kill()
            flaky.heal()

            # A slow agent: every write takes 3 s, under the timeout.
            pod = confirmed_pod("slow", flaky)
            began = time.monotonic()
            flaky.delay(SLOW_WRITE_S)
            measure("slow agent, 3 s a write", pod, flaky, api_log,
                    lambda: any(s.method == "PUT" for s in flaky.between(began, time.monotonic())))
            pod.kill()
            flaky.heal()

            pod = confirmed_pod("api403", proxy)
            kube.fail_next(403, n=1_000_000)  # every request from now on; the last state on this API
            kube.break_watches()
            measure("403 from the API", pod, proxy, api_log,
                    lambda: any(r.status == 403 and r.query.get("fieldSelector") == f"metadata.name={pod.name}"
                                for r in kube.requests))
            pod.kill()

            acl.start()
            acl_proxy = CountingProxy(acl.host, acl.http_port).start()
            proxies.append(acl_proxy)
            token_file = work / "consul-token"
            write_token_file(token_file, acl.create_token((REPO / "examples" / "consul-acl-policy.hcl").read_text(),
                                                          "katalog-web"))
            kube.stop()  # a fresh API for the last pod: the previous state left every request failing
            kube = FakeKube(work / "kube-token-2").start()
            pod = confirmed_pod("consul403", acl_proxy, CONSUL_HTTP_TOKEN_FILE=str(token_file))
            # The token is rotated to one without service:write: every write is a 403 from now on.
            write_token_file(token_file, acl.create_token(f'service "{SERVICE}" {{ policy = "read" }}', "read-only"))
            measure("403 from Consul", pod, acl_proxy, api_log, lambda: "Consul refused" in pod.gate()[1])
            pod.kill()
        finally:
            for pod in pods:
                pod.kill()
            for proxy in proxies:
                proxy.stop()
            kube.stop()
            acl.stop()
            pair.stop()
    return out


def fault_rows(faults: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not faults:
        return []
    rows = []
    for state in FAULT_STATES:
        e = faults["states"].get(state)
        if e is None:
            continue
        rows.append(_row(f"9. fault: {state}: sidecar CPU, % of one core ({e['window_s']:.0f}s)", "mean",
                         e["cpu_pct_of_core_schedstat"], f"from /proc stat ticks {e['cpu_pct_of_core']:.3f} %",
                         TARGET_FAULT_CPU_PCT, "%"))
        rows.append(_row(f"9. fault: {state}: requests per second", "mean", e["requests_per_s"],
                         f"to the agent {e['consul_agent_requests']}, to the servers {e['consul_server_requests']}, "
                         f"to the API server {e['api_requests']}", TARGET_FAULT_RPS, "/s"))
        if state == "read flaps, writes failing":
            rows.append(_row(f"9. fault: {state}: register calls per second", "mean", e["register_per_s"],
                             f"{e['register_requests']} in {e['window_s']:.0f}s", TARGET_FLAP_REGISTER_RPS, "/s"))
    return rows


def run(params: Params, out_dir: Path, charts_dir: Path | None, preset: str = "custom",
        command: str = "", log: Callable[[str], None] = print) -> dict[str, Any]:
    started = time.monotonic()
    rng = random.Random(1)
    harness.SIDECAR = console_script("katalog-sidecar")
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"meta": {"preset": preset, "command": command, "params": asdict(params),
                                        "machine": machine(), "sidecar": harness.SIDECAR, "code": code_state(),
                                        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    figs: dict[str, Any] = {}
    samples: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="katalog-bench-") as tmp:
        world = World(Path(tmp))
        try:
            world.start()
            results["meta"]["machine"]["consul"] = world.consul_version()
            log(f"consul {results['meta']['machine']['consul']} dev agent at {world.agent.http}; "
                f"fake API at {world.kube.url}; sidecar {harness.SIDECAR}")
            largest = max(params.scale_sizes)
            scaling: dict[str, Any] = {}
            for n in params.scale_sizes:
                t = time.monotonic()
                fleet = world.fleet(n, f"scale{n}")
                log(f"[{n} sidecars] up and confirmed in {time.monotonic() - t:.1f}s; flipping")
                probe = FloorProbe(world) if n == 1 else None
                try:
                    flips = measure_flips(world, fleet, params.flips_per_pod(n), params, rng,
                                          probe.sample if probe is not None else None)
                finally:
                    if probe is not None:
                        probe.close()
                all_flips = flips["ready_to_passing_ms"] + flips["not_ready_to_critical_ms"]
                entry: dict[str, Any] = {"flips_per_pod": params.flips_per_pod(n),
                                         "flip_ms": summarize(all_flips),
                                         "ready_to_passing_ms": summarize(flips["ready_to_passing_ms"]),
                                         "not_ready_to_critical_ms": summarize(flips["not_ready_to_critical_ms"])}
                samples[f"flips_{n}"] = flips
                log(f"[{n} sidecars] flip p50 {entry['flip_ms']['p50']:.1f} ms, p99 {entry['flip_ms']['p99']:.1f} ms;"
                    f" idle {params.scale_idle_seconds:g}s")
                idle = measure_idle(world, fleet, params.scale_idle_seconds, params.settle_seconds)
                entry.update(rss_mb=idle["rss_mb"], cpu_pct_of_core=idle["cpu_pct_of_core"], idle=idle)
                scaling[str(n)] = entry
                if n == 1:
                    assert probe is not None
                    floor = probe.samples  # one after each flip: the raw floor, under the same load
                    samples["floor"] = floor
                    entry["floor_ms"] = summarize(floor)
                    entry["floor_late"] = probe.late  # samples taken again: the query was not yet waiting
                    entry["floor_dropped"] = probe.dropped
                    entry["flip_to_floor_p50"] = entry["flip_ms"]["p50"] / entry["floor_ms"]["p50"]
                    log(f"[1 sidecar] floor p50 {entry['floor_ms']['p50']:.2f} ms; flip -> catalog p50 "
                        f"{entry['flip_ms']['p50']:.2f} ms = {entry['flip_to_floor_p50']:.2f} x the floor")
                    figs["ready_to_passing"] = entry
                    log(f"[1 sidecar] gate vs bare interpreter, {params.gate_samples} each")
                    figs["gate"] = measure_gate(fleet.pods[0], params.gate_samples, world.work)
                    log(f"[1 sidecar] {params.restarts} agent restarts, {params.restart_down_s:g}s down each")
                    restarts = measure_restarts(world, fleet, params.restarts, params.restart_down_s)
                    samples["restarts"] = restarts
                    figs["agent_restart"] = {k: summarize(v) for k, v in restarts.items()}
                if n == largest:
                    k = min(params.termination_pods, n)
                    log(f"[{n} sidecars] SIGTERM, {k} pods one by one")
                    term = measure_termination(world, fleet.pods[:k], "sigterm")
                    samples["sigterm"] = term
                    figs["sigterm"] = {"critical_ms": summarize(term["critical_ms"]),
                                       "removed_ms": summarize(term["removed_ms"]),
                                       "exit_codes": sorted(set(term["exit_codes"]))}
                world.dismiss(fleet)
            figs["scaling"] = scaling
            t = time.monotonic()
            fleet = world.fleet(params.idle_pods, "idle")
            log(f"[{params.idle_pods} sidecars] up in {time.monotonic() - t:.1f}s; idle {params.idle_seconds:g}s")
            figs["idle"] = measure_idle(world, fleet, params.idle_seconds, params.settle_seconds)
            k = min(params.termination_pods, params.idle_pods)
            log(f"[{params.idle_pods} sidecars] deletionTimestamp, {k} pods one by one")
            deletion = measure_termination(world, fleet.pods[:k], "deletion")
            samples["deletion"] = deletion
            figs["deletion"] = {"critical_ms": summarize(deletion["critical_ms"]),
                                "removed_ms": summarize(deletion["removed_ms"])}
            world.dismiss(fleet)
        except BaseException:
            for pod in world.started[-3:]:
                print(f"--- log of {pod.name} ---\n{tail(pod)}", file=sys.stderr)
            print(f"--- consul ---\n{world.agent.tail(20)}", file=sys.stderr)
            raise
        finally:
            world.stop()
    if params.fault_window_s > 0:
        figs["faults"] = measure_faults(params.fault_window_s, params.fault_settle_s, log)
    if params.rollouts:
        log("rolling updates (3 replicas, maxSurge 1, maxUnavailable 0) on a server + client pair")
        scenarios = rollout.run_scenarios(provide_consul(), log)
        figs["rollout"] = {title: {"completed": r.completed, "min_healthy": r.min_healthy, "duration_s": r.duration,
                                   "deleted_while_servers_down": max((x.deleted for x in r.samples if not x.servers_up),
                                                                     default=0),
                                   "end_state_new_pods_only": r.final_ids == r.new_ids,
                                   "gate_wait_s": r.gate_wait}
                           for title, r in scenarios.items()}
        samples["rollout"] = {title: r.to_json() for title, r in scenarios.items()}
        if charts_dir is not None:
            rollout.render(scenarios, charts_dir / "rollout.png")
    results["meta"]["machine"]["loadavg_end"] = list(os.getloadavg())
    if code_state()["fingerprint"] != results["meta"]["code"]["fingerprint"]:
        results["meta"]["code"]["changed_during_run"] = True
        log("WARNING: sidecar/ or readiness_gate/ changed while the benchmark ran: figures mix two versions")
    results["meta"]["duration_s"] = time.monotonic() - started
    results["figures"] = figs
    results["targets"] = target_rows(figs)
    results["samples"] = samples
    table = render_table(results)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (out_dir / "table.md").write_text(table + "\n")
    if charts_dir is not None:
        results["charts"] = render_charts(results, charts_dir, log)
    return results


# --- the table ----------------------------------------------------------------------------

def _row(figure: str, stat: str, value: float, spread: str, target: float | None, unit: str,
         lower_is_better: bool = True) -> dict[str, Any]:
    ratio = None if target in (None, 0) else value / target
    met = None if target is None else (value <= target if lower_is_better else value >= target)
    return {"figure": figure, "stat": stat, "value": value, "spread": spread, "target": target,
            "unit": unit, "ratio_to_target": ratio, "met": met, "lower_is_better": lower_is_better}


def _spread(s: dict[str, float], fmt: str = "{:.1f}") -> str:
    if not s.get("n"):
        return "-"
    return f"p10 {fmt.format(s['p10'])} / p90 {fmt.format(s['p90'])} (min {fmt.format(s['min'])}, max {fmt.format(s['max'])}), n={s['n']}"


def target_rows(f: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    one = f["ready_to_passing"]
    flip = one["flip_ms"]
    rows.append(_row("1. app readiness flip in the watch -> catalog (both directions)", "p50", flip["p50"],
                     _spread(flip), TARGET_FLIP_P50_MS, "ms"))
    rows.append(_row("1. ... same", "p99", flip["p99"], f"p90 {flip['p90']:.1f}", TARGET_FLIP_P99_MS, "ms"))
    if "floor_ms" in one:
        floor = one["floor_ms"]
        rows.append(_row("1. (context) raw floor: one agent check update -> a waiting blocking query", "p50",
                         floor["p50"], _spread(floor, "{:.2f}"), None, "ms"))
        rows.append(_row("1. ... flip -> catalog p50 as a multiple of the floor p50 (same run)", "ratio",
                         one["flip_to_floor_p50"], f"{flip['p50']:.2f} ms / {floor['p50']:.2f} ms",
                         TARGET_FLIP_TO_FLOOR, "x"))
    rtp = one["ready_to_passing_ms"]
    rows.append(_row("1. app ready -> passing (only)", "p50", rtp["p50"], _spread(rtp), TARGET_FLIP_P50_MS, "ms"))
    rows.append(_row("1. app ready -> passing (only)", "p99", rtp["p99"], "", TARGET_FLIP_P99_MS, "ms"))
    nrc = one["not_ready_to_critical_ms"]
    rows.append(_row("1. app not ready -> critical (only)", "p50", nrc["p50"], _spread(nrc), TARGET_FLIP_P50_MS, "ms"))
    for key, label in (("deletion", "deletionTimestamp"), ("sigterm", "SIGTERM")):
        crit, gone = f[key]["critical_ms"], f[key]["removed_ms"]
        rows.append(_row(f"2. {label} -> critical in the catalog", "p50", crit["p50"], _spread(crit),
                         TARGET_CRITICAL_P50_MS, "ms"))
        rows.append(_row(f"2. {label} -> removed from the catalog", "p50", gone["p50"], _spread(gone), None, "ms"))
    rst = f["agent_restart"]["to_passing_s"]
    rows.append(_row("3. agent restart (answers HTTP) -> passing again", "p50", rst["p50"],
                     _spread(rst, "{:.2f}"), TARGET_RESTART_S, "s"))
    rows.append(_row("3. ... same, worst restart", "max", rst["max"], "", TARGET_RESTART_S, "s"))
    ldr = f["agent_restart"]["to_leader_s"]
    down = f["agent_restart"]["down_s"]
    rows.append(_row("3. (context) agent answers -> has a leader", "p50", ldr["p50"],
                     _spread(ldr, "{:.2f}") + f"; agent unreachable {down['p50']:.1f} s per restart", None, "s"))
    idle = f["idle"]
    n, w = idle["sidecars"], idle["window_s"]
    rows.append(_row(f"4. idle {n} sidecars: catalog index changes ({w:.0f}s window)", "per min",
                     idle["catalog_index_changes_per_min"],
                     f"services {idle['catalog_services_index_changes']}, health/{SERVICE} {idle['health_service_index_changes']}",
                     0.0, "/min"))
    api = idle["api_requests_per_sidecar"]
    rows.append(_row("4. requests to the API server per sidecar (open watch excluded)", "max", api["max"],
                     f"total {idle['api_requests_total']}", 0.0, "req"))
    sif = idle["servers_in_flight_per_sidecar"]
    restarts = idle["watch_restarts_per_sidecar"]
    rows.append(_row("4. ... of which watch restarts (katalog_watch_restarts_total)", "max", restarts["max"], "", None, "req"))
    rows.append(_row("4. open server-bound queries per sidecar (latch mode)", "max", sif["max"], "", 0.0, ""))
    agent_req = idle["agent_requests_per_sidecar_per_min"]
    rows.append(_row("4. requests to the agent per sidecar", "per min", agent_req["p50"], _spread(agent_req), None, "/min"))
    srv = idle["server_requests_per_sidecar"]
    rows.append(_row("4. server-bound requests per sidecar in the window", "max", srv["max"], "", None, "req"))
    rss = idle["rss_mb"]
    rows.append(_row(f"5. sidecar RSS ({n} idle sidecars)", "max", rss["max"], _spread(rss), TARGET_RSS_MB, "MB"))
    rows.append(_row("5. ... same", "p50", rss["p50"], "", TARGET_RSS_MB, "MB"))
    cpu = idle["cpu_pct_of_core"]
    rows.append(_row(f"5. sidecar idle CPU, % of one core ({n} sidecars)", "p50", cpu["p50"], _spread(cpu, "{:.3f}"),
                     TARGET_IDLE_CPU_PCT, "%"))
    rows.append(_row("5. ... same", "max", cpu["max"], "", TARGET_IDLE_CPU_PCT, "%"))
    precise = idle["cpu_pct_of_core_schedstat"]
    rows.append(_row("5. ... same, from schedstat (ns precision)", "p50", precise["p50"], _spread(precise, "{:.3f}"),
                     TARGET_IDLE_CPU_PCT, "%"))
    gate = f["gate"]
    probe = gate["probe_cpu_pct_of_core"]
    rows.append(_row(f"5. readiness-gate probe CPU per pod, one run per periodSeconds {gate['probe_period_s']:g}",
                     "p50", probe, f"{gate['gate_clean_cpu_ms']['p50']:.2f} ms per run; sidecar idle p50 "
                     f"{precise['p50']:.3f} %; both {probe + precise['p50']:.3f} % per pod", None, "%"))
    rows.append(_row("6. readiness-gate CPU per run (clean venv, as in the image)", "p50",
                     gate["gate_clean_cpu_ms"]["p50"], _spread(gate["gate_clean_cpu_ms"], "{:.2f}"),
                     TARGET_GATE_CPU_MS, "ms"))
    rows.append(_row("6. ... / a bare `python -c pass` of the same interpreter: CPU", "p50 ratio", gate["clean_cpu_ratio"],
                     f"gate {gate['gate_clean_cpu_ms']['p50']:.2f} ms vs bare {gate['bare_clean_cpu_ms']['p50']:.2f} ms CPU; "
                     f"pairwise p10 {gate['clean_cpu_ratio_pairs']['p10']:.2f} / p90 {gate['clean_cpu_ratio_pairs']['p90']:.2f}",
                     TARGET_GATE_RATIO, "x"))
    rows.append(_row("6. ... same, wall time", "p50 ratio", gate["clean_wall_ratio"],
                     f"gate {gate['gate_clean_wall_ms']['p50']:.1f} ms vs bare {gate['bare_clean_wall_ms']['p50']:.1f} ms",
                     None, "x"))
    rows.append(_row("6. ... same in this machine's venv (bare start runs its .pth hooks): CPU", "p50 ratio",
                     gate["cpu_ratio"],
                     f"gate {gate['gate_cpu_ms']['p50']:.2f} ms vs bare {gate['bare_cpu_ms']['p50']:.1f} ms CPU",
                     TARGET_GATE_RATIO, "x"))
    for size, entry in f["scaling"].items():
        fl = entry["flip_ms"]
        rows.append(_row(f"7. {size} sidecar(s): flip -> catalog ({entry['flips_per_pod']}/pod)", "p50", fl["p50"],
                         _spread(fl), TARGET_FLIP_P50_MS, "ms"))
        rows.append(_row(f"7. {size} sidecar(s): flip -> catalog", "p99", fl["p99"], "", TARGET_FLIP_P99_MS, "ms"))
        rows.append(_row(f"7. {size} sidecar(s): RSS", "max", entry["rss_mb"]["max"], _spread(entry["rss_mb"]),
                         TARGET_RSS_MB, "MB"))
        sched = entry["idle"]["cpu_pct_of_core_schedstat"]
        rows.append(_row(f"7. {size} sidecar(s): idle CPU % of a core ({entry['idle']['window_s']:.0f}s)", "p50",
                         entry["cpu_pct_of_core"]["p50"],
                         _spread(entry["cpu_pct_of_core"], "{:.3f}") + f"; schedstat p50 {sched['p50']:.3f}, max {sched['max']:.3f}",
                         TARGET_IDLE_CPU_PCT, "%"))
    for title, r in f.get("rollout", {}).items():
        rows.append(_row(f"8. rolling update, {title}: passing in the catalog", "min", r["min_healthy"],
                         f"completed: {r['completed']}; ends with exactly the new pods: {r['end_state_new_pods_only']}",
                         3, "", lower_is_better=False))
        if "down" in title:
            rows.append(_row("8. ... old pods deleted while the server was down", "max",
                             r["deleted_while_servers_down"], "", 0, ""))
        rows.append(_row("8. ... rollout duration", "total", r["duration_s"], "", None, "s"))
        rows += gate_wait_rows(r.get("gate_wait_s"))
    rows += fault_rows(f.get("faults"))
    return rows


def gate_wait_rows(gate_wait: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The new pods' katalog_gate_wait_seconds (app ready -> gate open) during the rollout, as
    histogram_quantile over their summed buckets (bench/rollout.py gate_waits); the spread
    column has each pod's exact wait."""
    if not gate_wait or gate_wait.get("p50") is None:
        return []
    exact = ", ".join(f"{w * 1000:.0f}" for w in sorted(w for w in gate_wait["per_pod"].values() if w is not None))
    spread = f"per pod (exact): {exact or '-'} ms; n={gate_wait['observations']:g}"
    if gate_wait.get("errors"):
        spread += f"; not scraped: {', '.join(sorted(gate_wait['errors']))}"
    # In ms: a healthy rollout's waits are tens of ms, a held one's tens of seconds.
    return [_row("8. ... gate wait, app ready -> gate open (katalog_gate_wait_seconds, histogram_quantile)", "p50",
                 gate_wait["p50"] * 1000, spread, None, "ms"),
            _row("8. ... gate wait, same", "p99", gate_wait["p99"] * 1000, "", None, "ms")]


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("%",):
        return f"{value:.3f} %"
    if unit == "x":
        return f"{value:.2f}x"
    if unit in ("s", "/s"):
        return f"{value:.2f} {unit}"
    if unit in ("", "req"):
        return f"{value:g}"
    return f"{value:.1f} {unit}"


def render_table(results: dict[str, Any]) -> str:
    lines = ["| figure | stat | measured | spread | target | ratio to target | met |",
             "|---|---|---|---|---|---|---|"]
    for r in results["targets"]:
        bound = "≤" if r.get("lower_is_better", True) else "≥"
        target = "-" if r["target"] is None else (f"{bound} {_fmt(r['target'], r['unit'])}" if r["target"] else "0")
        ratio = "-" if r["ratio_to_target"] is None else f"{r['ratio_to_target']:.2f}"
        met = {None: "", True: "yes", False: "**no**"}[r["met"]]
        lines.append(f"| {r['figure']} | {r['stat']} | {_fmt(r['value'], r['unit'])} | {r['spread']} | {target} | "
                     f"{ratio} | {met} |")
    return "\n".join(lines)


# --- charts ---------------------------------------------------------------------------------

def render_charts(results: dict[str, Any], charts_dir: Path, log: Callable[[str], None] = print) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        log("matplotlib not installed (pip install matplotlib): no charts")
        return []
    charts_dir.mkdir(parents=True, exist_ok=True)
    samples, written = results["samples"], []

    def cdf(ax: Any, values: Sequence[float], label: str) -> None:
        v = sorted(values)
        if v:
            ax.step(v, [(i + 1) / len(v) for i in range(len(v))], where="post", label=f"{label} (n={len(v)})")

    one = samples["flips_1"]
    fig, (hist, right) = plt.subplots(1, 2, figsize=(11, 4))
    top = max(one["ready_to_passing_ms"] + one["not_ready_to_critical_ms"] + [1.0]) * 1.05
    bins = [top * i / 40 for i in range(41)]
    hist.hist(one["ready_to_passing_ms"], bins=bins, alpha=0.6, label="ready -> passing")
    hist.hist(one["not_ready_to_critical_ms"], bins=bins, alpha=0.6, label="not ready -> critical")
    off_scale = [t for t in (TARGET_FLIP_P50_MS, TARGET_FLIP_P99_MS) if t > top]
    hist.set(xlabel="ms from watch event to catalog", ylabel="transitions",
             title="1 sidecar: readiness flips" + (" (targets 50 / 250 ms: off scale)" if off_scale else ""))
    for key, label in (("ready_to_passing_ms", "ready -> passing"), ("not_ready_to_critical_ms", "not ready -> critical")):
        cdf(right, one[key], f"1 pod, {label}")
    for size in results["figures"]["scaling"]:
        if size != "1":
            flips = samples[f"flips_{size}"]
            cdf(right, flips["ready_to_passing_ms"] + flips["not_ready_to_critical_ms"], f"{size} pods, both")
    right.set(xscale="log", xlabel="ms (log)", ylabel="fraction", title="CDF, by fleet size")
    for ax in (hist, right):
        for target, color, label in ((TARGET_FLIP_P50_MS, "green", "p50 target 50 ms"),
                                     (TARGET_FLIP_P99_MS, "red", "p99 target 250 ms")):
            if ax is right or target <= top:
                ax.axvline(target, color=color, ls="--", lw=1, label=label)
        ax.legend(fontsize=7)
    right.xaxis.set_major_formatter(ticker.ScalarFormatter())
    fig.tight_layout()
    path = charts_dir / "bench-readiness-latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("deletion", "deletionTimestamp"), ("sigterm", "SIGTERM")):
        cdf(ax, samples[key]["critical_ms"], f"{label} -> critical")
        cdf(ax, samples[key]["removed_ms"], f"{label} -> removed")
    ax.axvline(TARGET_CRITICAL_P50_MS, color="green", ls="--", lw=1, label="critical p50 target 50 ms")
    ax.set(xscale="log", xlabel="ms (log)", ylabel="fraction", title="Termination: event -> catalog")
    ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = charts_dir / "bench-termination-latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))

    scaling = results["figures"]["scaling"]
    sizes = sorted(int(n) for n in scaling)
    fig, (lat, cost) = plt.subplots(1, 2, figsize=(11, 4))
    for stat in ("p50", "p90", "p99"):
        lat.plot(sizes, [scaling[str(n)]["flip_ms"][stat] for n in sizes], marker="o", label=f"flip {stat}")
    lat.axhline(TARGET_FLIP_P50_MS, color="green", ls="--", lw=1, label="p50 target")
    lat.axhline(TARGET_FLIP_P99_MS, color="red", ls="--", lw=1, label="p99 target")
    lat.set(xscale="log", yscale="log", xlabel="sidecars sharing one agent", ylabel="ms",
            title="Readiness flip -> catalog vs fleet size")
    lat.yaxis.set_major_formatter(ticker.ScalarFormatter())
    lat.legend(fontsize=7)
    cost.plot(sizes, [scaling[str(n)]["rss_mb"]["max"] for n in sizes], marker="o", color="tab:blue", label="RSS max (MB)")
    cost.axhline(TARGET_RSS_MB, color="tab:blue", ls="--", lw=1)
    cost.set(xscale="log", xlabel="sidecars sharing one agent", ylabel="MB", ylim=(0, TARGET_RSS_MB * 1.3),
             title="Per-sidecar RSS and idle CPU (dashed: targets)")
    for ax in (lat, cost):
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    cpu_ax = cost.twinx()
    cpu_ax.plot(sizes, [scaling[str(n)]["idle"]["cpu_pct_of_core_schedstat"]["p50"] for n in sizes], marker="s",
                color="tab:orange", label="idle CPU p50 (% of a core)")
    cpu_ax.axhline(TARGET_IDLE_CPU_PCT, color="tab:orange", ls="--", lw=1)
    cpu_ax.set(ylabel="% of one core", ylim=(0, TARGET_IDLE_CPU_PCT * 2))
    cost.legend(loc="lower left", fontsize=7)
    cpu_ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    path = charts_dir / "bench-scaling.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))
    log("charts: " + ", ".join(written))
    return written


def gate_only(samples: int) -> int:
    """Figure 6 alone, against a confirmed status file of this process (stands in for a sidecar)."""
    from types import SimpleNamespace

    from readiness_gate import probe, state

    with tempfile.TemporaryDirectory(prefix="katalog-gate-bench-") as tmp:
        status = Path(tmp) / "status.json"
        stop = threading.Event()

        def heartbeat() -> None:
            while not stop.is_set():
                state.write_atomically(str(status), {
                    "schema": state.SCHEMA, "phase": state.CONFIRMED, "message": "web passing in the catalog",
                    "pid": os.getpid(), "pid_start": probe.process_start(os.getpid()), "updated_at": time.time(),
                    "stale_after": 15.0, "gate_mode": "latch", "ever_confirmed": True})
                stop.wait(2.0)

        writer = threading.Thread(target=heartbeat, daemon=True)
        writer.start()
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("KATALOG_")}
            env["KATALOG_STATUS_FILE"] = str(status)
            load = os.getloadavg()[0]
            gate = measure_gate(SimpleNamespace(env=env), samples, Path(tmp))  # type: ignore[arg-type]
        finally:
            stop.set()
            writer.join()
    gate["loadavg_start"] = load
    gate["machine"] = machine()
    print(json.dumps({k: v for k, v in gate.items() if not k.endswith("_pairs")}, indent=1))
    return 0 if gate["gate_exit_codes"] == [0] else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller samples and shorter windows (~3 min)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="full (default), quick, smoke (tests) or smoke-all (bench/all.py)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out", help="results.json and table.md")
    parser.add_argument("--charts", type=Path, default=REPO / "docs" / "img", help="PNG charts ('-' for none)")
    parser.add_argument("--gate-only", action="store_true",
                        help="only figure 6 (readiness-gate CPU per run; no Consul needed), printed as JSON")
    parser.add_argument("--scale", action="store_true",
                        help="instead: Consul at scale (bench/scale.py): the servers' cost of confirmation during "
                             "rollouts of N pods, per confirmation design; charts to --charts")
    parser.add_argument("--flip-stages", action="store_true",
                        help="only figure 1's flips and floor, and where a flip's milliseconds go, stage by stage "
                             "(bench/flip_stages.py; the preset sets the number of flips)")
    args = parser.parse_args(argv)
    if args.flip_stages:
        from bench import flip_stages

        flips = PRESETS[args.preset or ("quick" if args.quick else "full")].flips_single
        return flip_stages.main(["--flips", str(flips), "--out", str(args.out)])
    if args.gate_only:
        return gate_only(PRESETS[args.preset or ("quick" if args.quick else "full")].gate_samples)
    preset = args.preset or ("quick" if args.quick else "full")
    if args.scale:
        from bench import scale

        return scale.main(["--preset", preset, "--out", str(args.out), "--charts", str(args.charts)])
    command = "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    charts = None if str(args.charts) == "-" else args.charts
    params = PRESETS[preset]
    results = run(params, args.out, charts, preset=preset, command=command.strip(),
                  log=lambda s: print(s, file=sys.stderr, flush=True))
    m = results["meta"]["machine"]
    code = results["meta"]["code"]
    print(f"code: {code['head']}" + (f" + {len(code['modified'])} modified file(s)" if code["modified"] else "")
          + (" (CHANGED DURING THE RUN)" if code.get("changed_during_run") else ""))
    print(f"{m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}, Consul {m['consul']}; "
          f"load {m['loadavg_start'][0]:.2f} -> {m['loadavg_end'][0]:.2f}; "
          f"{results['meta']['duration_s']:.0f}s, preset {preset}\n")
    print(render_table(results))
    print(f"\nwritten: {args.out / 'results.json'}, {args.out / 'table.md'}")
    return 0


__all__ = ["PRESETS", "Params", "main", "run", "summarize"]

if __name__ == "__main__":
    sys.exit(main())
