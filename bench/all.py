"""Every figure group of the benchmark in one invocation, on one commit: `bench.sh --all`.

    bash scripts/bench.sh --all [--quick | --preset full|quick|smoke] [--out bench/out]

The groups run one after another (never two at once: they would measure each other), each as
its own process with the command it has on its own (below), so a group measures exactly what
its separate command measures:

  main         python bench/run.py                figures 1-9: flips, termination, agent restarts,
                                                  idle cost, the gate, fleet sizes, the rollouts
                                                  (bench/rollout.py, real nodes where root), faults
  flip_stages  python bench/run.py --flip-stages  where a flip's milliseconds go
  gate_modes   python -m bench.gate_modes [--node]  exec gate vs pod condition (real nodes where root)
  webhook      python bench/webhook.py            the admission webhook's latency and memory
  image        scripts/image-smoke.sh --measure   the image's size, RSS and gate cost (podman)
  scale        python -m bench.scale              Consul at scale; preset `all` for --all full
                                                  (N up to 500, not 2,000: see SCALE_PRESET)

(`run.py --gate-only` is figure 6 alone; figure 6 is in `main`, so it is not run twice.)

Recorded: the commit (and whether the tree differed from it, at the start and at the end),
the machine, and per group its command, exit code, wall time and the load average at its start
and end. Writes `all.json` (every group's own result embedded; main's raw samples left out) and
`all.md` (the combined tables) into --out, and prints all.md. `python bench/publish.py
bench/out/all.json` then rewrites the README's performance table and BENCHMARKS.md's "Latest
run" from that json alone. A group that fails is recorded as failed and the others still run;
the exit code is then 1, and `--retry-failed` runs only those groups again on the same commit
(marked as re-run in all.json and in what is published).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GROUPS = ("main", "flip_stages", "gate_modes", "webhook", "image", "scale")

# The scale group's preset per --all preset. `full` (N up to 2,000, four designs) took 65 min on
# its own; `all` keeps the designs the targets read (node, the product; none, the writes alone)
# and N = 1, 100, 500 (bench/scale.py SCALE_PRESETS).
SCALE_PRESET = {"full": "all", "quick": "quick", "smoke": "smoke"}


@dataclass(frozen=True)
class Group:
    name: str
    argv: list[str]
    result: Path  # the file the group writes its result to (JSON)
    stdout_is_result: bool = False  # the group prints its JSON instead of writing a file


def real_node() -> bool:
    """Real nodes (kubelet + containerd) can run here: root and the node binaries."""
    if os.geteuid() != 0:
        return False
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from kube_node import NodeUnavailable, find_node_binaries
    except ImportError:
        return False
    try:
        find_node_binaries()
    except NodeUnavailable:
        return False
    return True


def groups(preset: str, out: Path, charts: str, node: bool) -> list[Group]:
    py = sys.executable
    smoke = preset == "smoke"
    gate_rounds = {"full": "3", "quick": "2", "smoke": "1"}[preset]
    gate_argv = [py, "-m", "bench.gate_modes", "--rounds", gate_rounds]
    if smoke:
        gate_argv += ["--replicas", "1"]
    if node:
        gate_argv.append("--node")
    reviews = {"full": "3000", "quick": "1000", "smoke": "200"}[preset]
    return [
        Group("main", [py, "bench/run.py", "--preset", "smoke-all" if smoke else preset, "--out", str(out / "main"), "--charts", charts],
              out / "main" / "results.json"),
        Group("flip_stages", [py, "bench/run.py", "--flip-stages", "--preset", preset, "--out", str(out / "flip_stages")],
              out / "flip_stages" / "flip_stages.json"),
        Group("gate_modes", gate_argv, out / "gate_modes.json", stdout_is_result=True),
        Group("webhook", [py, "bench/webhook.py", "--reviews", reviews, "--out", str(out / "webhook.json")],
              out / "webhook.json"),
        # image-smoke.sh writes bench/out/image.json wherever --out is.
        Group("image", ["bash", "scripts/image-smoke.sh", "--measure"], REPO / "bench" / "out" / "image.json"),
        Group("scale", [py, "-m", "bench.scale", "--preset", SCALE_PRESET[preset], "--out", str(out / "scale"),
                        "--charts", charts], out / "scale" / "scale.json"),
    ]


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def tree_state() -> dict[str, Any]:
    """The commit and the files that differ from it (bench/out is ignored; charts in docs/img
    that a run rewrites do show up at its end)."""
    changed = [line for line in git("status", "--porcelain").splitlines() if line.strip()]
    return {"commit": git("rev-parse", "HEAD"), "short": git("rev-parse", "--short", "HEAD"),
            "subject": git("log", "-1", "--format=%s"), "dirty": bool(changed), "changed": changed}


def run_group(group: Group, logs: Path, log: Callable[[str], None]) -> dict[str, Any]:
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{group.name}.log"
    load0 = list(os.getloadavg())
    started_utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    began = time.monotonic()
    wall_began = time.time()
    log(f"[{group.name}] {' '.join(group.argv)}  (log: {log_path})")
    with log_path.open("w") as stderr_log:
        proc = subprocess.run(group.argv, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr_log, text=True)
    wall = time.monotonic() - began
    load1 = list(os.getloadavg())
    with log_path.open("a") as out_log:
        out_log.write("\n--- stdout ---\n" + proc.stdout)
    entry: dict[str, Any] = {"command": " ".join(Path(a).name if a == sys.executable else a for a in group.argv),
                             "rc": proc.returncode, "wall_s": round(wall, 1), "started_utc": started_utc,
                             "loadavg_start": load0, "loadavg_end": load1, "log": str(log_path)}
    result: Any = None
    try:
        if group.stdout_is_result:
            result = json.loads(proc.stdout)
            group.result.write_text(json.dumps(result, indent=1) + "\n")
        elif group.result.exists() and group.result.stat().st_mtime >= wall_began - 1:
            result = json.loads(group.result.read_text())
    except ValueError as exc:
        entry["error"] = f"no JSON result: {exc}"
    if result is None and "error" not in entry:
        entry["error"] = f"no result written to {group.result}"
    if isinstance(result, dict):
        result.pop("samples", None)  # main's raw samples: in main/results.json, not here
    entry["result"] = result
    entry["ok"] = proc.returncode == 0 and result is not None
    log(f"[{group.name}] {'ok' if entry['ok'] else 'FAILED (rc ' + str(proc.returncode) + ')'} in {wall:.0f}s; "
        f"load {load0[0]:.2f} -> {load1[0]:.2f}")
    return entry


def machine() -> dict[str, Any]:
    from bench.run import machine as run_machine

    m = run_machine()
    m.pop("loadavg_start", None)
    try:
        consul = subprocess.run([os.environ.get("CONSUL_BIN", "consul"), "version"], capture_output=True, text=True,
                                timeout=30).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError):
        consul = "?"
    m["consul"] = consul
    try:
        m["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError):
        pass
    return m


def retry_failed(out: Path, charts: str | None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs again only the groups of out/all.json that failed or did not run, on the same commit
    (refused otherwise), and marks them `retried` (the publisher says so): for a group that a
    shared machine broke (e.g. another session replacing a cache the real nodes link from)."""
    results: dict[str, Any] = json.loads((out / "all.json").read_text())
    meta = results["meta"]
    now = tree_state()
    if now["commit"] != meta["code"]["commit"] or now["dirty"] != meta["code"]["dirty"]:
        raise SystemExit(f"--retry-failed: the run was on {meta['code']['short']}"
                         f"{' (dirty)' if meta['code']['dirty'] else ''}, the tree is now at {now['short']}"
                         f"{' (dirty)' if now['dirty'] else ''}: run --all again")
    todo = [g for g in meta["groups"] if not results["groups"].get(g, {}).get("ok")]
    log(f"re-running {', '.join(todo) or 'nothing'} of the run started {meta['started_utc']}")
    charts = charts or (str(REPO / "docs" / "img") if meta["preset"] == "full" else "-")
    for group in groups(meta["preset"], out, charts, meta["real_node"]):
        if group.name in todo:
            entry = run_group(group, out / "logs", log)
            entry["retried"] = True
            results["groups"][group.name] = entry
            (out / "all.json").write_text(json.dumps(results, indent=1) + "\n")
    order = [g for g in meta["groups"] if g in results["groups"]]
    results["groups"] = {g: results["groups"][g] for g in order}
    (out / "all.md").write_text(render_all_md(results))
    return results


def run_all(preset: str, out: Path, charts: str, only: Sequence[str] = GROUPS,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    node = real_node()
    started = time.monotonic()
    meta: dict[str, Any] = {
        "preset": preset, "scale_preset": SCALE_PRESET[preset], "groups": list(only),
        "command": "bash scripts/bench.sh --all" + ("" if preset == "full" else f" --preset {preset}"),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "real_node": node,
        "code": tree_state(), "machine": machine(), "loadavg_start": list(os.getloadavg())}
    log(f"bench --all, preset {preset} (scale: {SCALE_PRESET[preset]}), commit {meta['code']['short']}"
        + (" + uncommitted changes" if meta["code"]["dirty"] else "") + f"; real nodes: {'yes' if node else 'no'}")
    results: dict[str, Any] = {"meta": meta, "groups": {}}
    for group in groups(preset, out, charts, node):
        if group.name not in only:
            continue
        results["groups"][group.name] = run_group(group, out / "logs", log)
        (out / "all.json").write_text(json.dumps(results, indent=1) + "\n")  # after every group
    meta["code_end"] = tree_state()
    meta["code_end"].pop("subject", None)
    if meta["code_end"]["commit"] != meta["code"]["commit"]:
        log("WARNING: HEAD moved during the run: the groups ran on different commits")
    meta["loadavg_end"] = list(os.getloadavg())
    meta["duration_s"] = round(time.monotonic() - started, 1)
    (out / "all.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "all.md").write_text(render_all_md(results))
    return results


def render_all_md(results: dict[str, Any]) -> str:
    from bench.publish import render_all_md as render

    return render(results)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="preset quick")
    parser.add_argument("--preset", choices=("full", "quick", "smoke"), help="full (default), quick or smoke")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out", help="all.json, all.md, each group's files")
    parser.add_argument("--charts", default=None, help="PNG charts (default docs/img for full, none otherwise; '-': none)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(GROUPS)} (a partial run: not for publishing)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="run again only the groups that failed in --out's all.json (same commit; marked as re-run)")
    args = parser.parse_args(argv)
    preset = args.preset or ("quick" if args.quick else "full")
    charts = args.charts or (str(REPO / "docs" / "img") if preset == "full" else "-")
    only = tuple(args.only.split(",")) if args.only else GROUPS
    unknown = set(only) - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s): {', '.join(sorted(unknown))}")
    if shutil.which("git") is None:
        parser.error("git is needed to record the commit")
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    results = retry_failed(args.out, args.charts, log) if args.retry_failed else run_all(preset, args.out, charts, only, log)
    print((args.out / "all.md").read_text())
    print(f"written: {args.out / 'all.json'}, {args.out / 'all.md'}")
    return 0 if all(g["ok"] for g in results["groups"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
