"""The admission webhook registered with a real kube-apiserver (a `url:` clientConfig on loopback,
as the chart's Service would be on a cluster), run as the real `katalog-sidecar webhook` process:

- a Deployment in an opted-in namespace gets the sidecar, which runs (real Consul, the pod
  runner), rolls and drains; the order in which its objects are created makes no difference;
- with the webhook down, pods are created without the sidecar (failurePolicy Ignore), and once
  it is back its check puts a Warning Event on them and counts them in its metric;
- certificate rotation (serving and CA) during a burst of pod creations loses no admission.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from katalog_cluster import APP_IMAGE, KatalogCluster, example_docs
from kube_control_plane import ControlPlane
from kube_webhook import CONFIG, LABEL, OWN, WebhookProcess, has_sidecar, namespace, webhook_configuration
from kube_webhook import app_deployment as webhook_app_deployment
from waiting import wait_until

pytest.importorskip("cryptography")
pytestmark = [pytest.mark.kube, pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")]

def app_deployment(name: str = "web") -> dict[str, Any]:
    """The classic example's Deployment without the sidecar: what a user writes before opting in."""
    deployment = webhook_app_deployment(name)
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].startswith(APP_IMAGE)
    return deployment


def bare_pod(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {}, "annotations": {"katalog-sidecar.io/services": "web:80"}},
            "spec": {"containers": [{"name": "web", "image": APP_IMAGE, "ports": [{"containerPort": 80}]}]}}


@pytest.fixture
def cluster_with_webhook(katalog_cluster: KatalogCluster, tmp_path: Path) -> Iterator[tuple[KatalogCluster, WebhookProcess]]:
    cp = katalog_cluster.control_plane
    namespace(cp, OWN)
    hook = WebhookProcess(cp, tmp_path, "--check-interval", "1s")
    cp.api.post("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", webhook_configuration(hook.port))
    try:
        yield katalog_cluster, hook.start()
    finally:
        hook.stop()


def test_a_deployment_in_an_opted_in_namespace_gets_the_sidecar_runs_rolls_and_drains(
        cluster_with_webhook: tuple[KatalogCluster, WebhookProcess]) -> None:
    cluster, hook = cluster_with_webhook
    cp = cluster.control_plane
    rbac = [d for d in example_docs("rbac.yaml")]
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": {"app.kubernetes.io/name": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}}
    # Two namespaces, the same objects in opposite orders: the Deployment first (its pods wait for
    # the ServiceAccount), or last.
    for ns, objects in (("first", [app_deployment(), service, *rbac]), ("last", [*rbac, service, app_deployment()])):
        namespace(cp, ns, {LABEL: "enabled"})
        for obj in objects:
            cluster.apply(obj, namespace=ns)
    for ns in ("first", "last"):
        [pod] = cluster.runner.wait_for_pods(ns, 1, ready=True, timeout=120)
        assert has_sidecar(cp.api.get(f"/api/v1/namespaces/{ns}/pods/{pod.name}")), ns
        assert cluster.consul.server.passing_ids("web") >= {f"{ns}:{pod.name}:web"}
        assert pod.exec("katalog-sidecar", ["readiness-gate"]).returncode == 0

    # A rollout: the new pod is injected and registered, the old one drained and deregistered.
    [old] = cluster.runner.wait_for_pods("first", 1)
    cp.kubectl("-n", "first", "patch", "deployment", "web", "--type=merge",
               "-p", '{"spec":{"template":{"metadata":{"labels":{"rev":"2"}}}}}')
    [new] = cluster.runner.wait_for_pods("first", 1, ready=True, timeout=120, where=lambda p: p.name != old.name)
    wait_until(lambda: f"first:{old.name}:web" not in cluster.consul.server.passing_ids("web")
               and f"first:{new.name}:web" in cluster.consul.server.passing_ids("web"), 60,
               "the old pod drained and the new one registered")
    assert old.terminated.wait(60) and old.container("katalog-sidecar").exit_code == 0, old.log("katalog-sidecar")

    # Opt-in by pod label elsewhere; never the webhook's own namespace; unlabelled pods untouched.
    namespace(cp, "plain")
    labelled = cp.api.post("/api/v1/namespaces/plain/pods", bare_pod("labelled", {LABEL: "enabled"}))
    unlabelled = cp.api.post("/api/v1/namespaces/plain/pods", bare_pod("unlabelled"))
    own = cp.api.post(f"/api/v1/namespaces/{OWN}/pods", bare_pod("own", {LABEL: "enabled"}))
    assert [has_sidecar(p) for p in (labelled, unlabelled, own)] == [True, False, False]
    assert hook.metric("katalog_webhook_reviews_total", 'result="injected"') >= 4


@pytest.fixture
def control_plane_with_webhook(control_plane: ControlPlane, tmp_path: Path) -> Iterator[tuple[ControlPlane, Path]]:
    namespace(control_plane, OWN)
    namespace(control_plane, "shop", {LABEL: "enabled"})
    yield control_plane, tmp_path


def test_webhook_down_pods_are_admitted_without_sidecar_then_reported(
        control_plane_with_webhook: tuple[ControlPlane, Path]) -> None:
    cp, tmp_path = control_plane_with_webhook
    hook = WebhookProcess(cp, tmp_path, "--check-interval", "1s")
    cp.api.post("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", webhook_configuration(hook.port))
    hook.start()
    try:
        assert has_sidecar(cp.api.post("/api/v1/namespaces/shop/pods", bare_pod("while-up")))
        hook.stop()
        started = time.monotonic()
        missed = cp.api.post("/api/v1/namespaces/shop/pods", bare_pod("while-down"))
        assert not has_sidecar(missed) and time.monotonic() - started < 5  # never blocked
        hook.start()

        def warning() -> list[dict[str, Any]]:
            events = cp.api.get("/api/v1/namespaces/shop/events")["items"]
            return [e for e in events if e["reason"] == "KatalogSidecarNotInjected"]

        [event] = wait_until(warning, 20, "the Warning Event on the pod admitted without the sidecar")
        assert event["type"] == "Warning" and event["involvedObject"]["uid"] == missed["metadata"]["uid"]
        wait_until(lambda: hook.metric("katalog_webhook_pods_without_sidecar") == 1
                   and hook.metric("katalog_webhook_missed_injections_total") == 1, 10, "the metric")
        cp.api.delete("/api/v1/namespaces/shop/pods/while-down", {"gracePeriodSeconds": 0})
        wait_until(lambda: hook.metric("katalog_webhook_pods_without_sidecar") == 0, 20, "the gauge back to 0")
    finally:
        hook.stop()


def test_certificate_rotation_during_a_burst_of_pod_creations_loses_no_admission(
        control_plane_with_webhook: tuple[ControlPlane, Path]) -> None:
    cp, tmp_path = control_plane_with_webhook
    # A serving certificate renewed every 2 s and a CA every 8 s, with 2 s for the bundle to spread.
    hook = WebhookProcess(cp, tmp_path, "--cert-lifetime", "3s", "--ca-lifetime", "12s",
                          "--bundle-propagation", "2s", "--check-interval", "0")
    cp.api.post("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", webhook_configuration(hook.port))
    hook.start()
    try:
        results = []
        deadline = time.monotonic() + 25
        index = 0
        while time.monotonic() < deadline:
            created = cp.api.post("/api/v1/namespaces/shop/pods", bare_pod(f"burst-{index}"))
            results.append(has_sidecar(created))
            index += 1
            time.sleep(0.1)
        assert len(results) >= 50 and all(results), f"{results.count(False)} of {len(results)} pods not injected"
        assert hook.metric("katalog_webhook_certificate_rotations_total", 'kind="renewal"') >= 5
        assert hook.metric("katalog_webhook_certificate_rotations_total", 'kind="new-ca"') >= 1
    finally:
        hook.stop()


def test_two_replicas_starting_at_once_share_one_ca(control_plane_with_webhook: tuple[ControlPlane, Path]) -> None:
    """Both create a CA; one Secret wins; both serve certificates the configuration's bundle trusts."""
    import base64
    import socket
    import ssl

    cp, tmp_path = control_plane_with_webhook
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    replicas = [WebhookProcess(cp, tmp_path / name, "--check-interval", "0") for name in ("a", "b")]
    cp.api.post("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
                webhook_configuration(replicas[0].port))
    for replica in replicas:  # both start before either is serving
        with replica.log.open("ab") as log:
            replica.process = subprocess.Popen(replica.argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        for replica in replicas:
            wait_until(replica._healthy, 30, "a replica serving")
        secret = cp.api.get(f"/api/v1/namespaces/{OWN}/secrets/katalog-sidecar-webhook-ca")
        ca = base64.b64decode(secret["data"]["ca.crt"])

        def bundles() -> list[bytes]:
            config = cp.api.get(f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{CONFIG}")
            return [base64.b64decode(w["clientConfig"]["caBundle"]) for w in config["webhooks"]]

        wait_until(lambda: bundles() == [ca, ca], 15, "the bundle settled on the Secret's CA")
        cafile = tmp_path / "bundle.pem"
        cafile.write_bytes(ca)
        for replica in replicas:
            context = ssl.create_default_context(cafile=str(cafile))
            with socket.create_connection(("127.0.0.1", replica.port), timeout=5) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1"):
                pass  # the handshake verified the replica's certificate against the bundle
        assert has_sidecar(cp.api.post("/api/v1/namespaces/shop/pods", bare_pod("after-both")))
    finally:
        for replica in replicas:
            replica.stop()
