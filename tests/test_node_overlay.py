"""The examples as the real node runs them differ from examples/ exactly as tests/node_overlay.py
says, and in nothing else (no cluster needed)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from node_images import APP_IMAGE, SIDECAR_IMAGE
from node_overlay import for_this_machine

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
API = "https://127.0.0.1:6443"
WORKLOADS = sorted(p.name for p in EXAMPLES.glob("deployment-*.yaml"))


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return (spec.get("initContainers") or []) + (spec.get("containers") or [])


def _undo(doc: dict[str, Any]) -> dict[str, Any]:
    """The overlaid document with exactly the documented changes taken out again."""
    doc = copy.deepcopy(doc)
    spec = doc["spec"]["template"]["spec"]
    assert spec.pop("hostNetwork") is True
    assert spec.pop("dnsPolicy") == "ClusterFirstWithHostNet"
    for container in _containers(spec):
        assert container.pop("imagePullPolicy") == "Never"
        env = container.get("env") or []
        if container["image"] == SIDECAR_IMAGE:
            assert env[-2:] == [{"name": "KATALOG_METRICS_ADDR", "value": "$(POD_IP):9464"},
                                {"name": "KATALOG_KUBE_API_URL", "value": API}]
            del env[-2:]
            container["image"] = "SIDECAR"
        elif container["image"] == APP_IMAGE:
            assert env[-1] == {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
            del env[-1]
            if not env:
                del container["env"]
            container["image"] = "APP"
    return doc


def _placeholders(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for container in _containers(doc["spec"]["template"]["spec"]):
        if container["image"].startswith("ghcr.io/katalog-sidecar/katalog-sidecar:"):
            container["image"] = "SIDECAR"
        elif container["image"].startswith("nginxinc/nginx-unprivileged:"):
            container["image"] = "APP"
    return doc


@pytest.mark.parametrize("example", WORKLOADS)
def test_the_overlay_changes_only_what_it_lists(example: str) -> None:
    for original in _docs(example):
        overlaid = for_this_machine(original, API)
        if original["kind"] != "Deployment":
            assert overlaid == original
            continue
        assert _undo(overlaid) == _placeholders(original)


@pytest.mark.parametrize("example", WORKLOADS)
def test_the_sidecar_names_pod_ip_before_the_metrics_address_uses_it(example: str) -> None:
    """`$(POD_IP)` expands only from a variable defined earlier in the list."""
    for doc in _docs(example):
        if doc["kind"] != "Deployment":
            continue
        for container in _containers(for_this_machine(doc, API)["spec"]["template"]["spec"]):
            names = [e["name"] for e in container.get("env") or []]
            if "KATALOG_METRICS_ADDR" in names:
                assert names.index("POD_IP") < names.index("KATALOG_METRICS_ADDR")


def test_rbac_and_other_files_pass_unchanged() -> None:
    for name in ("rbac.yaml", "rbac-condition.yaml"):
        for doc in _docs(name):
            assert for_this_machine(doc, API) == doc
