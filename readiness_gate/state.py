"""The status file shared by the sidecar (writer) and readiness-gate / `status` (readers).

Standard library only. The sidecar writes the whole state atomically (temp file + rename)
and rewrites it as a heartbeat; readers never see a half-written file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from readiness_gate import probe

SCHEMA = 1

# Phases the sidecar goes through; the gate only needs a few of them.
CONFIG_ERROR = "config-error"
STARTING = "starting"
SYNCING = "syncing"
CONFIRMED = "confirmed"
DRAINING = "draining"
STOPPED = "stopped"


def _replace(path: str, text: str) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def gate_file_text(state: Mapping[str, Any]) -> str:
    """The compact file readiness-gate reads: the verdict decided here, once per write.

    The gate adds only what can change after the write (heartbeat age, process alive), so it
    needs no json and no decision logic of its own (readiness_gate.probe).
    """
    passes, line = evaluate(state, float(state.get("updated_at", 0)), lambda _pid: True, lambda _pid: None)
    pid = state.get("pid") if isinstance(state.get("pid"), int) else 0
    message = str(state.get("message") or "")
    # The writer's start time, when known, after the verdict: the gate checks the PID is still it.
    started = str(state.get("pid_start") or "").split()
    return (f"{probe.HEADER}\n{float(state.get('updated_at', 0))!r} {float(state.get('stale_after', 15))!r} "
            f"{pid} {1 if passes else 0}{''.join(' ' + s for s in started[:1])}\n{' '.join(line.split())}\n"
            f"{' '.join(message.split())}\n")


def write_atomically(path: str, state: Mapping[str, Any]) -> None:
    """Writes the JSON status file and, next to it, the gate's compact file; each atomically.

    The JSON goes first: a reader of the gate file never sees a verdict newer than the details.
    """
    _replace(path, json.dumps(state, separators=(",", ":"), sort_keys=True))
    _replace(probe.gate_path(path), gate_file_text(state))


def read(path: str) -> dict[str, Any]:
    """Raises OSError or ValueError; callers turn those into a message."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError("not a katalog-sidecar status file of this version")
    return data


def evaluate(state: Mapping[str, Any], now: float,
             pid_alive: Callable[[int], bool] = probe._pid_alive,
             started: Callable[[int], str | None] = probe.process_start) -> tuple[bool, str]:
    """(gate passes?, one line for the operator). Pure apart from the injectable process checks.

    `started(pid)` is the process's start time, compared with `pid_start` when the file has one
    (None: do not compare).
    """
    phase = state.get("phase")
    message = str(state.get("message") or "")
    if phase == CONFIG_ERROR:
        return False, f"config error: {message}"
    age = now - float(state.get("updated_at", 0))
    if age > float(state.get("stale_after", 15)):
        return False, f"heartbeat stale {age:.0f}s: sidecar hung? (last said: {message})"
    pid = state.get("pid")
    if isinstance(pid, int) and not pid_alive(pid):
        return False, f"sidecar process {pid} is not running (last said: {message})"
    pid_start = state.get("pid_start")
    if isinstance(pid, int) and pid_start:
        now_started = started(pid)
        if now_started is not None and now_started != str(pid_start):
            return False, f"sidecar process {pid} is not running (last said: {message})"
    if phase in (DRAINING, STOPPED):
        return False, f"draining: {message}"
    if state.get("gate_mode") == "latch" and state.get("ever_confirmed"):
        return True, f"ok (latched): {message}"
    if phase == CONFIRMED:
        return True, f"ok: {message}"
    return False, message or "sidecar has not confirmed the registration yet"
