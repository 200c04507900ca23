"""A sidecar restarted inside a living pod (crash, OOM kill, container restart) takes over what
its previous process left: the statuses until it sees the app again, and the latch; and the
gate never vouches for a file the previous process wrote. Default TTLs (15 s liveness)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakekube import FakeKube, make_pod
from sidecar_process import base_env

from readiness_gate import state

pytestmark = [pytest.mark.consul, pytest.mark.timeout(120)]

NS, POD, UID = "shop", "web-7d4b9c-x2k8p", "3f1c6c1e-8a51-4c1e-9a5e-2f1d1f0b7a11"
SID = f"{NS}:{POD}:web"
SHORTENED = ("KATALOG_CHECK_TTL", "KATALOG_HEARTBEAT_INTERVAL", "KATALOG_CONFIRM_WAIT", "KATALOG_DRAIN_TIMEOUT")


def default_env(tmp_path: Path, agent_addr: str, **overrides: str) -> dict[str, str]:
    env = base_env(tmp_path, agent_addr)  # POD_UID set, as the examples set it
    for key in SHORTENED:
        env.pop(key)
    env.update(overrides)
    return env


def statuses(agent) -> dict[str, str]:
    return {cid.rsplit(":", 1)[1]: c["Status"] for cid, c in agent.get("/v1/agent/checks").items()
            if c["ServiceID"] == SID}


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKube]:
    fake = FakeKube(tmp_path / "kube-token").start()
    try:
        yield fake
    finally:
        fake.stop()


def test_restart_during_an_api_outage_keeps_the_found_statuses_alive(dev_agent, kube, run_sidecar,
                                                                     tmp_path: Path) -> None:
    kube.create_pod(make_pod(POD, NS, ports={"http": 8080}, uid=UID))
    env = default_env(tmp_path, dev_agent.addr, KATALOG_READINESS_SOURCE="kubernetes", KATALOG_KUBE_API_URL=kube.url,
                      KATALOG_KUBE_TOKEN_FILE=str(kube.token_file), KATALOG_SERVICES="web:http")
    first = run_sidecar(env, name="first")
    first.wait_gate(passing=True)
    first.signal(signal.SIGKILL)
    assert first.proc is not None
    first.proc.wait(timeout=10)
    kube.stop()  # the API is down while the sidecar restarts: no readiness observation
    second = run_sidecar(env, name="second")
    # Past the liveness TTL (15 s) with margin: a running sidecar keeps the last status through
    # the same outage, and so must one that restarted into it.
    time.sleep(20.0)
    assert statuses(dev_agent) == {"readiness": "passing", "liveness": "passing"}
    assert "keeping its statuses (shop:web-7d4b9c-x2k8p:web:liveness passing, " \
           "shop:web-7d4b9c-x2k8p:web:readiness passing) until the first readiness observation" in second.logs()


def test_restart_during_a_server_outage_adopts_the_latch(server_client, run_sidecar, tmp_path: Path) -> None:
    client, server = server_client.client, server_client.server
    env = default_env(tmp_path, client.addr)
    first = run_sidecar(env, name="first")
    first.wait_gate(passing=True)
    server.stop()
    first.signal(signal.SIGKILL)
    assert first.proc is not None
    first.proc.wait(timeout=10)
    second = run_sidecar(env, name="second")
    # Confirmed before, still held by the agent with this pod's UID and passing: the pod stays Ready.
    line = second.wait_gate(passing=True, timeout=20)
    assert line.startswith("ok (latched): ")
    assert "latch adopted: the previous sidecar process of this pod confirmed web" in second.logs()


def test_no_latch_without_a_previous_confirmation(server_client, run_sidecar, tmp_path: Path) -> None:
    """The agent's word alone is not enough: the instance may never have reached the catalog."""
    client, server = server_client.client, server_client.server
    env = default_env(tmp_path, client.addr)
    first = run_sidecar(env, name="first")
    first.wait_gate(passing=True)
    server.stop()
    first.signal(signal.SIGKILL)
    assert first.proc is not None
    first.proc.wait(timeout=10)
    status_file = Path(env["KATALOG_STATUS_FILE"])
    doc = state.read(str(status_file))
    state.write_atomically(str(status_file), {**doc, "ever_confirmed": False, "phase": state.SYNCING})
    second = run_sidecar(env, name="second")
    second.wait_gate(passing=False, contains="catalog cannot be read", timeout=30)
    assert "latch adopted" not in second.logs()


def test_the_gate_does_not_vouch_for_a_file_whose_pid_now_names_another_process(dev_agent, run_sidecar,
                                                                                 tmp_path: Path) -> None:
    """In its container the sidecar is PID 1 after every restart: the new process has the old
    PID before it has written anything. Emulated here with another live process's PID."""
    sidecar = run_sidecar(default_env(tmp_path, dev_agent.addr))
    sidecar.wait_gate(passing=True)
    sidecar.signal(signal.SIGKILL)
    assert sidecar.proc is not None
    sidecar.proc.wait(timeout=10)
    status_file = Path(sidecar.env["KATALOG_STATUS_FILE"])
    doc = json.loads(status_file.read_text())
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            doc["pid"] = other.pid  # the PID is alive again, but it is not the process that wrote
            state.write_atomically(str(status_file), doc)
            code, line = sidecar.gate()
        finally:
            other.kill()
    assert code == 1
    assert line.startswith(f"sidecar process {other.pid} is not running (last said: ")
