"""End to end: the pod's annotations configure the sidecar, and edits apply to the running pod.
Fake API server (the pod watch), real Consul, real `katalog-sidecar run`, real `readiness-gate`."""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from consul_agents import free_port
from fakekube import FakeKube, make_pod
from sidecar_process import Sidecar, base_env, wait_until
from test_katalog_sync_rules import KATALOG_SYNC_KEYS, katalog_sync_expects, katalog_sync_pod, with_our_sidecar

pytestmark = [pytest.mark.consul, pytest.mark.timeout(120)]

KS = "katalog-sync.wish.com/"
NS, POD = "hw", "hw-5d8f7-abcde"
POD_IP = "10.42.0.17"


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKube]:
    fake = FakeKube(tmp_path / "kube-token").start()
    try:
        yield fake
    finally:
        fake.stop()


def annotated_env(tmp_path: Path, agent: Any, kube: FakeKube, **overrides: str) -> dict[str, str]:
    """A sidecar configured only by its pod: no KATALOG_SERVICES."""
    env = base_env(tmp_path, agent.addr, KATALOG_READINESS_SOURCE="kubernetes", KATALOG_KUBE_API_URL=kube.url,
                   KATALOG_KUBE_TOKEN_FILE=str(kube.token_file), POD_NAME=POD, POD_NAMESPACE=NS, POD_IP=POD_IP)
    for key in ("KATALOG_SERVICES", "POD_UID"):
        env.pop(key)
    env.update(overrides)
    return env


def catalog(agent: Any, names: list[str]) -> list[tuple[str, int, tuple[str, ...], dict[str, str], str]]:
    """What consumers see: per service, this pod's instance with its readiness check's status."""
    seen = []
    for name in names:
        for entry in agent.health(name):
            svc = entry["Service"]
            if svc["Meta"].get("k8s-pod") != POD:
                continue
            user_meta = {k: v for k, v in svc["Meta"].items()
                         if k not in {"external-source", "managed-by", "k8s-namespace", "k8s-pod", "k8s-pod-uid"}}
            [readiness] = [c["Status"] for c in entry["Checks"] if c["CheckID"].endswith(":readiness")]
            seen.append((svc["Service"], svc["Port"], tuple(svc["Tags"] or ()), user_meta, readiness))
    return seen


def status_file(env: dict[str, str]) -> dict[str, Any]:
    try:
        return dict(json.loads(Path(env["KATALOG_STATUS_FILE"]).read_text()))
    except (OSError, ValueError):
        return {}


EVERYTHING = {
    KS + "service-names": "hw,hw-admin,hw-dns", KS + "service-port-hw-admin": "9100",
    KS + "service-tags": "v2,blue", KS + "service-tags-hw-dns": "dns", KS + "service-meta": "team:payments",
    KS + "service-meta-hw-admin": "team:sre,internal:yes", KS + "service-health-hw-dns": "warning",
    KS + "container-exclude": "warmup", KS + "sidecar": "katalog-sync-sidecar", KS + "sync-interval": "2s",
}


def test_a_katalog_sync_pod_registers_what_katalog_sync_would(dev_agent, kube, run_sidecar, tmp_path) -> None:
    today = katalog_sync_pod(EVERYTHING, {"hw": True, "warmup": False},
                             containers=("hw", "warmup", "katalog-sync-sidecar"))
    today["metadata"]["name"] = POD
    kube.create_pod(with_our_sidecar(today))
    sidecar = run_sidecar(annotated_env(tmp_path, dev_agent, kube))
    line = sidecar.wait_gate(passing=True)
    assert line == "ok (latched): hw passing, hw-admin passing, hw-dns warning in the catalog"
    expected = katalog_sync_expects(today)
    assert catalog(dev_agent, ["hw", "hw-admin", "hw-dns"]) == expected
    assert [e[1] for e in expected] == [8080, 9100, 8080]  # the containerPort, the override
    logs = sidecar.logs()
    assert logs.count("katalog-sync.wish.com/sync-interval='2s' ignored") == 1
    assert "Traceback" not in logs
    # Readiness still drives the services without a fixed health; the warning stays a warning.
    kube.set_container_ready(NS, POD, "hw", False)
    wait_until(lambda: [e[4] for e in catalog(dev_agent, ["hw", "hw-admin", "hw-dns"])] == ["critical", "critical", "warning"],
               what="hw and hw-admin critical, hw-dns still warning")
    assert sidecar.terminate() == 0
    assert catalog(dev_agent, ["hw", "hw-admin", "hw-dns"]) == []
    # Nothing of katalog-sync's own meta: katalog-sync would take these instances for its own.
    assert all(k not in KATALOG_SYNC_KEYS - {"external-source"} for e in expected for k in e[3])


def test_annotation_edits_apply_to_the_running_pod(dev_agent, kube, run_sidecar, tmp_path) -> None:
    pod = make_pod(POD, NS, containers=("hw", "katalog-sidecar"), ports={"http": 8080})
    pod["metadata"]["annotations"] = {KS + "service-names": "hw", KS + "service-tags": "v1"}
    kube.create_pod(pod)
    env = annotated_env(tmp_path, dev_agent, kube)
    sidecar = run_sidecar(env)
    sidecar.wait_gate(passing=True)
    [first] = dev_agent.health("hw")
    service_id = first["Service"]["ID"]

    def edit(annotations: dict[str, str]) -> float:
        """Apply an edit; seconds until the catalog shows it and the status file says confirmed."""
        def mutate(p: dict[str, Any]) -> None:
            p["metadata"]["annotations"] = dict(annotations)
        start = time.monotonic()
        kube.update_pod(NS, POD, mutate)
        port = int(annotations.get(KS + "service-port", 8080))
        tags = annotations.get(KS + "service-tags", "").split(",")

        def applied() -> bool:
            entries = dev_agent.health("hw")
            services = status_file(env).get("services") or [{}]
            return (len(entries) == 1 and entries[0]["Service"]["Port"] == port
                    and entries[0]["Service"]["Tags"] == tags
                    and services[0].get("address") == f"{POD_IP}:{port}" and services[0].get("confirmed") is True)

        wait_until(applied, timeout=15, interval=0.01, what=f"edit {annotations} registered and confirmed")
        return time.monotonic() - start

    latencies = []
    for round_ in range(5):
        latencies.append(edit({KS + "service-names": "hw", KS + "service-tags": f"v{round_ + 2}",
                               KS + "service-port": str(9000 + round_), KS + "service-meta": f"round:{round_}"}))
        [entry] = dev_agent.health("hw")
        assert entry["Service"]["ID"] == service_id  # the same instance, registered again: no duplicate
        assert entry["Service"]["Meta"]["round"] == str(round_)
        assert {c["Status"] for c in entry["Checks"]} == {"passing"}  # status re-pushed after re-registration
    print(f"annotation edit -> registered and confirmed: p50 {statistics.median(latencies) * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms over {len(latencies)} edits")
    assert sidecar.gate()[0] == 0

    # A new service is registered, a removed one deregistered.
    edit({KS + "service-names": "hw,hw-admin", KS + "service-tags": "x"})
    wait_until(lambda: len(dev_agent.health("hw-admin")) == 1, what="hw-admin registered")
    edit({KS + "service-names": "hw", KS + "service-tags": "y"})
    wait_until(lambda: dev_agent.health("hw-admin") == [], what="hw-admin deregistered")
    assert "deregistered hw:hw-5d8f7-abcde:hw-admin: no longer configured" in sidecar.logs()

    # An invalid edit changes nothing and says why, without closing the gate.
    kube.annotate_pod(NS, POD, KS + "service-port", "http")
    sidecar.wait_gate(passing=True, contains="annotation edit not applied: katalog-sync.wish.com/service-port='http': "
                                             "port must be a number")
    [entry] = dev_agent.health("hw")
    assert (entry["Service"]["Port"], entry["Service"]["Tags"]) == (8080, ["y"])
    kube.annotate_pod(NS, POD, KS + "service-port", "8081")
    wait_until(lambda: dev_agent.health("hw")[0]["Service"]["Port"] == 8081, what="valid again")
    sidecar.wait_gate(passing=True, contains="hw passing in the catalog")
    assert "Traceback" not in sidecar.logs()
    assert sidecar.terminate() == 0
    assert dev_agent.agent_services() == {}


def test_unrelated_annotation_edits_cost_nothing(dev_agent, kube, run_sidecar, tmp_path) -> None:
    pod = make_pod(POD, NS, containers=("hw", "katalog-sidecar"), ports={"http": 8080})
    pod["metadata"]["annotations"] = {KS + "service-names": "hw"}
    kube.create_pod(pod)
    sidecar = run_sidecar(annotated_env(tmp_path, dev_agent, kube))
    sidecar.wait_gate(passing=True)
    index, logged = dev_agent.catalog_index("hw"), sidecar.logs()
    for n in range(20):
        kube.annotate_pod(NS, POD, "deployment.kubernetes.io/revision", str(n))
    time.sleep(1.0)
    assert dev_agent.catalog_index("hw") == index  # no re-registration, no write
    assert sidecar.logs() == logged


def test_a_pod_with_no_services_anywhere_reports_both_ways_until_annotated(dev_agent, kube, run_sidecar,
                                                                          tmp_path) -> None:
    kube.create_pod(make_pod(POD, NS, containers=("hw", "katalog-sidecar"), ports={"http": 8080}))
    sidecar = run_sidecar(annotated_env(tmp_path, dev_agent, kube))
    line = sidecar.wait_gate(passing=False, contains="config error")
    assert line == ("config error: no services to register: set KATALOG_SERVICES in the sidecar's environment, or "
                    "annotate the pod with katalog-sidecar.io/services (or katalog-sync's "
                    "katalog-sync.wish.com/service-names)")
    assert dev_agent.agent_services() == {}
    kube.annotate_pod(NS, POD, "katalog-sidecar.io/services", "hw:http")
    assert sidecar.wait_gate(passing=True) == "ok (latched): hw passing in the catalog"
    assert dev_agent.health("hw")[0]["Service"]["Port"] == 8080


def test_a_half_valid_pod_registers_nothing_and_lists_every_problem(dev_agent, kube, run_sidecar, tmp_path) -> None:
    pod = make_pod(POD, NS, containers=("hw", "katalog-sidecar"), ports={"http": 8080})
    pod["metadata"]["annotations"] = {KS + "service-names": "hw,hw-admin", KS + "service-port-hw-admin": "admin",
                                      KS + "service-health": "unknown"}
    kube.create_pod(pod)
    sidecar: Sidecar = run_sidecar(annotated_env(tmp_path, dev_agent, kube))
    line = sidecar.wait_gate(passing=False, contains="config error")
    assert line == ("config error: katalog-sync.wish.com/service-health='unknown': expected one of passing, warning, "
                    "critical; katalog-sync.wish.com/service-port-hw-admin='admin': port must be a number")
    assert dev_agent.agent_services() == {}  # not even the valid service
    assert sidecar.terminate() == 0


def test_fixed_health_from_the_environment_is_confirmed_as_pushed(dev_agent, run_sidecar, tmp_path) -> None:
    env = base_env(tmp_path, dev_agent.addr, KATALOG_SERVICES="web:8080,dns:53", KATALOG_READINESS_FIXED="not-ready",
                   KATALOG_SERVICE_DNS_HEALTH="warning")
    sidecar = run_sidecar(env)
    # web follows the (not ready) app; dns is a warning whatever the app says.
    assert sidecar.wait_gate(passing=False, contains="app is not ready")
    wait_until(lambda: {e["Service"]["Service"]: {c["Status"] for c in e["Checks"] if c["CheckID"].endswith("readiness")}
                        for s in ("web", "dns") for e in dev_agent.health(s)} == {"web": {"critical"}, "dns": {"warning"}},
               what="web critical, dns warning")
    sidecar.terminate()
    only_fixed = run_sidecar(base_env(tmp_path, dev_agent.addr, KATALOG_SERVICES="dns:53",
                                      KATALOG_READINESS_FIXED="not-ready", KATALOG_SERVICE_DNS_HEALTH="warning"),
                             name="only-fixed")
    # A warning that is what was pushed is confirmed: the gate opens.
    assert only_fixed.wait_gate(passing=True) == "ok (latched): dns warning in the catalog"
    [entry] = dev_agent.health("dns")
    assert {c["CheckID"].rsplit(":", 1)[1]: c["Status"] for c in entry["Checks"] if c["ServiceID"]} == \
        {"readiness": "warning", "liveness": "passing"}
    assert only_fixed.terminate() == 0


def test_namespace_and_partition_are_sent_and_the_open_source_agent_refuses_them(dev_agent, run_sidecar,
                                                                                tmp_path) -> None:
    """Consul Enterprise settings, as far as the open-source agent can test them: it refuses
    both parameters with a 400 naming them, which shows they are sent on the very first call."""
    for var, word in (("CONSUL_NAMESPACE", "ns"), ("CONSUL_PARTITION", "partition")):
        sidecar = run_sidecar(base_env(tmp_path, dev_agent.addr, KATALOG_DRAIN_TIMEOUT="2s", **{var: "team-a"}), name=var)
        line = sidecar.wait_gate(passing=False, contains="Enterprise")
        assert f'Invalid query parameter: "{word}"' in line
        assert line.endswith("(fix CONSUL_NAMESPACE / CONSUL_PARTITION: this agent is not Consul Enterprise)")
        assert dev_agent.agent_services() == {}
        sidecar.terminate()


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_waiting_for_valid_annotations_costs_nothing(dev_agent, kube, run_sidecar, tmp_path) -> None:
    """A fault state like any other: a pod whose annotations are invalid makes no Consul calls,
    no API requests beyond its open watch, and costs no more than the heartbeat."""
    pod = make_pod(POD, NS, containers=("hw", "katalog-sidecar"), ports={"http": 8080})
    pod["metadata"]["annotations"] = {KS + "service-names": "hw", KS + "service-port": "http"}
    kube.create_pod(pod)
    port = free_port("127.0.0.1")
    sidecar = run_sidecar(annotated_env(tmp_path, dev_agent, kube, KATALOG_METRICS_ADDR=f"127.0.0.1:{port}",
                                        KATALOG_HEARTBEAT_INTERVAL="5s"))
    sidecar.wait_gate(passing=False, contains="config error")
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    assert 'katalog_sync_state{phase="config-error"} 1.0' in requests.get(metrics_url, timeout=5).text
    kube_requests, cpu = len(kube.requests), cpu_seconds(sidecar.proc.pid)  # type: ignore[union-attr]
    window = 10.0
    time.sleep(window)
    spent = cpu_seconds(sidecar.proc.pid) - cpu  # type: ignore[union-attr]
    print(f"waiting for valid annotations: {spent * 1000:.0f} ms CPU in {window:.0f} s")
    assert spent <= 0.005 * window, f"{spent:.3f} s of CPU in {window:.0f} s waiting for valid annotations"
    assert len(kube.requests) == kube_requests and kube.open_watches == 1
    text = requests.get(metrics_url, timeout=5).text
    assert "katalog_consul_requests_total{" not in text or re.search(r"katalog_consul_requests_total\{[^}]*\} [1-9]", text) is None
    assert dev_agent.agent_services() == {}
    assert sidecar.terminate() == 0
