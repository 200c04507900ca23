"""Images for the real node, without a registry: built here, cached, imported into containerd.

- `PAUSE_IMAGE`: the sandbox ("pause") image, one layer holding a static Go binary that waits
  for a signal and reaps children (what registry.k8s.io/pause does); built with the Go
  toolchain the control-plane build already needs, in seconds.
- `APP_IMAGE`: the examples' app (nginx-unprivileged there): the Debian base rootfs the
  project's image is built from (scripts/image-smoke.sh caches it) plus one layer with a small
  HTTP server on `$POD_IP:8080` whose readiness the test switches inside the container:
  `kubectl exec POD -c web -- app-ready off` (503 from then on) / `on` (200). It starts
  ready unless `APP_READY=false`; SIGTERM ends it with exit 0 (`APP_SIGTERM=ignore`: it
  ignores SIGTERM, so only the kubelet's SIGKILL ends it).
- `SIDECAR_IMAGE`: the project's image, built from the Dockerfile by
  `scripts/image-smoke.sh --save` (podman) and cached per content of what the Dockerfile copies.

Archives are docker-archive tars (`ctr images import` reads them); every cache entry is keyed
by what it is built from, and written under a temporary name first.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAUSE_IMAGE = "localhost/katalog-pause:static"
APP_IMAGE = "localhost/katalog-test-app:1"
SIDECAR_IMAGE = "localhost/katalog-sidecar:node"
# What the Dockerfile copies into the image: its cache key.
SIDECAR_SOURCES = ("Dockerfile", "pyproject.toml", "setup.cfg", "README.md", "LICENSE", "sidecar",
                   "readiness_gate", "bin")

PAUSE_GO = """package main

import (
	"os"
	"os/signal"
	"syscall"
)

// The sandbox's first process: waits for SIGINT/SIGTERM and reaps what is re-parented to it.
func main() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			if pid, _ := syscall.Wait4(-1, &status, syscall.WNOHANG, nil); pid <= 0 {
				break
			}
		}
	}
}
"""

APP_PY = '''"""The test app: HTTP 200 on $POD_IP:$APP_PORT while ready, 503 once `app-ready off` ran."""
import http.server
import os
import signal
import sys
import threading

MARKER = "/tmp/app-unready"
if os.environ.get("APP_READY", "true") == "false":
    open(MARKER, "w").close()
host = os.environ.get("POD_IP", "")
if not host:
    sys.exit("katalog-test-app: POD_IP is empty; set it from status.podIP (it listens there only)")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(503 if os.path.exists(MARKER) else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer((host, int(os.environ.get("APP_PORT", "8080"))), Handler)
if os.environ.get("APP_SIGTERM") == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
print(f"katalog-test-app: serving on {host}:{server.server_address[1]}", flush=True)
server.serve_forever()
print("katalog-test-app: SIGTERM, exiting 0", flush=True)
'''

APP_READY_SH = """#!/bin/sh
# app-ready on|off: the test app's readiness from now on.
case "$1" in
  on) rm -f /tmp/app-unready ;;
  off) touch /tmp/app-unready ;;
  *) echo "usage: app-ready on|off" >&2; exit 2 ;;
esac
"""


def cache_dir() -> Path:
    base = os.environ.get("KATALOG_CACHE_DIR") or str(
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "katalog-sidecar")
    return Path(base) / "node-images"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_docker_archive(path: Path, ref: str, layers: Iterable[Path], config: dict[str, object]) -> Path:
    """A `docker save`-format archive of one image: uncompressed layer tars, in order."""
    layers = list(layers)
    diff_ids = [f"sha256:{_sha256_file(layer)}" for layer in layers]
    image_config = json.dumps({"architecture": "amd64", "os": "linux", "config": config,
                               "rootfs": {"type": "layers", "diff_ids": diff_ids}}, sort_keys=True).encode()
    config_name = f"{hashlib.sha256(image_config).hexdigest()}.json"
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, "w") as archive:
        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))

        add_bytes(config_name, image_config)
        names = []
        for layer, diff_id in zip(layers, diff_ids, strict=True):
            names.append(f"{diff_id.removeprefix('sha256:')}/layer.tar")
            archive.add(layer, arcname=names[-1])
        add_bytes("manifest.json", json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": names}]).encode())
    os.replace(tmp, path)
    return path


def _layer(path: Path, files: dict[str, tuple[bytes, int]]) -> Path:
    """A layer tar of `files` (path in the image -> content, mode), with its parent dirs."""
    with tarfile.open(path, "w") as layer:
        dirs = sorted({str(Path(name).parent) for name in files} - {"."})
        for directory in dirs:
            parts = Path(directory).parts
            for i in range(1, len(parts) + 1):
                name = "/".join(parts[:i])
                if name not in layer.getnames():
                    info = tarfile.TarInfo(name)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    layer.addfile(info)
        for name, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            layer.addfile(info, io.BytesIO(data))
    return path


def _go() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)
    if found is None:
        raise RuntimeError("no Go toolchain to build the pause binary (scripts/provide-kube.sh needs one too)")
    return found


def pause_archive() -> Path:
    key = hashlib.sha256(PAUSE_GO.encode()).hexdigest()[:12]
    path = cache_dir() / f"pause-{key}.tar"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="katalog-pause-") as tmp:
        work = Path(tmp)
        (work / "go.mod").write_text("module katalog-sidecar/pause\n\ngo 1.21\n")
        (work / "main.go").write_text(PAUSE_GO)
        env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
        subprocess.run([_go(), "build", "-trimpath", "-ldflags=-s -w", "-o", "pause", "."], cwd=work, env=env,
                       check=True, capture_output=True, timeout=300)
        layer = _layer(work / "layer.tar", {"pause": ((work / "pause").read_bytes(), 0o755)})
        write_docker_archive(path, PAUSE_IMAGE, [layer], {"Entrypoint": ["/pause"]})
    return path


def base_rootfs() -> Path:
    """The Debian rootfs scripts/image-smoke.sh builds for the project's image (cached there)."""
    base_dir = cache_dir().parent / "image-base"
    found = sorted(base_dir.glob("bookworm-*.tar"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise RuntimeError(f"no base rootfs in {base_dir}: scripts/image-smoke.sh builds it")
    return found[-1]


def app_archive() -> Path:
    base = base_rootfs()
    key = hashlib.sha256(f"{base.name}\n{APP_PY}\n{APP_READY_SH}".encode()).hexdigest()[:12]
    path = cache_dir() / f"app-{key}.tar"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in cache_dir().glob("app-*.tar"):  # built from an older base or app
        old.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="katalog-app-") as tmp:
        layer = _layer(Path(tmp) / "layer.tar", {
            "usr/local/bin/katalog-test-app": (APP_PY.encode(), 0o755),
            "usr/local/bin/app-ready": (APP_READY_SH.encode(), 0o755)})
        write_docker_archive(path, APP_IMAGE, [base, layer], {
            "Entrypoint": ["python3", "/usr/local/bin/katalog-test-app"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]})
    return path


KEEP_OTHER_SIDECAR_IMAGES = 3


def sidecar_key() -> str:
    digest = hashlib.sha256()
    for name in SIDECAR_SOURCES:
        root = REPO / name
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()
                                                     and "__pycache__" not in p.parts)
        for file in files:
            digest.update(str(file.relative_to(REPO)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def sidecar_archive(log: bool = False) -> Path:
    """The project's image from the Dockerfile (podman, through scripts/image-smoke.sh)."""
    path = cache_dir() / f"sidecar-{sidecar_key()}.tar"
    if path.exists():
        return path
    # Images of other sources: the newest few stay, since another checkout's run (a worktree,
    # a concurrent CI clone) may be about to import its own; older ones go (~60 MB each).
    others = sorted(cache_dir().glob("sidecar-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[KEEP_OTHER_SIDECAR_IMAGES:]:
        old.unlink(missing_ok=True)
    result = subprocess.run(["bash", str(REPO / "scripts" / "image-smoke.sh"), "--save", str(path)],
                            capture_output=not log, text=True, timeout=1800, check=False)
    if result.returncode != 0 or not path.exists():
        raise RuntimeError(f"building the project's image failed (scripts/image-smoke.sh --save):\n"
                           f"{(result.stderr or '')[-3000:]}")
    return path


def all_archives(log: bool = False) -> dict[str, Path]:
    """Image name -> archive; the sidecar's first (it builds the base the app image uses).

    Under a lock: pytest-xdist workers (and concurrent runs) would otherwise build the same
    image at once with podman and replace each other's archives."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with (cache_dir() / ".build.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sidecar = sidecar_archive(log)
        return {SIDECAR_IMAGE: sidecar, APP_IMAGE: app_archive(), PAUSE_IMAGE: pause_archive()}
