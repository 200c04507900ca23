"""What readiness-gate runs on every probe: read the gate file, check it is fresh, answer.

Kept to modules a bare interpreter has already loaded (no json, re or typing): kubelet starts
this as a new process every probe period in every pod. The sidecar does the deciding when it
writes the file (readiness_gate.state.gate_file_text); this only adds what can change after
the write: the heartbeat's age and whether the sidecar process still runs.
"""

import os
import sys
import time

# Neither typing nor __future__ is imported at run time: each costs a measurable part of a probe.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

DEFAULT_STATUS_FILE = "/run/katalog/status.json"  # keep in step with sidecar.config
HEADER = "katalog-gate 1"


def gate_path(status_file: str) -> str:
    """The compact file next to the JSON status file."""
    return status_file + ".gate"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start(pid: int) -> str:
    """When the process started (clock ticks since boot, /proc/<pid>/stat field 22); "" if unknown.

    With the PID it names one process for the life of the node: in its container the sidecar
    is PID 1 after every container restart, so a PID alone would vouch for a file that the
    previous process wrote.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError, ValueError):
        return ""


def verdict(text: str, now: float, pid_alive: "Callable[[int], bool]" = _pid_alive,
            started: "Callable[[int], str]" = process_start) -> tuple[bool, str]:
    """(passes, line) from the gate file's text. Raises ValueError if it is not one."""
    # Four lines: header; "updated_at stale_after pid verdict [process start]"; the verdict's
    # line; the sidecar's own message (quoted when the heartbeat or the process is gone).
    lines = text.split("\n")
    if len(lines) < 4 or lines[0] != HEADER:
        raise ValueError("not a katalog-sidecar gate file of this version")
    fields = lines[1].split(" ")
    updated_at, stale_after, pid, ok = fields[:4]
    line, message = lines[2], lines[3]
    age = now - float(updated_at)
    if line.startswith("config error: "):
        return False, line
    if age > float(stale_after):
        return False, f"heartbeat stale {age:.0f}s: sidecar hung? (last said: {message})"
    if int(pid) > 0 and (not pid_alive(int(pid)) or (len(fields) > 4 and fields[4] != started(int(pid)))):
        return False, f"sidecar process {pid} is not running (last said: {message})"
    return ok == "1", line


def main() -> int:
    status_file = os.environ.get("KATALOG_STATUS_FILE", "").strip() or DEFAULT_STATUS_FILE
    if len(sys.argv) > 1:
        status_file = sys.argv[1]
    try:
        with open(gate_path(status_file), encoding="utf-8") as handle:
            text = handle.read()
        passes, line = verdict(text, time.time())
    except FileNotFoundError:
        print(f"no status file at {status_file}: sidecar not started yet, or KATALOG_STATUS_FILE differs")
        return 1
    except (OSError, ValueError) as exc:
        print(f"status file {status_file} unreadable: {exc}")
        return 1
    print(line)
    return 0 if passes else 1
