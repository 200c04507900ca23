"""bench/gate_modes.py runs both modes end to end (one pod each): the figures exist, nothing is timed here."""

from __future__ import annotations

import math

import pytest

from bench import gate_modes

pytestmark = [pytest.mark.consul, pytest.mark.timeout(240)]


def test_both_modes_roll_and_report(consul_bin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSUL_BIN", consul_bin)
    results = gate_modes.measure(rounds=1, replicas=1, log=lambda _s: None)
    for mode in ("exec", "condition"):
        lag = results[mode]["confirmed_to_ready_ms"]
        assert lag["n"] == 1 and math.isfinite(lag["p50"])
        assert results[mode]["rollout_s"]["n"] == 1
    assert results["exec"]["probe_runs"] >= 1, "exec mode is Ready only through a passing gate run"
    assert results["condition"]["probe_runs"] == 0, "condition mode is Ready without any probe run"
