"""examples/pod-status-policy.yaml on a real kube-apiserver: with RBAC alone a pod's own token
may patch any pod's status (the gap it closes); with the policy, only its own pod's, and only
katalog-sidecar's condition. Tokens are real bound service-account tokens (TokenRequest with the
pod as bound object), so the pod name and UID come from the apiserver's own user info."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
from kube_control_plane import ControlPlane
from waiting import wait_until

from sidecar.manifests import CONDITION_TYPE

pytestmark = [pytest.mark.kube]

REPO = Path(__file__).resolve().parent.parent
NS = "shop"


def pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"serviceAccountName": "web", "automountServiceAccountToken": False,
                     "containers": [{"name": "web", "image": "nginx"}]}}


def token_of(cp: ControlPlane, pod: dict[str, Any]) -> str:
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"expirationSeconds": 3600, "boundObjectRef": {
                   "kind": "Pod", "apiVersion": "v1", "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}}}
    return str(cp.api.post(f"/api/v1/namespaces/{NS}/serviceaccounts/web/token", request)["status"]["token"])


def patch_status(cp: ControlPlane, token: str, pod_name: str, condition: str) -> requests.Response:
    body = {"status": {"conditions": [{"type": condition, "status": "True", "reason": "Test"}]}}
    with requests.Session() as session:
        session.trust_env = False
        return session.patch(f"{cp.url}/api/v1/namespaces/{NS}/pods/{pod_name}/status", data=json.dumps(body),
                             headers={"Authorization": f"Bearer {token}",
                                      "Content-Type": "application/strategic-merge-patch+json"},
                             verify=str(cp.pki.ca_crt), timeout=10)


def test_a_sidecar_may_patch_only_its_own_pods_condition(control_plane: ControlPlane) -> None:
    cp = control_plane
    cp.api.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": NS, "labels": {"katalog-sidecar.io/pod-status-policy": "enforced"}}})
    cp.wait_namespace_ready(NS)
    cp.kubectl("apply", "-n", NS, "-f", str(REPO / "examples" / "rbac-condition.yaml"))
    own, other = (cp.api.post(f"/api/v1/namespaces/{NS}/pods", pod(name)) for name in ("web-a", "web-b"))
    token = token_of(cp, own)

    # RBAC alone: web-a's own token patches web-b's status. This is the gap.
    assert patch_status(cp, token, "web-b", CONDITION_TYPE).status_code == 200

    cp.kubectl("apply", "-f", str(REPO / "examples" / "pod-status-policy.yaml"))
    # (a list: a refused Response is falsy)
    [refused] = wait_until(lambda: [r] if (r := patch_status(cp, token, "web-b", CONDITION_TYPE)).status_code != 200
                           else None, 30, "the policy in force (it is compiled and synced asynchronously)")
    assert refused.status_code in (403, 422), refused.text
    assert "may patch only its own status, not that of pod web-b" in refused.json()["message"]

    allowed = patch_status(cp, token, "web-a", CONDITION_TYPE)
    assert allowed.status_code == 200, allowed.text
    assert any(c["type"] == CONDITION_TYPE for c in allowed.json()["status"]["conditions"])

    another = patch_status(cp, token, "web-a", "example.com/other")
    assert another.status_code in (403, 422)
    assert "only the condition katalog-sidecar.io/consul-confirmed" in another.json()["message"]
    ready = patch_status(cp, token, "web-a", "Ready")
    assert ready.status_code in (403, 422), ready.text

    # Cluster admins (and so the kubelet and controllers, which present no pod-bound token) are not governed.
    cp.api.request("PATCH", f"/api/v1/namespaces/{NS}/pods/web-b/status",
                   {"status": {"conditions": [{"type": "example.com/other", "status": "True"}]}},
                   content_type="application/strategic-merge-patch+json")
    assert other["metadata"]["uid"] != own["metadata"]["uid"]
