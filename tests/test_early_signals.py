"""Issue 18, item 8: signals in the first moments of `katalog-sidecar run`. Real processes,
no Consul needed (the agent address is unreachable)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from test_config import VALID


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(VALID)
    env.update(CONSUL_HTTP_ADDR="127.0.0.1:1", KATALOG_STATUS_FILE=str(tmp_path / "status.json"),
               KATALOG_METRICS_ADDR="off")
    env.update(extra)
    return env


def _catches_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def _run_and_signal_at_once(env: dict[str, str]) -> tuple[int, str]:
    """SIGTERM the moment the process catches it, and check that moment came before the heavy
    imports (the TLS module that requests loads is not mapped yet)."""
    exe = shutil.which("katalog-sidecar")
    assert exe is not None
    proc = subprocess.Popen([exe, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while not _catches_sigterm(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.002)
        heavy = "_ssl" in Path(f"/proc/{proc.pid}/maps").read_text()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert not heavy, "SIGTERM was only caught after the heavy imports"
    return proc.returncode, out


def test_a_sigterm_during_start_up_is_acted_on(tmp_path: Path) -> None:
    """As PID 1 (in its container) a SIGTERM before the handler was lost; here, not PID 1, it
    killed the process outright. Now it is recorded first thing and drained as any SIGTERM."""
    code, out = _run_and_signal_at_once(_env(tmp_path))
    assert code == 0, out
    assert "SIGTERM: draining" in out and "exiting with code 0" in out


def test_a_sigterm_in_config_error_mode_ends_it(tmp_path: Path) -> None:
    code, out = _run_and_signal_at_once(_env(tmp_path, POD_IP="not-an-ip"))
    assert code == 2, out
    assert "config error: POD_IP='not-an-ip'" in out
