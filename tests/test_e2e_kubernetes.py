"""End to end with the Kubernetes readiness source: fake API server, real Consul, real
`katalog-sidecar run`, real `readiness-gate`."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakekube import FakeKube, make_pod
from sidecar_process import base_env, wait_until

pytestmark = pytest.mark.consul

NS, POD = "shop", "web-7d4b9c-x2k8p"
SID = f"{NS}:{POD}:web"


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKube]:
    fake = FakeKube(tmp_path / "kube-token").start()
    try:
        yield fake
    finally:
        fake.stop()


def kube_env(tmp_path: Path, agent, kube: FakeKube, **overrides: str) -> dict[str, str]:
    env = base_env(tmp_path, agent.addr, KATALOG_READINESS_SOURCE="kubernetes", KATALOG_KUBE_API_URL=kube.url,
                   KATALOG_KUBE_TOKEN_FILE=str(kube.token_file), KATALOG_SERVICES="web:http")
    env.pop("POD_UID")  # learnt from the pod object instead
    env.update(overrides)
    return env


def statuses(agent, sid: str = SID) -> dict[str, str] | None:
    for entry in agent.health("web"):
        if entry["Service"]["ID"] == sid:
            return {c["CheckID"].rsplit(":", 1)[1]: c["Status"] for c in entry["Checks"] if c["ServiceID"]}
    return None


def create(kube: FakeKube, **ready: bool) -> None:
    kube.create_pod(make_pod(POD, NS, containers=("app", "worker", "katalog-sidecar"),
                             ready={"app": ready.get("app", False), "worker": ready.get("worker", False),
                                    "katalog-sidecar": False},
                             ports={"http": 8080}, native_sidecars=("log-shipper",)))


def test_readiness_follows_every_app_container_and_the_gate_latches(dev_agent, kube, run_sidecar, tmp_path) -> None:
    create(kube)
    sidecar = run_sidecar(kube_env(tmp_path, dev_agent, kube))
    line = sidecar.wait_gate(passing=False, contains="app is not ready")
    assert line == "check critical because the app is not ready: not ready: app, worker"
    wait_until(lambda: statuses(dev_agent) == {"readiness": "critical", "liveness": "passing"}, what="critical")
    [entry] = dev_agent.health("web")
    assert (entry["Service"]["Address"], entry["Service"]["Port"]) == ("10.42.0.17", 8080)  # named port resolved
    assert entry["Service"]["Meta"]["k8s-pod-uid"] == kube.pod(NS, POD)["metadata"]["uid"]

    kube.set_container_ready(NS, POD, "app", True)
    line = sidecar.wait_gate(passing=False, contains="not ready: worker")
    kube.set_container_ready(NS, POD, "worker", True)
    # The native sidecar (restartPolicy: Always in initContainers) counts too.
    kube.set_container_ready(NS, POD, "log-shipper", False)
    sidecar.wait_gate(passing=False, contains="not ready: log-shipper")
    assert statuses(dev_agent)["readiness"] == "critical"
    kube.set_container_ready(NS, POD, "log-shipper", True)
    assert sidecar.wait_gate(passing=True) == "ok (latched): web passing in the catalog"
    assert statuses(dev_agent) == {"readiness": "passing", "liveness": "passing"}

    # Any container turning unready turns the check critical; the latched gate stays open.
    kube.set_container_ready(NS, POD, "worker", False)
    wait_until(lambda: statuses(dev_agent) == {"readiness": "critical", "liveness": "passing"}, what="critical again")
    output = [c for c in dev_agent.health("web")[0]["Checks"] if c["CheckID"] == f"{SID}:readiness"][0]["Output"]
    assert output == "not ready: worker"
    assert sidecar.gate()[0] == 0
    kube.set_container_ready(NS, POD, "worker", True)
    wait_until(lambda: statuses(dev_agent)["readiness"] == "passing", what="passing again")


def test_continuous_gate_follows_the_app(dev_agent, kube, run_sidecar, tmp_path) -> None:
    create(kube, app=True, worker=True)
    sidecar = run_sidecar(kube_env(tmp_path, dev_agent, kube, KATALOG_GATE_MODE="continuous"))
    sidecar.wait_gate(passing=True)
    kube.set_container_ready(NS, POD, "app", False)
    assert sidecar.wait_gate(passing=False) == "check critical because the app is not ready: not ready: app"
    kube.set_container_ready(NS, POD, "app", True)
    assert sidecar.wait_gate(passing=True) == "ok: web passing in the catalog"


def test_steady_state_makes_no_api_requests_but_the_open_watch(dev_agent, kube, run_sidecar, tmp_path) -> None:
    create(kube, app=True, worker=True)
    sidecar = run_sidecar(kube_env(tmp_path, dev_agent, kube))
    sidecar.wait_gate(passing=True)
    # Its Events (Registered, Confirmed) are sent once, before the steady state.
    wait_until(lambda: [e["reason"] for e in kube.events(NS, POD)] == ["Registered", "Confirmed"], what="events")
    before = len(kube.requests)
    index = dev_agent.catalog_index("web")
    logged = sidecar.logs()
    time.sleep(3.0)  # three heartbeats and a TTL refresh (KATALOG_CHECK_TTL 15s: every 5s)
    assert sidecar.logs() == logged  # nothing changed, so nothing is logged
    assert kube.requests[before:] == []
    assert kube.open_watches == 1
    reads = [r for r in kube.requests if r.method == "GET"]
    assert [r.is_watch for r in reads] == [False, True]  # one list, one watch, nothing else
    assert [r.method for r in kube.requests if r.method != "GET"] == ["POST", "POST"]  # the two Events
    list_request, watch_request = reads
    assert list_request.query.get("fieldSelector") == f"metadata.name={POD}"
    assert watch_request.query.get("allowWatchBookmarks") == "true"
    assert dev_agent.catalog_index("web") == index  # a steady pod costs zero catalog writes


def test_api_outage_keeps_last_status_and_ttl_fresh(dev_agent, kube, run_sidecar, tmp_path) -> None:
    create(kube, app=True, worker=True)
    sidecar = run_sidecar(kube_env(tmp_path, dev_agent, kube, KATALOG_CHECK_TTL="3s"))
    sidecar.wait_gate(passing=True)
    kube.stop()
    # Three TTLs later the checks are still passing: the TTL is refreshed during the outage.
    time.sleep(9.0)
    assert statuses(dev_agent) == {"readiness": "passing", "liveness": "passing"}
    assert sidecar.gate()[0] == 0
    assert "Kubernetes API unreachable" in sidecar.logs() or "keeping the last known status" in sidecar.logs()
    kube.start()
    kube.set_container_ready(NS, POD, "app", False)
    wait_until(lambda: statuses(dev_agent)["readiness"] == "critical", timeout=40, what="change after recovery")


def test_forbidden_names_the_missing_permission_in_the_gate(dev_agent, kube, run_sidecar, tmp_path) -> None:
    create(kube, app=True, worker=True)
    kube.fail_next(403, n=1000)
    sidecar = run_sidecar(kube_env(tmp_path, dev_agent, kube))
    line = sidecar.wait_gate(passing=False, contains="examples/rbac.yaml")
    assert "list pods" in line and "examples/rbac.yaml" in line
    assert dev_agent.agent_services() == {}


def test_token_rotation_after_401(dev_agent, kube, run_sidecar, tmp_path) -> None:
    create(kube, app=True, worker=True)
    sidecar = run_sidecar(kube_env(tmp_path, dev_agent, kube))
    sidecar.wait_gate(passing=True)
    kube.set_token("token-2")  # the kubelet rotated the projected token
    kube.break_watches()
    kube.set_container_ready(NS, POD, "app", False)
    wait_until(lambda: statuses(dev_agent)["readiness"] == "critical", timeout=20, what="update after rotation")
    assert any(r.status == 401 for r in kube.requests)


def test_deletion_drains_then_deregisters_before_sigterm(dev_agent, kube, run_sidecar, tmp_path) -> None:
    create(kube, app=True, worker=True)
    sidecar = run_sidecar(kube_env(tmp_path, dev_agent, kube))
    sidecar.wait_gate(passing=True)
    kube.set_deletion_timestamp(NS, POD, grace_seconds=30)
    wait_until(lambda: statuses(dev_agent) is None, timeout=10, what="deregistered")
    # The catalog may show the removal a moment before the sidecar has written that it saw it.
    line = sidecar.wait_gate(passing=False, contains="drained and deregistered")
    assert line.startswith("draining: ")
    assert "critical in the catalog: traffic drains" in sidecar.logs()
    # The process stays up (a native sidecar is restarted if it exits before the app) until SIGTERM.
    assert sidecar.proc.poll() is None
    sidecar.signal(signal.SIGTERM)
    assert sidecar.proc.wait(timeout=10) == 0


def test_pod_deleted_outright_drains(dev_agent, kube, run_sidecar, tmp_path) -> None:
    create(kube, app=True, worker=True)
    sidecar = run_sidecar(kube_env(tmp_path, dev_agent, kube))
    sidecar.wait_gate(passing=True)
    kube.delete_pod(NS, POD)
    wait_until(lambda: statuses(dev_agent) is None, timeout=10, what="deregistered")
    assert sidecar.terminate() == 0


def test_unknown_named_port_is_reported(dev_agent, kube, run_sidecar, tmp_path) -> None:
    create(kube, app=True, worker=True)
    sidecar = run_sidecar(kube_env(tmp_path, dev_agent, kube, KATALOG_SERVICES="web:grpc"))
    line = sidecar.wait_gate(passing=False, contains="grpc")
    assert line == ("KATALOG_SERVICES: service 'web' uses container port 'grpc', which no container of the pod "
                    "declares (named ports: http)")
    assert dev_agent.agent_services() == {}


def test_drain_with_agent_gone_stops_inside_the_grace_period(dev_agent, kube, run_sidecar, tmp_path) -> None:
    create(kube, app=True, worker=True)
    sidecar = run_sidecar(kube_env(tmp_path, dev_agent, kube, KATALOG_DRAIN_TIMEOUT="20s"))
    sidecar.wait_gate(passing=True)
    dev_agent.stop()
    deleted_at = time.monotonic()
    kube.set_deletion_timestamp(NS, POD, grace_seconds=5)  # shorter than KATALOG_DRAIN_TIMEOUT: it wins
    wait_until(lambda: "drain incomplete before the deadline" in sidecar.logs(), timeout=10, what="drain gave up")
    # The budget is the grace period less 2s for SIGTERM handling and exit.
    assert time.monotonic() - deleted_at < 5.0
    assert "the liveness check goes critical within 15s and the agent reaps the instance 60s after that" \
        in sidecar.logs()
    sidecar.signal(signal.SIGTERM)
    assert sidecar.proc.wait(timeout=10) == 1
