"""Fail-open (KATALOG_FAIL_OPEN_AFTER / katalog-sidecar.io/fail-open-after): a core transition
(pure tests on a virtual clock), and issue 21's done-when at its real 20 s: two pods on a real
control plane (the pod runner as kubelet) with the real Consul server stopped."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from core_harness import AgentModel, Run, config, observation
from test_config import VALID
from test_status_and_metrics import _scrape

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
    pushed = run.core.ctx.state.generation  # the readiness change's generation (a new one at once since 92b7a76)
    run.send(e.ConfirmResult(pushed, "pending", "agent accepted web but the catalog cannot be read: No cluster leader",
                              catalog_unreadable=True))
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
    run.send(e.ConfirmResult(pushed, "confirmed"))
    assert run.core.phase is Phase.CONFIRMED and _gate(run).passes
    assert "the catalog confirms the registration: no longer failed open" in run.logs()
    assert _notified(run, so.CONFIRMED)


def test_continuous_mode_counts_from_the_lost_confirmation_not_from_app_ready() -> None:
    run = Run(config(KATALOG_FAIL_OPEN_AFTER="20s", KATALOG_GATE_MODE="continuous"), auto_confirm=False)
    run.send(e.PodObserved(observation(ready=True)))
    run.send(e.ConfirmResult(1, "confirmed"))
    run.advance(100)
    assert _gate(run).passes and run.core.phase is Phase.CONFIRMED
    run.send(e.ConfirmResult(1, "lost", "agent accepted web but the catalog cannot be read: No cluster leader",
                              catalog_unreadable=True))
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


NS = "default"
FAIL_OPEN_AFTER = 20.0  # the done-when of issue 21, at its real duration


class _PodTimes(threading.Thread):
    """Polls the API server (every 50 ms) for when each pod's app container and the pod itself
    first turned Ready, on this process's monotonic clock: what the kubelet reported, as
    `kubectl get pods` shows it. Also notes whether a pod was ever Ready."""

    def __init__(self, api: Any, names: set[str]) -> None:
        super().__init__(daemon=True)
        self.api, self.names = api, names
        self.app_ready_at: dict[str, float] = {}
        self.ready_at: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            try:
                items = self.api.get(f"/api/v1/namespaces/{NS}/pods", timeout=2.0)["items"]
            except Exception:  # noqa: BLE001 - a missed poll is a gap, retried 50 ms later
                continue
            now = time.monotonic()
            for pod in items:
                name, status = pod["metadata"]["name"], pod.get("status") or {}
                if name not in self.names:
                    continue
                app = [c for c in status.get("containerStatuses") or [] if c["name"] == "web"]
                if app and app[0].get("ready"):
                    self.app_ready_at.setdefault(name, now)
                if any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or []):
                    self.ready_at.setdefault(name, now)


def _events(cluster: Any, pod: str) -> list[dict[str, Any]]:
    items = cluster.api.get(f"/api/v1/namespaces/{NS}/events", fieldSelector=f"involvedObject.name={pod}")["items"]
    return sorted(items, key=lambda e: (e.get("lastTimestamp") or e.get("eventTime") or "", e["metadata"]["name"]))


def _gate_line(pod: Any) -> tuple[int, str]:
    result = pod.exec("katalog-sidecar", ["readiness-gate"])
    return result.returncode, result.stdout.strip()


@pytest.mark.consul
@pytest.mark.kube
def test_servers_stopped_a_pod_annotated_fail_open_after_20s_turns_ready_20s_after_its_app_one_without_stays_not_ready(
        kube_binaries: dict[str, str], consul_bin: str, tmp_path: Path) -> None:
    """Issue 21's done-when, at its real duration: a real control plane, a real Consul server
    and the node's client agent, the example pod (its probes as written) run by the pod runner.
    Both pods run at once, so the run waits for the 20 s once."""
    from katalog_cluster import KatalogCluster, example_pod
    from waiting import wait_until as wait

    annotated = example_pod("fails-open")
    annotated["metadata"].setdefault("annotations", {})["katalog-sidecar.io/fail-open-after"] = f"{FAIL_OPEN_AFTER:g}s"
    sidecar_spec = next(c for c in annotated["spec"]["containers"] if c["name"] == "katalog-sidecar")
    period = float(sidecar_spec["readinessProbe"]["periodSeconds"])  # the gate's probe period (2 s)
    with KatalogCluster(kube_binaries, consul_bin, tmp_path, app_ready_default=False) as cluster:
        cluster.apply_example("rbac.yaml")  # pods (the readiness source) and events
        cluster.consul.server.stop()
        cluster.apply(annotated, example_pod("holds"))
        times = _PodTimes(cluster.api, {"fails-open", "holds"})
        times.start()
        try:
            pods = {name: wait(lambda name=name: _started(cluster, name), 90, f"{name} started")
                    for name in ("fails-open", "holds")}
            for pod in pods.values():  # registered with the agent, held for the app
                wait(lambda pod=pod: "app is not ready" in _gate_line(pod)[1], 60, "gate held for the app")
            for pod in pods.values():
                pod.set_app_ready("web", True)

            wait(lambda: "fails-open" in times.ready_at, 60, "the annotated pod Ready")
            waited = times.ready_at["fails-open"] - times.app_ready_at["fails-open"]
            print(f"fails-open: app Ready -> pod Ready {waited:.2f} s (annotation {FAIL_OPEN_AFTER:g}s, "
                  f"gate probe period {period:g} s); holds: app Ready at "
                  f"+{times.app_ready_at.get('holds', float('nan')) - times.app_ready_at['fails-open']:.2f} s")
            assert abs(waited - FAIL_OPEN_AFTER) <= period, waited
            assert "holds" in times.app_ready_at and "holds" not in times.ready_at

            failing = pods["fails-open"]
            code, line = _gate_line(failing)
            assert code == 0 and line.startswith(
                "ok, failed open after 20s: Consul has not confirmed (registration goes on): "
                "agent accepted web but the catalog cannot be read"), line
            url = f"http://{failing.ip}:9464/metrics"
            assert _scrape(url)[("katalog_gate_failed_open", ())] == 1
            assert _scrape(url)[("katalog_gate_closed_reason", (("reason", "servers_unreachable"),))] == 0  # open
            opened = wait(lambda: [e for e in _events(cluster, "fails-open") if e["reason"] == "ConsulGateFailedOpen"],
                          30, "the ConsulGateFailedOpen Event")
            assert opened[0]["type"] == "Warning" and opened[0]["message"].startswith("failed open after 20s: "), opened
            assert "failed open after 20s" in failing.log("katalog-sidecar")
            status = failing.exec("katalog-sidecar", ["katalog-sidecar", "status"])
            assert "phase:      failed-open" in status.stdout, status.stdout + status.stderr

            holding = pods["holds"]
            code, held = _gate_line(holding)
            assert code != 0 and "the catalog cannot be read" in held, held
            held_url = f"http://{holding.ip}:9464/metrics"
            assert _scrape(held_url)[("katalog_gate_failed_open", ())] == 0
            assert _scrape(held_url)[("katalog_gate_closed_reason", (("reason", "servers_unreachable"),))] == 1
            assert not [e for e in _events(cluster, "holds") if e["reason"] == "ConsulGateFailedOpen"]
            assert "holds" not in times.ready_at  # NotReady all along, not only now

            cluster.consul.server.start()
            said: list[tuple[int, str]] = []
            try:
                wait(lambda: said.append(_gate_line(failing)) or not said[-1][1].startswith("ok, failed open"),
                     90, "no longer failed open")
            except TimeoutError:
                raise AssertionError(f"still failed open; the gate says {said[-1:]}") from None
            assert said[-1] == (0, "ok (latched): web passing in the catalog"), said[-1]  # the example's latch mode
            assert "the catalog confirms the registration: no longer failed open" in failing.log("katalog-sidecar")
            wait(lambda: _scrape(url)[("katalog_gate_failed_open", ())] == 0, 30, "gauge back to 0")

            def confirmed_after_failing_open() -> bool:
                said = [e["reason"] for e in _events(cluster, "fails-open")]
                return "ConsulGateFailedOpen" in said and "Confirmed" in said[said.index("ConsulGateFailedOpen"):]

            wait(confirmed_after_failing_open, 30, "a Confirmed Event after ConsulGateFailedOpen")
            wait(lambda: "holds" in times.ready_at, 60, "the pod without the annotation Ready once confirmed")
        finally:
            times.stop.set()
            times.join(timeout=5)


def _started(cluster: Any, name: str) -> Any:
    try:
        pod = cluster.runner.pod(NS, name)
        pod.set_app_ready("web", False)  # the stand-in app exists: its readiness is the test's
    except (AssertionError, StopIteration, KeyError, LookupError):
        return None
    return pod
