"""A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager
on loopback, in a scratch directory, stopped by whoever started it (also when a test fails).

    with ControlPlane(find_kube_binaries(), tmp_path) as cp:
        cp.api.get("/api/v1/namespaces/default")          # as cluster admin
        cp.kubectl("apply", "-f", "examples/rbac.yaml")

What runs: etcd 3.6 (one member, no fsync: a test cluster); the apiserver with a test CA, a
static admin token in `system:masters`, a service-account signing key pair (so TokenRequest
issues real bound tokens) and `Node,RBAC` authorization; the controller manager with only the
controllers the tests need (Deployment, ReplicaSet, service accounts and their tokens, the
`kube-root-ca.crt` publisher). No scheduler and no kubelet: `pod_runner.PodRunner` stands in
for both. Binaries come from `scripts/provide-kube.sh` (cached builds) or the environment.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
from consul_agents import free_port

BINARIES = {
    "etcd": "ETCD_BIN",
    "kube-apiserver": "KUBE_APISERVER_BIN",
    "kube-controller-manager": "KUBE_CONTROLLER_MANAGER_BIN",
    "kubectl": "KUBECTL_BIN",
}
ADMIN_TOKEN = "katalog-test-admin-token"  # noqa: S105 - a throwaway cluster's static token
SERVICE_CIDR = "10.0.0.0/24"
HOST = "127.0.0.1"


def find_kube_binaries() -> dict[str, str] | None:
    """Each binary from its variable ($ETCD_BIN, $KUBE_APISERVER_BIN, ...) or the cache that
    scripts/provide-kube.sh fills; None unless all four are found."""
    cache = Path(os.environ.get("KATALOG_CACHE_DIR", Path.home() / ".cache" / "katalog-sidecar"))
    found: dict[str, str] = {}
    for name, var in BINARIES.items():
        pattern = "etcd-*/etcd" if name == "etcd" else f"kube-*/{name}"
        candidates = [os.environ.get(var)] + [str(p) for p in sorted(cache.glob(pattern), reverse=True)]
        path = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
        if path is None:
            return None
        found[name] = path
    return found


class KubeApi:
    """A minimal client for the test side (the product has its own): JSON in, JSON out."""

    def __init__(self, url: str, token: str, ca_file: Path) -> None:
        self.url, self.token, self.ca_file = url, token, ca_file
        self.session = requests.Session()
        self.session.trust_env = False  # else $REQUESTS_CA_BUNDLE overrides `verify` below
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.verify = str(ca_file)

    def request(self, method: str, path: str, body: Any = None, *, timeout: float = 10.0,
                content_type: str = "application/json", ok: tuple[int, ...] = (200, 201, 202),
                **params: Any) -> Any:
        data = json.dumps(body) if body is not None else None
        response = self.session.request(method, self.url + path, data=data, params=params or None,
                                        headers={"Content-Type": content_type}, timeout=timeout)
        if response.status_code not in ok:
            raise ApiError(response.status_code, response.text, f"{method} {path}")
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, **params)

    def post(self, path: str, body: Any, **params: Any) -> Any:
        return self.request("POST", path, body, **params)

    def merge_patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def delete(self, path: str, body: Any = None, ok: tuple[int, ...] = (200, 202, 404)) -> Any:
        return self.request("DELETE", path, body, ok=ok)

    def watch_lines(self, path: str, timeout: float = 30.0, **params: Any) -> Iterator[dict[str, Any]]:
        """Events of one watch request until the server ends it (or `timeout` of silence)."""
        params = {"watch": "true", **params}
        with self.session.get(self.url + path, params=params, stream=True, timeout=(5, timeout)) as response:
            if response.status_code != 200:
                raise ApiError(response.status_code, response.text, f"WATCH {path}")
            for line in response.iter_lines():
                if line:
                    yield json.loads(line)


class ApiError(Exception):
    def __init__(self, code: int, body: str, what: str) -> None:
        super().__init__(f"{what}: HTTP {code}: {body[:300]}")
        self.code, self.body = code, body


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


class Pki:
    """A test CA, the apiserver's serving certificate and the service-account key pair."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.ca_crt, self.ca_key = directory / "ca.crt", directory / "ca.key"
        self.server_crt, self.server_key = directory / "apiserver.crt", directory / "apiserver.key"
        self.sa_key, self.sa_pub = directory / "sa.key", directory / "sa.pub"
        if self.server_crt.exists():
            return
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                 "-days", "2", "-subj", "/CN=katalog-test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
        # The names an in-cluster client uses for the API (the Service IP is the first of the range).
        (directory / "san.ext").write_text(
            "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
            "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out", "apiserver.csr",
                 "-subj", "/CN=kube-apiserver", cwd=directory)
        _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", "apiserver.crt", "-days", "2", "-extfile", "san.ext", cwd=directory)
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=directory)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)


class _Process:
    """One control-plane process: a log file, a new session (so nothing outlives its group)."""

    name = "process"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log_path = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def args(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Stops the process group: `sig` first (SIGKILL for a crash), SIGKILL after `timeout`."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever is left of the group
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(timeout=10)
        self.proc = None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _wait(self, ready: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.running():
                raise RuntimeError(f"{self.name} exited during start-up:\n{self.tail()}")
            try:
                if ready():
                    return
            except (requests.RequestException, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready within {timeout}s:\n{self.tail()}")
            time.sleep(0.2)


class Etcd(_Process):
    name = "etcd"

    def __init__(self, binary: str, workdir: Path) -> None:
        super().__init__(workdir)
        self.binary = binary
        self.client_port, self.peer_port = free_port(HOST), free_port(HOST)
        self.url = f"http://{HOST}:{self.client_port}"

    def args(self) -> list[str]:
        peer = f"http://{HOST}:{self.peer_port}"
        return [self.binary, "--name=test", f"--data-dir={self.workdir / 'etcd-data'}",
                f"--listen-client-urls={self.url}", f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=test={peer}", "--unsafe-no-fsync", "--log-level=warn"]

    def start_and_wait(self, timeout: float = 30.0) -> None:
        self.start()
        self._wait(lambda: requests.get(f"{self.url}/health", timeout=1).json().get("health") == "true", timeout)

    def revision(self) -> int:
        """The store's current revision (through etcd's JSON gateway: no etcdctl needed)."""
        body = {"key": base64.b64encode(b"/").decode(), "limit": 1}
        header = requests.post(f"{self.url}/v3/kv/range", json=body, timeout=5).json()["header"]
        return int(header["revision"])

    def compact(self, revision: int | None = None) -> int:
        """Compacts history up to `revision` (default: now): older resourceVersions answer 410."""
        revision = revision or self.revision()
        requests.post(f"{self.url}/v3/kv/compaction", json={"revision": str(revision), "physical": True},
                      timeout=30).raise_for_status()
        return revision


class KubeApiserver(_Process):
    name = "kube-apiserver"

    def __init__(self, binary: str, workdir: Path, pki: Pki, etcd_url: str, extra: list[str] | None = None) -> None:
        super().__init__(workdir)
        self.binary, self.pki, self.etcd_url = binary, pki, etcd_url
        self.port = free_port(HOST)
        self.url = f"https://{HOST}:{self.port}"
        self.extra = extra or []
        tokens = workdir / "tokens.csv"
        tokens.write_text(f'{ADMIN_TOKEN},katalog-admin,katalog-admin,"system:masters"\n')
        self.token_file = tokens
        # An audit log of pod watches only: it shows the resourceVersion each watch resumes from.
        self.audit_policy, self.audit_log = workdir / "audit-policy.json", workdir / "audit.log"
        self.audit_policy.write_text(json.dumps({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["ResponseStarted", "ResponseComplete"],
            "rules": [{"level": "Metadata", "verbs": ["watch"], "resources": [{"group": "", "resources": ["pods"]}]},
                      {"level": "None"}]}))

    def args(self) -> list[str]:
        p = self.pki
        return [
            self.binary, f"--etcd-servers={self.etcd_url}", f"--bind-address={HOST}", f"--advertise-address={HOST}",
            f"--secure-port={self.port}", f"--tls-cert-file={p.server_crt}", f"--tls-private-key-file={p.server_key}",
            f"--client-ca-file={p.ca_crt}", f"--token-auth-file={self.token_file}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p.sa_pub}", f"--service-account-signing-key-file={p.sa_key}",
            "--authorization-mode=Node,RBAC", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--endpoint-reconciler-type=none", "--enable-priority-and-fairness=false", "--profiling=false",
            # A graceful stop answers no new requests at once and ends open watches within a few
            # seconds, instead of the defaults' 60 s wait (which only load balancers need).
            "--shutdown-delay-duration=0s", "--shutdown-watch-termination-grace-period=2s",
            f"--audit-policy-file={self.audit_policy}", f"--audit-log-path={self.audit_log}",
            "--v=1", *self.extra,
        ]

    def pod_watches(self, user: str) -> list[dict[str, str]]:
        """Pod watch requests `user` made, oldest first: their query parameters (from the audit log)."""
        found = []
        if self.audit_log.exists():
            for line in self.audit_log.read_text().splitlines():
                event = json.loads(line)
                if event.get("user", {}).get("username") == user and event.get("verb") == "watch":
                    query = dict(parse_qsl(urlsplit(event["requestURI"]).query))
                    found.append({**query, "received": event.get("requestReceivedTimestamp", "")})
        return found

    def api(self) -> KubeApi:
        return KubeApi(self.url, ADMIN_TOKEN, self.pki.ca_crt)

    def start_and_wait(self, timeout: float = 90.0) -> None:
        self.start()
        api = self.api()
        self._wait(lambda: api.session.get(f"{self.url}/readyz", timeout=2).status_code == 200, timeout)


class ControllerManager(_Process):
    name = "kube-controller-manager"

    def __init__(self, binary: str, workdir: Path, pki: Pki, kubeconfig: Path) -> None:
        super().__init__(workdir)
        self.binary, self.pki, self.kubeconfig = binary, pki, kubeconfig

    def args(self) -> list[str]:
        return [
            self.binary, f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--secure-port=0",
            "--controllers=deployment,replicaset,serviceaccount,serviceaccount-token,root-ca-cert-publisher",
            f"--service-account-private-key-file={self.pki.sa_key}", f"--root-ca-file={self.pki.ca_crt}",
            "--use-service-account-credentials=false", "--v=1",
        ]


def write_kubeconfig(path: Path, url: str, token: str, ca_file: Path) -> Path:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": url, "certificate-authority": str(ca_file)}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin", "namespace": "default"}}],
    }
    path.write_text(json.dumps(config))
    return path


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager. `api` is a cluster-admin client."""

    def __init__(self, binaries: Mapping[str, str], workdir: Path, *, controller_manager: bool = True,
                 apiserver_flags: list[str] | None = None) -> None:
        self.binaries = dict(binaries)
        self.workdir = workdir / "control-plane"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = Pki(self.workdir / "pki")
        self.etcd = Etcd(self.binaries["etcd"], self.workdir)
        self.apiserver = KubeApiserver(self.binaries["kube-apiserver"], self.workdir, self.pki, self.etcd.url,
                                       apiserver_flags)
        self.kubeconfig = write_kubeconfig(self.workdir / "kubeconfig", self.apiserver.url, ADMIN_TOKEN,
                                           self.pki.ca_crt)
        self.controller_manager = (ControllerManager(self.binaries["kube-controller-manager"], self.workdir,
                                                     self.pki, self.kubeconfig) if controller_manager else None)
        self.api = self.apiserver.api()

    @property
    def url(self) -> str:
        return self.apiserver.url

    def start(self) -> ControlPlane:
        try:
            self.etcd.start_and_wait()
            self.apiserver.start_and_wait()
            if self.controller_manager is not None:
                self.controller_manager.start()
            self.wait_namespace_ready("default")
        except BaseException:
            self.stop()
            raise
        return self

    def wait_namespace_ready(self, namespace: str, timeout: float = 60.0) -> None:
        """Pods can be created once the namespace's `default` ServiceAccount exists (and, with the
        controller manager, the CA ConfigMap that bound-token volumes project)."""
        deadline = time.monotonic() + timeout
        paths = [f"/api/v1/namespaces/{namespace}"]
        if self.controller_manager is not None:
            paths += [f"/api/v1/namespaces/{namespace}/serviceaccounts/default",
                      f"/api/v1/namespaces/{namespace}/configmaps/kube-root-ca.crt"]
        while True:
            try:
                for path in paths:
                    self.api.get(path)
                return
            except (ApiError, requests.RequestException):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"namespace {namespace} not ready within {timeout}s") from None
                time.sleep(0.3)

    def create_namespace(self, name: str) -> None:
        self.api.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        self.wait_namespace_ready(name)

    def restart_apiserver(self, *, crash: bool) -> None:
        """SIGKILL (a crash) or SIGTERM (a graceful stop), then start it again on the same port."""
        self.apiserver.stop(signal.SIGKILL if crash else signal.SIGTERM, timeout=60)
        self.apiserver.start_and_wait()

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None,
                timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.binaries["kubectl"], f"--kubeconfig={self.kubeconfig}", *args],
                                capture_output=True, text=True, input=stdin, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def version(self) -> str:
        return str(self.api.get("/version")["gitVersion"])

    def stop(self) -> None:
        for process in (self.controller_manager, self.apiserver, self.etcd):
            if process is not None:
                # The apiserver's graceful stop waits out open watches: a test cluster need not.
                process.stop(signal.SIGTERM, timeout=3)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def logs(self) -> str:
        parts = []
        for process in (self.etcd, self.apiserver, self.controller_manager):
            if process is not None:
                parts.append(f"--- {process.name} ---\n{process.tail()}")
        return "\n".join(parts)


def copy_logs(cp: ControlPlane, destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    for log in cp.workdir.glob("*.log"):
        shutil.copy(log, destination / log.name)
