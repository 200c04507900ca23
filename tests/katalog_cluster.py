"""The project's cluster for tests, the demo and the benchmark: a real control plane, a real
Consul server plus a client agent that is the node's agent, and a pod runner whose node IP is
that agent's address, so the examples' `http://$HOST_IP:8500` reaches it unchanged.

    with KatalogCluster(binaries, consul_bin, tmp_path) as cluster:
        cluster.apply_example("rbac.yaml", "deployment-classic-sidecar.yaml")
        pods = cluster.runner.wait_for_pods("default", 3)
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from consul_agents import ServerAndClient
from kube_control_plane import ControlPlane
from pod_runner import ContainerContext, ImageFn, PodRunner, _rewrite_path, process_image, stand_in_app

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
SIDECAR_IMAGE = "ghcr.io/katalog-sidecar/katalog-sidecar"  # the examples' placeholder image
APP_IMAGE = "nginxinc/nginx-unprivileged"  # the examples' app: a stand-in app plays it
CONSUL_TOKEN_SECRET = "katalog-consul-token"  # noqa: S105 - the Secret's name, not a token


def sidecar_entrypoint() -> list[str]:
    """The Dockerfile's ENTRYPOINT, installed in this environment (the venv's console script)."""
    found = shutil.which("katalog-sidecar") or str(Path(sys.executable).parent / "katalog-sidecar")
    return [found]


def default_images() -> dict[str, ImageFn]:
    return {SIDECAR_IMAGE: process_image(sidecar_entrypoint()), APP_IMAGE: stand_in_app}


def katalog_overlay(ctx: ContainerContext) -> dict[str, str]:
    """What namespaces would give the sidecar in a real pod, as settings: its default token, CA
    and status-file paths under the pod's mounts, and a metrics listener on the pod IP (a pod's
    0.0.0.0 is its own network namespace; here it would be the host's)."""
    from sidecar.config import SETTINGS

    defaults = {s.env: s.default for s in SETTINGS}
    # The image's PATH: where this environment installed the console scripts (readiness-gate).
    extra = {"PATH": f"{Path(sys.executable).parent}:{ctx.env['PATH']}"}
    for name in ("KATALOG_KUBE_TOKEN_FILE", "KATALOG_KUBE_CA_FILE", "KATALOG_STATUS_FILE"):
        if name not in ctx.env:
            path = _rewrite_path(defaults[name], ctx.mounts)
            extra[name] = path if path != defaults[name] else str(ctx.pod.workdir / Path(path).name)
    if "KATALOG_METRICS_ADDR" not in ctx.env:
        extra["KATALOG_METRICS_ADDR"] = f"{ctx.pod.ip}:{defaults['KATALOG_METRICS_ADDR'].rsplit(':', 1)[1]}"
    return extra


def example_docs(name: str) -> list[dict[str, Any]]:
    with (EXAMPLES / name).open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def example_pod(name: str, example: str = "deployment-classic-sidecar.yaml") -> dict[str, Any]:
    """A bare Pod with a fixed name, made from an example Deployment's pod template (a Role
    restricted by `resourceNames` needs a name known in advance)."""
    [deployment] = [d for d in example_docs(example) if d["kind"] == "Deployment"]
    template = copy.deepcopy(deployment["spec"]["template"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {**template["metadata"], "name": name},
            "spec": template["spec"]}


class KatalogCluster:
    def __init__(self, binaries: Mapping[str, str], consul_bin: str, workdir: Path, *,
                 images: dict[str, ImageFn] | None = None, app_ready_default: bool = True) -> None:
        self.workdir = workdir
        self.control_plane = ControlPlane(binaries, workdir)
        self.consul = ServerAndClient(consul_bin, workdir)
        self.consul.client.http_port = 8500  # the node's agent, where $HOST_IP:8500 points
        self.runner = PodRunner(self.control_plane.api, workdir, {"node-a": self.consul.client.host},
                                images={**default_images(), **(images or {})}, overlay=katalog_overlay,
                                app_ready_default=app_ready_default)

    @property
    def api(self):  # noqa: ANN201 - KubeApi, re-exported
        return self.control_plane.api

    def start(self) -> KatalogCluster:
        try:
            self.control_plane.start()
            self.consul.start()
            self.runner.start()
            self.control_plane.kubectl("create", "secret", "generic", CONSUL_TOKEN_SECRET,
                                       "--from-literal=token=anonymous")
        except BaseException:
            self.stop()
            raise
        return self

    def apply_example(self, *names: str, namespace: str = "default") -> None:
        """`kubectl apply` of files from examples/, as they are."""
        args = ["apply", "-n", namespace]
        for name in names:
            args += ["-f", str(EXAMPLES / name)]
        self.control_plane.kubectl(*args)

    def apply(self, *objects: Mapping[str, Any], namespace: str = "default") -> None:
        """`kubectl apply` of objects built by the test (e.g. from `example_pod`)."""
        manifest = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        self.control_plane.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(manifest))

    def stop(self) -> None:
        try:
            self.runner.stop()
        finally:
            try:
                self.consul.stop()
            finally:
                self.control_plane.stop()

    def __enter__(self) -> KatalogCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
