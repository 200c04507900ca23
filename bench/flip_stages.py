"""Where a readiness flip's milliseconds go: flip -> catalog, stage by stage, against the raw floor.

    bash scripts/bench.sh --flip-stages [--flips 100] [--runs plain,traced] [--out bench/out]
    (or: CONSUL_BIN=... python bench/flip_stages.py ...)

One sidecar against a Consul dev agent and the fake API (bench/run.py's world), its app
container flipped `--flips` times; after each flip the raw floor (bench.run.FloorProbe: one TTL
check update from the benchmark itself, seen by a waiting blocking query) is sampled, so both
see the same load. Two runs by default, each with a fresh sidecar:

- `plain`: the installed `katalog-sidecar`, exactly as figure 1; prints flip -> catalog p50 as a
  multiple of the floor p50 (issue 18: <= 1.5x).
- `traced`: the same sidecar started through a launcher that installs bench/flip_trace.py's
  stamps first (about a microsecond each); prints the per-stage p50/p90 table below, from
  the fake API writing the watch event to the catalog query's answer that shows the new status.

Stages (ms, each from the end of the previous one):
  API -> line parsed        fake API writes the event; the sidecar's watch thread reads and json-parses it
  parsed -> queued          observe_pod, the sink chain, the put on the sync loop's queue
  queued -> loop has it     the handoff to the loop's thread (a lock wake-up and the GIL)
  loop -> core done         Syncer._handle up to Core.handle's return
  core -> call begins       the actions before the call (log lines)
  call -> request sent      requests/urllib3 builds and writes the PUT
  sent -> catalog answer    the agent applies the update and the waiting health query answers
The floor has the same last stage (PUT written -> answer), plus its own request building.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import harness  # noqa: E402
from bench.run import (  # noqa: E402
    MS,
    PRESETS,
    TARGET_FLIP_TO_FLOOR,
    FloorProbe,
    World,
    console_script,
    measure_flips,
    summarize,
)

STAGES = [  # (label, from stamp, to stamp); "emitted"/"arrived" are the benchmark's own
    ("API -> line parsed", "emitted", "parse-end"),
    ("  of which json.loads of the line", "parse-begin", "parse-end"),
    ("parsed -> queued (observe_pod, sinks, put)", "parse-end", "queued"),
    ("queued -> loop has it (thread handoff)", "queued", "dequeued"),
    ("loop -> core done (Syncer._handle, Core.handle)", "dequeued", "core-done"),
    ("core done -> call begins (actions before the call)", "core-done", "call-begin"),
    ("call begins -> request sent (requests/urllib3)", "call-begin", "sent"),
    ("sidecar's share: API -> request sent", "emitted", "sent"),
    ("request sent -> agent's response read", "sent", "answered"),
    ("request sent -> catalog answer at the benchmark", "sent", "arrived"),
    ("total: API -> catalog answer (figure 1's flip)", "emitted", "arrived"),
]
ORDER = ["parse-begin", "parse-end", "sink", "queued", "dequeued", "core-done", "call-begin", "sent", "answered",
         "call-end"]


def launcher(tmp: Path, trace_out: Path) -> str:
    """An executable that installs the stamps, then runs the sidecar's console entry point."""
    path = tmp / "katalog-sidecar-traced"
    path.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
                    f"from bench import flip_trace\nflip_trace.install({str(trace_out)!r})\n"
                    "from sidecar.entry import main\nsys.exit(main())\n")
    path.chmod(0o755)
    return str(path)


def one_run(world: World, name: str, flips: int, rng: random.Random, trace_out: Path | None) -> dict[str, Any]:
    harness.SIDECAR = launcher(world.work, trace_out) if trace_out is not None else console_script("katalog-sidecar")
    fleet = world.fleet(1, name)
    probe = FloorProbe(world)
    records: list[dict[str, Any]] = []
    try:
        def on_flip(_pod: Any, want: str, emitted: float, arrived: float, asked: float) -> None:
            records.append({"want": want, "emitted": emitted, "arrived": arrived, "asked": asked})

        result = measure_flips(world, fleet, flips, PRESETS["full"], rng, probe.sample, on_flip)
    finally:
        probe.close()
        world.dismiss(fleet)  # SIGTERM: a traced sidecar writes its stamps as it exits
    all_flips = result["ready_to_passing_ms"] + result["not_ready_to_critical_ms"]
    flip, floor = summarize(all_flips), summarize(probe.samples)
    out: dict[str, Any] = {"flip_ms": flip, "floor_ms": floor, "flip_to_floor_p50": flip["p50"] / floor["p50"],
                           "floor_late": probe.late, "floor_dropped": probe.dropped,
                           "floor_put_build_ms": summarize([(w - s) * MS for s, w, _ in probe.parts]),
                           "floor_sent_to_answer_ms": summarize([(a - w) * MS for _, w, a in probe.parts]),
                           "records": records}
    if trace_out is not None:
        stamps = [json.loads(line) for line in trace_out.read_text().splitlines()]
        out["stages"] = stages(records, stamps)
    return out


def stages(records: list[dict[str, Any]], stamps: list[dict[str, Any]]) -> dict[str, Any]:
    """Each flip's stamps (the first of each stage after the previous one, inside the flip's
    window), and per stage the summary over flips; also what other threads did in the window."""
    per_stage: dict[str, list[float]] = {label: [] for label, _, _ in STAGES}
    wakes: dict[str, int] = {}
    status_writes_before_answer = 0
    late_queries = 0  # flips whose catalog query was sent only after the sidecar's PUT
    for record in records:
        lo, hi = record["emitted"] * 1e9, record["arrived"] * 1e9
        window = [s for s in stamps if lo - 1e6 <= s["ns"] <= hi]
        found: dict[str, float] = {"emitted": record["emitted"], "arrived": record["arrived"]}
        after = lo
        for stage in ORDER:
            hit = next((s for s in window if s["stage"] == stage and s["ns"] >= after
                        and (stage != "parse-end" or s["detail"] == "MODIFIED")), None)
            if hit is None:
                continue
            found[stage] = hit["ns"] / 1e9
            after = hit["ns"]
        if "parse-end" in found:  # the parse-begin that belongs to that line
            begins = [s["ns"] for s in window if s["stage"] == "parse-begin" and s["ns"] <= found["parse-end"] * 1e9]
            if begins:
                found["parse-begin"] = max(begins) / 1e9
        record["stamps"] = found
        for label, start, end in STAGES:
            if start in found and end in found:
                per_stage[label].append((found[end] - found[start]) * MS)
        if "sent" in found and record["asked"] > found["sent"]:
            late_queries += 1
        sent = found.get("sent", hi / 1e9) * 1e9
        for s in window:
            if s["stage"] == "wake" and sent <= s["ns"] <= hi:
                wakes[s["thread"]] = wakes.get(s["thread"], 0) + 1
            if s["stage"] == "status-write" and sent <= s["ns"] <= hi:
                status_writes_before_answer += 1
    return {"ms": {label: summarize(v) for label, v in per_stage.items()},
            "other_threads_answered_between_sent_and_catalog": wakes,
            "status_writes_between_sent_and_catalog": status_writes_before_answer,
            "flips_whose_query_was_asked_after_the_put": late_queries}


def render(runs: dict[str, dict[str, Any]], load: tuple[list[float], list[float]]) -> str:
    lines = [f"load average {load[0][0]:.2f} {load[0][1]:.2f} {load[0][2]:.2f} -> "
             f"{load[1][0]:.2f} {load[1][1]:.2f} {load[1][2]:.2f}, {os.cpu_count()} CPUs", ""]
    for name, r in runs.items():
        f, fl = r["flip_ms"], r["floor_ms"]
        verdict = "ok" if r["flip_to_floor_p50"] <= TARGET_FLIP_TO_FLOOR else "over"
        lines.append(f"{name}: flip -> catalog p50 {f['p50']:.2f} ms (p90 {f['p90']:.2f}, n {f['n']}); floor p50 "
                     f"{fl['p50']:.2f} ms (p90 {fl['p90']:.2f}); ratio {r['flip_to_floor_p50']:.2f}x "
                     f"(target <= {TARGET_FLIP_TO_FLOOR}x: {verdict})")
        if r["floor_late"]:
            lines.append(f"{name}: {r['floor_late']} floor sample(s) taken again (the query was not yet waiting), "
                         f"{r['floor_dropped']} given up")
        lines.append(f"{name}: floor = building the PUT {r['floor_put_build_ms']['p50']:.2f} ms + PUT written -> "
                     f"answer {r['floor_sent_to_answer_ms']['p50']:.2f} ms (p50s)")
        if "stages" in r:
            lines += ["", "| stage | p50 ms | p90 ms | n |", "|---|---:|---:|---:|"]
            for label, s in r["stages"]["ms"].items():
                if s.get("n"):
                    lines.append(f"| {label} | {s['p50']:.3f} | {s['p90']:.3f} | {s['n']} |")
            lines.append(f"| floor: building the PUT (the floor writer's requests) | {r['floor_put_build_ms']['p50']:.3f} | "
                         f"{r['floor_put_build_ms']['p90']:.3f} | {r['floor_put_build_ms']['n']} |")
            lines.append(f"| floor: request sent -> catalog answer | {r['floor_sent_to_answer_ms']['p50']:.3f} | "
                         f"{r['floor_sent_to_answer_ms']['p90']:.3f} | {r['floor_sent_to_answer_ms']['n']} |")
            lines.append("")
            lines.append("other threads of the sidecar answered between its PUT and the catalog answer: "
                         f"{r['stages']['other_threads_answered_between_sent_and_catalog'] or 'none'}; "
                         f"status file writes there: {r['stages']['status_writes_between_sent_and_catalog']}; flips whose "
                         f"catalog query was sent after the PUT: {r['stages']['flips_whose_query_was_asked_after_the_put']}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flips", type=int, default=100, help="measured flips per run (each followed by a floor sample)")
    parser.add_argument("--runs", default="plain,traced", help="comma-separated: plain, traced")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out", help="writes flip_stages.json here")
    args = parser.parse_args(argv)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if not runs or any(r not in ("plain", "traced") for r in runs):
        parser.error("--runs takes plain and/or traced")
    load0 = list(os.getloadavg())
    rng = random.Random(1)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="katalog-flip-stages-") as tmp:
        world = World(Path(tmp))
        try:
            world.start()
            for name in runs:
                trace = Path(tmp) / f"stamps-{name}.jsonl" if name == "traced" else None
                print(f"[{name}] {args.flips} flips, each followed by a floor sample", file=sys.stderr, flush=True)
                results[name] = one_run(world, name, args.flips, rng, trace)
        finally:
            world.stop()
    load1 = list(os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flip_stages.json").write_text(json.dumps({"load": [load0, load1], "runs": results}, indent=1))
    print(render(results, (load0, load1)))
    print(f"written: {args.out / 'flip_stages.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
