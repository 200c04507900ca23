"""bench/publish.py: the README's performance table and BENCHMARKS.md's "Latest run" come from
one `bench.sh --all` run's all.json and nothing else (issue 21, item 4). No benchmark runs here:
a small all.json made in this file stands in for a run."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import all as bench_all  # noqa: E402
from bench import publish  # noqa: E402


def _s(p50: float, p99: float | None = None, n: int = 20) -> dict[str, float]:
    p99 = p50 * 2 if p99 is None else p99
    return {"n": n, "min": p50 * 0.5, "p10": p50 * 0.7, "p50": p50, "p90": p50 * 1.5, "p99": p99, "max": p99 * 1.1,
            "mean": p50}


def _fault(cpu: float, rps: float) -> dict[str, Any]:
    return {"cpu_pct_of_core": cpu, "cpu_pct_of_core_schedstat": cpu, "requests_per_s": rps, "window_s": 20.0,
            "consul_agent_requests": 3, "consul_server_requests": 0, "api_requests": 0, "register_requests": 0,
            "register_per_s": 0.05}


def _scale_run(design: str, n: int, reads_per_pod: float, p99: float) -> dict[str, Any]:
    return {"design": design, "n": n, "clients": max(2, n // 25), "completed": True,
            "client_reads": reads_per_pod * n, "confirm_ms": [p99 * 0.5, p99 * 0.6, p99],
            "server": {"rpc_query": 5.0 * n, "grpc_streams": 0.0, "cpu_s": 0.03 * n, "cpu_s_net": 0.025 * n,
                       "bytes_written": 2e5 * n, "clients_cpu_s": 0.02 * n},
            "idle_server": {"rpc_query": 2.0}, "baseline_server": {"rpc_query": 12.0}, "drains": n, "drains_ok": n,
            "driver_cpu_s": 0.02 * n, "duration_s": n / 10, "pace": 10.0, "note": ""}


def fixture() -> dict[str, Any]:
    """An all.json as `bench.sh --all` writes it, with every figure the generator reads."""
    main = {
        "figures": {
            "ready_to_passing": {"flip_ms": _s(3.21, 6.54, 200), "floor_ms": _s(2.47), "flip_to_floor_p50": 1.2996},
            "scaling": {"1": {"flip_ms": _s(3.21, 6.54)}, "10": {"flip_ms": _s(4.4)},
                        "50": {"flip_ms": _s(10.9, 18.7)}},
            "deletion": {"critical_ms": _s(6.12), "removed_ms": _s(13.0)},
            "sigterm": {"critical_ms": _s(8.76), "removed_ms": _s(19.0)},
            "agent_restart": {"to_passing_s": _s(0.31, 0.7, 5) | {"max": 0.83}},
            "idle": {"sidecars": 20, "window_s": 60.0, "catalog_index_changes_per_min": 0.0,
                     "api_requests_per_sidecar": _s(0.0), "servers_in_flight_per_sidecar": _s(0.0),
                     "rss_mb": _s(31.05) | {"max": 31.17}, "cpu_pct_of_core_schedstat": _s(0.0514)},
            "gate": {"gate_clean_cpu_ms": _s(1.41), "clean_cpu_ratio": 0.093, "probe_cpu_pct_of_core": 0.0705,
                     "probe_period_s": 2.0},
            "faults": {"window_s": 20.0, "states": {"agent down": _fault(0.11, 0.93),
                                                    "read flaps, writes failing": _fault(0.23, 0.9)}},
            "rollout": {
                "Consul healthy": {"completed": True, "min_healthy": 3, "duration_s": 16.4,
                                   "deleted_while_servers_down": 0, "end_state_new_pods_only": True,
                                   "gate_wait_s": {"p50": 0.041, "p99": 0.097}},
                "Consul server down for the first 15 s": {
                    "completed": True, "min_healthy": 3, "duration_s": 30.2, "deleted_while_servers_down": 0,
                    "end_state_new_pods_only": True, "gate_wait_s": {"p50": 7.6, "p99": 14.8}}},
        },
        "targets": [{"figure": "1. flip", "stat": "p50", "value": 3.21, "spread": "", "target": 50.0, "unit": "ms",
                     "ratio_to_target": 0.06, "met": True, "lower_is_better": True}],
    }
    scale = {"meta": {"preset": "all", "params": {"pace": 10.0, "idle_s": 5.0}, "stopped": {}},
             "runs": [_scale_run("none", 1, 0.0, 0.0), _scale_run("node", 1, 5.0, 5.9),
                      _scale_run("none", 100, 0.0, 0.0), _scale_run("node", 100, 5.0, 12.1),
                      _scale_run("none", 500, 0.0, 0.0), _scale_run("node", 500, 5.02, 11.6)],
             "model": {"node": {"answers_slope": 1.003, "query_slope": 1.01, "cpu_slope": 1.02,
                                "confirm_cpu_slope": 0.9, "largest_n": 500}}}
    results = {
        "main": main,
        "flip_stages": {"load": [[0.4, 0.5, 0.6], [0.5, 0.5, 0.6]], "runs": {}},
        "gate_modes": {"real_node": True, "rounds": 3, "replicas": 3, "kubelet": {"kubelet": "v1.34.4"},
                       "exec": {"confirmed_to_ready_ms": _s(892.0, n=9), "rollout_s": _s(21.0, n=3)},
                       "condition": {"confirmed_to_ready_ms": _s(1983.0, 2850.0, n=9), "rollout_s": _s(27.0, n=3)}},
        "webhook": {"reviews": 3000, "rss_after_warmup_kib": 40960, "rss_peak_kib": 45056,
                    "runs": [{"clients": 1, "count": 3000, "p50_ms": 1.1, "p99_ms": 2.2, "max_ms": 9.0}]},
        "image": {"size": {"image_bytes": 2e8, "base_bytes": 1.6e8, "added_bytes": 4e7, "compressed_bytes": 7e7,
                           "compressed_added_bytes": 1.5e7},
                  "memory": {"rss_mib": [30.0, 31.0], "rss_anon_mib": [20.0, 21.0], "working_set_mib": []},
                  "gate": {"argv": {}, "per_round": [{"gate_cpu_ms": 1.5, "bare_cpu_ms": 12.0, "gate_wall_ms": 2.0,
                                                      "bare_wall_ms": 14.0}]}},
        "scale": scale,
    }
    load = [0.31, 0.4, 0.5]
    groups = {name: {"command": f"python {name}", "rc": 0, "ok": True, "wall_s": 60.0, "loadavg_start": load,
                     "loadavg_end": [0.52, 0.4, 0.5], "result": results[name]} for name in bench_all.GROUPS}
    code = {"commit": "a" * 40, "short": "aaaaaaa", "subject": "a commit", "dirty": False, "changed": []}
    return {"meta": {"preset": "full", "scale_preset": "all", "command": "bash scripts/bench.sh --all",
                     "started_utc": "2026-12-07T05:10:00Z", "real_node": True, "code": code, "code_end": dict(code),
                     "machine": {"nproc": 2, "cpu_model": "a CPU", "kernel": "6", "python": "3.11.7",
                                 "consul": "Consul v1.16.1", "memory_gb": 24.0},
                     "loadavg_start": load, "loadavg_end": [0.52, 0.4, 0.5], "duration_s": 1400.0},
            "groups": groups}


def _perturbed(value: Any) -> Any:
    """Every measured float moved (zeros too): a cell that does not move was not read from the run."""
    if isinstance(value, dict):
        return {k: _perturbed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_perturbed(v) for v in value]
    if isinstance(value, float):
        return value * 1.5 + 0.25
    return value


def _table(text: str) -> list[tuple[str, str]]:
    block = re.search(r"<!-- bench-all:start -->\n(.*?)<!-- bench-all:end -->", text, re.S)
    assert block, "the README has no bench-all block"
    rows = [line for line in block.group(1).splitlines() if line.startswith("| ") and not line.startswith("| target")]
    cells = []
    for row in rows:
        parts = [c.strip() for c in row.strip("|").split(" | ")]
        assert len(parts) == 2, row
        cells.append((parts[0], parts[1]))
    return cells


@pytest.fixture()
def docs(tmp_path: Path) -> tuple[Path, Path]:
    readme, benchmarks = tmp_path / "README.md", tmp_path / "BENCHMARKS.md"
    readme.write_text((REPO / "README.md").read_text())
    benchmarks.write_text((REPO / "BENCHMARKS.md").read_text())
    return readme, benchmarks


def test_every_readme_row_comes_from_the_run(docs: tuple[Path, Path], tmp_path: Path) -> None:
    readme, benchmarks = docs
    before = _table(readme.read_text())
    run = fixture()
    source = tmp_path / "all.json"
    source.write_text(json.dumps(run))
    assert publish.main([str(source), "--readme", str(readme), "--benchmarks", str(benchmarks)]) == 0
    text = readme.read_text()
    after = _table(text)
    # The table keeps its targets (the rollout's row added if a README from before it lacked one)
    # and the rest of the README is untouched.
    targets_before, targets_after = [t for t, _ in before], [t for t, _ in after]
    assert [t for t in targets_after if not t.startswith("rolling update")] == \
        [t for t in targets_before if not t.startswith("rolling update")]
    assert sum(t.startswith("rolling update") for t in targets_after) == 1
    assert len(after) == len([t for t in targets_before if not t.startswith("rolling update")]) + 1
    outside = re.sub(r"<!-- bench-all:start -->.*?<!-- bench-all:end -->", "", text, flags=re.S)
    assert outside == re.sub(r"<!-- bench-all:start -->.*?<!-- bench-all:end -->", "", (REPO / "README.md").read_text(),
                             flags=re.S)
    # Every measured cell is the generator's, and moves with the run: no number kept by hand.
    moved = [cell for _, cell in _table("<!-- bench-all:start -->\n" + publish.readme_block(_perturbed(run))
                                        + "\n<!-- bench-all:end -->")]
    for (target, cell), other in zip(after, moved, strict=True):
        assert "not measured" not in cell, target
        assert cell != other, f"the measured cell of {target!r} does not come from the run"
    cells = "\n".join(cell for _, cell in after)
    for expected in ("p50 3.2 ms, p99 6.5 ms (50 sidecars on one agent: 10.9 / 18.7 ms)", "1.30 ×", "p50 6.1 ms",
                     "8.8 ms", "p50 0.31 s, worst 0.83 s", "31.2 MB, 0.051 %", "1.41 ms, 0.09 ×",
                     "at most 0.23 % (read flaps, writes failing) and 0.93 requests/s (agent down)",
                     "gate wait p50 41 ms / p99 97 ms", "gate wait p50 7.6 s / p99 14.8 s", "answers a pod: 5.0 at N = 100, 5.0 at N = 500 (log-log slope 1.00)",
                     "11.5 ms at 500, the largest N of this run", "preset `all`",
                     "**not met, bound by the kubelet**: new pods in 3 rollouts of 3 replicas, p50 1983 ms, p99 2850 ms "
                     "(n=9, kubelet v1.34.4); the exec gate in the same run: p50 892 ms"):
        assert expected in cells, expected
    assert "commit `aaaaaaa`" in text and "load average 0.31 at the start, 0.52 at the end" in text
    # BENCHMARKS.md: "Latest run" is the same run, every group's table in it.
    latest = benchmarks.read_text()
    assert "- Code: `aaaaaaa` (a commit), no uncommitted changes." in latest
    for name in bench_all.GROUPS:
        assert f"| {name} | `python {name}` | 60 s | 0.31 -> 0.52 | ok |" in latest
    assert "| 1 | 3000 | 1.10 ms | 2.20 ms | 9.0 ms |" in latest  # webhook
    assert "| node | 500 | " in latest  # scale


def test_refuses_anything_but_a_complete_clean_full_run(docs: tuple[Path, Path], tmp_path: Path) -> None:
    readme, benchmarks = docs
    original = readme.read_text()
    for change in ("smoke", "dirty", "failed", "missing"):
        run = copy.deepcopy(fixture())
        if change == "smoke":
            run["meta"]["preset"] = "smoke"
        elif change == "dirty":
            run["meta"]["code"]["dirty"] = True
        elif change == "failed":
            run["groups"]["image"]["ok"] = False
        else:
            del run["groups"]["scale"]
        source = tmp_path / f"{change}.json"
        source.write_text(json.dumps(run))
        assert publish.main([str(source), "--readme", str(readme), "--benchmarks", str(benchmarks)]) == 2, change
        assert readme.read_text() == original


def test_the_committed_docs_have_one_block_each() -> None:
    for path in (REPO / "README.md", REPO / "BENCHMARKS.md"):
        text = path.read_text()
        assert text.count("<!-- bench-all:start -->") == 1 and text.count("<!-- bench-all:end -->") == 1, path


def test_all_runs_every_group_and_a_scale_preset_that_fits(tmp_path: Path) -> None:
    from bench.scale import SCALE_PRESETS

    full = {g.name: g for g in bench_all.groups("full", tmp_path, "-", node=True)}
    assert tuple(full) == bench_all.GROUPS
    assert "--node" in full["gate_modes"].argv
    scale = SCALE_PRESETS[bench_all.SCALE_PRESET["full"]]
    assert max(scale.sizes) <= 500 and "node" in scale.designs and "none" in scale.designs
    smoke = {g.name: g for g in bench_all.groups("smoke", tmp_path, "-", node=False)}
    assert smoke["main"].argv[smoke["main"].argv.index("--preset") + 1] == "smoke-all"
    assert "--node" not in smoke["gate_modes"].argv
    md = publish.render_all_md(fixture())
    assert md.startswith("# bench --all: commit `aaaaaaa`") and "## Consul at scale" in md
