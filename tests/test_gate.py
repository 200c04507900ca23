"""readiness-gate: what it decides, what it says, and what it costs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sidecar_process import GATE

from readiness_gate import state
from readiness_gate.probe import gate_path, verdict

NOW = 1_800_000_000.0


def doc(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {"schema": 1, "phase": state.SYNCING, "message": "waiting", "updated_at": NOW - 1,
                               "stale_after": 15.0, "gate_mode": "latch", "ever_confirmed": False, "pid": 4242}
    base.update(fields)
    return base


def alive(_pid: int) -> bool:
    return True


def dead(_pid: int) -> bool:
    return False


GATE_CASES = [
    ("confirmed", doc(phase=state.CONFIRMED, message="web passing in the catalog", ever_confirmed=True), alive,
     (True, "ok (latched): web passing in the catalog")),
    ("continuous confirmed", doc(phase=state.CONFIRMED, gate_mode="continuous", message="web passing in the catalog"),
     alive, (True, "ok: web passing in the catalog")),
    ("not yet confirmed", doc(message="agent accepted web but the catalog does not list shop:p:web yet"), alive,
     (False, "agent accepted web but the catalog does not list shop:p:web yet")),
    ("latched through an outage", doc(ever_confirmed=True, message="agent accepted web but the catalog cannot be read"),
     alive, (True, "ok (latched): agent accepted web but the catalog cannot be read")),
    ("continuous loses confirmation", doc(gate_mode="continuous", ever_confirmed=True, message="catalog cannot be read"),
     alive, (False, "catalog cannot be read")),
    ("config error", doc(phase=state.CONFIG_ERROR, message="POD_IP='x': not an IP address"), alive,
     (False, "config error: POD_IP='x': not an IP address")),
    ("stale heartbeat", doc(updated_at=NOW - 40, ever_confirmed=True, message="web passing"), alive,
     (False, "heartbeat stale 40s: sidecar hung? (last said: web passing)")),
    ("dead sidecar", doc(ever_confirmed=True, message="web passing"), dead,
     (False, "sidecar process 4242 is not running (last said: web passing)")),
    ("draining beats latch", doc(phase=state.DRAINING, ever_confirmed=True, message="SIGTERM: instances critical, deregistering"),
     alive, (False, "draining: SIGTERM: instances critical, deregistering")),
]


@pytest.mark.parametrize(("case", "status", "pid_check", "expected"), GATE_CASES, ids=[c[0] for c in GATE_CASES])
def test_gate_decision(case, status, pid_check, expected) -> None:
    assert state.evaluate(status, NOW, pid_check) == expected


@pytest.mark.parametrize(("case", "status", "pid_check", "expected"), GATE_CASES, ids=[c[0] for c in GATE_CASES])
def test_the_probe_file_gives_the_same_verdict(case, status, pid_check, expected) -> None:
    """The sidecar decides when it writes; the probe adds only heartbeat age and process liveness."""
    assert verdict(state.gate_file_text(status), NOW, pid_check) == expected


def test_a_live_pid_is_not_enough_the_process_start_time_must_match() -> None:
    """In its container the sidecar is PID 1 after every restart: the PID alone would vouch for
    the previous process's file until the new one writes."""
    text = state.gate_file_text(doc(phase=state.CONFIRMED, ever_confirmed=True, message="web passing", pid_start="777"))
    assert verdict(text, NOW, alive, lambda _pid: "777") == (True, "ok (latched): web passing")
    assert verdict(text, NOW, alive, lambda _pid: "912") == (
        False, "sidecar process 4242 is not running (last said: web passing)")


def test_gate_file_is_one_line_even_for_multi_line_messages() -> None:
    text = state.gate_file_text(doc(message="first\nsecond\rthird"))
    assert text.count("\n") == 4 and text.split("\n")[2:4] == ["first second third"] * 2


def _run_gate(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {"PATH": os.environ["PATH"], "KATALOG_STATUS_FILE": str(path), **env}
    return subprocess.run([GATE], env=full_env, capture_output=True, text=True, timeout=10)


def test_gate_command_exit_codes_and_single_line(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    result = _run_gate(path)
    assert (result.returncode, result.stdout) == (
        1, f"no status file at {path}: sidecar not started yet, or KATALOG_STATUS_FILE differs\n")
    Path(gate_path(str(path))).write_text("{not a gate file")
    result = _run_gate(path)
    assert result.returncode == 1 and result.stdout.startswith(f"status file {path} unreadable:")
    state.write_atomically(str(path), doc(phase=state.CONFIRMED, updated_at=time.time(), pid=os.getpid(),
                                          message="web passing in the catalog"))
    result = _run_gate(path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok: web passing in the catalog\n", "")


def _imports(command: list[str], env: dict[str, str]) -> set[str]:
    env = dict(env, PYTHONPROFILEIMPORTTIME="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=20)
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_gate_imports_only_the_standard_library(tmp_path: Path) -> None:
    """Run the installed console script as kubelet does and list every module it loads."""
    path = tmp_path / "status.json"
    state.write_atomically(str(path), doc(phase=state.CONFIRMED, updated_at=time.time(), pid=os.getpid()))
    env = {"PATH": os.environ["PATH"], "KATALOG_STATUS_FILE": str(path)}
    gate = _imports([GATE], env)
    # What a bare interpreter loads here (site hooks of this environment included) is not ours.
    bare = _imports([sys.executable, "-c", "pass"], env)
    assert "readiness_gate" in gate
    ours = gate - bare - {"readiness_gate"}
    foreign = {name for name in ours if name not in sys.stdlib_module_names}
    assert foreign == set(), f"readiness-gate imports non-standard modules: {foreign}"
    assert not {"sidecar", "requests", "consul", "click", "tenacity", "prometheus_client"} & gate


def test_gate_loads_nothing_a_bare_interpreter_has_not(tmp_path: Path) -> None:
    """In a clean environment (no site hooks of this machine, as in the slim image) the probe
    adds only itself to what a bare interpreter loads: no json, re or typing."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = str(venv / "bin" / "python")
    path = tmp_path / "status.json"
    state.write_atomically(str(path), doc(phase=state.CONFIRMED, updated_at=time.time(), pid=os.getpid()))
    env = {"PATH": os.environ["PATH"], "KATALOG_STATUS_FILE": str(path),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    script = (Path(__file__).resolve().parent.parent / "bin" / "readiness-gate").read_text()
    gate = _imports([python, "-c", script], env)
    bare = _imports([python, "-c", "pass"], env)
    assert gate - bare == {"readiness_gate"}
