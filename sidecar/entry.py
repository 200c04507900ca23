"""The `katalog-sidecar` console entry point: SIGTERM is caught before the heavy imports.

In its container the sidecar is PID 1, and PID 1 gets no default action for SIGTERM: a signal
that arrives before a handler is installed is lost, and kubelet then waits out the whole grace
period and SIGKILLs. Importing the CLI (click, requests, the Consul client) takes 0.2-0.7 s, so
`run` records SIGTERM/SIGINT here, first; the sync loop acts on a recorded signal as soon as it
exists, with the signal's own time (the drain's budget counts from it).
"""

from __future__ import annotations

import signal
import sys
import time
from types import FrameType

_early: list[tuple[str, float]] = []  # (signal name, time.monotonic() when it came)


def _record(signum: int, _frame: FrameType | None) -> None:
    _early.append((signal.Signals(signum).name, time.monotonic()))  # list.append is atomic


def early_signal() -> tuple[str, float] | None:
    """The first SIGTERM/SIGINT that came before the real handler was installed, if any."""
    return _early[0] if _early else None


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        signal.signal(signal.SIGTERM, _record)
        signal.signal(signal.SIGINT, _record)
    from sidecar.cli import main as cli_main

    cli_main()
