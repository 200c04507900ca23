"""The gate's verdict in Python: `python -m readiness_gate`, for images without /bin/sh.

The installed `readiness-gate` is a POSIX shell script (bin/readiness-gate) with the same logic,
because a shell running only built-ins costs a fraction of any Python start; tests hold the two
to one table. Kept to modules a bare interpreter has already loaded (no json, re or typing).
The sidecar does the deciding when it writes the file (readiness_gate.state.gate_file_text);
this only adds what can change after the write: the heartbeat's age, on the clock /proc/uptime
shows (the one the shell script reads, and the one the sidecar stamps the file with), and whether
the sidecar process still runs.
"""

import os
import sys

# Neither typing nor __future__ is imported at run time: each costs a measurable part of a probe.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

DEFAULT_STATUS_FILE = "/run/katalog/status.json"  # keep in step with sidecar.config
HEADER = "katalog-gate 2"


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
    """When the process started (clock ticks since boot, /proc/<pid>/stat field 22); "" if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError, ValueError):
        return ""


UPTIME = "/proc/uptime"
# Every number in the gate file fits in 18 digits; a longer one is not ours (and the shell's
# `[` and arithmetic cannot compare it: they would error or wrap, not fail).
MAX_DIGITS = 18


def uptime_cs() -> int:
    """Now on the clock the shell gate reads, in centiseconds: the first field of /proc/uptime.

    The writer and every reader use this one source. It is not always the kernel's boot-time
    clock: LXCFS shows each container its own uptime there, so a writer stamping CLOCK_BOOTTIME
    would put the heartbeat far in the future of the shell's reading, never stale. Raises OSError
    or ValueError.
    """
    with open(UPTIME, "rb") as handle:
        first = handle.read(64).split(b" ", 1)[0].strip()
    whole, dot, fraction = first.partition(b".")
    if not (whole.isdigit() and dot and len(fraction) == 2 and fraction.isdigit() and len(whole) <= MAX_DIGITS - 3):
        raise ValueError(f"{UPTIME} does not start with seconds.hundredths: {first[:30]!r}")
    return int(whole) * 100 + int(fraction)


def verdict(text: str, now_cs: int, pid_alive: "Callable[[int], bool]" = _pid_alive,
            started: "Callable[[int], str]" = process_start) -> tuple[bool, str]:
    """(passes, line) from the gate file's text. Raises ValueError if it is not one."""
    # Four lines: header; "written stale_after pid verdict [start]" (centiseconds of boot time,
    # centiseconds, pid, 1 or 0, optionally the process's start time); the verdict's line; the
    # sidecar's own message (quoted when the heartbeat or the process is gone).
    lines = text.split("\n")
    if len(lines) < 4 or lines[0] != HEADER:
        raise ValueError("not a katalog-sidecar gate file of this version")
    fields = lines[1].split(" ")
    if len(fields) not in (4, 5) or not all(f.isdigit() and len(f) <= MAX_DIGITS for f in fields):
        raise ValueError("not a katalog-sidecar gate file of this version")
    if fields[3] not in ("0", "1"):
        raise ValueError("not a katalog-sidecar gate file of this version")
    written, stale_after, pid, ok = (int(f) for f in fields[:4])
    start = fields[4] if len(fields) == 5 else ""
    line, message = lines[2], lines[3]
    if line.startswith("config error: "):
        return False, line
    age = now_cs - written
    if age < 0:
        # Written ahead of this reading: the sidecar and the gate read different clocks. Fail
        # closed: a heartbeat that cannot be aged cannot be trusted to be fresh.
        return False, (f"heartbeat stamped {(-age + 50) // 100}s ahead of {UPTIME}: the sidecar and the gate "
                       f"read different clocks (last said: {message})")
    if age > stale_after:
        return False, f"heartbeat stale {(age + 50) // 100}s: sidecar hung? (last said: {message})"
    if pid > 0 and (not pid_alive(pid) or (start and started(pid) != start)):
        return False, f"sidecar process {pid} is not running (last said: {message})"
    return ok == 1, line


def main() -> int:
    status_file = os.environ.get("KATALOG_STATUS_FILE", "").strip() or DEFAULT_STATUS_FILE
    if len(sys.argv) > 1:
        status_file = sys.argv[1]
    try:
        with open(gate_path(status_file), encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        print(f"no status file at {status_file}: sidecar not started yet, or KATALOG_STATUS_FILE differs")
        return 1
    except (OSError, ValueError) as exc:
        print(f"status file {status_file} unreadable: {exc}")
        return 1
    try:
        now = uptime_cs()
    except (OSError, ValueError):
        print(f"cannot read {UPTIME} (seconds.hundredths expected)")
        return 1
    try:
        passes, line = verdict(text, now)
    except ValueError as exc:
        print(f"status file {status_file} unreadable: {exc}")
        return 1
    print(line)
    return 0 if passes else 1
