"""The pod runner's sidecar container run from the built image with podman, not from the venv.

    images = {SIDECAR_IMAGE: podman_image("localhost/katalog-sidecar:smoke")}

`scripts/image-smoke.sh --e2e` builds the image and runs tests/image_e2e.py with podman pointed
at its throw-away store (CONTAINERS_CONF and friends in the environment, which every podman
call here passes on). What a container runtime would give, as the kubelet asks for it:

- the container's `securityContext` as podman flags: `runAsUser`/`runAsGroup` (--user),
  `readOnlyRootFilesystem` (--read-only, and no tmpfs anywhere), `capabilities.drop`,
  `allowPrivilegeEscalation: false` (no-new-privileges); the pod's `fsGroup` as the group of
  its emptyDirs (setgid, group-writable) and a supplementary group of the process;
- `volumeMounts` bind-mounted at their container paths (`readOnly` too), from the runner's
  scratch directories; environment values the runner rewrote to those directories go back to
  the container paths; the runner's host `PATH` and `HOME` are left to the image;
- host networking (this machine allows no other), so the pod IP and `$HOST_IP:8500` on
  loopback are reachable as the runner set them up;
- `exec` probes and `kubectl exec` through `podman exec`, in the running container.

The client `podman run` stays attached: its exit code is the container's, and SIGTERM sent to
it is passed on to the container (podman's signal proxy); SIGKILL goes through `podman kill`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from pod_runner import ContainerContext, ImageFn

PODMAN = os.environ.get("KATALOG_PODMAN", "podman")
RUNNER_ONLY = ("PATH", "HOME", "LANG")  # the image has its own


def _podman_env() -> dict[str, str]:
    """podman's own environment: which store and configuration (never the container's env)."""
    return dict(os.environ)


def _to_container_paths(value: str, mounts: dict[str, Path]) -> str:
    """Undo the runner's rewrite of a path under a volume to its scratch directory."""
    for mount_path, host_dir in sorted(mounts.items(), key=lambda item: -len(str(item[1]))):
        host = str(host_dir)
        if value == host or value.startswith(host.rstrip("/") + "/"):
            return mount_path.rstrip("/") + value[len(host.rstrip("/")):]
    return value


def security_flags(container: dict[str, Any], pod_spec: dict[str, Any]) -> list[str]:
    """The container's securityContext (over the pod's) as `podman run` flags."""
    pod_sc = pod_spec.get("securityContext") or {}
    sc = {**pod_sc, **(container.get("securityContext") or {})}
    flags: list[str] = []
    if "runAsUser" in sc:
        flags += ["--user", f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"]
    if "fsGroup" in pod_sc:
        flags += ["--group-add", str(pod_sc["fsGroup"])]
    if sc.get("readOnlyRootFilesystem"):
        flags += ["--read-only", "--read-only-tmpfs=false"]
    for cap in (sc.get("capabilities") or {}).get("drop") or []:
        flags += ["--cap-drop", str(cap)]
    for cap in (sc.get("capabilities") or {}).get("add") or []:
        flags += ["--cap-add", str(cap)]
    if sc.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    return flags


class PodmanContainer:
    def __init__(self, ctx: ContainerContext, image: str) -> None:
        pod_spec = ctx.pod.pod["spec"]
        self.name = f"{ctx.pod.namespace}_{ctx.pod.name}_{ctx.name}"
        fs_group = (pod_spec.get("securityContext") or {}).get("fsGroup")
        volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
        argv = [PODMAN, "run", "--rm", "--name", self.name, "--network", "host", "--hostname", ctx.pod.name,
                *security_flags(ctx.spec, pod_spec)]
        for mount in ctx.spec.get("volumeMounts") or []:
            host_dir = ctx.pod.mounts_by_volume[mount["name"]]
            if "emptyDir" in volumes.get(mount["name"], {}) and fs_group is not None:
                os.chown(host_dir, 0, int(fs_group))  # what fsGroup does to a pod's volumes
                host_dir.chmod(0o2775)
            argv += ["--volume", f"{host_dir}:{mount['mountPath']}{':ro' if mount.get('readOnly') else ''}"]
        manifest_env = {e["name"] for e in ctx.spec.get("env") or []}
        for key, value in ctx.env.items():
            # Only what the kubelet would set (the manifest, the service variables) and the
            # runner's overlay values that are not paths into its own scratch space.
            if key in RUNNER_ONLY:
                continue
            restored = _to_container_paths(value, ctx.mounts)
            if key not in manifest_env and restored.startswith(str(ctx.pod.workdir)):
                continue  # a default path the image already has inside the container
            argv += ["--env", f"{key}={restored}"]
        if ctx.spec.get("command"):
            argv += ["--entrypoint", json.dumps(ctx.spec["command"])]
        argv += [image, *(ctx.spec.get("args") or [])]
        with ctx.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, env=_podman_env(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if not self.alive():
            return
        if sig == signal.SIGKILL:  # cannot be proxied: ask podman
            subprocess.run([PODMAN, "kill", "--signal", "KILL", self.name], env=_podman_env(),
                           capture_output=True, timeout=30, check=False)
        else:
            self.proc.send_signal(sig)  # podman run's signal proxy passes it to the container

    def exit_code(self) -> int | None:
        return self.proc.poll()

    def exec_command(self, argv: list[str]) -> tuple[list[str], dict[str, str]]:
        """`argv` run in the container (its user, environment, mounts), and podman's env."""
        return [PODMAN, "exec", self.name, *argv], _podman_env()

    def remove(self) -> None:
        subprocess.run([PODMAN, "rm", "--force", "--time", "0", self.name], env=_podman_env(),
                       capture_output=True, timeout=60, check=False)


def podman_image(image: str) -> ImageFn:
    def start(ctx: ContainerContext) -> PodmanContainer:
        return PodmanContainer(ctx, image)

    return start
