"""A real Kubernetes node on loopback: containerd + kubelet in a private mount namespace.

    node = Node(binaries, workdir, ip, cp)      # ip: a claimed 127.0.0.N (claim_node_ips)
    node.start()                                # containerd, then the kubelet
    node.import_images(node_images.all_archives())
    node.wait_ready(); node.untaint()
    ...
    node.stop()                                 # SIGKILL to everything, cgroups removed

What it took on this machine, and how it is done here:

- One mount namespace per node (`unshare --mount --propagation private`), set up by a small
  shell script before containerd starts: scratch directories over `/run`, `/var/lib` and
  `/var/log`, so containerd, runc, the shims and the kubelet keep every bit of state in the
  node's scratch directory with their default paths; files over the `/proc/sys` entries the
  kubelet rewrites (the host's values stay); a failing stand-in over the iptables binaries
  (the kubelet would add its canary chains to the host's firewall). Mounts made in there
  (volumes, snapshots) are the namespace's: they are gone when its last process exits.
- root here lacks CAP_SYS_RESOURCE: containerd's `restrict_oom_score_adj` and the kubelet's
  `oomScoreAdj: 0`; `maxOpenFiles` is the hard limit that cannot be raised.
- The node is *named* by its IP (`--hostname-override=127.0.0.N`: the kubelet refuses a
  loopback `--node-ip`), listens there only, and its pods use the host network (no CNI
  plugin but `loopback`, which makes containerd's network ready): pod IP = node IP.
- The apiserver calls the kubelet without a client certificate: anonymous auth, AlwaysAllow,
  acceptable because it listens on loopback only. The kubelet authenticates to the apiserver
  with a static token of `system:node:<ip>` in `system:nodes` (Node authorization applies).
- Everything the node runs (the namespace's shell, containerd, the kubelet, shims, pods) is
  in the cgroup `/katalog-node-<ip>` of every hierarchy (the pods through `cgroupRoot`):
  `stop()` SIGKILLs every process in it and removes the cgroups. An IP is claimed with a lock
  file held for the node's lifetime; a claim finding state of a run that was killed (its lock
  is free again) removes that state first.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import requests
from kube_control_plane import ApiError, ControlPlane, _Process, write_kubeconfig

STATE_DIR = Path(os.environ.get("TMPDIR", "/tmp")) / "katalog-nodes"
CGROUP_PREFIX = "katalog-node-"
KUBELET_PORT = 10250
# The /proc/sys entries the kubelet sets (pkg/kubelet/cm: setupKernelTunables).
KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
RUNTIME_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "unshare")
CNI_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
_NODE_IP = re.compile(r"127\.0\.0\.([0-9]{1,3})")


class NodeUnavailable(RuntimeError):
    """The machine cannot run a real node; the message says why in one line."""


def runtime_versions() -> dict[str, str]:
    """containerd's and runc's versions, as they report them."""
    containerd = subprocess.run(["containerd", "--version"], capture_output=True, text=True, timeout=10).stdout.split()
    runc = subprocess.run(["runc", "--version"], capture_output=True, text=True, timeout=10).stdout.split()
    return {"containerd": containerd[2] if len(containerd) > 2 else "?", "runc": runc[2] if len(runc) > 2 else "?"}


def find_node_binaries() -> dict[str, str]:
    """kubelet and kube-scheduler ($KUBELET_BIN, $KUBE_SCHEDULER_BIN or the cache of
    scripts/provide-kube.sh), the runtime's tools on PATH, the CNI plugin directory. Raises
    NodeUnavailable naming what is missing."""
    if os.geteuid() != 0:
        raise NodeUnavailable("a real node needs root (mount namespaces, cgroups, containerd)")
    cache = Path(os.environ.get("KATALOG_CACHE_DIR", Path.home() / ".cache" / "katalog-sidecar"))
    found: dict[str, str] = {}
    for name, var in (("kubelet", "KUBELET_BIN"), ("kube-scheduler", "KUBE_SCHEDULER_BIN")):
        candidates = [os.environ.get(var)] + [str(p) for p in sorted(cache.glob(f"kube-*/{name}"), reverse=True)]
        path = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
        if path is None:
            raise NodeUnavailable(f"no {name}: run `eval \"$(scripts/provide-kube.sh)\"` or set {var}")
        found[name] = path
    for tool in RUNTIME_TOOLS:
        path = shutil.which(tool)
        if path is None:
            raise NodeUnavailable(f"no {tool} on PATH: scripts/node.sh installs containerd and runc (apt-get)")
        found[tool] = path
    cni = next((d for d in CNI_DIRS if os.access(f"{d}/loopback", os.X_OK)), None)
    if cni is None:
        raise NodeUnavailable(f"no CNI loopback plugin in {' or '.join(CNI_DIRS)} (Debian: containernetworking-plugins)")
    found["cni"] = cni
    return found


# -- cgroups: every process of a node, and how to end them -----------------------------------


def cgroup_hierarchies() -> list[Path]:
    """Mount points of the cgroup hierarchies (v1 controllers, named ones, the v2 one)."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _dev, mount, fstype, *_ = line.split()
        if fstype in ("cgroup", "cgroup2"):
            found.append(Path(mount))
    return found


def _cgroup_name(ip: str) -> str:
    if not _NODE_IP.fullmatch(ip):
        raise ValueError(f"node IP {ip!r} is not 127.0.0.N")
    return CGROUP_PREFIX + ip


def _procs(root: Path) -> set[int]:
    pids: set[int] = set()
    for procs in root.rglob("cgroup.procs"):
        try:
            pids.update(int(p) for p in procs.read_text().split())
        except OSError:
            pass
    return pids


def kill_cgroup(ip: str, timeout: float = 30.0) -> None:
    """SIGKILLs every process in the node's cgroups (again, until none is left: containerd
    may start a shim while the first round runs), then removes the cgroups, deepest first."""
    name = _cgroup_name(ip)
    roots = [h / name for h in cgroup_hierarchies() if (h / name).is_dir()]
    if not roots:
        return
    deadline = time.monotonic() + timeout
    while True:
        pids = set().union(*(_procs(r) for r in roots))
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of node {ip} survive SIGKILL: {sorted(pids)}")
        time.sleep(0.1)
    for root in roots:
        for directory in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [root]:
            for _ in range(50):  # a cgroup is busy for a moment after its last process died
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


def make_cgroup(ip: str) -> list[Path]:
    """`/katalog-node-<ip>/runtime` in every hierarchy (cpuset: with the parent's CPUs and
    memory nodes, or no process could join); returns the `runtime` directories."""
    name = _cgroup_name(ip)
    made = []
    for hierarchy in cgroup_hierarchies():
        for directory in (hierarchy / name, hierarchy / name / "runtime"):
            directory.mkdir(exist_ok=True)
            for setting in ("cpuset.cpus", "cpuset.mems"):
                if (directory / setting).exists() and not (directory / setting).read_text().strip():
                    (directory / setting).write_text((directory.parent / setting).read_text())
        made.append(hierarchy / name / "runtime")
    return made


# -- claiming node IPs ---------------------------------------------------------------------


class Claim:
    """127.0.0.N held by this process (a lock file) for one node's lifetime."""

    def __init__(self, ip: str, handle: IO[str]) -> None:
        self.ip, self.handle = ip, handle

    @property
    def scratch_note(self) -> Path:
        return STATE_DIR / f"{self.ip}.scratch"

    def release(self) -> None:
        self.scratch_note.unlink(missing_ok=True)
        (STATE_DIR / f"{self.ip}.sock").unlink(missing_ok=True)
        self.handle.close()


def _port_free(ip: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


def clean_stale(ip: str) -> None:
    """What a killed run left for `ip` (its lock is free): its processes, cgroups, scratch."""
    kill_cgroup(ip)
    note = STATE_DIR / f"{ip}.scratch"
    if note.exists():
        stale = Path(note.read_text().strip())
        if stale.name.startswith("node-") and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        note.unlink(missing_ok=True)


def claim_node_ips(count: int, ports: tuple[int, ...] = (KUBELET_PORT, 8500)) -> list[Claim]:
    """`count` addresses 127.0.0.N (N in 10..250) no other run holds and whose `ports` are free."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    claims: list[Claim] = []
    start = random.randint(10, 250)
    for i in range(241):
        if len(claims) == count:
            return claims
        ip = f"127.0.0.{10 + (start - 10 + i) % 241}"
        handle = (STATE_DIR / f"{ip}.lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        clean_stale(ip)
        if all(_port_free(ip, p) for p in ports):
            claims.append(Claim(ip, handle))
        else:
            handle.close()
    for claim in claims:
        claim.release()
    raise NodeUnavailable(f"fewer than {count} free node addresses in 127.0.0.10-250")


# -- one node --------------------------------------------------------------------------------

CONTAINERD_CONFIG = """version = 2
# Only what this machine needs; everything else is containerd's default, under the node's own
# /run and /var/lib (scratch, see the mount namespace's script).
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "/var/lib/katalog-cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
"""

CNI_CONFIG = {"cniVersion": "0.4.0", "name": "katalog-loopback", "plugins": [{"type": "loopback"}]}

NAMESPACE_SCRIPT = """#!/bin/sh
# Runs as the first process of node {ip}'s private mount namespace (unshare --mount
# --propagation private): joins the node's cgroups, puts scratch over the state directories,
# starts containerd, then becomes the kubelet.
set -eu
S={scratch}
for procs in {cgroup_procs}; do echo $$ > "$procs"; done
mount --bind "$S/run" /run
mount --bind "$S/var-lib" /var/lib
mount --bind "$S/var-log" /var/log
{sysctl_mounts}
{iptables_mounts}
export TMPDIR="$S/tmp"
{containerd} --config "$S/containerd.toml" >>"$S/containerd.log" 2>&1 &
i=0
until [ -S /run/containerd/containerd.sock ]; do
  i=$((i + 1)); [ "$i" -lt 600 ] || {{ echo "containerd did not open its socket in 60 s" >&2; exit 1; }}
  sleep 0.1
done
{last}
"""
KUBELET_LINE = """exec {kubelet} --config="$S/kubelet.json" --kubeconfig="$S/kubelet.kubeconfig" --hostname-override={ip} \\
  --root-dir=/var/lib/kubelet --v={verbosity} >>"$S/kubelet.log" 2>&1"""
# Preparing an image store only: containerd runs until it is stopped.
NO_KUBELET_LINE = "wait"

NO_IPTABLES = """#!/bin/sh
echo "iptables is not available in this test node's namespace (the host's firewall stays as it is)" >&2
exit 3
"""


def node_token(ip: str) -> str:
    return f"katalog-node-{ip.replace('.', '-')}-token"


def add_node_tokens(cp: ControlPlane, ips: list[str]) -> None:
    """Static tokens of `system:node:<ip>` (group `system:nodes`); before the apiserver starts."""
    with cp.apiserver.token_file.open("a") as tokens:
        for ip in ips:
            tokens.write(f'{node_token(ip)},system:node:{ip},node-{ip},"system:nodes"\n')


class Node:
    """containerd + kubelet of one node; see the module's doc."""

    def __init__(self, binaries: Mapping[str, str], workdir: Path, claim: Claim, cp: ControlPlane,
                 pause_image: str, verbosity: int = 1, kubelet: bool = True) -> None:
        self.binaries, self.claim, self.cp = dict(binaries), claim, cp
        self.kubelet = kubelet
        self.ip = claim.ip
        self.name = self.ip
        self.scratch = workdir / f"node-{self.ip}"
        self.pause_image, self.verbosity = pause_image, verbosity
        self.proc: subprocess.Popen[bytes] | None = None
        # The socket as seen from outside the namespace, through a short link: a socket's path
        # may not exceed 107 bytes, and pytest's scratch paths do.
        self.socket = STATE_DIR / f"{self.ip}.sock"

    # -- configuration -----------------------------------------------------------------------

    def _kubelet_config(self) -> dict[str, Any]:
        hard_nofile = int(subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True, text=True,
                                         timeout=10).stdout.strip() or 1048576)
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": self.ip, "port": KUBELET_PORT, "readOnlyPort": 0,
            "healthzBindAddress": self.ip, "healthzPort": 10248,
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
            "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{_cgroup_name(self.ip)}", "cgroupsPerQOS": True,
            "failCgroupV1": False,  # this machine mounts cgroup v1 (the kubelet warns)
            "oomScoreAdj": 0, "maxOpenFiles": hard_nofile,
            "failSwapOn": False, "protectKernelDefaults": False, "makeIPTablesUtilChains": False,
            "resolvConf": "/etc/resolv.conf", "shutdownGracePeriod": "0s",
            # Disk and memory of a shared test machine are not this node's: never evict.
            "evictionHard": {"memory.available": "0%", "nodefs.available": "0%", "imagefs.available": "0%",
                             "nodefs.inodesFree": "0%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
        }

    def _write_config(self) -> Path:
        s = self.scratch
        for sub in ("run", "var-lib/katalog-cni", "var-log", "tmp", "sysctl"):
            (s / sub).mkdir(parents=True, exist_ok=True)
        self.claim.scratch_note.write_text(str(s))
        (s / "containerd.toml").write_text(CONTAINERD_CONFIG.format(pause=self.pause_image,
                                                                    cni_bin=self.binaries["cni"]))
        (s / "var-lib" / "katalog-cni" / "10-loopback.conflist").write_text(json.dumps(CNI_CONFIG))
        (s / "kubelet.json").write_text(json.dumps(self._kubelet_config(), indent=1))
        if self.kubelet:
            write_kubeconfig(s / "kubelet.kubeconfig", self.cp.url, node_token(self.ip), self.cp.pki.ca_crt)
        sysctl_mounts = []
        for entry in KUBELET_SYSCTLS:
            if not Path("/proc/sys", entry).exists():
                continue
            copy = s / "sysctl" / entry.replace("/", ".")
            copy.write_text(Path("/proc/sys", entry).read_text())
            sysctl_mounts.append(f'mount --bind "{copy}" /proc/sys/{entry}')
        (s / "no-iptables").write_text(NO_IPTABLES)
        (s / "no-iptables").chmod(0o755)
        iptables = sorted({os.path.realpath(p) for name in ("iptables", "ip6tables")
                           if (p := shutil.which(name)) is not None})
        procs = " ".join(f'"{d}/cgroup.procs"' for d in make_cgroup(self.ip))
        script = s / "namespace.sh"
        script.write_text(NAMESPACE_SCRIPT.format(
            ip=self.ip, scratch=s, cgroup_procs=procs, sysctl_mounts="\n".join(sysctl_mounts),
            iptables_mounts="\n".join(f'mount --bind "$S/no-iptables" "{p}"' for p in iptables),
            containerd=self.binaries["containerd"],
            last=KUBELET_LINE.format(kubelet=self.binaries["kubelet"], ip=self.ip, verbosity=self.verbosity)
            if self.kubelet else NO_KUBELET_LINE))
        return script

    # -- life ------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0, image_store: Path | None = None) -> Node:
        """Starts the namespace (containerd, then the kubelet) and waits for containerd.
        `image_store`: a containerd root with the images imported (`prepare_image_store`),
        hard-linked in as this node's /var/lib/containerd (blobs are immutable, snapshots are
        overlay lower layers; only the bolt databases are written, so they are copied), instead
        of importing the images into every node."""
        script = self._write_config()
        self.socket.unlink(missing_ok=True)
        self.socket.symlink_to(self.scratch / "run" / "containerd" / "containerd.sock")
        if image_store is not None:
            root = self.scratch / "var-lib" / "containerd"
            subprocess.run(["cp", "-al", str(image_store), str(root)], check=True, capture_output=True, timeout=300)
            for db in image_store.rglob("*.db"):  # bolt databases are written (and flock'ed): copies
                copy = root / db.relative_to(image_store)
                copy.unlink()
                shutil.copy2(db, copy)
        log = (self.scratch / "namespace.log").open("ab")
        self.proc = subprocess.Popen([self.binaries["unshare"], "--mount", "--propagation", "private", "sh", str(script)],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.socket.exists() or self.ctr("version", check=False).returncode != 0:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.ip} exited during start-up:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"containerd of node {self.ip} not up within {timeout}s:\n{self.logs()}")
            time.sleep(0.1)
        return self

    def ctr(self, *args: str, check: bool = True, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.binaries["ctr"], "--address", str(self.socket), "--namespace", "k8s.io", *args],
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} on node {self.ip}: {result.stderr.strip()}")
        return result

    def import_images(self, archives: Mapping[str, Path]) -> None:
        """`ctr images import` of each archive (unpacked), tagged with the name the pods use."""
        for name, archive in archives.items():
            before = set(self.ctr("images", "list", "--quiet").stdout.split())
            self.ctr("images", "import", str(archive))
            imported = set(self.ctr("images", "list", "--quiet").stdout.split()) - before
            if name not in imported and name not in before:
                [source] = [i for i in imported if not i.startswith("sha256:")] or [""]
                if not source:
                    raise RuntimeError(f"importing {archive} into node {self.ip} added no image name")
                self.ctr("images", "tag", "--force", source, name)

    def node_object(self) -> dict[str, Any] | None:
        try:
            return dict(self.cp.api.get(f"/api/v1/nodes/{self.name}"))
        except (ApiError, requests.RequestException):
            return None

    def ready(self) -> bool:
        node = self.node_object() or {}
        conditions = {c["type"]: c["status"] for c in (node.get("status") or {}).get("conditions") or []}
        return conditions.get("Ready") == "True"

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"node {self.ip} exited:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {self.ip} not Ready within {timeout}s:\n{self.logs()}")
            time.sleep(0.2)

    def untaint(self) -> None:
        """Removes the not-ready taint the apiserver put on at registration (no node lifecycle
        controller runs here to do it once the node is Ready)."""
        node = self.node_object() or {}
        taints = [t for t in (node.get("spec") or {}).get("taints") or []
                  if t.get("key") != "node.kubernetes.io/not-ready"]
        self.cp.api.merge_patch(f"/api/v1/nodes/{self.name}", {"spec": {"taints": taints or None}})

    def versions(self) -> dict[str, str]:
        """What the node reports: kubelet and runtime versions (status.nodeInfo)."""
        info = ((self.node_object() or {}).get("status") or {}).get("nodeInfo") or {}
        return {"kubelet": str(info.get("kubeletVersion", "?")), "runtime": str(info.get("containerRuntimeVersion", "?"))}

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self, lines: int = 25) -> str:
        parts = []
        for name in ("namespace", "containerd", "kubelet"):
            path = self.scratch / f"{name}.log"
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {name} of node {self.ip} ---\n" + "\n".join(text))
        return "\n".join(parts)

    def stop(self, keep: tuple[str, ...] = ()) -> None:
        """SIGKILL to every process of the node; its cgroups, mounts and scratch state go."""
        try:
            kill_cgroup(self.ip)
            if self.proc is not None:
                if self.proc.poll() is None:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        finally:
            for sub in ("run", "var-lib", "tmp"):  # the logs (var-log: pod logs) stay for a failed test
                if sub not in keep:
                    shutil.rmtree(self.scratch / sub, ignore_errors=True)
            self.claim.release()


def prepare_image_store(binaries: Mapping[str, str], archives: Mapping[str, Path], pause_image: str) -> Path:
    """A containerd root (content store, unpacked snapshots, metadata) with `archives`
    imported, cached by what they are: the nodes hard-link it in (`Node.start`), so a node
    starts in a second instead of importing ~400 MB of layers (18 s per image under load)."""
    from node_images import cache_dir

    key = "-".join(sorted(p.stem for p in archives.values()))
    store = cache_dir() / "containerd-root" / hashlib.sha256(key.encode()).hexdigest()[:12]
    store.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time (xdist workers, concurrent runs); a store in use elsewhere is kept:
    # only stores beyond the newest few (by last use) of other images are removed.
    with (store.parent / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (store / "io.containerd.metadata.v1.bolt" / "meta.db").exists():
            os.utime(store)
            return store
        others = sorted((p for p in store.parent.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime,
                        reverse=True)
        for old in others[KEEP_OTHER_IMAGE_STORES:]:
            shutil.rmtree(old, ignore_errors=True)
        return _build_image_store(binaries, archives, pause_image, store)


KEEP_OTHER_IMAGE_STORES = 2


def _build_image_store(binaries: Mapping[str, str], archives: Mapping[str, Path], pause_image: str,
                       store: Path) -> Path:
    [claim] = claim_node_ips(1)
    workdir = Path(tempfile.mkdtemp(prefix="katalog-image-store-"))
    node = Node(binaries, workdir, claim, None, pause_image, kubelet=False)  # type: ignore[arg-type]
    try:
        node.start()
        node.import_images(archives)
    finally:
        node.stop(keep=("var-lib",))
    os.replace(node.scratch / "var-lib" / "containerd", store)
    shutil.rmtree(workdir, ignore_errors=True)
    return store


class Scheduler(_Process):
    """kube-scheduler with its defaults (hostNetwork pods with ports: one per node)."""

    name = "kube-scheduler"

    def __init__(self, binary: str, workdir: Path, kubeconfig: Path) -> None:
        super().__init__(workdir)
        self.binary, self.kubeconfig = binary, kubeconfig

    def args(self) -> list[str]:
        return [self.binary, f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--secure-port=0", "--v=1"]
