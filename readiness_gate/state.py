"""The status file shared by the sidecar (writer) and readiness-gate / `status` (readers).

Standard library only. The sidecar writes the whole state atomically (temp file + rename)
and rewrites it as a heartbeat; readers never see a half-written file.
"""

from __future__ import annotations

import json
import os
import time
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
WORKER_DOWN = "worker-down"  # a worker the verdict depends on is crash-looping: fails even a latched gate
SUPERSEDED = "superseded"  # another pod (UID) holds our service ID on this node: fails even a latched gate
FAILED_OPEN = "failed-open"  # KATALOG_FAIL_OPEN_AFTER: held that long because Consul cannot confirm; the gate passes


def _replace(path: str, text: str) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _uptime_now() -> int:
    try:
        return probe.uptime_cs()
    except (OSError, ValueError):
        # No usable /proc/uptime: the gate cannot read it either and fails closed whatever is
        # written; the boot-time clock keeps the file well-formed for `katalog-sidecar status`.
        return int(time.clock_gettime(time.CLOCK_BOOTTIME) * 100)


def gate_file_text(state: Mapping[str, Any], *, wall: float | None = None, uptime_cs: int | None = None) -> str:
    """The compact file readiness-gate reads: the verdict decided here, once per write.

    The gate adds only what can change after the write (heartbeat age, process alive), so it
    needs no json and no decision logic of its own (bin/readiness-gate, readiness_gate.probe).
    The heartbeat (`updated_at`, wall clock) is restamped in centiseconds on the clock the gate
    reads, /proc/uptime (probe.uptime_cs: a shell reads it without starting a process; under
    LXCFS it is the container's own uptime, not the kernel's boot-time clock). `wall` and
    `uptime_cs` are the two clocks' "now" (default: read them).
    """
    passes, line = evaluate(state, float(state.get("updated_at", 0)), lambda _pid: True, lambda _pid: None)
    pid = state.get("pid") if isinstance(state.get("pid"), int) else 0
    message = str(state.get("message") or "")
    now_cs = _uptime_now() if uptime_cs is None else uptime_cs
    now_wall = time.time() if wall is None else wall
    # Never ahead of `now_cs` (a wall clock stepped back between the stamp and this write): the
    # gate fails a heartbeat from the future.
    written = min(now_cs, max(0, now_cs - round((now_wall - float(state.get("updated_at", 0))) * 100)))
    stale_cs = max(0, round(float(state.get("stale_after", 15)) * 100))
    # The writer's start time, when the document has it: the gate checks the PID is still it.
    start = str(state.get("pid_start") or "")
    start = f" {start}" if start.isdigit() else ""
    return (f"{probe.HEADER}\n{written} {stale_cs} {pid} {1 if passes else 0}{start}\n"
            f"{' '.join(line.split())}\n{' '.join(message.split())}\n")


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

    Condition mode (`gate` = "condition"): the pod's readinessGates condition carries the
    verdict, and this probe says whether that condition can be trusted: it passes only when
    the live sidecar's last successful write of the condition (`condition`) is its verdict now,
    or is False while its verdict is already True (the True is one PATCH away; a False on the
    pod makes nothing Ready, so nothing stale can). A hung sidecar (stale heartbeat), a
    restarted one that has not written the condition yet, or one whose True it cannot take
    back fail the probe, so the pod is NotReady within this gate's bound even though a
    condition nobody refreshes never expires.
    """
    phase = state.get("phase")
    message = str(state.get("message") or "")
    if phase == CONFIG_ERROR:
        return False, f"config error: {message}"
    dead = _not_alive(state, now, pid_alive, started, message)
    if dead is not None:
        return False, dead
    passes, line = _phase_verdict(state, phase, message)
    if state.get("gate") != "condition":
        return passes, line
    want = "True" if passes else "False"
    written = state.get("condition")
    if written == want:
        return True, f"pod condition {want} is current: {line}"
    if passes and written == "False":
        # Failing here held the sidecar container NotReady whenever the kubelet probed during
        # the PATCH: on a real kubelet that cost the new pod one more pod sync, about a second
        # (BENCHMARKS.md, "Where confirmed -> Ready goes on a real kubelet").
        return True, f"pod condition False is current, True on its way: {line}"
    return False, f"pod condition not yet {want} from this sidecar (it is {written or 'unset'}): {line}"


def _not_alive(state: Mapping[str, Any], now: float, pid_alive: Callable[[int], bool],
               started: Callable[[int], str | None], message: str) -> str | None:
    """Why the writer cannot be trusted (stale heartbeat, process gone), or None."""
    age = now - float(state.get("updated_at", 0))
    if age > float(state.get("stale_after", 15)):
        return f"heartbeat stale {age:.0f}s: sidecar hung? (last said: {message})"
    pid = state.get("pid")
    if isinstance(pid, int) and not pid_alive(pid):
        return f"sidecar process {pid} is not running (last said: {message})"
    pid_start = state.get("pid_start")
    if isinstance(pid, int) and pid_start:
        now_started = started(pid)
        if now_started is not None and now_started != str(pid_start):
            return f"sidecar process {pid} is not running (last said: {message})"
    return None


def _phase_verdict(state: Mapping[str, Any], phase: object, message: str) -> tuple[bool, str]:
    if phase in (DRAINING, STOPPED):
        return False, f"draining: {message}"
    if phase == SUPERSEDED:
        return False, f"superseded: {message}"
    if phase == FAILED_OPEN:
        return True, f"ok, {message}"
    if phase == WORKER_DOWN:
        return False, f"worker down: {message}"
    if state.get("gate_mode") == "latch" and state.get("ever_confirmed"):
        return True, f"ok (latched): {message}"
    if phase == CONFIRMED:
        return True, f"ok: {message}"
    return False, message or "sidecar has not confirmed the registration yet"
