"""The admission webhook as tests run it against a real kube-apiserver: the real
`katalog-sidecar webhook` process on loopback, registered with a `url:` clientConfig (as the
chart's Service would be on a cluster). Used by tests/test_kube_real_webhook.py (pod runner) and
tests/test_node_webhook.py (real kubelets)."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import requests
from consul_agents import free_port
from katalog_cluster import SIDECAR_IMAGE, example_docs, sidecar_entrypoint
from kube_control_plane import ADMIN_TOKEN, ControlPlane
from waiting import wait_until

OWN = "katalog-system"
LABEL = "katalog-sidecar.io/inject"
CONFIG = "katalog-sidecar"


class WebhookProcess:
    def __init__(self, cp: ControlPlane, workdir: Path, *args: str, image: str = f"{SIDECAR_IMAGE}:test") -> None:
        self.cp, self.workdir, self.args = cp, workdir, list(args)
        self.port, self.metrics_port = free_port("127.0.0.1"), free_port("127.0.0.1")
        token = workdir / "admin-token"
        token.write_text(ADMIN_TOKEN)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "webhook.log"
        self.argv = [*sidecar_entrypoint(), "webhook", "--namespace", OWN, "--image", image,
                     "--listen", f"127.0.0.1:{self.port}", "--host", "127.0.0.1",
                     "--metrics-addr", f"127.0.0.1:{self.metrics_port}", "--kube-api-url", cp.url,
                     "--kube-token-file", str(token), "--kube-ca-file", str(cp.pki.ca_crt), *self.args]

    def start(self) -> WebhookProcess:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._healthy, 30, f"the webhook serving (log: {self.log})")
        return self

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the webhook exited {self.process.returncode}: {self.log.read_text()[-2000:]}")
        try:
            return requests.get(f"https://127.0.0.1:{self.port}/healthz", verify=False, timeout=2).status_code == 200  # noqa: S501 - a liveness poke
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def metric(self, name: str, labels: str = "") -> float:
        text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        wanted = f"{name}{{{labels}}}" if labels else name
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.split(" ")[0] == wanted)


def webhook_configuration(port: int) -> dict[str, Any]:
    """What the chart writes, with a loopback URL in place of its Service."""
    common = {
        "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Ignore", "timeoutSeconds": 5,
        "reinvocationPolicy": "Never", "matchPolicy": "Equivalent",
        "clientConfig": {"url": f"https://127.0.0.1:{port}/inject"},
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                   "scope": "Namespaced"}],
    }
    not_own = {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [OWN]}
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": CONFIG},
        "webhooks": [
            {**common, "name": "namespace.inject.katalog-sidecar.io",
             "namespaceSelector": {"matchLabels": {LABEL: "enabled"}, "matchExpressions": [not_own]},
             "objectSelector": {"matchExpressions": [{"key": LABEL, "operator": "NotIn", "values": ["disabled"]}]}},
            {**common, "name": "pod.inject.katalog-sidecar.io",
             "namespaceSelector": {"matchExpressions": [
                 {"key": LABEL, "operator": "NotIn", "values": ["enabled"]}, not_own]},
             "objectSelector": {"matchLabels": {LABEL: "enabled"}}},
        ],
    }


def namespace(cp: ControlPlane, name: str, labels: dict[str, str] | None = None) -> None:
    cp.api.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                      "metadata": {"name": name, "labels": labels or {}}})
    cp.wait_namespace_ready(name)


def has_sidecar(pod: dict[str, Any]) -> bool:
    return any(c["name"] == "katalog-sidecar" for c in pod["spec"].get("containers", []) + pod["spec"].get("initContainers", []))


def app_deployment(name: str = "web") -> dict[str, Any]:
    """The classic example's Deployment as a user writes it before opting in: no sidecar, its
    volumes and grace period; the services named by the pod template's annotation."""
    [deployment] = [copy.deepcopy(d) for d in example_docs("deployment-classic-sidecar.yaml") if d["kind"] == "Deployment"]
    deployment["metadata"]["name"] = name
    deployment["spec"]["replicas"] = 1
    spec = deployment["spec"]["template"]["spec"]
    spec["containers"] = [c for c in spec["containers"] if c["name"] != "katalog-sidecar"]
    used = {mount["name"] for c in spec["containers"] for mount in c.get("volumeMounts") or []}
    spec["volumes"] = [v for v in spec.get("volumes") or [] if v["name"] in used]
    spec.pop("terminationGracePeriodSeconds", None)
    deployment["spec"]["template"]["metadata"].setdefault("annotations", {})["katalog-sidecar.io/services"] = "web:http"
    return deployment
