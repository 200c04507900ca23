"""The scale benchmark runs end to end on a tiny size and writes complete, sane results.

No timing thresholds: the numbers belong to BENCHMARKS.md. What is asserted is what must hold
at any size: every virtual pod confirmed and drained, and each design reaching the servers
the way it claims (the node-scoped design opens no streaming subscription; the service-scoped
one wakes on other pods' changes, so it answers more reads than it has pods to confirm).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import scale  # noqa: E402

pytestmark = pytest.mark.consul


@pytest.mark.parametrize("pace", [20.0, 0.0], ids=["paced", "burst"])
def test_scale_smoke(consul_bin: str, tmp_path: Path, pace: float) -> None:
    params = replace(scale.SCALE_PRESETS["smoke"], pace=pace)
    results = scale.run_scale(params, tmp_path / "out", None, tmp_path / "work", preset="smoke", log=lambda _l: None)
    written = json.loads((tmp_path / "out" / "scale.json").read_text())
    assert written["runs"] == results["runs"]
    assert (tmp_path / "out" / "scale.md").read_text().startswith("| design | N |")
    runs = {(r["design"], r["n"]): r for r in results["runs"]}
    assert set(runs) == {(d, n) for d in params.designs for n in params.sizes}
    for (_design, n), r in runs.items():
        assert r["completed"], r
        assert len(r["confirm_ms"]) == n * (params.single_repeats if n == 1 else 1) and all(ms >= 0 for ms in r["confirm_ms"])
        assert r["drains_ok"] == r["drains"] == n * (params.single_repeats if n == 1 else 1)
        assert r["server"]["cpu_s"] > 0 and r["server"]["bytes_written"] > 0
        assert r["pace"] == pace and r["driver_cpu_s"] > 0
        # Every design on its own server and agents: nothing left open by another design.
        assert r["server"]["open_streams"] == 0 or _design == "service"
        # Two reads at least per confirmation (the instance, then its checks) plus the drain's;
        # the baseline makes the same writes and reads nothing.
        assert r["client_reads"] >= 2 * n if _design != "none" else r["client_reads"] == 0
    biggest = max(params.sizes)
    node, service = runs[("node", biggest)], runs[("service", biggest)]
    assert node["server"]["grpc_streams"] == 0  # plain blocking RPCs, node-scoped
    assert node["server"]["rpc_query"] >= node["client_reads"] * 0.9
    assert service["server"]["grpc_streams"] > 0  # /v1/health/service goes through streaming
    assert set(results["model"]) == set(params.designs)
    assert scale.slope([(10, 10), (100, 100)]) == pytest.approx(1.0)
    assert scale.slope([(10, 100), (100, 10000)]) == pytest.approx(2.0)
