"""Faults cost nothing: in every fault state the sync loop sleeps until its next real deadline.

Each test drives a real `katalog-sidecar run` into one fault state, with the DEFAULT timeouts
(TTL refresh every 5 s, heartbeat every 5 s, a 60 s wait after a 403), and bounds the CPU time
the process uses over a window (utime + stime from /proc/<pid>/stat). A spinning loop burns
most of a core (4-5 s of CPU in a few seconds); a sleeping one a few ticks. CPU time, not wall
time, so a busy machine does not make these flaky.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from consul_agents import AclDevAgent, write_token_file
from fakekube import FakeKube, make_pod
from sidecar_process import Sidecar, base_env, wait_until

pytestmark = [pytest.mark.consul, pytest.mark.timeout(120)]

NS, POD = "shop", "web-7d4b9c-x2k8p"
SID = f"{NS}:{POD}:web"
WINDOW = 8.0  # seconds: longer than the TTL refresh period (5 s), so a stale refresh deadline shows
# 5 % of a core over the window: two orders of magnitude below a spin, ten times what a
# sleeping sidecar with its retries uses (the benchmark measures the real figure).
CPU_BOUND = 0.05 * WINDOW
# The test environment shortens these; the point here is the product's defaults.
SHORTENED = ("KATALOG_CHECK_TTL", "KATALOG_HEARTBEAT_INTERVAL", "KATALOG_CONFIRM_WAIT", "KATALOG_DRAIN_TIMEOUT")


def default_env(tmp_path: Path, agent_addr: str, **overrides: str) -> dict[str, str]:
    env = base_env(tmp_path, agent_addr)
    for key in SHORTENED:
        env.pop(key)
    env.update(overrides)
    return env


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_over(sidecar: Sidecar, seconds: float) -> float:
    assert sidecar.proc is not None
    before = cpu_seconds(sidecar.proc.pid)
    time.sleep(seconds)
    assert sidecar.proc.poll() is None, f"the sidecar exited ({sidecar.proc.returncode}):\n{sidecar.logs()[-2000:]}"
    return cpu_seconds(sidecar.proc.pid) - before


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKube]:
    fake = FakeKube(tmp_path / "kube-token").start()
    try:
        yield fake
    finally:
        fake.stop()


def test_agent_unreachable_after_registration(dev_agent, run_sidecar, tmp_path: Path) -> None:
    """The TTL refresh fails; the retry waits, and the stale refresh deadline must not spin."""
    sidecar = run_sidecar(default_env(tmp_path, dev_agent.addr))
    sidecar.wait_gate(passing=True)
    dev_agent.stop()  # a DaemonSet upgrade: the node's agent goes away
    used = cpu_over(sidecar, WINDOW)
    assert "waiting for the agent at" in sidecar.logs()  # the refresh did fail inside the window
    assert used <= CPU_BOUND, f"{used:.2f}s of CPU in {WINDOW:g}s with the agent down"


def test_drained_and_waiting_for_sigterm(dev_agent, kube, run_sidecar, tmp_path: Path) -> None:
    """After a deletionTimestamp drain (native sidecar), only the heartbeat is due until SIGTERM."""
    kube.create_pod(make_pod(POD, NS, ports={"http": 8080}))
    env = default_env(tmp_path, dev_agent.addr, KATALOG_READINESS_SOURCE="kubernetes", KATALOG_KUBE_API_URL=kube.url,
                      KATALOG_KUBE_TOKEN_FILE=str(kube.token_file), KATALOG_SERVICES="web:http")
    env.pop("POD_UID")
    sidecar = run_sidecar(env)
    sidecar.wait_gate(passing=True)
    kube.set_deletion_timestamp(NS, POD, grace_seconds=30)
    sidecar.wait_gate(passing=False, contains="drained and deregistered")
    used = cpu_over(sidecar, WINDOW)
    assert used <= CPU_BOUND, f"{used:.2f}s of CPU in {WINDOW:g}s, drained and waiting for SIGTERM"
    sidecar.signal(signal.SIGTERM)
    assert sidecar.proc is not None and sidecar.proc.wait(timeout=10) == 0


def test_forbidden_by_consul_while_registered(acl_agent: AclDevAgent, run_sidecar, tmp_path: Path) -> None:
    """A 403 on the TTL refresh waits a minute before retrying, and must sleep through it."""
    rules = 'service "web" { policy = "write" }\nnode_prefix "" { policy = "read" }'
    token_file = tmp_path / "consul-token"
    write_token_file(token_file, acl_agent.create_token(rules, "katalog-web"))
    sidecar = run_sidecar(default_env(tmp_path, acl_agent.addr, CONSUL_HTTP_TOKEN_FILE=str(token_file)))
    sidecar.wait_gate(passing=True)
    # The token is rotated to one that may no longer write the service (a policy mistake).
    write_token_file(token_file, acl_agent.create_token('service "web" { policy = "read" }', "read-only"))
    wait_until(lambda: "Consul refused web" in sidecar.logs(), timeout=10, what="the 403 on the TTL refresh")
    used = cpu_over(sidecar, WINDOW)
    assert used <= CPU_BOUND, f"{used:.2f}s of CPU in {WINDOW:g}s after a 403 from Consul"


def test_agent_unreachable_in_continuous_mode(dev_agent, run_sidecar, tmp_path: Path) -> None:
    """Continuous mode adds a re-confirmation deadline, which a pending retry must hold back too."""
    sidecar = run_sidecar(default_env(tmp_path, dev_agent.addr, KATALOG_GATE_MODE="continuous",
                                      KATALOG_RECONFIRM_INTERVAL="2s"))
    sidecar.wait_gate(passing=True)
    dev_agent.stop()
    used = cpu_over(sidecar, WINDOW)
    assert used <= CPU_BOUND, f"{used:.2f}s of CPU in {WINDOW:g}s with the agent down (continuous mode)"


def _break_status_file(sidecar: Sidecar) -> Path:
    """Make every status write fail (as root, permissions do not stop writes): the file's path
    becomes a non-empty directory, so the atomic rename onto it fails with an OSError."""
    path = Path(sidecar.env["KATALOG_STATUS_FILE"])
    path.unlink()
    path.mkdir()
    (path / "keep").write_text("")
    return path


def test_status_write_error_is_logged_once_and_the_sidecar_carries_on(dev_agent, run_sidecar,
                                                                      tmp_path: Path) -> None:
    sidecar = run_sidecar(default_env(tmp_path, dev_agent.addr))
    sidecar.wait_gate(passing=True)
    _break_status_file(sidecar)
    # Two heartbeats (every 5 s) and a TTL refresh fail to write; the process keeps syncing.
    used = cpu_over(sidecar, 11.0)
    assert used <= 0.05 * 11.0
    logs = sidecar.logs()
    assert logs.count("cannot write the status file") == 1, logs[-2000:]
    assert "Traceback" not in logs
    assert dev_agent.passing_ids("web") == {SID}  # still refreshed: the TTL (15 s) has not run out
    assert sidecar.terminate(timeout=30) == 0  # and it drains
    assert dev_agent.agent_services() == {}


def test_status_write_error_at_sigterm_does_not_skip_the_drain(dev_agent, run_sidecar, tmp_path: Path) -> None:
    sidecar = run_sidecar(default_env(tmp_path, dev_agent.addr))
    sidecar.wait_gate(passing=True)
    _break_status_file(sidecar)  # a full disk, found by the drain's first status write
    assert sidecar.terminate(timeout=30) == 0
    assert dev_agent.agent_services() == {}
    assert "Traceback" not in sidecar.logs()


class _AgentAnsweringAtOnce:
    """An agent (or a proxy in front of it) whose blocking query returns at once, unchanged."""

    def __init__(self, content_hash: str) -> None:
        self.content_hash = content_hash
        self.calls = 0

    def agent_service(self, service_id: str, content_hash: str = "", wait: float = 0.0) -> tuple[str, dict[str, str]]:
        self.calls += 1
        return self.content_hash, {"ID": service_id}


@pytest.mark.parametrize("content_hash", ["", "f00d"], ids=["no hash header", "same hash at once"])
def test_agent_watch_keeps_a_minimum_interval_when_nothing_changes(content_hash: str) -> None:
    """Loop iterations, in-process: a watch that cannot block must not turn into a poll loop."""
    from sidecar.consul.watchers import AgentWatcher

    agent = _AgentAnsweringAtOnce(content_hash)
    watcher = AgentWatcher(agent, SID, lambda _kind, _payload: None)  # type: ignore[arg-type]
    watcher.start()
    time.sleep(2.5)
    calls = agent.calls
    watcher.stop()
    assert calls <= 4, f"{calls} queries in 2.5 s"
