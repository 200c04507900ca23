"""sidecar.explain's reasoning for states the end-to-end test (test_explain.py) does not set up."""

from __future__ import annotations

from dataclasses import replace

from sidecar import explain as ex
from sidecar import gate_reasons as reasons

WEB = ex.Expected("web", "shop:web-0:web", "10.0.0.5", 8080, "shop:web-0:web:readiness", "shop:web-0:web:liveness")
CHECKS = (ex.Check(WEB.readiness_check_id, "passing", "all 2 containers ready"), ex.Check(WEB.liveness_check_id, "passing"))
INSTANCE = ex.ConsulInstance(WEB.service_id, "node-a", "10.0.0.5", 8080, "uid-1", CHECKS)
POD = ex.PodFacts(
    namespace="shop", name="web-0", uid="uid-1", node="node-a", host_ip="192.168.0.11", pod_ip="10.0.0.5",
    phase="Running", terminating=False,
    conditions={"Ready": ("False", "ContainersNotReady", "containers with unready status: [katalog-sidecar]"),
                "ContainersReady": ("False", "", "")},
    containers=(ex.Container("web", True, "running"), ex.Container("katalog-sidecar", False, "running")),
    sidecar="katalog-sidecar", gate="exec")
FACTS = ex.Facts(POD, (WEB,), "katalog-sidecar.io/", (), (),
                 ex.ConsulView("http://192.168.0.11:8500", error="cannot connect: ConnectionError"),
                 ex.ConsulView("http://consul:8500", node="node-a", instances={WEB.service_id: INSTANCE},
                               node_health="passing"))


def test_an_agent_unreachable_from_the_laptop_is_not_blamed_when_the_catalog_has_the_pod() -> None:
    report = ex.analyze(FACTS)
    assert report.verdict == reasons.NOT_CONFIRMED
    assert report.why.startswith("Consul shows every service passing, but the gate is still closed")


def test_a_node_whose_agent_is_critical_in_the_catalog_is_agent_unreachable() -> None:
    catalog = replace(FACTS.catalog, instances={}, node_health="critical", node_health_output="Agent not live or unreachable")
    report = ex.analyze(replace(FACTS, catalog=catalog))
    assert report.verdict == reasons.AGENT_UNREACHABLE
    assert "node node-a's agent is critical in the catalog" in report.why


def test_the_gate_said_it_in_the_kubelets_event() -> None:
    said = ex.Event("Unhealthy", "Warning", "Readiness probe failed: Consul refused web: Permission denied "
                    "(fix CONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN_FILE (ACL policy))", 12, "2026-12-07T01:00:00Z", "kubelet")
    report = ex.analyze(replace(FACTS, events=(said,)))
    assert report.verdict == reasons.CONSUL_REFUSED
    assert "the gate said: Consul refused web: Permission denied" in "\n".join(next(s for s in report.steps if s.title == "gate").lines)


def test_a_refusal_followed_by_a_confirmation_is_over() -> None:
    events = (ex.Event("ConsulRefused", "Warning", "Consul refused web: Permission denied", 1, "t1", "katalog-sidecar"),
              ex.Event("Confirmed", "Normal", "web passing in the catalog", 1, "t2", "katalog-sidecar"))
    assert ex.analyze(replace(FACTS, events=events)).verdict != reasons.CONSUL_REFUSED


def test_config_error_terminating_and_a_crashing_sidecar() -> None:
    bad = ex.analyze(replace(FACTS, configured=(), config_problems=("KATALOG_SERVICES='web:x': not a port",)))
    assert (bad.verdict, bad.next) == (reasons.CONFIG_ERROR, "fix the named variable or pod annotation")
    assert ex.analyze(replace(FACTS, pod=replace(POD, terminating=True))).verdict == reasons.DRAINING
    crashing = replace(POD, containers=(ex.Container("web", True, "running"),
                                        ex.Container("katalog-sidecar", False, "waiting", "CrashLoopBackOff", 7)))
    report = ex.analyze(replace(FACTS, pod=crashing))
    assert report.verdict == ex.SIDECAR_DOWN
    assert report.why == "the sidecar container is not running (CrashLoopBackOff)"
    assert "--previous" in report.next


def test_text_follows_the_chain_in_order() -> None:
    text = ex.render_text(ex.analyze(FACTS))
    titles = [line.split("] ", 1)[1] for line in text.splitlines() if line[:1].isdigit()]
    assert titles == ["configured services", "node's agent at http://192.168.0.11:8500", "catalog via http://consul:8500",
                      "gate", "pod"]
    assert text.splitlines()[0] == "pod shop/web-0: NOT Ready"
    assert text.splitlines()[-3:][0].startswith("verdict: ")
