"""Run inside the built image (scripts/image-smoke.sh pipes it to the image's Python): the
webhook really starts from the image and serves one AdmissionReview on loopback.

It makes a CA and a serving certificate for 127.0.0.1 (the `webhook` extra: cryptography),
starts `katalog-sidecar webhook --cert-dir` (no cluster needed: certificates from files, the
periodic check off), posts a review of an opted-in pod over HTTPS verified against that CA,
and checks the answer is a JSON Patch adding the sidecar with the given image. Then SIGTERM:
the process must exit 0. Standard library only besides the package; every wait has a deadline.

Usage: python - WORKDIR < scripts/image_webhook_check.py   (WORKDIR: writable, e.g. a volume)
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

IMAGE = "registry.example/katalog-sidecar:smoke"


def main(workdir: Path) -> int:
    from sidecar.manifests import certs  # fails here without the `webhook` extra

    ca = certs.new_ca("image-smoke-ca", 3600)
    serving = certs.new_serving(ca, ["127.0.0.1"], 3600)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "ca.crt").write_bytes(ca.cert_pem)
    (workdir / "tls.crt").write_bytes(serving.cert_pem)
    (workdir / "tls.key").write_bytes(serving.key_pem)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hook = subprocess.Popen(
        ["katalog-sidecar", "webhook", "--listen", f"127.0.0.1:{port}", "--namespace", "katalog-system",
         "--image", IMAGE, "--cert-dir", str(workdir), "--check-interval", "0", "--metrics-addr", "off",
         "--kube-api-url", "http://127.0.0.1:9"],  # never contacted: certificates from files, no check
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                  "request": {"uid": "smoke-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                              "resource": {"group": "", "version": "v1", "resource": "pods"},
                              "namespace": "shop", "operation": "CREATE",
                              "object": {"apiVersion": "v1", "kind": "Pod",
                                         "metadata": {"generateName": "web-", "namespace": "shop",
                                                      "labels": {"katalog-sidecar.io/inject": "enabled"},
                                                      "annotations": {"katalog-sidecar.io/services": "web:http"}},
                                         "spec": {"containers": [{"name": "web", "image": "nginx",
                                                                  "ports": [{"name": "http", "containerPort": 80}]}]}}}}
        context = ssl.create_default_context(cafile=str(workdir / "ca.crt"))
        request = urllib.request.Request(f"https://127.0.0.1:{port}/inject", data=json.dumps(review).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        deadline = time.monotonic() + 60
        while True:
            if hook.poll() is not None:
                print(f"webhook exited {hook.returncode} before serving:\n{hook.stdout.read() if hook.stdout else ''}")
                return 1
            try:
                with urllib.request.urlopen(request, context=context, timeout=5) as answer:
                    body = json.load(answer)
                break
            except (ConnectionError, urllib.error.URLError) as exc:
                if time.monotonic() > deadline:
                    print(f"webhook not answering after 60 s: {exc}")
                    return 1
                time.sleep(0.2)
        response = body["response"]
        assert response["uid"] == "smoke-1" and response["allowed"] is True, response
        assert response.get("patchType") == "JSONPatch", response
        ops = json.loads(base64.b64decode(response["patch"]))
        images = [c.get("image") for op in ops if op["path"] == "/spec/containers" for c in op["value"]]
        assert IMAGE in images, f"no container with {IMAGE} in the patch: {ops}"
    finally:
        code: int | None
        hook.send_signal(signal.SIGTERM)
        try:
            code = hook.wait(timeout=30)
        except subprocess.TimeoutExpired:
            hook.kill()
            hook.wait(timeout=10)
            code = None
    if code != 0:
        print(f"webhook exited {code} after SIGTERM (want 0):\n{hook.stdout.read() if hook.stdout else ''}")
        return 1
    print(f"webhook served one AdmissionReview over HTTPS on 127.0.0.1:{port}: patch adds {IMAGE}; exit 0 on SIGTERM")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
