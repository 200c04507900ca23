"""Publishes one `bench.sh --all` run: README.md's performance table and BENCHMARKS.md's
"Latest run", both from that run's all.json alone, so neither can drift from the run.

    python bench/publish.py bench/out/all.json [--readme README.md] [--benchmarks BENCHMARKS.md]

Rewrites what lies between `<!-- bench-all:start -->` and `<!-- bench-all:end -->` in both
files (the markers must be there; nothing else is touched). Refuses a run that is not preset
`full`, that left out a group or in which a group failed, or that ran on an uncommitted tree,
unless `--allow-partial` (tests, trying the generator on a smoke run's json).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MARKER = "bench-all"
GROUP_TITLES = {
    "main": "figures 1-9 (`bench/run.py`)",
    "flip_stages": "where a flip's milliseconds go (`bench/run.py --flip-stages`)",
    "gate_modes": "exec gate vs pod condition (`bench/gate_modes.py`)",
    "webhook": "admission webhook (`bench/webhook.py`)",
    "image": "the container image (`scripts/image-smoke.sh --measure`)",
    "scale": "Consul at scale (`bench/scale.py`)",
}


class NotPublishable(Exception):
    pass


# --- helpers ----------------------------------------------------------------------------------

def _result(run: dict[str, Any], group: str) -> Any:
    entry = run["groups"].get(group)
    if not entry or not entry.get("ok") or entry.get("result") is None:
        return None
    return entry["result"]


def _n(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def _load(values: list[float]) -> str:
    return f"{values[0]:.2f}"


def describe(run: dict[str, Any]) -> str:
    """One line: the commit, the date, the machine and the load: what every number belongs to."""
    meta = run["meta"]
    code, m = meta["code"], meta["machine"]
    dirty = " + uncommitted changes" if code.get("dirty") else ""
    minutes = meta.get("duration_s", 0) / 60
    return (f"commit `{code['short']}`{dirty}, {meta['started_utc'][:10]}, {m.get('nproc')} CPUs; load average "
            f"{_load(meta['loadavg_start'])} at the start, {_load(meta.get('loadavg_end', meta['loadavg_start']))} "
            f"at the end; {minutes:.0f} min, preset `{meta['preset']}`")


# --- README: the performance table ------------------------------------------------------------

def _flip_row(main: dict[str, Any]) -> str:
    f = main["figures"]
    one = f["ready_to_passing"]["flip_ms"]
    largest = max(f["scaling"], key=int)
    big = f["scaling"][largest]["flip_ms"]
    return (f"| app ready in the watch → passing in the catalog: p50 ≤ 50 ms, p99 ≤ 250 ms | p50 {_n(one['p50'])} ms, "
            f"p99 {_n(one['p99'])} ms ({largest} sidecars on one agent: {_n(big['p50'])} / {_n(big['p99'])} ms) |")


def _floor_row(main: dict[str, Any], load: list[float]) -> str:
    one = main["figures"]["ready_to_passing"]
    return (f"| the sidecar's share of a flip: flip → catalog p50 ≤ 1.5 × the raw floor (one agent check update seen "
            f"by a waiting blocking query), same run | {one['flip_to_floor_p50']:.2f} × (flip p50 "
            f"{one['flip_ms']['p50']:.2f} ms, floor {one['floor_ms']['p50']:.2f} ms, {one['flip_ms']['n']} flips; "
            f"load average {load[0]:.1f} at the start of figure 1's group) |")


def _termination_row(main: dict[str, Any]) -> str:
    f = main["figures"]
    return (f"| deletionTimestamp → critical in the catalog: p50 ≤ 50 ms | p50 {_n(f['deletion']['critical_ms']['p50'])} ms "
            f"(SIGTERM → critical: {_n(f['sigterm']['critical_ms']['p50'])} ms) |")


def _restart_row(main: dict[str, Any]) -> str:
    r = main["figures"]["agent_restart"]["to_passing_s"]
    return (f"| agent restart → passing again: ≤ 2 s after the agent answers | p50 {r['p50']:.2f} s, "
            f"worst {r['max']:.2f} s |")


def _idle_row(main: dict[str, Any]) -> str:
    idle = main["figures"]["idle"]
    return (f"| idle: no catalog writes, no API-server polling, no open server query (latch) | "
            f"{idle['catalog_index_changes_per_min']:g} index changes / min, "
            f"{idle['api_requests_per_sidecar']['max']:g} API requests, "
            f"{idle['servers_in_flight_per_sidecar']['max']:g} open server queries ({idle['sidecars']} sidecars, "
            f"{idle['window_s']:.0f} s) |")


def _cost_row(main: dict[str, Any]) -> str:
    idle = main["figures"]["idle"]
    return (f"| RSS ≤ 35 MB, idle CPU ≤ 0.1 % of a core | {idle['rss_mb']['max']:.1f} MB, "
            f"{idle['cpu_pct_of_core_schedstat']['p50']:.3f} % |")


def _gate_row(main: dict[str, Any]) -> str:
    gate = main["figures"]["gate"]
    return (f"| `readiness-gate` CPU per run ≤ 4 ms and ≤ 0.5 × `python -c pass` | "
            f"{gate['gate_clean_cpu_ms']['p50']:.2f} ms, {gate['clean_cpu_ratio']:.2f} × ({gate['probe_cpu_pct_of_core']:.2f} % "
            f"of a core per pod at `periodSeconds: {gate['probe_period_s']:g}`) |")


def _fault_row(main: dict[str, Any]) -> str:
    faults = main["figures"].get("faults")
    target = ("| every fault state (agent down, servers down, API down, 403s, drained and waiting, read flaps, a slow "
              "agent): ≤ 0.5 % of a core, ≤ 1 request/s; read flaps with writes failing: ≤ 0.2 register calls/s |")
    if not faults:
        return f"{target} not measured in this run (figure 9 off in preset) |"
    states = faults["states"]
    cpu_state = max(states, key=lambda s: states[s]["cpu_pct_of_core_schedstat"])
    rps_state = max(states, key=lambda s: states[s]["requests_per_s"])
    flaps = states.get("read flaps, writes failing")
    flap_text = "" if flaps is None else f"; read flaps: {flaps['register_per_s']:.2f} register calls/s"
    return (f"{target} at most {states[cpu_state]['cpu_pct_of_core_schedstat']:.2f} % ({cpu_state}) and "
            f"{states[rps_state]['requests_per_s']:.2f} requests/s ({rps_state}){flap_text}; "
            f"{len(states)} states, {faults_window(states):.0f} s windows. BENCHMARKS.md, figure 9 |")


def faults_window(states: dict[str, Any]) -> float:
    return float(max(s["window_s"] for s in states.values()))


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def _rollout_row(main: dict[str, Any]) -> str:
    target = ("| rolling update (3 replicas, maxSurge 1, maxUnavailable 0), also with the Consul server down for its "
              "first 15 s: never fewer than 3 instances passing; no old pod deleted while the server is down |")
    rollouts = main["figures"].get("rollout")
    if not rollouts:
        return f"{target} not measured in this run (figure 8 off in preset) |"
    parts = []
    for title, r in rollouts.items():
        text = f"{title}: min {r['min_healthy']:g} passing, {r['duration_s']:.1f} s"
        if "down" in title:
            text += f", {r['deleted_while_servers_down']:g} old pods deleted while down"
        wait = r.get("gate_wait_s") or {}
        if wait.get("p50") is not None:
            text += f", gate wait p50 {_seconds(wait['p50'])} / p99 {_seconds(wait['p99'])}"
        parts.append(text)
    return f"{target} {'; '.join(parts)} (gate wait: `katalog_gate_wait_seconds`, histogram_quantile) |"


def _scale_row(scale: dict[str, Any] | None) -> str:
    target = ("| Consul servers during a rollout of N pods of one service: query executions linear in N; confirmation "
              "p99 at N = 1,000 ≤ 5 × N = 1; no steady-state server load |")
    if not scale:
        return f"{target} not measured in this run |"
    from bench.scale import latency, net_cpu

    node = sorted((r for r in scale["runs"] if r["design"] == "node" and r["completed"]), key=lambda r: r["n"])
    none = {r["n"]: r for r in scale["runs"] if r["design"] == "none"}
    if not node:
        return f"{target} no completed run of the node design |"
    per_pod = ", ".join(f"{r['client_reads'] / r['n']:.1f} at N = {r['n']:,}" for r in node if r["n"] > 1)
    slope = (scale.get("model", {}).get("node") or {}).get("answers_slope")
    big = node[-1]
    one = node[0]
    cpu = f"server CPU {net_cpu(big):.1f} s at N = {big['n']:,}"
    if big["n"] in none:
        cpu += f" vs {net_cpu(none[big['n']]):.1f} s for the writes alone"
    ratio = latency(big, 99) / latency(one, 99) if one["n"] == 1 and latency(one, 99) else math.nan
    idle = [r.get("idle_server", {}).get("rpc_query") for r in node if r.get("idle_server")]
    pace = scale["meta"]["params"].get("pace")
    return (f"{target} node-scoped reads, answers a pod: {per_pod} (log-log slope {_n(slope, 2)}); {cpu}; p99 "
            f"{latency(one, 99):.1f} ms at N = {one['n']}, {latency(big, 99):.1f} ms at {big['n']:,}, the largest N of "
            f"this run ({_n(ratio, 1)}×; "
            f"{pace:g} new pods ready a second); idle: at most {max(idle, default=0):g} server queries in "
            f"{scale['meta']['params'].get('idle_s', 0):g} s after a rollout. Sizes up to {big['n']:,} (preset "
            f"`{scale['meta']['preset']}`); BENCHMARKS.md, \"Consul at scale\" |")


def _condition_row(gate_modes: dict[str, Any] | None) -> str:
    target = "| condition gate on a real kubelet: confirmed → pod Ready p50 ≤ 250 ms |"
    if not gate_modes or not gate_modes.get("real_node"):
        return f"{target} not measured on a real kubelet in this run |"
    cond, exec_ = gate_modes["condition"]["confirmed_to_ready_ms"], gate_modes["exec"]["confirmed_to_ready_ms"]
    met = cond["p50"] <= 250.0
    kubelet = (gate_modes.get("kubelet") or {}).get("kubelet", "?")
    verdict = "met" if met else "**not met, bound by the kubelet**"
    why = "" if met else ("; the kubelet turns a status-only change into Ready through a pod sync, which waits for "
                          "runtime relists 1 s apart (`genericPlegRelistPeriod`, a kubelet constant)")
    return (f"{target} {verdict}: new pods in {gate_modes['rounds']} rollouts of {gate_modes['replicas']} replicas, p50 "
            f"{cond['p50']:.0f} ms, p99 {cond['p99']:.0f} ms (n={cond['n']}, kubelet {kubelet}); the exec gate in the "
            f"same run: p50 {exec_['p50']:.0f} ms{why}. BENCHMARKS.md, \"Where confirmed -> Ready goes on a real kubelet\" |")


def readme_block(run: dict[str, Any]) -> str:
    main = _result(run, "main")
    if main is None:
        raise NotPublishable("the main group has no result")
    load = run["groups"]["main"]["loadavg_start"]
    rows = [_flip_row(main), _floor_row(main, load), _termination_row(main), _restart_row(main), _idle_row(main),
            _cost_row(main), _gate_row(main), _fault_row(main), _rollout_row(main), _scale_row(_result(run, "scale")),
            _condition_row(_result(run, "gate_modes"))]
    return "\n".join([
        f"Every figure below comes from one run of `{run['meta']['command']}` ({describe(run)}); the full "
        "tables of that run are BENCHMARKS.md's \"Latest run\".",
        "",
        "| target | measured |",
        "|---|---|",
        *rows,
    ])


# --- BENCHMARKS.md: the latest run, and all.md --------------------------------------------------

def groups_table(run: dict[str, Any]) -> str:
    lines = ["| group | command | wall | load average at start -> end | result |", "|---|---|---|---|---|"]
    for name, g in run["groups"].items():
        state = "ok" if g.get("ok") else f"**failed** (exit {g.get('rc')}{'; ' + g['error'] if g.get('error') else ''})"
        if g.get("retried"):
            state += f"; re-run separately (`--retry-failed`), started {g['started_utc']}"
        lines.append(f"| {name} | `{g['command']}` | {g['wall_s']:.0f} s | {g['loadavg_start'][0]:.2f} -> "
                     f"{g['loadavg_end'][0]:.2f} | {state} |")
    return "\n".join(lines)


def _main_md(main: dict[str, Any]) -> str:
    from bench.run import render_table

    return render_table(main)


def _flip_stages_md(result: dict[str, Any]) -> str:
    from bench.flip_stages import render

    return render(result["runs"], (result["load"][0], result["load"][1]))


def _gate_modes_md(result: dict[str, Any]) -> str:
    lines = ["| mode | confirmed -> Ready p50 | min / max | rolling update p50 | min / max |", "|---|---|---|---|---|"]
    for mode, r in result.items():
        if not isinstance(r, dict) or "rollout_s" not in r:
            continue
        lag, roll = r.get("confirmed_to_ready_ms") or {}, r["rollout_s"]
        lag_text = f"{lag['p50']:.0f} ms" if lag.get("n") else "-"
        lag_range = f"{lag['min']:.0f} / {lag['max']:.0f} ms (n={lag['n']})" if lag.get("n") else "-"
        roll_text = f"{roll['p50']:.2f} s" if roll.get("n") else "-"
        roll_range = f"{roll['min']:.2f} / {roll['max']:.2f} s (n={roll['n']})" if roll.get("n") else "-"
        lines.append(f"| {mode} | {lag_text} | {lag_range} | {roll_text} | {roll_range} |")
    return "\n".join(lines)


def _webhook_md(result: dict[str, Any]) -> str:
    lines = ["| clients | reviews | p50 | p99 | max |", "|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['clients']} | {r['count']} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | {r['max_ms']:.1f} ms |")
    lines.append("")
    lines.append(f"RSS after warm-up {result['rss_after_warmup_kib'] / 1024:.1f} MiB, peak {result['rss_peak_kib'] / 1024:.1f} MiB.")
    return "\n".join(lines)


def _image_md(result: dict[str, Any]) -> str:
    from bench.image import table

    return table(result).rstrip("\n")


def _scale_md(result: dict[str, Any]) -> str:
    from bench.scale import render_table

    return render_table(result).rstrip("\n")


RENDERERS: dict[str, Callable[[Any], str]] = {"main": _main_md, "flip_stages": _flip_stages_md,
                                              "gate_modes": _gate_modes_md, "webhook": _webhook_md,
                                              "image": _image_md, "scale": _scale_md}


def run_details(run: dict[str, Any], heading: str = "###") -> list[str]:
    """Each group's own table, in the run's order."""
    out: list[str] = []
    for name, g in run["groups"].items():
        out += ["", f"{heading} {GROUP_TITLES.get(name, name)}", ""]
        result = _result(run, name)
        if result is None:
            out.append(f"Not measured: the group failed (exit {g.get('rc')}); see its log.")
            continue
        out.append(RENDERERS[name](result).rstrip("\n"))
    return out


def header(run: dict[str, Any]) -> list[str]:
    meta = run["meta"]
    m, code = meta["machine"], meta["code"]
    dirty = ", with uncommitted changes: " + ", ".join(f"`{c.strip()}`" for c in code["changed"]) if code["dirty"] else \
        ", no uncommitted changes"
    lines = [
        f"- Command: `{meta['command']}` (preset `{meta['preset']}`; scale group: preset `{meta['scale_preset']}` of "
        f"bench/scale.py), {meta.get('duration_s', 0) / 60:.1f} min, started {meta['started_utc']}.",
        f"- Code: `{code['short']}` ({code.get('subject', '')}){dirty}.",
        f"- Machine: {m.get('nproc')} CPUs, `{m.get('cpu_model')}`, {m.get('memory_gb', '?')} GB, kernel "
        f"{m.get('kernel')}; Python {m.get('python')}; {m.get('consul')}; real nodes (kubelet + containerd): "
        f"{'yes' if meta.get('real_node') else 'no (the pod runner)'}.",
        f"- Load average {_load(meta['loadavg_start'])} at the start, "
        f"{_load(meta.get('loadavg_end', meta['loadavg_start']))} at the end; per group below.",
    ]
    if meta.get("code_end", {}).get("commit", code["commit"]) != code["commit"]:
        lines.append(f"- **HEAD moved during the run** (to `{meta['code_end']['short']}`): the groups ran on different commits.")
    return lines


def benchmarks_block(run: dict[str, Any]) -> str:
    lines = ["## Latest run", "",
             "Generated by `python bench/publish.py bench/out/all.json` from one `bash scripts/bench.sh --all` run; "
             "do not edit by hand (the README's performance table comes from the same json).", "",
             *header(run), "", groups_table(run)]
    targets = [r for r in (_result(run, "main") or {}).get("targets", []) if r.get("met") is not None]
    missed = [r for r in targets if r["met"] is False]
    lines += ["", f"Figures 1-9: {len(targets) - len(missed)} of {len(targets)} targeted rows met"
              + (": missed " + "; ".join(f"{r['figure']} ({r['stat']})" for r in missed) if missed else "")
              + ". Ratios are measured / target."]
    lines += run_details(run)
    return "\n".join(lines)


def render_all_md(run: dict[str, Any]) -> str:
    lines = [f"# bench --all: {describe(run)}", "", *header(run), "", groups_table(run), *run_details(run, "##")]
    return "\n".join(lines) + "\n"


# --- writing ----------------------------------------------------------------------------------

def replace_block(text: str, block: str, where: str) -> str:
    pattern = re.compile(rf"<!-- {MARKER}:start -->\n.*?<!-- {MARKER}:end -->", re.S)
    if len(pattern.findall(text)) != 1:
        raise NotPublishable(f"{where}: needs exactly one <!-- {MARKER}:start --> ... <!-- {MARKER}:end --> block")
    return pattern.sub(lambda _m: f"<!-- {MARKER}:start -->\n{block}\n<!-- {MARKER}:end -->", text)


def check_publishable(run: dict[str, Any]) -> None:
    meta = run["meta"]
    problems = []
    if meta.get("preset") != "full":
        problems.append(f"preset {meta.get('preset')!r}, not 'full'")
    missing = [g for g in GROUP_TITLES if g not in run["groups"]]
    if missing:
        problems.append(f"groups not run: {', '.join(missing)}")
    failed = [name for name, g in run["groups"].items() if not g.get("ok")]
    if failed:
        problems.append(f"groups failed: {', '.join(failed)}")
    if meta["code"].get("dirty"):
        problems.append("the tree had uncommitted changes")
    if meta.get("code_end", {}).get("commit", meta["code"]["commit"]) != meta["code"]["commit"]:
        problems.append("HEAD moved during the run")
    if problems:
        raise NotPublishable("; ".join(problems))


def publish(run: dict[str, Any], readme: Path, benchmarks: Path, allow_partial: bool = False) -> None:
    if not allow_partial:
        check_publishable(run)
    new_readme = replace_block(readme.read_text(), readme_block(run), str(readme))
    new_bench = replace_block(benchmarks.read_text(), benchmarks_block(run), str(benchmarks))
    readme.write_text(new_readme)
    benchmarks.write_text(new_bench)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("all_json", type=Path, help="bench/out/all.json of a `bench.sh --all` run")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--benchmarks", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--allow-partial", action="store_true",
                        help="publish a run that is not a complete, clean `full` run (tests only)")
    args = parser.parse_args(argv)
    run = json.loads(args.all_json.read_text())
    try:
        publish(run, args.readme, args.benchmarks, args.allow_partial)
    except NotPublishable as exc:
        print(f"not published: {exc}", file=sys.stderr)
        return 2
    print(f"published {describe(run)} into {args.readme} and {args.benchmarks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
