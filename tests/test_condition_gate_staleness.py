"""Defect 2 (issue 18): the condition gate keeps the exec gate's staleness bound. In condition
mode readiness-gate (the sidecar's readinessProbe) passes only while the live sidecar's last
write of the pod condition is its verdict now (or False with its verdict already True). Pure and in-process; the real kubelet run is
the `node` helper's, the fault runs `regress`'s."""

from __future__ import annotations

import threading
from typing import Any

from readiness_gate import state
from sidecar.kube.pod_condition import PodConditionWriter
from sidecar.manifests import templates as m
from sidecar.manifests.inject import InjectOptions, inject

NOW = 1000.0


def doc(**fields: Any) -> dict[str, Any]:
    base = {"phase": "confirmed", "message": "web passing in the catalog", "gate_mode": "latch",
            "ever_confirmed": True, "updated_at": NOW, "stale_after": 15.0, "pid": 7, "gate": "condition",
            "condition": "True"}
    base.update(fields)
    return base


def verdict(document: dict[str, Any], now: float = NOW) -> tuple[bool, str]:
    return state.evaluate(document, now, lambda _pid: True, lambda _pid: None)


def test_a_current_condition_passes_whatever_it_says() -> None:
    assert verdict(doc())[0]
    syncing = doc(phase="syncing", ever_confirmed=False, message="waiting for the agent", condition="False")
    passes, line = verdict(syncing)
    assert passes and line == "pod condition False is current: waiting for the agent"


def test_a_hung_sidecar_fails_within_the_exec_gates_bound() -> None:
    passes, line = verdict(doc(), now=NOW + 16)
    assert not passes and line.startswith("heartbeat stale 16s: sidecar hung?")


def test_a_restarted_sidecar_fails_until_it_has_written_the_condition_itself() -> None:
    passes, line = verdict(doc(condition=None))
    assert not passes and line.startswith("pod condition not yet True from this sidecar (it is unset)")


def test_a_verdict_the_condition_writer_could_not_write_fails() -> None:
    passes, _ = verdict(doc(phase="draining", message="SIGTERM", condition="True"))
    assert not passes
    passes, _ = verdict(doc(phase="syncing", ever_confirmed=False, message="lost", gate_mode="continuous"))
    assert not passes


def test_a_true_on_its_way_passes_over_a_false_on_the_pod() -> None:
    """Confirmed, the PATCH with True not back yet: the pod holds this process's False, which can
    make nothing Ready. Failing here held the sidecar container NotReady whenever the kubelet
    probed in that window, and the new pod waited for one more kubelet pod sync (~1 s)."""
    passes, line = verdict(doc(condition="False"))
    assert passes and line == "pod condition False is current, True on its way: ok (latched): web passing in the catalog"
    # Only a verdict that passes may run ahead of the pod; nothing written yet still fails.
    assert not verdict(doc(condition=None))[0]
    assert not verdict(doc(condition="False", pid=8), now=NOW + 16)[0]


def test_exec_mode_is_unchanged() -> None:
    assert verdict(doc(gate="exec", condition=None)) == (True, "ok (latched): web passing in the catalog")


def test_inject_condition_carries_the_probe() -> None:
    workload = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                "spec": {"template": {"metadata": {}, "spec": {"containers": [
                    {"name": "app", "image": "app", "ports": [{"name": "http", "containerPort": 8080}]}]}}}}
    out = inject([workload], InjectOptions(image="img", services="web:http", gate="condition")).documents[0]
    sidecar = next(c for c in out["spec"]["template"]["spec"]["containers"] if c["name"] == m.CONTAINER_NAME)
    assert sidecar["readinessProbe"]["exec"]["command"] == [m.GATE_COMMAND]


class _Patcher:
    def __init__(self) -> None:
        self.done = threading.Event()

    def patch_pod_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return {}


def test_the_condition_writer_says_what_it_wrote_and_tells_the_loop() -> None:
    writer = PodConditionWriter(_Patcher(), "shop", "web-0")
    told = threading.Event()
    writer.on_written = told.set
    assert writer.written() is None
    writer.gate(True, "confirmed", "ok: web passing", "")
    assert told.wait(5)
    assert writer.written() == "True"
    writer.close(2.0)
