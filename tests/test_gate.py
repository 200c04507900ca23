"""readiness-gate: what it decides, what it says, and what it costs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sidecar_process import GATE

from readiness_gate import state
from readiness_gate.probe import gate_path, process_start, verdict

NOW = 1_800_000_000.0
ROOT = Path(__file__).resolve().parent.parent


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


BOOT = 12_345_678  # "now" on the clock /proc/uptime shows, centiseconds


@pytest.mark.parametrize(("case", "status", "pid_check", "expected"), GATE_CASES, ids=[c[0] for c in GATE_CASES])
def test_the_probe_file_gives_the_same_verdict(case, status, pid_check, expected) -> None:
    """The sidecar decides when it writes; the probe adds only heartbeat age and process liveness."""
    assert verdict(state.gate_file_text(status, wall=NOW, uptime_cs=BOOT), BOOT, pid_check) == expected


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("gate", ["installed", "repository"])
@pytest.mark.parametrize(("case", "status", "pid_check", "expected"), GATE_CASES, ids=[c[0] for c in GATE_CASES])
def test_the_shell_gate_gives_the_same_verdict(case, status, pid_check, expected, gate, tmp_path: Path) -> None:
    """bin/readiness-gate (a shell script) against the same table, on the real clock and real pids."""
    pid = os.getpid() if pid_check is alive else _dead_pid()
    now = time.time()
    real = dict(status, pid=pid, updated_at=now - (NOW - float(status["updated_at"])))  # type: ignore[arg-type]
    path = tmp_path / "status.json"
    state.write_atomically(str(path), real)
    command = GATE if gate == "installed" else str(ROOT / "bin" / "readiness-gate")
    done = subprocess.run([command], env={"PATH": "/usr/bin:/bin", "KATALOG_STATUS_FILE": str(path)},
                          capture_output=True, text=True, timeout=10)
    passes, line = expected
    assert (done.returncode == 0, done.stdout, done.stderr) == (passes, line.replace("4242", str(pid)) + "\n", "")


def test_a_live_pid_is_not_enough_the_process_start_time_must_match() -> None:
    """In its container the sidecar is PID 1 after every restart: the PID alone would vouch for
    the previous process's file until the new one writes."""
    text = state.gate_file_text(doc(phase=state.CONFIRMED, ever_confirmed=True, message="web passing", pid_start="777"),
                                wall=NOW, uptime_cs=BOOT)
    assert verdict(text, BOOT, alive, lambda _pid: "777") == (True, "ok (latched): web passing")
    assert verdict(text, BOOT, alive, lambda _pid: "912") == (
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


def test_installed_gate_is_the_shell_script_as_it_is() -> None:
    """pip rewrites only a `#!python` first line (dropping any interpreter options); the gate's
    is `#!/bin/sh`, so the install copies it byte for byte, in a venv and in the image."""
    assert Path(GATE).read_bytes() == (ROOT / "bin" / "readiness-gate").read_bytes()
    assert Path(GATE).read_text().startswith("#!/bin/sh\n")


def test_gate_starts_no_other_program(tmp_path: Path) -> None:
    """One execve (the script's own): the shell runs only built-ins, no fork, no Python."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    path = tmp_path / "status.json"
    state.write_atomically(str(path), doc(phase=state.CONFIRMED, updated_at=time.time(), pid=os.getpid()))
    trace = tmp_path / "trace"
    done = subprocess.run([strace, "-f", "-qq", "-e", "trace=execve,clone,clone3,fork,vfork", "-o", str(trace), GATE],
                          env={"PATH": "/usr/bin:/bin", "KATALOG_STATUS_FILE": str(path)},
                          capture_output=True, text=True, timeout=20)
    if done.returncode != 0 and "ptrace" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stdout + done.stderr
    calls = [line.split(None, 1)[1] for line in trace.read_text().splitlines() if line.strip()]
    assert len(calls) == 1 and calls[0].startswith(f'execve("{GATE}"'), calls


def test_python_module_gives_the_same_answer(tmp_path: Path) -> None:
    """`python -m readiness_gate`, for images without a shell, reads the same file."""
    path = tmp_path / "status.json"
    state.write_atomically(str(path), doc(phase=state.CONFIRMED, updated_at=time.time(), pid=os.getpid(),
                                          message="web passing in the catalog"))
    env = {"PATH": os.environ["PATH"], "KATALOG_STATUS_FILE": str(path)}
    for command in ([GATE], [sys.executable, "-m", "readiness_gate"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=20)
        assert (done.returncode, done.stdout, done.stderr) == (0, "ok: web passing in the catalog\n", ""), command


def test_python_gate_imports_only_the_standard_library(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    state.write_atomically(str(path), doc(phase=state.CONFIRMED, updated_at=time.time(), pid=os.getpid()))
    env = {"PATH": os.environ["PATH"], "KATALOG_STATUS_FILE": str(path)}
    gate = _imports([sys.executable, "-m", "readiness_gate"], env)
    bare = _imports([sys.executable, "-c", "pass"], env)
    assert "readiness_gate" in gate
    ours = gate - bare - {"readiness_gate", "runpy"}
    foreign = {name for name in ours if name not in sys.stdlib_module_names}
    assert foreign == set(), f"readiness_gate imports non-standard modules: {foreign}"
    assert not {"sidecar", "requests", "consul", "click", "tenacity", "prometheus_client", "json", "typing"} & gate - bare


@pytest.mark.parametrize("gate", ["shell", "python"])
@pytest.mark.parametrize(("start", "passes"), [("own", True), ("other", False)])
def test_a_pid_reused_by_another_process_fails_the_gate(gate: str, start: str, passes: bool, tmp_path: Path) -> None:
    """With `pid_start` in the status, the PID must still be the process that wrote it (a restarted
    container's sidecar is PID 1 again): the start time in /proc/<pid>/stat is compared."""
    own = process_start(os.getpid())
    assert own.isdigit()
    path = tmp_path / "status.json"
    state.write_atomically(str(path), doc(phase=state.CONFIRMED, updated_at=time.time(), pid=os.getpid(),
                                          pid_start=own if start == "own" else str(int(own) + 1), message="web ok"))
    command = [GATE] if gate == "shell" else [sys.executable, "-m", "readiness_gate"]
    done = subprocess.run(command, env={"PATH": os.environ["PATH"], "KATALOG_STATUS_FILE": str(path)},
                          capture_output=True, text=True, timeout=20)
    expected = "ok: web ok\n" if passes else f"sidecar process {os.getpid()} is not running (last said: web ok)\n"
    assert (done.returncode == 0, done.stdout, done.stderr) == (passes, expected, "")
