"""Condition mode (KATALOG_GATE=condition) and the pod's Events: the writers against the fake API
server (real HTTP, the real wire format and content types), then the sidecar end to end with a
real Consul."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakekube import FakeKube, make_pod
from sidecar_process import base_env, wait_until

from readiness_gate import state as status_state
from sidecar import observers
from sidecar.backoff import Backoff
from sidecar.kube.client import KubeClient
from sidecar.kube.pod_condition import FORBIDDEN_RETRY, PodConditionWriter, condition_state, status_patch
from sidecar.kube.pod_events import BURST, EventAggregator, PodEventRecorder
from sidecar.manifests import CONDITION_TYPE

NS, POD = "shop", "web-7d4b9c-x2k8p"


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKube]:
    fake = FakeKube(tmp_path / "kube-token").start()
    try:
        yield fake
    finally:
        fake.stop()


def client(kube: FakeKube) -> KubeClient:
    return KubeClient(kube.url, kube.token_file, kube.token_file, 2.0)


def writes(kube: FakeKube, method: str = "PATCH") -> list[str]:
    return [r.path for r in kube.requests if r.method == method]


# -- pure -------------------------------------------------------------------------------------------


def test_condition_follows_the_gate_verdict() -> None:
    assert condition_state(True, status_state.CONFIRMED, "ok: web passing in the catalog") == (
        "True", "Confirmed", "ok: web passing in the catalog")
    assert condition_state(True, status_state.SYNCING, "ok (latched): catalog cannot be read")[:2] == ("True", "Confirmed")
    assert condition_state(False, status_state.SYNCING, "check critical because the app is not ready")[:2] == (
        "False", "WaitingForConsul")
    assert condition_state(False, status_state.DRAINING, "draining: x")[1] == "Draining"
    assert condition_state(False, status_state.STOPPED, "drained and deregistered")[1] == "Draining"
    assert condition_state(False, status_state.CONFIG_ERROR, "config error: x")[1] == "ConfigError"
    assert len(condition_state(False, "syncing", "x" * 5000)[2]) == 1024
    patch = status_patch("True", "Confirmed", "ok", None)
    assert patch == {"status": {"conditions": [{"type": CONDITION_TYPE, "status": "True", "reason": "Confirmed",
                                                "message": "ok"}]}}


def test_events_repeat_as_a_count_and_a_burst_is_bounded() -> None:
    agg = EventAggregator(NS, POD, "uid-1", burst=3, refill_seconds=10)
    how, name, body = agg.next_write(observers.REGISTERED, "registered web", 1000.0)  # type: ignore[misc]
    assert how == "create" and name.startswith(f"{POD}.")
    assert body["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "name": POD, "namespace": NS, "uid": "uid-1"}
    assert (body["type"], body["reason"], body["count"], body["source"]) == (
        "Normal", "Registered", 1, {"component": "katalog-sidecar"})
    assert agg.next_write(observers.REGISTERED, "registered  web\n", 1001.0) == (
        "patch", name, {"count": 2, "lastTimestamp": "1970-01-01T00:16:41Z"})
    refused = agg.next_write(observers.CONSUL_REFUSED, "Consul refused web", 1002.0)
    assert refused is not None and refused[2]["type"] == "Warning"
    assert agg.next_write(observers.CONFIRMED, "web passing", 1003.0) is None  # the bucket is empty
    assert agg.next_write(observers.CONFIRMED, "web passing", 1013.5) is not None  # one refilled
    assert agg.dropped == 1


# -- the condition writer against the fake API server ------------------------------------------------


def test_condition_is_patched_only_when_it_changes(kube: FakeKube) -> None:
    kube.create_pod(make_pod(POD, NS))
    writer = PodConditionWriter(client(kube), NS, POD)
    try:
        for _ in range(50):  # every heartbeat reports the same verdict
            writer.gate(False, status_state.SYNCING, "check critical because the app is not ready: not ready: app",
                        "app_not_ready")
        wait_until(lambda: kube.condition(NS, POD, CONDITION_TYPE), what="condition set")
        first = kube.condition(NS, POD, CONDITION_TYPE)
        assert first is not None and (first["status"], first["reason"]) == ("False", "WaitingForConsul")
        assert first["message"] == "check critical because the app is not ready: not ready: app"
        assert first["lastTransitionTime"].endswith("Z")
        for _ in range(50):
            writer.gate(True, status_state.CONFIRMED, "ok (latched): web passing in the catalog", "")
        wait_until(lambda: (kube.condition(NS, POD, CONDITION_TYPE) or {}).get("status") == "True", what="True")
        time.sleep(0.3)
        assert writes(kube) == [f"/api/v1/namespaces/{NS}/pods/{POD}/status"] * 2
        assert writer.patches == 2
        # kubelet's own conditions are untouched: a strategic merge by type, not a replace.
        types = [c["type"] for c in kube.pod(NS, POD)["status"]["conditions"]]
        assert {"Ready", "ContainersReady", "PodScheduled", CONDITION_TYPE} <= set(types)
    finally:
        writer.close(2.0)


def test_forbidden_condition_is_named_reported_once_and_retried_slowly(kube: FakeKube, caplog) -> None:
    kube.create_pod(make_pod(POD, NS))
    kube.forbid("patch", "pods/status")
    reported: list[str] = []
    writer = PodConditionWriter(client(kube), NS, POD, on_forbidden=reported.append)
    caplog.set_level(logging.ERROR, logger="katalog.condition")
    try:
        writer.gate(False, status_state.SYNCING, "waiting", "not_confirmed")
        wait_until(lambda: writer.failures == 1, what="one refused patch")
        writer.gate(False, status_state.SYNCING, "waiting for something else", "not_confirmed")  # no new attempt before the retry
        time.sleep(1.5)
        assert len(writes(kube)) == 1 and FORBIDDEN_RETRY >= 60
        assert len(reported) == 1
        assert reported[0].startswith(f"forbidden: the service account cannot patch pods/status in namespace {NS}; "
                                      "grant patch on pods/status (see examples/rbac-condition.yaml)")
        assert [r.message for r in caplog.records].count(f"cannot set the pod condition {CONDITION_TYPE}: {reported[0]}") == 1
    finally:
        writer.close(0.5)


def test_condition_retries_with_backoff_while_the_api_is_down(kube: FakeKube) -> None:
    kube.create_pod(make_pod(POD, NS))
    kube.stop()
    writer = PodConditionWriter(client(kube), NS, POD, backoff=Backoff(initial=0.5, cap=30.0))
    try:
        writer.gate(True, status_state.CONFIRMED, "ok: web passing in the catalog", "")
        time.sleep(3.0)
        # Delays of 0.25-0.5, 0.5-1, 1-2 s: at most 4 attempts in 3 s, never a hot loop.
        assert 2 <= writer.failures <= 4
        kube.start()
        wait_until(lambda: (kube.condition(NS, POD, CONDITION_TYPE) or {}).get("status") == "True", timeout=10,
                   what="patched once the API is back")
    finally:
        writer.close(1.0)


# -- the event recorder against the fake API server ------------------------------------------------------


def test_a_repeated_event_is_one_event_with_a_count(kube: FakeKube) -> None:
    recorder = PodEventRecorder(client(kube), NS, POD, "uid-1")
    try:
        for _ in range(3):
            recorder.event(observers.REGISTERED, "registered shop:web:web (10.0.0.5:8080) with the Consul agent")
        recorder.event(observers.CONSUL_REFUSED, "Consul refused web: Permission denied")
        wait_until(lambda: recorder.sent == 4, what="four requests")
    finally:
        recorder.close(2.0)
    registered, refused = kube.events(NS, POD)
    assert (registered["reason"], registered["type"], registered["count"]) == ("Registered", "Normal", 3)
    assert registered["involvedObject"]["uid"] == "uid-1"
    assert (refused["reason"], refused["type"], refused["count"]) == ("ConsulRefused", "Warning", 1)
    assert writes(kube, "POST") == [f"/api/v1/namespaces/{NS}/events"] * 2
    assert len(writes(kube, "PATCH")) == 2


def test_an_expired_event_starts_a_new_one(kube: FakeKube) -> None:
    recorder = PodEventRecorder(client(kube), NS, POD, None)
    try:
        recorder.event(observers.CONFIRMED, "web passing in the catalog")
        wait_until(lambda: len(kube.events(NS, POD)) == 1, what="created")
        (first,) = kube.events(NS, POD)
        kube.expire_event(NS, first["metadata"]["name"])
        recorder.event(observers.CONFIRMED, "web passing in the catalog")
        wait_until(lambda: recorder.sent == 2, what="a new event")
        (second,) = kube.events(NS, POD)
        assert second["metadata"]["name"] != first["metadata"]["name"] and second["count"] == 1
    finally:
        recorder.close(2.0)


def test_without_events_rbac_it_logs_once_and_stops_trying(kube: FakeKube, caplog) -> None:
    """Defect 7 (issue 18): the refused Event is tried once more after 2 s (a refusal may be
    transient), then Events are dropped for a minute: no storm, one log line."""
    kube.forbid("create", "events")
    caplog.set_level(logging.WARNING, logger="katalog.events")
    recorder = PodEventRecorder(client(kube), NS, POD, None)
    try:
        for reason in (observers.REGISTERED, observers.CONFIRMED, observers.DRAINING, observers.DEREGISTERED):
            recorder.event(reason, "x")
        time.sleep(0.5)
        assert len(writes(kube, "POST")) == 1, "one refusal, then a pause"
        wait_until(lambda: len(writes(kube, "POST")) == 2, timeout=5, what="the refused Event tried again")
        time.sleep(1.0)
    finally:
        recorder.close(2.0)
    assert len(writes(kube, "POST")) == 2, "repeated refusals: no more requests for a while"
    (record,) = caplog.records
    assert record.getMessage().startswith("cannot write Events, carrying on without them: forbidden: the service "
                                          f"account cannot create events in namespace {NS}; grant create, patch on events")


def test_events_recover_after_a_transient_refusal(kube: FakeKube) -> None:
    """Defect 7 (issue 18): one 403 on an Event write turned Events off for the process's life."""
    kube.forbid("create", "events")
    recorder = PodEventRecorder(client(kube), NS, POD, None)
    try:
        recorder.event(observers.DRAINING, "x")
        wait_until(lambda: len(writes(kube, "POST")) == 1, timeout=5, what="the refusal")
        kube.allow("create", "events")  # the RBAC update has rolled out
        wait_until(lambda: recorder.sent == 1, timeout=5, what="the refused Event, delivered")
        recorder.event(observers.DEREGISTERED, "y")
        wait_until(lambda: recorder.sent == 2, timeout=5, what="later Events too")
    finally:
        recorder.close(2.0)
    assert [e["reason"] for e in kube.events(NS, POD)] == [observers.DRAINING, observers.DEREGISTERED]


def test_event_bursts_are_bounded(kube: FakeKube) -> None:
    recorder = PodEventRecorder(client(kube), NS, POD, None)
    try:
        for i in range(200):  # a flapping pod: many distinct transitions at once
            recorder.event(observers.CONFIRMATION_LOST, f"catalog cannot be read ({i})")
        time.sleep(1.0)
    finally:
        recorder.close(2.0)
    assert len(kube.events(NS, POD)) == BURST


# -- end to end: the sidecar process, real Consul, the fake API server -------------------------------------


def kube_env(tmp_path: Path, agent, kube: FakeKube, **overrides: str) -> dict[str, str]:
    env = base_env(tmp_path, agent.addr, KATALOG_READINESS_SOURCE="kubernetes", KATALOG_KUBE_API_URL=kube.url,
                   KATALOG_KUBE_TOKEN_FILE=str(kube.token_file), KATALOG_SERVICES="web:http")
    env.pop("POD_UID")
    env.update(overrides)
    return env


def gated_pod(app_ready: bool) -> dict:
    pod = make_pod(POD, NS, containers=("app", "katalog-sidecar"), ready={"app": app_ready}, ports={"http": 8080})
    pod["spec"]["readinessGates"] = [{"conditionType": CONDITION_TYPE}]
    return pod


def story(kube: FakeKube) -> list[tuple[str, str, int]]:
    """(type, reason, count) of the pod's Events, as `kubectl get events --field-selector
    involvedObject.name=<pod>` lists them (read over HTTP, with that field selector)."""
    import requests

    answer = requests.get(f"{kube.url}/api/v1/namespaces/{NS}/events",
                          params={"fieldSelector": f"involvedObject.name={POD}"}, timeout=5)
    answer.raise_for_status()
    return [(e["type"], e["reason"], e["count"]) for e in answer.json()["items"]]


@pytest.mark.consul
def test_condition_mode_and_events_tell_the_pods_story(dev_agent, kube, run_sidecar, tmp_path) -> None:
    kube.create_pod(gated_pod(app_ready=False))
    sidecar = run_sidecar(kube_env(tmp_path, dev_agent, kube, KATALOG_GATE="condition"))
    wait_until(lambda: (kube.condition(NS, POD, CONDITION_TYPE) or {}).get("reason") == "WaitingForConsul",
               what="condition False while the app is not ready")
    assert kube.condition(NS, POD, CONDITION_TYPE)["status"] == "False"  # type: ignore[index]
    kube.set_container_ready(NS, POD, "app", True)
    wait_until(lambda: (kube.condition(NS, POD, CONDITION_TYPE) or {}).get("status") == "True", what="True")
    condition = kube.condition(NS, POD, CONDITION_TYPE)
    assert condition is not None and condition["message"] == "ok (latched): web passing in the catalog"
    # The probe in condition mode: the condition this process set is its verdict (defect 2, issue 18).
    assert sidecar.wait_gate(passing=True, contains="True is current") == \
        "pod condition True is current: ok (latched): web passing in the catalog"
    wait_until(lambda: [r for _, r, _ in story(kube)] == ["Registered", "Confirmed"], what="two events")

    # Steady: no patch, no event, however many heartbeats (KATALOG_HEARTBEAT_INTERVAL=1s).
    before = len(kube.requests)
    time.sleep(3.0)
    assert [r for r in kube.requests[before:] if r.method != "GET"] == []

    kube.set_deletion_timestamp(NS, POD, grace_seconds=30)
    wait_until(lambda: (kube.condition(NS, POD, CONDITION_TYPE) or {}).get("reason") == "Draining", what="Draining")
    wait_until(lambda: [r for _, r, _ in story(kube)][-2:] == ["Draining", "Deregistered"], what="drain events")
    assert all(kind == "Normal" for kind, _, _ in story(kube))
    assert sidecar.terminate() == 0
    patches = [r for r in kube.requests if r.method == "PATCH" and r.path.endswith("/status")]
    # One patch per change of the gate's line (first observation, app not ready, waiting for the
    # catalog, confirmed, draining, drained), however many heartbeats: never a patch per write.
    assert 3 <= len(patches) <= 8, patches


@pytest.mark.consul
def test_a_forced_fault_shows_a_warning_and_costs_nothing(dev_agent, kube, run_sidecar, tmp_path) -> None:
    """No RBAC for pods/status: a Warning event names it, the log names it, and the sidecar
    retries once a minute (a 3 s window sees no second attempt). The probe says the condition
    cannot be trusted (defect 2, issue 18): the pod could never turn Ready anyway."""
    kube.create_pod(gated_pod(app_ready=True))
    kube.forbid("patch", "pods/status")
    sidecar = run_sidecar(kube_env(tmp_path, dev_agent, kube, KATALOG_GATE="condition"))
    wait_until(lambda: ("Warning", "KubernetesForbidden", 1) in story(kube), what="a Warning")
    line = sidecar.wait_gate(passing=False, contains="pod condition not yet")
    assert line.startswith("pod condition not yet False from this sidecar (it is unset)") or \
        line.startswith("pod condition not yet True from this sidecar (it is unset)"), line
    assert "cannot patch pods/status" in sidecar.logs() and "examples/rbac-condition.yaml" in sidecar.logs()
    before = len([r for r in kube.requests if r.method == "PATCH" and r.path.endswith("/status")])
    time.sleep(3.0)
    after = len([r for r in kube.requests if r.method == "PATCH" and r.path.endswith("/status")])
    assert before == after == 1
    assert kube.condition(NS, POD, CONDITION_TYPE) is None
    sidecar.signal(signal.SIGTERM)
    assert sidecar.terminate() == 0


@pytest.mark.consul
def test_config_error_is_a_warning_event(dev_agent, kube, run_sidecar, tmp_path) -> None:
    kube.create_pod(gated_pod(app_ready=True))
    sidecar = run_sidecar(kube_env(tmp_path, dev_agent, kube, KATALOG_GATE_MODE="sometimes"))
    wait_until(lambda: story(kube) == [("Warning", "ConfigError", 1)], what="a ConfigError event")
    (event,) = kube.events(NS, POD)
    assert event["message"] == "KATALOG_GATE_MODE='sometimes': expected one of latch, continuous"
    assert sidecar.terminate() == 2



@pytest.mark.consul
def test_consul_refusing_the_registration_is_a_warning_event(acl_agent, kube, run_sidecar, tmp_path) -> None:
    """A token without service:write: one ConsulRefused Warning naming what to fix, not one per retry."""
    from test_acl import acl_env, without_write

    kube.create_pod(gated_pod(app_ready=True))
    token = acl_agent.create_token(without_write(), "katalog-web-read-only")
    env = acl_env(tmp_path, acl_agent, token, KATALOG_READINESS_SOURCE="kubernetes", KATALOG_KUBE_API_URL=kube.url,
                  KATALOG_KUBE_TOKEN_FILE=str(kube.token_file), KATALOG_SERVICES="web:http")
    env.pop("POD_UID")
    sidecar = run_sidecar(env)
    wait_until(lambda: ("Warning", "ConsulRefused", 1) in story(kube), what="a ConsulRefused Warning")
    (refused,) = [e for e in kube.events(NS, POD) if e["reason"] == "ConsulRefused"]
    assert "lacks permission 'service:write'" in refused["message"] and "CONSUL_HTTP_TOKEN" in refused["message"]
    time.sleep(2.0)  # the sidecar retries a refusal after 60 s: nothing more in this window
    assert [(t, r, n) for t, r, n in story(kube) if r == "ConsulRefused"] == [("Warning", "ConsulRefused", 1)]
    assert sidecar.terminate() == 0  # nothing was registered, nothing to drain
