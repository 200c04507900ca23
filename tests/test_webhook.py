"""The admission webhook without a cluster: its decision on AdmissionReviews, its HTTPS server,
and its certificates (the real-apiserver tests are in tests/test_kube_real_webhook.py)."""

from __future__ import annotations

import base64
import copy
import json
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from sidecar.manifests import templates as m
from sidecar.manifests.admission import review
from sidecar.manifests.inject import InjectOptions, inject

certs = pytest.importorskip("sidecar.manifests.certs")  # the `webhook` extra (installed with `test`)
from sidecar.manifests.webhook import Webhook, WebhookSettings  # noqa: E402

IMAGE = "registry.example/katalog-sidecar:0.1.0"
OPTIONS = InjectOptions(image=IMAGE)
Doc = dict[str, Any]


def pod(annotations: dict[str, str] | None = None, **spec: Any) -> Doc:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-5d8f7-", "namespace": "shop", "labels": {"app": "web"},
                         "annotations": annotations if annotations is not None else {m.SERVICES_ANNOTATION: "web:http"}},
            "spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"name": "http", "containerPort": 80}]}],
                     **spec}}


def admission_review(obj: Doc, namespace: str = "shop", operation: str = "CREATE") -> Doc:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "namespace": namespace, "operation": operation, "object": obj}}


def apply_patch(obj: Doc, response: Doc) -> Doc:
    out = copy.deepcopy(obj)
    if "patch" not in response:
        return out
    assert response["patchType"] == "JSONPatch"
    for op in json.loads(base64.b64decode(response["patch"])):
        assert op["op"] == "add" and op["path"].startswith("/spec/")
        out["spec"][op["path"].split("/")[2]] = op["value"]
    return out


def test_the_webhook_writes_exactly_what_inject_writes() -> None:
    for notes in ({m.SERVICES_ANNOTATION: "web:http"}, {m.KATALOG_SYNC_SERVICES: "web"}):
        original = pod(notes)
        answer, result = review(admission_review(original), OPTIONS, "katalog-system")
        assert result == "injected" and answer["response"]["uid"] == "u-1" and answer["response"]["allowed"]
        assert apply_patch(original, answer["response"]) == inject([original], OPTIONS).documents[0]


def test_sidecar_env_goes_through_the_same_code_path() -> None:
    options = InjectOptions(image=IMAGE, extra_env=(("KATALOG_METRICS_ADDR", "$(POD_IP):9464"), ("X", "1")))
    original = pod()
    answer, result = review(admission_review(original), options, "katalog-system")
    injected = apply_patch(original, answer["response"])
    assert result == "injected" and injected == inject([original], options).documents[0]
    assert injected["spec"]["containers"][1]["env"][-2:] == [{"name": "KATALOG_METRICS_ADDR", "value": "$(POD_IP):9464"},
                                                              {"name": "X", "value": "1"}]


def test_idempotent_own_namespace_and_opt_out_are_left_alone() -> None:
    injected = inject([pod()], OPTIONS).documents[0]
    opted_out = pod()
    opted_out["metadata"]["labels"]["katalog-sidecar.io/inject"] = "disabled"
    for obj, namespace, expected in ((injected, "shop", "skipped-has-sidecar"),
                                     (pod(), "katalog-system", "skipped-own-namespace"),
                                     (opted_out, "shop", "skipped-opted-out")):
        answer, result = review(admission_review(obj, namespace), OPTIONS, "katalog-system")
        assert result == expected and answer["response"] == {"uid": "u-1", "allowed": True}
    answer, result = review(admission_review(pod(), operation="UPDATE"), OPTIONS, "katalog-system")
    assert result == "skipped-not-a-pod-creation" and "patch" not in answer["response"]


def test_a_pod_inject_refuses_is_admitted_with_a_warning() -> None:
    """Never blocks a pod: a Job's pod without --native, or a pod naming no services."""
    for obj in (pod(restartPolicy="Never"), pod({})):
        answer, result = review(admission_review(obj), OPTIONS, "katalog-system")
        assert result == "refused" and answer["response"]["allowed"] and "patch" not in answer["response"]
        assert answer["response"]["warnings"][0].startswith("katalog-sidecar not injected: Pod/web-5d8f7-: ")
    answer, result = review(admission_review(pod(restartPolicy="Never")), InjectOptions(IMAGE, native=True), "x")
    assert result == "injected"


def test_junk_is_not_a_review() -> None:
    for body in (None, [], {"request": {}}, {"request": {"uid": 5}}):
        assert review(body, OPTIONS, "x")[1] == "invalid"


def test_serving_over_https_from_files_and_a_new_certificate_without_a_restart(tmp_path: Path) -> None:
    ca = certs.new_ca("test-ca", 3600)
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    first = certs.new_serving(ca, ["127.0.0.1"], 3600)
    (tmp_path / "tls.crt").write_bytes(first.cert_pem)
    (tmp_path / "tls.key").write_bytes(first.key_pem)
    hook = Webhook(WebhookSettings(options=OPTIONS, namespace="katalog-system", listen=("127.0.0.1", 0),
                                   cert_dir=tmp_path, metrics_addr=None)).start()
    try:
        url = f"https://127.0.0.1:{hook.port}/inject"
        with requests.Session() as session:
            session.trust_env = False  # else $REQUESTS_CA_BUNDLE overrides verify
            session.verify = str(tmp_path / "ca.crt")
            answer = session.post(url, json=admission_review(pod()), timeout=5)
            assert answer.status_code == 200 and answer.json()["response"]["patchType"] == "JSONPatch"
            assert session.post(url, data=b"junk", timeout=5).status_code == 400

            def served_serial() -> int:
                context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
                import socket

                with socket.create_connection(("127.0.0.1", hook.port), timeout=5) as raw, \
                        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    der = tls.getpeercert(binary_form=True)
                assert der is not None
                from cryptography import x509

                return int(x509.load_der_x509_certificate(der).serial_number)

            assert served_serial() == first.certificate.serial_number
            second = certs.new_serving(ca, ["127.0.0.1"], 3600)
            (tmp_path / "tls.key").write_bytes(second.key_pem)
            (tmp_path / "tls.crt").write_bytes(second.cert_pem)
            hook.refresh_certificates()  # what its loop does every 10 s
            assert served_serial() == second.certificate.serial_number
            # The keep-alive connection opened before still answers.
            assert session.post(url, json=admission_review(pod()), timeout=5).status_code == 200
    finally:
        hook.close()


def test_certificates_chain_and_never_outlive_their_ca() -> None:
    ca = certs.new_ca("ca", 60)
    serving = certs.new_serving(ca, ["svc.ns.svc", "127.0.0.1"], 3600)
    assert serving.not_after <= ca.not_after + 1
    assert serving.not_before < time.time() < serving.not_after
    serving.certificate.verify_directly_issued_by(ca.certificate)
