"""examples/ applied unchanged with kubectl to a real control plane, run by the pod runner:
every instance passing in the catalog, the gate green, and a deletion drains."""

from __future__ import annotations

from pathlib import Path

import pytest
from katalog_cluster import EXAMPLES, KatalogCluster
from waiting import wait_until

pytestmark = [pytest.mark.consul, pytest.mark.kube]

SERVICE = "web"


def service_id(pod: object) -> str:
    return f"{pod.namespace}:{pod.name}:{SERVICE}"  # type: ignore[attr-defined]


@pytest.mark.parametrize("example", ["deployment-classic-sidecar.yaml", "deployment-native-sidecar.yaml"])
def test_example_deployment_registers_gates_and_drains(katalog_cluster: KatalogCluster, example: str) -> None:
    cluster = katalog_cluster
    cluster.apply_example("rbac.yaml", example)
    pods = cluster.runner.wait_for_pods("default", 3, ready=True, timeout=120)

    assert cluster.consul.server.passing_ids(SERVICE) == {service_id(p) for p in pods}
    for pod in pods:
        gate = pod.exec("katalog-sidecar", ["readiness-gate"])
        assert gate.returncode == 0, gate.stdout + gate.stderr
        assert pod.probe_runs("katalog-sidecar") >= 1  # the manifest's exec probe made it Ready
        entry = next(e for e in cluster.consul.server.health(SERVICE) if e["Service"]["ID"] == service_id(pod))
        assert entry["Service"]["Address"] == pod.ip and entry["Service"]["Port"] == 8080  # named port `http`
    native = example == "deployment-native-sidecar.yaml"
    status = cluster.api.get(f"/api/v1/namespaces/default/pods/{pods[0].name}")["status"]
    sidecar_statuses = status["initContainerStatuses"] if native else status["containerStatuses"]
    assert any(s["name"] == "katalog-sidecar" and s["ready"] for s in sidecar_statuses)

    victim = pods[0]
    cluster.control_plane.kubectl("delete", "pod", victim.name, "--wait=false")
    wait_until(lambda: service_id(victim) not in {e["Service"]["ID"] for e in cluster.consul.server.health(SERVICE)},
               40, "the deleted pod's instance left the catalog")
    assert victim.terminated.wait(40), "the runner never finished terminating the pod"
    sidecar, app = victim.container("katalog-sidecar"), victim.container("web")
    assert sidecar.exit_code == 0, victim.log("katalog-sidecar")
    if native:  # SIGTERM reached the native sidecar only after the app had exited
        assert sidecar.finished_at is not None and app.finished_at is not None
        assert sidecar.finished_at >= app.finished_at
    # The Deployment controller replaces it; the replacement registers and passes.
    replacement = cluster.runner.wait_for_pods("default", 3, ready=True, timeout=120)
    assert cluster.consul.server.passing_ids(SERVICE) == {service_id(p) for p in replacement}
    assert victim.name not in {p.name for p in replacement}


def test_every_example_passes_strict_server_side_validation(control_plane) -> None:  # type: ignore[no-untyped-def]
    """What CI checks: each manifest as written is valid for the real API server's schema."""
    for path in sorted(Path(EXAMPLES).glob("*.yaml")):
        result = control_plane.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", str(path),
                                       check=False)
        assert result.returncode == 0, f"{path.name}: {result.stderr}"
        assert "(server dry run)" in result.stdout
