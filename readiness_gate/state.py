"""The status file shared by the sidecar (writer) and readiness-gate / `status` (readers).

Standard library only. The sidecar writes the whole state atomically (temp file + rename)
and rewrites it as a heartbeat; readers never see a half-written file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

SCHEMA = 1

# Phases the sidecar goes through; the gate only needs a few of them.
CONFIG_ERROR = "config-error"
STARTING = "starting"
SYNCING = "syncing"
CONFIRMED = "confirmed"
DRAINING = "draining"
STOPPED = "stopped"


def write_atomically(path: str, state: Mapping[str, Any]) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(state, handle, separators=(",", ":"), sort_keys=True)
    os.replace(tmp, path)


def read(path: str) -> dict[str, Any]:
    """Raises OSError or ValueError; callers turn those into a message."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError("not a katalog-sidecar status file of this version")
    return data


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def evaluate(state: Mapping[str, Any], now: float,
             pid_alive: Callable[[int], bool] = _pid_alive) -> tuple[bool, str]:
    """(gate passes?, one line for the operator). Pure apart from the injectable pid check."""
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
    if phase in (DRAINING, STOPPED):
        return False, f"draining: {message}"
    if state.get("gate_mode") == "latch" and state.get("ever_confirmed"):
        return True, f"ok (latched): {message}"
    if phase == CONFIRMED:
        return True, f"ok: {message}"
    return False, message or "sidecar has not confirmed the registration yet"
