"""Where the condition gate's confirmed -> Ready goes on a real kubelet, stage by stage.

    python -m bench.condition_trace [--rounds 7] [--replicas 3] [--verbosity 5] [--flips 20] [--out trace.json]

Real nodes (tests/katalog_nodes.py: kubelet + containerd, one node per replica plus one, each
with its Consul client agent), the condition example applied through tests/node_overlay.py,
`kubectl rollout restart` `--rounds` times. For every new pod, one timeline on the host's one
clock:

- `confirmed`: the sidecar's status file turning `confirmed` (its `since`, read in the
  container);
- `patched`: the sidecar's log line after its PATCH of pods/status with the condition True
  returned (the container runtime's timestamp of the line, `kubectl logs --timestamps`);
- `api_condition`, `api_ready`, ...: when a pod watch opened by this process received the
  first object with the condition True, with Ready True, and so on (one watch for the whole
  run);
- the pod's kubelet's own log lines about the pod (klog timestamps, `--v` as given; at 5 the
  PLEG's relists too) from a second before `confirmed` to half a second after `api_ready`,
  and the first line of each stage in `KUBELET_STAGES` after `api_condition`.

`--flips N` first measures the kubelet alone: a pod of the test app whose only readinessGate
is a condition this process sets (PATCH pods/status, as the sidecar does), True and False in
turn, `--settle` seconds apart; per flip, API server has it -> Ready follows.

Also reads each kubelet's /configz (syncFrequency, feature gates) and /metrics (PLEG relist
interval and duration). Prints the distributions (ms after `confirmed`) and writes every
timeline as JSON. Needs root and the node binaries (scripts/node.sh); everything it starts is
stopped before it returns.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sidecar.manifests import CONDITION_TYPE  # noqa: E402

NS = "default"
SELECTOR = "app.kubernetes.io/name=web"
SIDECAR = "katalog-sidecar"
FLIP_CONDITION = "example.com/flip"
RELIST = "GenericPLEG: Relisting"

# klog: "I1207 03:45:12.123456   12345 file.go:123] message"
_KLOG = re.compile(r"^([IWEF])(\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6})\s+\d+ ([^\]]+)\] (.*)$")

# (stage, a substring of the kubelet's message): the first line of each after the condition
# reached the API server, per pod (pkg/kubelet: kubelet.go, pod_workers.go, status_manager.go).
KUBELET_STAGES = (
    ("kubelet_reconcile", "SyncLoop RECONCILE"),
    ("kubelet_probe", "SyncLoop (probe)"),
    ("kubelet_pending_update", "Notifying pod of pending update"),
    ("kubelet_pod_event", "Processing pod event"),
    ("kubelet_syncpod_enter", "SyncPod enter"),
    ("kubelet_patch_status", "Patch status for pod"),
)


def parse_klog(text: str, year: int) -> Iterator[tuple[float, str, str]]:
    """(wall time, source file:line, message) of each klog entry (UTC, as this machine logs);
    an entry's continuation lines (a probe's output) are joined to its message."""
    entry: tuple[float, str, str] | None = None
    for line in text.splitlines():
        m = _KLOG.match(line)
        if not m:
            if entry is not None and line[:1] in (" ", "\t", ">"):
                entry = (entry[0], entry[1], entry[2] + " " + line.strip())
            continue
        if entry is not None:
            yield entry
        stamp = datetime(year, int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6]), int(m[7]), tzinfo=timezone.utc)
        entry = (stamp.timestamp(), m[8], m[9])
    if entry is not None:
        yield entry


def rfc3339(text: str) -> float:
    """`kubectl logs --timestamps`' RFC 3339 with nanoseconds -> wall time."""
    head, _, frac = text.rstrip("Z").partition(".")
    base = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return base + (float("0." + frac.split("+")[0]) if frac else 0.0)


def summary(pod: dict[str, Any]) -> dict[str, Any]:
    status = pod.get("status") or {}
    meta = pod.get("metadata") or {}
    return {"name": meta.get("name"), "rv": meta.get("resourceVersion"), "node": (pod.get("spec") or {}).get("nodeName"),
            "deleting": bool(meta.get("deletionTimestamp")),
            "conditions": {c["type"]: c["status"] for c in status.get("conditions") or []},
            "ready": {c["name"]: bool(c.get("ready")) for c in status.get("containerStatuses") or []}}


class PodWatch(threading.Thread):
    """One pod watch of the namespace: every event with its receive time, re-opened on end."""

    def __init__(self, api: Any, namespace: str) -> None:
        super().__init__(daemon=True)
        self.api, self.namespace = api, namespace
        self.events: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def _list_rv(self) -> str:
        return str(self.api.get(f"/api/v1/namespaces/{self.namespace}/pods")["metadata"]["resourceVersion"])

    def run(self) -> None:
        rv = self._list_rv()
        while not self.stop.is_set():
            try:
                for event in self.api.watch_lines(f"/api/v1/namespaces/{self.namespace}/pods", timeout=60,
                                                  resourceVersion=rv, timeoutSeconds=50):
                    now = time.time()
                    obj = event.get("object") or {}
                    rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        with self.lock:
                            self.events.append({"t": now, "type": event["type"], **summary(obj)})
                    if self.stop.is_set():
                        return
            except Exception:  # noqa: BLE001 - a busy API or a 410: list again
                time.sleep(0.2)
                try:
                    rv = self._list_rv()
                except Exception:  # noqa: BLE001, S110 - next round
                    pass

    def of(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e["name"] == name]


def first(events: list[dict[str, Any]], test: Callable[[dict[str, Any]], bool]) -> float | None:
    return next((e["t"] for e in events if test(e)), None)


def timeline(cluster: Any, watch: PodWatch, name: str, status: dict[str, Any], sidecar_log: str,
             window: tuple[float, float] = (1.0, 0.5)) -> dict[str, Any]:
    events = watch.of(name)
    confirmed = float(status["since"])
    t: dict[str, float | None] = {"confirmed": confirmed}
    t["patched"] = next((rfc3339(line.split(" ", 1)[0]) for line in sidecar_log.splitlines()
                         if f"pod condition {CONDITION_TYPE}=True" in line), None)
    t["api_web_ready"] = first(events, lambda e: e["ready"].get("web", False))
    t["api_sidecar_ready"] = first(events, lambda e: e["ready"].get(SIDECAR, False))
    t["api_condition"] = first(events, lambda e: e["conditions"].get(CONDITION_TYPE) == "True")
    t["api_containers_ready"] = first(events, lambda e: e["conditions"].get("ContainersReady") == "True")
    t["api_ready"] = first(events, lambda e: e["conditions"].get("Ready") == "True")
    node = next((e["node"] for e in events if e.get("node")), None)
    lines: list[tuple[float, str, str]] = []
    relists: list[float] = []
    if node is not None and t["api_ready"] is not None:
        kubelet = next(n for n in cluster.nodes if n.name == node)
        text = (kubelet.scratch / "kubelet.log").read_text(errors="replace")
        year = datetime.fromtimestamp(confirmed, timezone.utc).year
        lo, hi = confirmed - window[0], t["api_ready"] + window[1]
        for w, src, msg in parse_klog(text, year):
            if lo <= w <= hi:
                if name in msg:
                    lines.append((w, src, msg))
                elif RELIST in msg:  # --v=5: a relist names no pod
                    relists.append(w)
        after = t["api_condition"] or confirmed
        for stage, needle in KUBELET_STAGES:
            t[stage] = next((w for w, _src, msg in lines if w >= after and needle in msg), None)
    rel = {k: (None if v is None else round((v - confirmed) * 1000, 1)) for k, v in t.items()}
    cond, ready = t["api_condition"], t["api_ready"]
    syncs = [w for w, _src, msg in lines
             if "SyncPod enter" in msg and cond is not None and ready is not None and cond <= w <= ready]
    return {"pod": name, "node": node, "at": t, "ms_after_confirmed": rel,
            # Pod syncs the kubelet entered between the condition reaching the API server and
            # Ready; each one first waited for a PLEG relist newer than the sync before it.
            "syncs_condition_to_ready": len(syncs),
            "sidecar_ready_before_condition": (t["api_sidecar_ready"] is not None and cond is not None
                                               and t["api_sidecar_ready"] <= cond),
            "relists_ms": [round((w - confirmed) * 1000, 1) for w in relists],
            "watch": [{**e, "t": round((e["t"] - confirmed) * 1000, 1)} for e in events],
            "kubelet": [(round((w - confirmed) * 1000, 1), src, msg[:600]) for w, src, msg in lines]}


def kubelet_facts(node: Any) -> dict[str, Any]:
    """The kubelet's own figures: the configuration it runs with (/configz: syncFrequency,
    feature gates) and its PLEG relist interval and duration (/metrics, since it started)."""
    import requests
    import urllib3

    urllib3.disable_warnings()
    base = f"https://{node.ip}:10250"
    facts: dict[str, Any] = {}
    try:
        config = requests.get(f"{base}/configz", verify=False, timeout=10).json()  # noqa: S501 - self-signed kubelet
        kc = config.get("kubeletconfig") or {}
        facts["syncFrequency"] = kc.get("syncFrequency")
        facts["featureGates"] = kc.get("featureGates") or {}
    except Exception as exc:  # noqa: BLE001
        facts["configz_error"] = str(exc)
    try:
        text = requests.get(f"{base}/metrics", verify=False, timeout=10).text  # noqa: S501
    except Exception as exc:  # noqa: BLE001
        facts["metrics_error"] = str(exc)
        return facts
    values: dict[str, float] = {}
    metrics = ("kubelet_pleg_relist_interval_seconds", "kubelet_pleg_relist_duration_seconds")
    for line in text.splitlines():
        for metric in metrics:
            for suffix in ("_sum", "_count"):
                if line.startswith(metric + suffix + " "):
                    values[metric + suffix] = float(line.split()[-1])
    for metric in metrics:
        count = values.get(metric + "_count") or 0
        if count:
            short = metric.removeprefix("kubelet_")
            facts[short + "_mean_ms"] = round(values[metric + "_sum"] / count * 1000, 1)
            facts[short + "_n"] = int(count)
    return facts


def gate_flips(cluster: Any, watch: PodWatch, flips: int, settle: float,
               log: Callable[[str], None]) -> list[dict[str, Any]]:
    """The kubelet alone: the condition example's app container (no sidecar) in a pod whose only
    readinessGate is a condition this process sets, True and False in turn."""
    from katalog_cluster import example_pod  # type: ignore[import-not-found]
    from node_overlay import for_this_machine  # type: ignore[import-not-found]

    doc = example_pod("flip", "deployment-condition-gate.yaml")
    spec = doc["spec"]
    spec["containers"] = [copy.deepcopy(c) for c in spec["containers"] if c["name"] == "web"]
    spec["readinessGates"] = [{"conditionType": FLIP_CONDITION}]
    spec.pop("serviceAccountName", None)
    spec["volumes"] = []
    cluster.apply(for_this_machine(doc, cluster.control_plane.url))
    path = f"/api/v1/namespaces/{NS}/pods/flip/status"
    deadline = time.monotonic() + 120
    while not (watch.of("flip") and watch.of("flip")[-1]["ready"].get("web")):
        if time.monotonic() > deadline:
            raise TimeoutError("the flip pod's app never became ready")
        time.sleep(0.1)
    time.sleep(settle)
    results = []
    for i in range(flips):
        want = "True" if i % 2 == 0 else "False"
        seen = len(watch.of("flip"))
        sent = time.time()
        cluster.api.request("PATCH", path, {"status": {"conditions": [{"type": FLIP_CONDITION, "status": want}]}},
                            content_type="application/strategic-merge-patch+json")
        returned = time.time()
        deadline = time.monotonic() + 30
        while True:
            events = watch.of("flip")[seen:]
            api = first(events, lambda e, want=want: e["conditions"].get(FLIP_CONDITION) == want)  # type: ignore[misc]
            ready = first(events, lambda e, want=want: e["conditions"].get("Ready") == want)  # type: ignore[misc]
            if api is not None and ready is not None:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"flip {i}: Ready never followed {want}")
            time.sleep(0.02)
        results.append({"to": want, "patch_ms": round((returned - sent) * 1000, 1),
                        "api_to_ready_ms": round((ready - api) * 1000, 1)})
        log(f"bare flip {i} -> {want}: API server -> Ready {results[-1]['api_to_ready_ms']:.0f} ms")
        time.sleep(settle)
    cluster.control_plane.kubectl("delete", "pod", "flip", "--wait=true", "--timeout=90s", timeout=120)
    return results


def rollouts(cluster: Any, watch: PodWatch, rounds: int, replicas: int, log: Callable[[str], None]
             ) -> tuple[list[dict[str, Any]], list[float]]:
    kubectl = cluster.control_plane.kubectl
    docs = [d for name in ("rbac-condition.yaml", "deployment-condition-gate.yaml") for d in cluster.example_docs(name)]
    for doc in docs:
        if doc["kind"] == "Deployment":
            doc["spec"]["replicas"] = replicas
    cluster.apply(*docs)
    kubectl("rollout", "status", "deploy/web", "--timeout=300s", timeout=320)
    traces: list[dict[str, Any]] = []
    durations: list[float] = []
    for r in range(rounds):
        before = {p["metadata"]["name"] for p in cluster.pods(NS)}
        began = time.monotonic()
        kubectl("rollout", "restart", "deploy/web")
        kubectl("rollout", "status", "deploy/web", "--timeout=300s", timeout=320)
        durations.append(time.monotonic() - began)
        time.sleep(1.0)  # the last pod's Ready reaches the watch
        for pod in cluster.pods(NS, SELECTOR):
            name = pod["metadata"]["name"]
            if name in before or pod["metadata"].get("deletionTimestamp"):
                continue
            out = kubectl("exec", name, "-c", SIDECAR, "--", "cat", "/run/katalog/status.json", check=False)
            logs = kubectl("logs", name, "-c", SIDECAR, "--timestamps", check=False).stdout
            try:
                status = json.loads(out.stdout)
            except ValueError:
                continue
            if status.get("phase") != "confirmed":
                continue
            trace = timeline(cluster, watch, name, status, logs)
            traces.append(trace)
            rel = trace["ms_after_confirmed"]
            log(f"round {r} {name}: " + ", ".join(f"{k} {v:.0f}" for k, v in rel.items()
                                                   if v is not None and k != "confirmed")
                + f"; {trace['syncs_condition_to_ready']} syncs")
        log(f"round {r}: rollout {durations[-1]:.1f}s")
    return traces, durations


def run(rounds: int, replicas: int, verbosity: int, flips: int = 0, settle: float = 3.0,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "tests"))
    from katalog_nodes import NodeCluster  # type: ignore[import-not-found]
    from kube_node import find_node_binaries  # type: ignore[import-not-found]

    from bench.harness import provide_consul, provide_kube
    from bench.run import summarize

    with tempfile.TemporaryDirectory(prefix="katalog-condition-trace-") as tmp:
        cluster = NodeCluster(provide_kube(), find_node_binaries(), provide_consul(), Path(tmp), nodes=replicas + 1)
        for node in cluster.nodes:
            node.verbosity = verbosity
        with cluster:
            versions = cluster.versions()
            watch = PodWatch(cluster.api, NS)
            watch.start()
            time.sleep(1.0)
            flip_results = gate_flips(cluster, watch, flips, settle, log) if flips else []
            traces, durations = rollouts(cluster, watch, rounds, replicas, log) if rounds else ([], [])
            watch.stop.set()
            facts = {node.ip: kubelet_facts(node) for node in cluster.nodes}
    stages = sorted({k for tr in traces for k, v in tr["ms_after_confirmed"].items() if v is not None} - {"confirmed"})
    dist = {k: summarize([tr["ms_after_confirmed"][k] for tr in traces if tr["ms_after_confirmed"].get(k) is not None])
            for k in stages}
    by_order = {f"sidecar_ready_{'before' if before else 'after'}_condition": summarize(
        [tr["ms_after_confirmed"]["api_ready"] for tr in traces
         if tr["sidecar_ready_before_condition"] == before and tr["ms_after_confirmed"].get("api_ready") is not None])
        for before in (True, False)}
    syncs = [tr["syncs_condition_to_ready"] for tr in traces]
    flip_summary = {to: {k: summarize([f[k] for f in flip_results if f["to"] == to])
                         for k in ("api_to_ready_ms", "patch_ms")} for to in ("True", "False")}
    return {"versions": versions, "rounds": rounds, "replicas": replicas, "verbosity": verbosity,
            "rollouts_s": durations, "ms_after_confirmed": dist, "api_ready_ms_by_order": by_order,
            "kubelet_syncs_condition_to_ready": {str(n): syncs.count(n) for n in sorted(set(syncs))},
            "kubelets": facts, "bare_gate_flips": flip_summary if flip_results else {},
            "flips": flip_results, "traces": traces}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="rolling updates (replicas new pods each)")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--verbosity", type=int, default=5, help="the kubelets' --v (5: PLEG relists too)")
    parser.add_argument("--flips", type=int, default=0,
                        help="first, this many flips of a bare readinessGate set by this process (the kubelet alone)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between bare flips")
    parser.add_argument("--out", type=Path, help="write every timeline here (JSON)")
    args = parser.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    results = run(args.rounds, args.replicas, args.verbosity, args.flips, args.settle, log=log)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if k not in ("traces", "flips")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
