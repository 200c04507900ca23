"""charts/katalog-sidecar with the real helm (scripts/provide-helm.sh) and a real kube-apiserver:
`helm lint`, the rendered chart through the apiserver's strict server-side dry run, and a real
`helm install` / `helm upgrade` / `helm uninstall`. (No kubelet here: the webhook's pods are
not run; tests/test_kube_real_webhook.py runs the webhook itself against the apiserver.)"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_control_plane import ApiError, ControlPlane

pytestmark = [pytest.mark.kube]

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "katalog-sidecar"
CONDITION = ["--set", "sidecar.gate=condition"]


def helm(helm_bin: str, tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # Helm's cache, config and data in the test's scratch directory: nothing global changes.
    env = {**os.environ, "HELM_CACHE_HOME": str(tmp_path / "helm-cache"), "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
           "HELM_DATA_HOME": str(tmp_path / "helm-data")}
    result = subprocess.run([helm_bin, *args], capture_output=True, text=True, env=env, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}: exit {result.returncode}: {result.stderr}")
    return result


def render(helm_bin: str, tmp_path: Path, *values: str) -> list[dict[str, Any]]:
    out = helm(helm_bin, tmp_path, "template", "kat", str(CHART), "-n", "katalog-system", "--kube-version", "1.34.0",
               *values).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_helm_lint(helm_bin: str, tmp_path: Path) -> None:
    for values in ([], CONDITION + ["--set", "namespaces[0].name=shop", "--set", "sidecar.native=true"]):
        result = helm(helm_bin, tmp_path, "lint", "--strict", str(CHART), *values)
        assert "0 chart(s) failed" in result.stdout


def test_the_charts_policy_is_the_examples(helm_bin: str, tmp_path: Path) -> None:
    example = [d for d in yaml.safe_load_all((REPO / "examples" / "pod-status-policy.yaml").read_text()) if d]
    rendered = [d for d in render(helm_bin, tmp_path, *CONDITION) if d["kind"].startswith("ValidatingAdmissionPolicy")]
    assert rendered == example
    assert not [d for d in render(helm_bin, tmp_path) if d["kind"].startswith("ValidatingAdmissionPolicy")]


EXTRA_ENV = ["--set-string", "sidecar.extraEnv.KATALOG_METRICS_ADDR=$(POD_IP):9464",
             "--set", "sidecar.extraEnv.KATALOG_EVENTS=false", "--set-string", "sidecar.extraEnv.A=b=c"]


def test_extra_env_reaches_the_webhooks_args_escaped_for_the_kubelet(helm_bin: str, tmp_path: Path) -> None:
    """$(POD_IP) must reach the webhook as written (for the sidecar's kubelet to expand), so the
    chart writes $$ (the kubelet's escape) in the webhook's own args."""
    [deployment] = [d for d in render(helm_bin, tmp_path, *EXTRA_ENV) if d["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--sidecar-env")] == [
        "--sidecar-env=A=b=c", "--sidecar-env=KATALOG_EVENTS=false", "--sidecar-env=KATALOG_METRICS_ADDR=$$(POD_IP):9464"]
    [deployment] = [d for d in render(helm_bin, tmp_path) if d["kind"] == "Deployment"]
    assert not [a for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"] if "sidecar-env" in a]


def test_extra_env_refuses_what_the_webhook_would_refuse(helm_bin: str, tmp_path: Path) -> None:
    """At install, not as a crash-looping webhook (which, failing open, would admit pods without the sidecar)."""
    from sidecar.manifests.inject import RESERVED_ENV

    template = (CHART / "templates" / "_helpers.tpl").read_text()
    reserved = template.split('define "katalog.reservedEnv" -}}', 1)[1].split("{{", 1)[0].split()
    assert sorted(reserved) == sorted(RESERVED_ENV)
    for name, expected in (("POD_UID", "POD_UID is written by inject itself"), ("1X", '"1X" is not a valid')):
        result = helm(helm_bin, tmp_path, "template", "kat", str(CHART), "--kube-version", "1.34.0",
                      "--set", f"sidecar.extraEnv.{name}=x", check=False)
        assert result.returncode != 0 and expected in result.stderr, result.stderr


def test_rendered_chart_passes_the_apiservers_strict_dry_run(helm_bin: str, control_plane: ControlPlane,
                                                             tmp_path: Path) -> None:
    control_plane.create_namespace("katalog-system")
    # prometheusRule stays off here: this apiserver has no prometheus-operator CRD. The rendered
    # PrometheusRule is checked by promtool instead (tests/test_alert_rules.py).
    for values in ([], CONDITION + ["--set", "namespaces[0].name=shop", "--set", "namespaces[0].label=false",
                                    "--set", "webhook.certManager.enabled=false", *EXTRA_ENV]):
        if values and not _exists(control_plane, "shop"):  # the chart's Roles go into an existing namespace
            control_plane.create_namespace("shop")
        manifest = tmp_path / "rendered.yaml"
        manifest.write_text(yaml.safe_dump_all(render(helm_bin, tmp_path, *values)))
        result = control_plane.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", str(manifest), check=False)
        assert result.returncode == 0, result.stderr


def _exists(cp: ControlPlane, namespace: str) -> bool:
    try:
        cp.api.get(f"/api/v1/namespaces/{namespace}")
        return True
    except ApiError:
        return False


def test_install_upgrade_uninstall(helm_bin: str, control_plane: ControlPlane, tmp_path: Path) -> None:
    cp = control_plane
    kube = ["--kubeconfig", str(cp.kubeconfig), "-n", "katalog-system"]
    helm(helm_bin, tmp_path, "install", "kat", str(CHART), *kube, "--create-namespace",
         "--set", "namespaces[0].name=shop")
    deployment = cp.api.get("/apis/apps/v1/namespaces/katalog-system/deployments/kat-webhook")
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] and "--gate=exec" in container["args"]
    config = cp.api.get("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/kat")
    assert [w["failurePolicy"] for w in config["webhooks"]] == ["Ignore", "Ignore"]
    assert cp.api.get("/api/v1/namespaces/shop")["metadata"]["labels"]["katalog-sidecar.io/inject"] == "enabled"
    role = cp.api.get("/apis/rbac.authorization.k8s.io/v1/namespaces/shop/roles/katalog-sidecar")
    assert [r["resources"] for r in role["rules"]] == [["pods"], ["events"]]
    cp.api.get("/apis/policy/v1/namespaces/katalog-system/poddisruptionbudgets/kat-webhook")

    # The webhook writes its CA bundle; an upgrade keeps it (else the apiserver would lose trust
    # in the webhook until it wrote the bundle again).
    bundle = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()
    for hook in config["webhooks"]:
        hook["clientConfig"]["caBundle"] = bundle
    cp.api.request("PUT", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/kat", config)
    helm(helm_bin, tmp_path, "upgrade", "kat", str(CHART), *kube, "--set", "namespaces[0].name=shop", *CONDITION)
    config = cp.api.get("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/kat")
    assert [w["clientConfig"].get("caBundle") for w in config["webhooks"]] == [bundle, bundle]
    role = cp.api.get("/apis/rbac.authorization.k8s.io/v1/namespaces/shop/roles/katalog-sidecar")
    assert ["pods/status"] in [r["resources"] for r in role["rules"]]
    cp.api.get("/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/katalog-sidecar-own-pod-status")
    args = cp.api.get("/apis/apps/v1/namespaces/katalog-system/deployments/kat-webhook")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--gate=condition" in args

    helm(helm_bin, tmp_path, "uninstall", "kat", *kube)
    for path in ("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/kat",
                 "/apis/apps/v1/namespaces/katalog-system/deployments/kat-webhook",
                 "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/katalog-sidecar-own-pod-status"):
        with pytest.raises(ApiError) as gone:
            cp.api.get(path)
        assert gone.value.code == 404, path
