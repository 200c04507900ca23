"""The ACL token (and CONSUL_HTTP_AUTH) never leaks: not into logs (debug level included), the status file, the
gate, `katalog-sidecar status` or the metrics page, through registration, 403s, filtered
reads, 5xx, timeouts, a hostile agent that echoes headers or redirects, and shutdown."""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from consul_agents import REPO, AclDevAgent, ServerAndClient, free_port, write_token_file
from sidecar_process import Sidecar, base_env, wait_until

pytestmark = [pytest.mark.consul, pytest.mark.timeout(90)]

SERVICE_ID = "shop:web-7d4b9c-x2k8p:web"
POLICY = (REPO / "examples" / "consul-acl-policy.hcl").read_text()


class Leaks:
    """Everything an operator (or a scraper) can see of the sidecar, sampled while it runs.

    The status file is read every 20 ms in the background, so a secret written for a moment
    and overwritten by the next heartbeat is caught too.
    """

    def __init__(self, sidecar: Sidecar, env: Mapping[str, str], metrics_url: str) -> None:
        self.sidecar = sidecar
        self.status_file = Path(env["KATALOG_STATUS_FILE"])
        self.metrics_url = metrics_url
        self.seen: dict[str, set[str]] = {"status file": set(), "gate": set(), "status command": set(),
                                          "metrics": set(), "logs": set()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.seen["status file"].add(self.status_file.read_text())
            except OSError:
                pass
            self._stop.wait(0.02)

    def __enter__(self) -> Leaks:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def snapshot(self, metrics: bool = True) -> None:
        """What `readiness-gate`, `katalog-sidecar status` and a scrape show right now."""
        self.seen["gate"].add(self.sidecar.gate()[1])
        self.seen["status command"].add(self.sidecar.status()[1])
        if metrics:
            for path in ("/metrics", "/healthz"):
                self.seen["metrics"].add(requests.get(self.metrics_url + path, timeout=5).text)

    def assert_absent(self, *secrets: str) -> None:
        self.seen["logs"].add(self.sidecar.logs())
        assert all(self.seen.values()), {k: len(v) for k, v in self.seen.items()}
        for secret in secrets:
            for where, texts in self.seen.items():
                leaked = [t for t in texts if secret in t]
                assert not leaked, f"token found in the {where}: {leaked[0][:2000]}"


def canary() -> str:
    """A token no text contains by chance. A UUID, as Consul requires for a chosen SecretID."""
    return str(uuid.uuid4())


def secret_env(tmp_path: Path, addr: str, **overrides: str) -> tuple[dict[str, str], str]:
    port = free_port("127.0.0.1")
    env = base_env(tmp_path, addr, KATALOG_METRICS_ADDR=f"127.0.0.1:{port}", KATALOG_LOG_LEVEL="debug",
                   KATALOG_DRAIN_TIMEOUT="3s", **overrides)
    return env, f"http://127.0.0.1:{port}"


def test_acl_life_with_refusals_and_rotation(acl_agent: AclDevAgent, run_sidecar, tmp_path: Path) -> None:
    weak = acl_agent.create_token(POLICY.replace('policy = "write"', 'policy = "read"'), "weak", secret=canary())
    blind = acl_agent.create_token(POLICY.replace('node_prefix ""', 'node "no-such-node"'), "blind", secret=canary())
    good = acl_agent.create_token(POLICY, "good", secret=canary())
    token_file = tmp_path / "consul-token"
    write_token_file(token_file, weak)
    env, metrics = secret_env(tmp_path, acl_agent.addr, CONSUL_HTTP_TOKEN_FILE=str(token_file), KATALOG_LOG_FORMAT="json")
    sidecar = run_sidecar(env)
    with Leaks(sidecar, env, metrics) as leaks:
        sidecar.wait_gate(passing=False, contains="lacks permission 'service:write'")  # 403
        leaks.snapshot()
        write_token_file(token_file, blind)
        sidecar.wait_gate(passing=False, contains="the catalog hides web from this token")  # filtered reads
        leaks.snapshot()
        write_token_file(token_file, good)
        sidecar.wait_gate(passing=True)
        leaks.snapshot()
        assert sidecar.terminate() == 0
        leaks.snapshot(metrics=False)
    assert acl_agent.health("web") == []
    leaks.assert_absent(weak, blind, good, acl_agent.management_token)


def test_servers_down_5xx_and_incomplete_drain(server_client: ServerAndClient, run_sidecar, tmp_path: Path) -> None:
    secret = canary()
    server_client.server.stop()  # the client agent accepts; every catalog read is a 500
    env, metrics = secret_env(tmp_path, server_client.client.addr, CONSUL_HTTP_TOKEN=secret)
    sidecar = run_sidecar(env)
    with Leaks(sidecar, env, metrics) as leaks:
        line = sidecar.wait_gate(passing=False, contains="the catalog cannot be read")
        assert "GET /v1/catalog/node-services/" in line  # confirmation reads this agent's node
        leaks.snapshot()
        assert 'katalog_consul_errors_total{kind="servererror"}' in requests.get(metrics + "/metrics", timeout=5).text
        assert sidecar.terminate() == 1  # removal cannot be confirmed without servers: left to the agent's sync
        leaks.snapshot(metrics=False)
    leaks.assert_absent(secret)


class HostileAgent:
    """Not Consul: answers every call with a 500 whose body echoes the request headers (as a
    debugging proxy might, mode "echo"), redirects every call to a trap that records what
    reaches it ("redirect"), or answers 200 with a body that is not JSON ("junk")."""

    def __init__(self, mode: str) -> None:
        self.trapped: list[dict[str, str]] = []
        trap = self.trapped

        class Trap(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                trap.append(dict(self.headers))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_PUT = do_GET  # noqa: N815

            def log_message(self, *_args: Any) -> None:
                pass

        self._trap = ThreadingHTTPServer(("127.0.0.1", 0), Trap)
        trap_url = f"http://127.0.0.1:{self._trap.server_address[1]}"

        class Agent(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                if mode == "junk":
                    self.send_response(200)
                    self.send_header("Content-Length", "23")
                    self.end_headers()
                    self.wfile.write(b"<html>not consul</html>")
                    return
                if mode == "redirect":
                    self.send_response(307)
                    self.send_header("Location", trap_url + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = ("rpc error: request was " + " ".join(f"{k}={v}" for k, v in self.headers.items())).encode()
                self.send_response(500)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_PUT = do_GET  # noqa: N815

            def log_message(self, *_args: Any) -> None:
                pass

        self._agent = ThreadingHTTPServer(("127.0.0.1", 0), Agent)
        self.addr = f"127.0.0.1:{self._agent.server_address[1]}"
        for server in (self._trap, self._agent):
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def close(self) -> None:
        for server in (self._agent, self._trap):
            server.shutdown()
            server.server_close()


@pytest.fixture
def hostile_agent(request: pytest.FixtureRequest) -> Iterator[HostileAgent]:
    agent = HostileAgent(request.param)
    try:
        yield agent
    finally:
        agent.close()


@pytest.mark.parametrize("hostile_agent", ["echo"], indirect=True)
def test_an_error_body_that_echoes_the_token_is_redacted(hostile_agent: HostileAgent, run_sidecar,
                                                         tmp_path: Path) -> None:
    secret = "katalog-canary-" + uuid.uuid4().hex
    env, metrics = secret_env(tmp_path, hostile_agent.addr, CONSUL_HTTP_TOKEN=secret)
    sidecar = run_sidecar(env)
    with Leaks(sidecar, env, metrics) as leaks:
        line = sidecar.wait_gate(passing=False, contains="rpc error: request was")
        assert "X-Consul-Token=[redacted]" in line  # the body reached the message, the token did not
        leaks.snapshot()
        assert sidecar.terminate() == 1
        leaks.snapshot(metrics=False)
    leaks.assert_absent(secret)


@pytest.mark.parametrize("hostile_agent", ["redirect"], indirect=True)
def test_a_redirect_is_not_followed_with_the_token(hostile_agent: HostileAgent, run_sidecar, tmp_path: Path) -> None:
    secret = canary()
    env, metrics = secret_env(tmp_path, hostile_agent.addr, CONSUL_HTTP_TOKEN=secret)
    sidecar = run_sidecar(env)
    with Leaks(sidecar, env, metrics) as leaks:
        line = sidecar.wait_gate(passing=False, contains="unexpected redirect")
        assert line.endswith("PUT /v1/agent/service/register: unexpected redirect (HTTP 307) from "
                             f"http://{hostile_agent.addr}; not followed (check CONSUL_HTTP_ADDR)")
        leaks.snapshot()
        assert sidecar.terminate() == 1
        leaks.snapshot(metrics=False)
    assert hostile_agent.trapped == []  # the token went nowhere else
    leaks.assert_absent(secret)


def test_timeouts(run_sidecar, tmp_path: Path) -> None:
    from test_timeouts import BlackHole

    hole = BlackHole()
    try:
        secret = canary()
        env, metrics = secret_env(tmp_path, hole.addr, CONSUL_HTTP_TOKEN=secret, KATALOG_CONSUL_TIMEOUT="300ms")
        sidecar = run_sidecar(env)
        with Leaks(sidecar, env, metrics) as leaks:
            sidecar.wait_gate(passing=False, contains="did not answer in time")
            leaks.snapshot()
            wait_until(lambda: 'kind="timeout"' in requests.get(metrics + "/metrics", timeout=5).text,
                       what="timeouts counted")
            assert sidecar.terminate() == 1
            leaks.snapshot(metrics=False)
        leaks.assert_absent(secret)
    finally:
        hole.close()


@pytest.mark.parametrize("hostile_agent", ["echo"], indirect=True)
def test_basic_auth_is_never_shown(hostile_agent: HostileAgent, run_sidecar, tmp_path: Path) -> None:
    """CONSUL_HTTP_AUTH reaches the agent as a Basic header; an agent (or proxy) echoing it back
    gets it redacted, in every encoding the sidecar could leak it in."""
    password = "pw-" + uuid.uuid4().hex
    auth = f"katalog-ops:{password}"
    env, metrics = secret_env(tmp_path, hostile_agent.addr, CONSUL_HTTP_AUTH=auth)
    sidecar = run_sidecar(env)
    with Leaks(sidecar, env, metrics) as leaks:
        line = sidecar.wait_gate(passing=False, contains="rpc error: request was")
        assert "Authorization=Basic [redacted]" in line  # it was sent, and the echo was caught
        leaks.snapshot()
        assert sidecar.terminate() == 1
        leaks.snapshot(metrics=False)
    leaks.assert_absent(password, base64.b64encode(auth.encode()).decode())


def test_basic_auth_with_a_real_agent(server_client: ServerAndClient, run_sidecar, tmp_path: Path) -> None:
    """The open-source agent ignores basic authentication (a proxy in front of it would check it):
    with it set, the sidecar's whole life works as without, and nothing shows it."""
    password = "pw-" + uuid.uuid4().hex
    env, metrics = secret_env(tmp_path, server_client.client.addr, CONSUL_HTTP_AUTH=f"ops:{password}")
    sidecar = run_sidecar(env)
    with Leaks(sidecar, env, metrics) as leaks:
        sidecar.wait_gate(passing=True)
        leaks.snapshot()
        assert sidecar.terminate() == 0
        leaks.snapshot(metrics=False)
    assert server_client.client.health("web") == []
    leaks.assert_absent(password)
