"""The benchmark runs end to end on a minimal workload and writes a complete, sane results file.

No timing thresholds: the numbers belong to BENCHMARKS.md, not to a pass/fail on a noisy machine.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import run as bench  # noqa: E402

pytestmark = pytest.mark.consul

SUMMARY_KEYS = {"n", "min", "p10", "p50", "p90", "p99", "max", "mean"}


def _summary(value: Any, *, positive: bool = True) -> None:
    assert set(value) == SUMMARY_KEYS, value
    assert value["n"] >= 1
    numbers = [value[k] for k in SUMMARY_KEYS - {"n"}]
    assert all(isinstance(x, (int, float)) and math.isfinite(x) for x in numbers), value
    assert all((x > 0) if positive else (x >= 0) for x in numbers), value
    assert value["min"] <= value["p10"] <= value["p50"] <= value["p90"] <= value["p99"] <= value["max"], value


def test_bench_smoke(consul_bin: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    params = bench.PRESETS["smoke"]
    bench.run(params, out, tmp_path / "img", preset="smoke", log=lambda _line: None)

    results = json.loads((out / "results.json").read_text())
    assert (out / "table.md").read_text().startswith("| figure |")
    assert set(results) >= {"meta", "figures", "targets", "samples"}
    machine = results["meta"]["machine"]
    assert machine["nproc"] >= 1 and machine["consul"] and machine["python"]
    figures = results["figures"]
    assert set(figures) == {"ready_to_passing", "deletion", "sigterm", "agent_restart", "idle", "gate", "scaling"}

    # 1 and 7: readiness flips, per fleet size
    assert set(figures["scaling"]) == {str(n) for n in params.scale_sizes}
    for entry in figures["scaling"].values():
        for key in ("flip_ms", "ready_to_passing_ms", "not_ready_to_critical_ms", "rss_mb"):
            _summary(entry[key])
        _summary(entry["cpu_pct_of_core"], positive=False)
    assert figures["ready_to_passing"]["flip_ms"]["n"] == params.flips_single
    # the raw floor, taken in the same run, and the flip's p50 as a multiple of it
    one = figures["ready_to_passing"]
    assert one["floor_ms"]["n"] + one["floor_dropped"] == params.flips_single
    assert 0 < figures["ready_to_passing"]["floor_ms"]["p50"] <= figures["ready_to_passing"]["flip_ms"]["p50"] * 10
    assert math.isfinite(figures["ready_to_passing"]["flip_to_floor_p50"])
    assert any(row["figure"].startswith("1. ... flip -> catalog p50 as a multiple") for row in results["targets"])

    # 2: termination
    for key in ("deletion", "sigterm"):
        _summary(figures[key]["critical_ms"])
        _summary(figures[key]["removed_ms"])
        assert figures[key]["critical_ms"]["n"] == params.termination_pods
    assert figures["sigterm"]["exit_codes"] == [0]

    # 3: agent restarts
    for key in ("to_passing_s", "to_leader_s", "down_s"):
        _summary(figures["agent_restart"][key])
        assert figures["agent_restart"][key]["n"] == params.restarts

    # 4 and 5: idle fleet
    idle = figures["idle"]
    assert idle["sidecars"] == params.idle_pods and idle["window_s"] > 0
    for key in ("catalog_services_index_changes", "health_service_index_changes", "api_requests_total"):
        assert isinstance(idle[key], int) and idle[key] >= 0
    for key in ("agent_requests_per_sidecar", "api_requests_per_sidecar", "servers_in_flight_per_sidecar",
                "server_requests_per_sidecar", "cpu_pct_of_core", "cpu_pct_of_core_schedstat",
                "watch_restarts_per_sidecar"):
        _summary(idle[key], positive=False)
    _summary(idle["rss_mb"])

    # 6: gate vs bare interpreter
    gate = figures["gate"]
    for key in ("gate_wall_ms", "bare_wall_ms", "gate_cpu_ms", "bare_cpu_ms", "gate_clean_wall_ms",
                "bare_clean_wall_ms", "gate_clean_cpu_ms", "bare_clean_cpu_ms"):
        _summary(gate[key])
        assert gate[key]["n"] == params.gate_samples
    assert gate["gate_exit_codes"] == [0], "the gate should pass against a confirmed sidecar"
    for key in ("wall_ratio", "cpu_ratio", "clean_wall_ratio", "clean_cpu_ratio"):
        assert math.isfinite(gate[key]) and gate[key] > 0

    # the table compares against every target of README.md's "Performance" table
    assert all({"figure", "value", "target", "met"} <= set(row) for row in results["targets"])
    assert all(math.isfinite(row["value"]) and row["value"] >= 0 for row in results["targets"])
    assert len(results["targets"]) >= 20


def test_flip_stages_smoke(consul_bin: str, tmp_path: Path) -> None:
    """bench/flip_stages.py (BENCHMARKS.md, where a flip's milliseconds go): every stage stamped
    in every flip of the traced run, in order, and the plain run's ratio to the floor."""
    from bench import flip_stages

    assert flip_stages.main(["--flips", "4", "--out", str(tmp_path)]) == 0
    runs = json.loads((tmp_path / "flip_stages.json").read_text())["runs"]
    assert set(runs) == {"plain", "traced"}
    for run in runs.values():
        assert run["flip_ms"]["n"] == 4 and run["floor_ms"]["n"] + run["floor_dropped"] == 4
        assert math.isfinite(run["flip_to_floor_p50"]) and run["flip_to_floor_p50"] > 0
    stages = runs["traced"]["stages"]["ms"]
    assert stages["API -> line parsed"]["n"] == 4
    assert stages["loop -> core done (Syncer._handle, Core.handle)"]["n"] == 4
    for record in runs["traced"]["records"]:
        stamps = record["stamps"]
        order = [k for k in ("emitted", "parse-end", "queued", "dequeued", "core-done", "call-begin") if k in stamps]
        assert order == ["emitted", "parse-end", "queued", "dequeued", "core-done", "call-begin"], stamps
        assert all(stamps[a] <= stamps[b] for a, b in zip(order, order[1:], strict=False)), stamps
        assert stamps["call-begin"] <= stamps["arrived"]


def test_percentiles() -> None:
    s = bench.summarize([4.0, 1.0, 3.0, 2.0])
    assert (s["min"], s["p50"], s["max"], s["n"]) == (1.0, 2.5, 4.0, 4)
    assert bench.summarize([7.0])["p99"] == 7.0
    assert bench.summarize([]) == {"n": 0}
