"""Fail-open (KATALOG_FAIL_OPEN_AFTER / katalog-sidecar.io/fail-open-after): a core transition
(pure tests on a virtual clock), and a real sidecar with the real Consul servers stopped."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from core_harness import AgentModel, Run, config, observation
from http_app import ToggleApp
from sidecar_process import base_env, wait_until
from test_config import VALID
from test_status_and_metrics import _free_port, _scrape

from sidecar import observers as so
from sidecar.config import load_config
from sidecar.core import actions as a
from sidecar.core import events as e
from sidecar.core.phases import Phase
from sidecar.errors import ConfigError


def _gate(run: Run) -> a.GateVerdict:
    return [x for x in run.actions if isinstance(x, a.GateVerdict)][-1]


def _notified(run: Run, reason: str) -> list[str]:
    return [x.message for x in run.actions if isinstance(x, a.Notify) and x.reason == reason]


def test_not_confirming_fails_open_after_the_setting_counted_from_app_ready_and_leaves_on_confirmation() -> None:
    run = Run(config(KATALOG_FAIL_OPEN_AFTER="20s"), auto_confirm=False)
    run.send(e.PodObserved(observation(ready=False)))
    run.advance(100)  # not ready for a long time: never counts
    assert run.core.phase is Phase.CONFIRMING and not _gate(run).passes
    run.send(e.PodObserved(observation(ready=True)))
    ready_at = run.now
    run.send(e.ConfirmResult(2, "pending", "agent accepted web but the catalog cannot be read: No cluster leader"))
    run.advance(19.9)
    assert run.core.phase is Phase.CONFIRMING and not _gate(run).passes
    run.advance(0.2)
    assert run.core.phase is Phase.FAILED_OPEN
    opened = [t for t, x in run.timeline if isinstance(x, a.PhaseChanged) and x.new == "failed-open"]
    assert opened == [ready_at + 20]  # woken for it: not at the next heartbeat
    verdict = _gate(run)
    assert verdict.passes
    assert verdict.line == ("ok, failed open after 20s: Consul has not confirmed (registration goes on): "
                            "agent accepted web but the catalog cannot be read: No cluster leader")
    assert run.last_status()["phase"] == "failed-open"
    assert _notified(run, so.CONSUL_GATE_FAILED_OPEN) == [verdict.line.removeprefix("ok, ")]
    assert any(m.startswith("failed open after 20s") for m in run.logs())
    run.send(e.ConfirmResult(2, "confirmed"))
    assert run.core.phase is Phase.CONFIRMED and _gate(run).passes
    assert "the catalog confirms the registration: no longer failed open" in run.logs()
    assert _notified(run, so.CONFIRMED)


def test_continuous_mode_counts_from_the_lost_confirmation_not_from_app_ready() -> None:
    run = Run(config(KATALOG_FAIL_OPEN_AFTER="20s", KATALOG_GATE_MODE="continuous"), auto_confirm=False)
    run.send(e.PodObserved(observation(ready=True)))
    run.send(e.ConfirmResult(1, "confirmed"))
    run.advance(100)
    assert _gate(run).passes and run.core.phase is Phase.CONFIRMED
    run.send(e.ConfirmResult(1, "lost", "agent accepted web but the catalog cannot be read: No cluster leader"))
    assert not _gate(run).passes
    lost_at = run.now
    run.advance(19.9)
    assert not _gate(run).passes and run.core.phase is Phase.CONFIRMING
    run.advance(0.2)
    assert run.core.phase is Phase.FAILED_OPEN
    assert [t for t, x in run.timeline if isinstance(x, a.PhaseChanged) and x.new == "failed-open"] == [lost_at + 20]


def test_never_for_the_pods_own_reasons() -> None:
    # A 403 needs a fix: held however long it lasts.
    refused = AgentModel(fail=lambda c: e.Failure(e.FailureKind.FORBIDDEN, "Permission denied")
                         if isinstance(c, a.Register) else None)
    run = Run(config(KATALOG_FAIL_OPEN_AFTER="5s"), agent=refused)
    run.send(e.PodObserved(observation(ready=True)))
    run.advance(300)
    assert run.core.phase is Phase.REGISTERING and not _gate(run).passes
    assert not _notified(run, so.CONSUL_GATE_FAILED_OPEN)
    # The app not ready (with the catalog down as well): held.
    run = Run(config(KATALOG_FAIL_OPEN_AFTER="5s"), auto_confirm=False)
    run.send(e.PodObserved(observation(ready=False)))
    run.advance(300)
    assert not _gate(run).passes and run.core.phase is not Phase.FAILED_OPEN


def test_failed_open_closes_again_when_the_app_turns_unready() -> None:
    run = Run(config(KATALOG_FAIL_OPEN_AFTER="5s"), auto_confirm=False)
    run.send(e.PodObserved(observation(ready=True)))
    run.advance(6)
    assert run.core.phase is Phase.FAILED_OPEN
    run.send(e.PodObserved(observation(ready=False)))
    assert not _gate(run).passes
    assert "no longer failed open: the gate is closed for a reason of the pod's own" in run.logs()
    assert run.core.phase in (Phase.REGISTERING, Phase.CONFIRMING)


def test_an_agent_that_does_not_answer_counts_and_without_the_setting_the_gate_holds() -> None:
    down = AgentModel(fail=lambda _c: e.Failure(e.FailureKind.UNAVAILABLE, "connection refused"))
    run = Run(config(KATALOG_FAIL_OPEN_AFTER="30s"), agent=down)
    run.send(e.PodObserved(observation(ready=True)))
    run.advance(31)
    assert run.core.phase is Phase.FAILED_OPEN and _gate(run).passes
    assert "waiting for the agent" in _gate(run).line
    held = Run(agent=AgentModel(fail=down.fail))
    held.send(e.PodObserved(observation(ready=True)))
    held.advance(600)
    assert not _gate(held).passes


def test_setting_and_annotation() -> None:
    assert load_config(VALID).fail_open_after is None
    assert load_config(dict(VALID, KATALOG_FAIL_OPEN_AFTER="10m")).fail_open_after == 600
    annotated = {"katalog-sidecar.io/fail-open-after": "20s"}
    assert load_config(VALID, annotated).fail_open_after == 20
    assert load_config(dict(VALID, KATALOG_FAIL_OPEN_AFTER="1m"), annotated).fail_open_after == 60  # env wins
    with pytest.raises(ConfigError) as bad:
        load_config(VALID, {"katalog-sidecar.io/fail-open-after": "soon"})
    assert any(p.startswith("katalog-sidecar.io/fail-open-after='soon': ") for p in bad.value.problems)
    with pytest.raises(ConfigError) as zero:
        load_config(dict(VALID, KATALOG_FAIL_OPEN_AFTER="0s"))
    assert any(p.startswith("KATALOG_FAIL_OPEN_AFTER='0s'") for p in zero.value.problems)


@pytest.mark.consul
def test_servers_stopped_a_pod_with_fail_open_turns_ready_and_one_without_does_not(
        server_client: Any, run_sidecar: Any, tmp_path: Path) -> None:
    """Real sidecars, a real Consul server + client agent, real apps probed over HTTP."""
    server_client.server.stop()
    sidecars = {}
    with ToggleApp() as app:
        for name, extra in (("fails-open", {"KATALOG_FAIL_OPEN_AFTER": "3s"}), ("holds", {})):
            port = _free_port()
            env = base_env(tmp_path / name, server_client.client.addr, POD_NAME=name,
                           KATALOG_READINESS_SOURCE="http", KATALOG_READINESS_HTTP_URL=app.url,
                           KATALOG_READINESS_PROBE_INTERVAL="200ms", KATALOG_METRICS_ADDR=f"127.0.0.1:{port}", **extra)
            sidecars[name] = (run_sidecar(env, name=name), f"http://127.0.0.1:{port}/metrics")
        for sidecar, _ in sidecars.values():
            sidecar.wait_gate(passing=False, contains="app is not ready")
        app.ready = True
        ready_at = time.monotonic()
        failing, url = sidecars["fails-open"]
        line = failing.wait_gate(passing=True, timeout=30)
        opened_after = time.monotonic() - ready_at
        assert line.startswith("ok, failed open after 3s: Consul has not confirmed (registration goes on): "
                               "agent accepted web but the catalog cannot be read"), line
        assert 3.0 <= opened_after <= 3.0 + 2 + 1.0  # the setting, + a probe interval and the gate's own run
        assert _scrape(url)[("katalog_gate_failed_open", ())] == 1
        assert "failed open after 3s" in failing.logs()
        holding, _ = sidecars["holds"]
        code, held = holding.gate()
        assert code != 0 and "the catalog cannot be read" in held
        code, text = failing.status()
        assert code == 0 and "phase:      failed-open" in text

        server_client.server.start()
        failing.wait_gate(passing=True, contains="web passing", timeout=60)
        holding.wait_gate(passing=True, timeout=60)
        assert "the catalog confirms the registration: no longer failed open" in failing.logs()
        wait_until(lambda: _scrape(url)[("katalog_gate_failed_open", ())] == 0, what="gauge back to 0")
