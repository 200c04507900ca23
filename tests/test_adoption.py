"""A sidecar restarted inside a living pod (crash, OOM kill, container restart): the gate never
vouches for a file the previous process wrote."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
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
