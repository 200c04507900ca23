"""Figure 9 of the benchmark runs end to end, in short windows, and measures each fault state
it names (the sidecar really is in that fault when measured). No thresholds: the numbers
belong to BENCHMARKS.md."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import run as bench  # noqa: E402

pytestmark = [pytest.mark.consul, pytest.mark.timeout(240)]


def test_fault_figure(consul_bin: str) -> None:
    out = bench.measure_faults(window=1.0, settle=1.0, log=lambda _line: None)
    states = out["states"]
    assert set(states) == set(bench.FAULT_STATES)
    for state, entry in states.items():
        for key in ("cpu_pct_of_core", "cpu_pct_of_core_schedstat", "requests_per_s"):
            assert math.isfinite(entry[key]) and entry[key] >= 0, (state, key, entry)
        assert entry["window_s"] >= 1.0
    assert "waiting for the agent" in states["agent down"]["gate"]
    assert "drained and deregistered" in states["drained, waiting for SIGTERM"]["gate"]
    assert "Consul refused web" in states["403 from Consul"]["gate"]
    rows = bench.fault_rows(out)
    assert len(rows) == 2 * len(bench.FAULT_STATES)
    assert all(r["target"] in (bench.TARGET_FAULT_CPU_PCT, bench.TARGET_FAULT_RPS) for r in rows)
