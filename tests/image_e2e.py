"""End to end from the image: the classic-sidecar example on a real control plane, its sidecar
container run from the built image by podman (tests/podman_image.py), probed through
`podman exec` as the manifest says.

Not collected by the test suite (the name does not start with `test_`): it needs the image,
which only `scripts/image-smoke.sh --e2e` builds, and that script runs it with
KATALOG_TEST_IMAGE set and podman pointed at its store. Without the image it fails rather
than skipping: nothing runs it except that script.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from katalog_cluster import SIDECAR_IMAGE, KatalogCluster
from podman_image import PodmanContainer, podman_image

SERVICE = "web"
EXAMPLE = "deployment-classic-sidecar.yaml"


@pytest.fixture
def image() -> str:
    image = os.environ.get("KATALOG_TEST_IMAGE", "")
    assert image, "KATALOG_TEST_IMAGE is not set: run this through scripts/image-smoke.sh --e2e"
    return image


@pytest.fixture
def cluster(kube_binaries: dict[str, str], consul_bin: str, tmp_path: Path, image: str) -> Iterator[KatalogCluster]:
    cluster = KatalogCluster(kube_binaries, consul_bin, tmp_path, images={SIDECAR_IMAGE: podman_image(image)})
    # Pod IPs from a random loopback /16: with host networking a fixed range collides with
    # other runners on the same machine.
    net = f"127.{random.randint(100, 250)}.{random.randint(1, 254)}"
    cluster.runner._ips = iter(f"{net}.{host}" for host in range(2, 255))
    with cluster:
        yield cluster


def _wait(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)
    return value


def test_the_example_from_the_image_registers_gates_and_drains(cluster: KatalogCluster) -> None:
    cluster.apply_example("rbac.yaml", EXAMPLE)
    pods = cluster.runner.wait_for_pods("default", 3, ready=True, timeout=240)
    ids = {f"default:{p.name}:{SERVICE}" for p in pods}
    assert cluster.consul.server.passing_ids(SERVICE) == ids

    pod = pods[0]
    assert isinstance(pod.container("katalog-sidecar").handle, PodmanContainer)
    assert pod.probe_runs("katalog-sidecar") >= 1  # the manifest's exec probe, through podman exec
    gate = pod.exec("katalog-sidecar", ["readiness-gate"])
    assert (gate.returncode, gate.stdout.split(":")[0]) == (0, "ok (latched)"), gate.stdout + gate.stderr
    # It is the image, with the manifest's securityContext: uid 65532, read-only root.
    who = pod.exec("katalog-sidecar", ["python", "-c", "import os; print(os.getuid(), os.access('/', os.W_OK))"])
    assert who.stdout.split() == ["65532", "False"], who.stdout + who.stderr

    cluster.control_plane.kubectl("delete", "pod", pod.name, "--wait=false")
    gone = f"default:{pod.name}:{SERVICE}"
    _wait(lambda: gone not in {e["Service"]["ID"] for e in cluster.consul.server.health(SERVICE)}, 60,
          "the deleted pod's instance left the catalog")
    assert pod.terminated.wait(60), "the runner never finished terminating the pod"
    assert pod.container("katalog-sidecar").exit_code == 0, pod.log("katalog-sidecar")
    assert "removed from the catalog" in pod.log("katalog-sidecar")
