"""The examples as this machine's real node runs them: the ONE place where they are changed.

`for_this_machine(doc, api_url)` returns a copy of a manifest from examples/ with exactly these
differences (anything not listed is applied as written: probes, lifecycle hooks, grace periods,
security contexts, resources, volumes, RBAC, the rollout strategy):

1. Images: the placeholder `ghcr.io/katalog-sidecar/katalog-sidecar` becomes the image built
   here from the Dockerfile (`localhost/katalog-sidecar:node`); the app's
   `nginxinc/nginx-unprivileged` becomes the test app (`localhost/katalog-test-app:1`, whose
   readiness a test switches); every container gets `imagePullPolicy: Never` (no registry).
2. `hostNetwork: true` (this machine has no CNI network: pod IP = node IP = 127.0.0.N) with
   `dnsPolicy: ClusterFirstWithHostNet` (what a hostNetwork pod that wants cluster DNS says).
3. Because all nodes share one network namespace, nothing may listen on 0.0.0.0: the sidecar
   gets `KATALOG_METRICS_ADDR=$(POD_IP):9464` (the default is 0.0.0.0:9464), and the test app
   gets `POD_IP` from the downward API (it listens on $POD_IP:8080, as nginx listens on the
   pod's own 0.0.0.0 in a real pod network).
4. The sidecar gets `KATALOG_KUBE_API_URL` = the apiserver on loopback: without kube-proxy the
   `kubernetes` Service's cluster IP (what `KUBERNETES_SERVICE_HOST` names) leads nowhere.

Nothing else differs; `tests/test_node_overlay.py` checks that the diff is exactly this.

A sidecar the admission webhook injects (tests/test_node_webhook.py) is not in the manifest:
the workload (the app alone) gets 1-3 here, and the webhook gets 3 and 4 for the sidecar as
its `--sidecar-env` (`webhook_args`), the image as `--image SIDECAR_IMAGE`; the injected container keeps the
default pull policy (IfNotPresent: the image is in containerd's store, nothing is pulled).
"""

from __future__ import annotations

import copy
from typing import Any

from node_images import APP_IMAGE, SIDECAR_IMAGE

EXAMPLE_SIDECAR_IMAGE = "ghcr.io/katalog-sidecar/katalog-sidecar"
EXAMPLE_APP_IMAGE = "nginxinc/nginx-unprivileged"
SIDECAR_CONTAINER = "katalog-sidecar"
METRICS_PORT = 9464


def _image_name(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    return image[: len(image) - len(last)] + last.split(":", 1)[0]


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec a document carries (a Pod's own, a workload's template's), else None."""
    if doc.get("kind") == "Pod":
        return doc["spec"]  # type: ignore[no-any-return]
    template = (doc.get("spec") or {}).get("template")
    return template["spec"] if template else None


def _env(container: dict[str, Any], name: str, value: str | None = None, field: str | None = None) -> None:
    env = container.setdefault("env", [])
    env[:] = [e for e in env if e["name"] != name]
    env.append({"name": name, "value": value} if field is None else
               {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field}}})


def sidecar_env(api_url: str) -> dict[str, str]:
    """Items 3 and 4: what the sidecar's env gets on this machine."""
    return {"KATALOG_METRICS_ADDR": f"$(POD_IP):{METRICS_PORT}", "KATALOG_KUBE_API_URL": api_url}


def webhook_args(api_url: str) -> list[str]:
    """The same for a sidecar the webhook injects: `katalog-sidecar webhook` flags (with
    `--image SIDECAR_IMAGE`)."""
    args = []
    for name, value in sidecar_env(api_url).items():
        args += ["--sidecar-env", f"{name}={value}"]
    return args


def for_this_machine(doc: dict[str, Any], api_url: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    spec = _pod_spec(doc)
    if spec is None:
        return doc  # RBAC, Secrets, ...: as written
    spec["hostNetwork"] = True
    spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        image = _image_name(str(container.get("image", "")))
        if image == EXAMPLE_SIDECAR_IMAGE:
            container["image"] = SIDECAR_IMAGE
            for name, value in sidecar_env(api_url).items():
                _env(container, name, value)
        elif image == EXAMPLE_APP_IMAGE:
            container["image"] = APP_IMAGE
            _env(container, "POD_IP", field="status.podIP")
        container["imagePullPolicy"] = "Never"
    return doc
