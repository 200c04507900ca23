"""Real Consul agents for tests: a dev agent, or a server plus a client on loopback addresses.

Every agent is started on free ports (DNS and gRPC off), logs to a file shown when it fails
to start, and is stopped by the fixture that made it, also when the test fails.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent


def find_consul() -> str | None:
    """$CONSUL_BIN, `consul` on PATH, or the cached build of scripts/provide-consul.sh."""
    candidates = [os.environ.get("CONSUL_BIN"), shutil.which("consul")]
    cache = Path(os.environ.get("KATALOG_CACHE_DIR", Path.home() / ".cache" / "katalog-sidecar"))
    candidates += [str(p) for p in sorted(cache.glob("consul-*/consul"))]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def random_loopback() -> str:
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"


class ConsulAgent:
    """One `consul agent` process. `http` is its base URL."""

    def __init__(self, binary: str, workdir: Path, name: str, host: str, extra: Sequence[str],
                 dev: bool = False, token: str | None = None) -> None:
        self.binary = binary
        # Sent by the test helpers below (never by the sidecar): None keeps them anonymous.
        self.token = token
        self.name = name
        self.host = host
        self.dev = dev
        self.workdir = workdir
        self.data_dir = workdir / f"{name}-data"
        self.log_path = workdir / f"{name}.log"
        # Three distinct ports: the kernel may hand the same free port out twice in a row.
        ports: list[int] = []
        while len(ports) < 3:
            port = free_port(host)
            if port not in ports:
                ports.append(port)
        self.http_port, self.serf_lan_port, self.server_port = ports
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.http_port}"

    def request_kwargs(self) -> dict[str, Any]:
        """What the test helpers pass to `requests`: the token header, and TLS settings in subclasses."""
        return {"headers": {"X-Consul-Token": self.token}} if self.token else {}

    def args(self) -> list[str]:
        ports = (f'ports {{ http = {self.http_port}, dns = -1, grpc = -1, grpc_tls = -1, '
                 f'serf_lan = {self.serf_lan_port}, serf_wan = -1, server = {self.server_port} }}')
        args = [self.binary, "agent", f"-node={self.name}", f"-bind={self.host}", f"-client={self.host}",
                "-hcl", ports, "-hcl", "performance { raft_multiplier = 1 }", "-log-level=debug",
                "-hcl", "disable_update_check = true"]
        if self.dev:
            args.append("-dev")
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            args.append(f"-data-dir={self.data_dir}")
        return args + self.extra

    def start(self, wait_for_leader: bool = True, timeout: float = 60.0) -> ConsulAgent:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        self.wait_ready(wait_for_leader, timeout)
        return self

    def wait_ready(self, wait_for_leader: bool, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"consul agent {self.name} exited {self.proc.returncode}:\n{self.tail()}")
            try:
                if not wait_for_leader:
                    requests.get(f"{self.http}/v1/agent/self", timeout=1, **self.request_kwargs()).raise_for_status()
                    return
                leader = requests.get(f"{self.http}/v1/status/leader", timeout=1, **self.request_kwargs())
                if leader.ok and leader.json():
                    # A leader is elected; the catalog answers once this node is synced too.
                    nodes = requests.get(f"{self.http}/v1/catalog/nodes", timeout=1, **self.request_kwargs())
                    if nodes.ok and any(n["Node"] == self.name for n in nodes.json()):
                        return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"consul agent {self.name} not ready after {timeout}s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self, wait_for_leader: bool = True) -> None:
        self.stop()
        self.start(wait_for_leader=wait_for_leader)

    # --- test helpers: read what users would look at -------------------------------------
    def get(self, path: str, **params: Any) -> Any:
        response = requests.get(f"{self.http}{path}", params=params, timeout=10, **self.request_kwargs())
        response.raise_for_status()
        return response.json()

    def health(self, service: str) -> list[dict[str, Any]]:
        return list(self.get(f"/v1/health/service/{service}"))

    def agent_services(self) -> dict[str, Any]:
        return dict(self.get("/v1/agent/services"))

    def passing_ids(self, service: str) -> set[str]:
        return {e["Service"]["ID"] for e in self.health(service)
                if all(c["Status"] == "passing" for c in e["Checks"])}

    def catalog_index(self, service: str) -> int:
        response = requests.get(f"{self.http}/v1/catalog/service/{service}", timeout=10, **self.request_kwargs())
        return int(response.headers["X-Consul-Index"])

    def register_raw(self, body: dict[str, Any]) -> None:
        requests.put(f"{self.http}/v1/agent/service/register", data=json.dumps(body), timeout=10,
                     **self.request_kwargs()).raise_for_status()


class ServerAndClient:
    """A server agent and a client agent joined to it, on two loopback addresses."""

    def __init__(self, binary: str, workdir: Path) -> None:
        suffix = random.randint(1000, 9999)
        self.server = ConsulAgent(binary, workdir, f"server-{suffix}", random_loopback(),
                                  ["-server", "-bootstrap-expect=1"])
        self.client = ConsulAgent(binary, workdir, f"client-{suffix}", random_loopback(), [])

    def start(self) -> ServerAndClient:
        self.server.start()
        self.client.extra = [*self.client.extra, f"-retry-join={self.server.host}:{self.server.serf_lan_port}",
                             "-retry-interval=1s"]
        self.client.start()
        return self

    def stop(self) -> None:
        self.client.stop()
        self.server.stop()


class ServerAndClients:
    """A server and several client agents with distinct node names, each on its own loopback
    address: pods on different nodes, as identity (and the scale benchmark) needs them.

    `client_hcl` is extra configuration for every client (e.g. connection limits).
    """

    def __init__(self, binary: str, workdir: Path, nodes: Sequence[str] = ("node-a", "node-b"),
                 server_extra: Sequence[str] = (), client_extra: Sequence[str] = ()) -> None:
        suffix = random.randint(1000, 9999)
        self.server = ConsulAgent(binary, workdir, f"server-{suffix}", random_loopback(),
                                  ["-server", "-bootstrap-expect=1", *server_extra])
        hosts: set[str] = {self.server.host}
        self.clients: dict[str, ConsulAgent] = {}
        for node in nodes:
            host = random_loopback()
            while host in hosts:
                host = random_loopback()
            hosts.add(host)
            self.clients[node] = ConsulAgent(binary, workdir, node, host, list(client_extra))

    def start(self) -> ServerAndClients:
        self.server.start()
        join = [f"-retry-join={self.server.host}:{self.server.serf_lan_port}", "-retry-interval=1s"]
        for client in self.clients.values():
            client.extra = join + client.extra
            client.proc = None
            log = client.log_path.open("ab")
            client.proc = subprocess.Popen(client.args(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
        for client in self.clients.values():  # started together, then waited for: quicker
            client.wait_ready(True, 60.0)
        return self

    def stop(self) -> None:
        for client in self.clients.values():
            client.stop()
        self.server.stop()


# --- security variants: ACL default-deny, HTTPS only --------------------------------------


class AclDevAgent(ConsulAgent):
    """A dev agent with ACLs on and `default_policy = "deny"`, bootstrapped at start.

    `initial_management` makes the given token the management token without a separate
    `consul acl bootstrap` step (checked on 1.16.1). The same token is the agent's own token,
    so the agent can sync its node and coordinates. The test helpers use it; the sidecar only
    ever gets the tokens a test creates with `create_token`.
    """

    def __init__(self, binary: str, workdir: Path, name: str = "acl", host: str = "127.0.0.1",
                 management_token: str = "") -> None:
        token = management_token or f"mgmt-{random.getrandbits(64):016x}"
        acl = ('acl { enabled = true, default_policy = "deny", enable_token_persistence = false, '
               f'tokens {{ initial_management = "{token}", agent = "{token}" }} }}')
        super().__init__(binary, workdir, name, host, ["-hcl", acl], dev=True, token=token)
        self.management_token = token

    def create_token(self, rules: str, name: str, secret: str | None = None) -> str:
        """A policy with `rules` and a token carrying only it; returns the token's SecretID."""
        policy = requests.put(f"{self.http}/v1/acl/policy", data=json.dumps({"Name": name, "Rules": rules}),
                              timeout=10, **self.request_kwargs())
        policy.raise_for_status()
        body: dict[str, Any] = {"Description": f"test token {name}", "Policies": [{"Name": name}]}
        if secret is not None:
            body["SecretID"] = secret  # must be a UUID
        token = requests.put(f"{self.http}/v1/acl/token", data=json.dumps(body), timeout=10, **self.request_kwargs())
        token.raise_for_status()
        return str(token.json()["SecretID"])


class TlsMaterial:
    """A CA with a server certificate and a CLI (client) certificate, made by `consul tls`.

    `consul tls cert create -server` covers `server.<dc>.consul`, `localhost` and 127.0.0.1;
    `-cli` covers `cli.<dc>.consul` and `localhost`, and is signed by the same CA.
    """

    def __init__(self, binary: str, directory: Path, datacenter: str = "dc1") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        for args in (["ca", "create"], ["cert", "create", "-server", f"-dc={datacenter}"],
                     ["cert", "create", "-cli", f"-dc={datacenter}"]):
            subprocess.run([binary, "tls", *args], cwd=directory, check=True, capture_output=True, timeout=60)
        self.ca = directory / "consul-agent-ca.pem"
        self.server_cert = directory / f"{datacenter}-server-consul-0.pem"
        self.server_key = directory / f"{datacenter}-server-consul-0-key.pem"
        self.client_cert = directory / f"{datacenter}-cli-consul-0.pem"
        self.client_key = directory / f"{datacenter}-cli-consul-0-key.pem"
        self.server_name = f"server.{datacenter}.consul"


class TlsDevAgent(ConsulAgent):
    """A dev agent that serves its HTTP API over HTTPS only (`ports { http = -1, https = N }`).

    `verify_incoming` applies to the HTTPS listener only (`tls { https { ... } }`): set on
    `tls.defaults` it would also demand client certificates on the dev agent's own RPC.
    `also_listen` adds loopback addresses the API is served on, e.g. one that the server
    certificate does not name.
    """

    def __init__(self, binary: str, workdir: Path, material: TlsMaterial, name: str = "tls",
                 host: str = "127.0.0.1", verify_incoming: bool = False,
                 also_listen: Sequence[str] = ()) -> None:
        super().__init__(binary, workdir, name, host, [], dev=True)
        self.material = material
        self.verify_incoming = verify_incoming
        self.listen = [host, *also_listen]
        # The https port is the one free_port picked for http; plain HTTP is off.
        self.https_port = self.http_port

    @property
    def http(self) -> str:
        return f"https://{self.host}:{self.https_port}"

    def url_on(self, host: str) -> str:
        return f"https://{host}:{self.https_port}"

    def request_kwargs(self) -> dict[str, Any]:
        kwargs = super().request_kwargs()
        kwargs["verify"] = str(self.material.ca)
        kwargs["cert"] = (str(self.material.client_cert), str(self.material.client_key))
        return kwargs

    def args(self) -> list[str]:
        m = self.material
        tls = (f'tls {{ defaults {{ ca_file = "{m.ca}", cert_file = "{m.server_cert}", key_file = "{m.server_key}" }}, '
               f'https {{ verify_incoming = {str(self.verify_incoming).lower()} }} }}')
        return super().args() + ["-hcl", f"ports {{ http = -1, https = {self.https_port} }}",
                                 "-hcl", tls, f"-client={' '.join(self.listen)}"]


def write_token_file(path: Path, token: str) -> None:
    """Atomically, as the kubelet updates a Secret volume (a reader never sees half a token)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(token + "\n")
    os.replace(tmp, path)
