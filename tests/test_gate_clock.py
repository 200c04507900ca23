"""readiness-gate's clock and numbers: one clock source for writer and reader, and every malformed
number fails the gate (issue 18, defect 8).

The shell gate ages the heartbeat on /proc/uptime. Under LXCFS a container's /proc/uptime is its own
uptime, not the kernel's boot-time clock: a writer stamping CLOCK_BOOTTIME put the heartbeat far
ahead of the shell's reading, so a hung sidecar never looked stale. These tests give the writer and
the gates an LXCFS-style /proc/uptime the way LXCFS does it, with a bind mount, in a user and mount
namespace of their own (nothing on the machine changes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sidecar_process import GATE

from readiness_gate import state
from readiness_gate.probe import gate_path, uptime_cs

ROOT = Path(__file__).resolve().parent.parent

# Runs inside the namespace: the sidecar's real status writer stamps the file while /proc/uptime
# says 1.00 s, then both gates read it at 3.00 s (fresh) and at 41.00 s (stale: 40 s > 10 s).
INSIDE = r"""
import json, os, subprocess, sys
from pathlib import Path
from sidecar.status import StatusWriter
fake, status, gate = sys.argv[1:4]
Path(fake).write_text("1.00 0.50\n")
StatusWriter(Path(status), gate_mode="continuous", heartbeat_interval=1.0, agent="127.0.0.1:8500",
             pod="shop/web").write(phase="confirmed", message="web passing")
results = {}
for label, uptime in (("fresh", "3.00"), ("stale", "41.00"), ("garbled", "12,5 7")):
    Path(fake).write_text(uptime + " 0.50\n")
    for name, command in (("shell", [gate]), ("python", [sys.executable, "-m", "readiness_gate"])):
        done = subprocess.run(command, env={"PATH": os.environ["PATH"], "KATALOG_STATUS_FILE": status},
                              capture_output=True, text=True, timeout=20)
        results[label + " " + name] = [done.returncode, done.stdout + done.stderr]
print(json.dumps(results))
"""


def _unshare() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("util-linux unshare is not installed")
    probe = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "true"],
                           capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        # A kernel setting, not something the project can install: said, not failed.
        pytest.skip(f"unprivileged user namespaces are not available here: {probe.stderr.strip()}")
    return [unshare, "--user", "--map-root-user", "--mount"]


def test_an_lxcfs_style_uptime_still_shows_a_stale_heartbeat(tmp_path: Path) -> None:
    fake = tmp_path / "uptime"
    fake.write_text("1.00 0.50\n")
    status = tmp_path / "run" / "status.json"
    script = 'mount --bind "$1" /proc/uptime && exec "$2" -c "$3" "$1" "$4" "$5"'
    done = subprocess.run([*_unshare(), "sh", "-c", script, "sh", str(fake), sys.executable, INSIDE, str(status), GATE],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(done.stdout)
    stale = "heartbeat stale 40s: sidecar hung? (last said: web passing)\n"
    garbled = "cannot read /proc/uptime (seconds.hundredths expected)\n"
    assert results == {
        "fresh shell": [0, "ok: web passing\n"], "fresh python": [0, "ok: web passing\n"],
        "stale shell": [1, stale], "stale python": [1, stale],
        "garbled shell": [1, garbled], "garbled python": [1, garbled],
    }


def _gate_file(path: Path, numbers: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Path(gate_path(str(path))).write_text(f"katalog-gate 2\n{numbers}\nok: web passing\nweb passing\n")


def _both_gates(path: Path) -> list[tuple[int, str]]:
    env = {"PATH": os.environ["PATH"], "KATALOG_STATUS_FILE": str(path)}
    answers = []
    for command in ([GATE], [str(ROOT / "bin" / "readiness-gate")], [sys.executable, "-m", "readiness_gate"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=20)
        answers.append((done.returncode, done.stdout + done.stderr))
    return answers


def test_a_heartbeat_from_the_future_fails_closed(tmp_path: Path) -> None:
    """Written 30 s ahead of this /proc/uptime: the two sides read different clocks, and a heartbeat
    whose age cannot be known is not fresh."""
    path = tmp_path / "status.json"
    _gate_file(path, f"{uptime_cs() + 3000} 1000 {os.getpid()} 1")
    expected = "heartbeat stamped 30s ahead of /proc/uptime: the sidecar and the gate read different clocks (last said: web passing)\n"
    assert _both_gates(path) == [(1, expected)] * 3


BIG = "9" * 20  # digits, but beyond what `[` and shell arithmetic can hold

MALFORMED = [
    # A PID `[` cannot compare: the process check was skipped and the gate passed.
    ("pid out of range", lambda now: f"{now} 1000 {BIG} 1"),
    # A staleness bound `[` cannot compare: a heartbeat 100 s old passed.
    ("stale_after out of range", lambda now: f"{now - 10_000} {BIG} {os.getpid()} 1"),
    ("written out of range", lambda now: f"{BIG} 1000 {os.getpid()} 1"),
    ("start out of range", lambda now: f"{now} 1000 {os.getpid()} 1 {BIG}"),
    ("verdict neither 0 nor 1", lambda now: f"{now} 1000 {os.getpid()} 7"),
    ("a field missing", lambda now: f"{now} 1000 1"),
]


@pytest.mark.parametrize(("case", "numbers"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_numbers_fail_closed(case: str, numbers, tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    _gate_file(path, numbers(uptime_cs()))
    expected = f"status file {path} unreadable: not a katalog-sidecar gate file of this version\n"
    assert _both_gates(path) == [(1, expected)] * 3


def test_the_writer_stamps_the_clock_the_gate_reads(tmp_path: Path) -> None:
    """On this machine's own /proc/uptime: a fresh write passes, and its stamp is /proc/uptime's now."""
    path = tmp_path / "status.json"
    before = uptime_cs()
    state.write_atomically(str(path), {"schema": 1, "phase": state.CONFIRMED, "message": "web passing",
                                       "updated_at": time.time(), "stale_after": 10.0, "gate_mode": "continuous",
                                       "pid": os.getpid()})
    after = uptime_cs()
    written = int(Path(gate_path(str(path))).read_text().split("\n")[1].split(" ")[0])
    assert before - 1 <= written <= after
    assert _both_gates(path) == [(0, "ok: web passing\n")] * 3
