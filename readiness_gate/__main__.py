"""`python -m readiness_gate` and the `readiness-gate` console script."""

from __future__ import annotations

import os
import sys
import time

from readiness_gate import state

DEFAULT_STATUS_FILE = "/run/katalog/status.json"  # keep in step with sidecar.config


def main() -> int:
    path = os.environ.get("KATALOG_STATUS_FILE", "").strip() or DEFAULT_STATUS_FILE
    if len(sys.argv) > 1:
        path = sys.argv[1]
    try:
        current = state.read(path)
    except FileNotFoundError:
        print(f"no status file at {path}: sidecar not started yet, or KATALOG_STATUS_FILE differs")
        return 1
    except (OSError, ValueError) as exc:
        print(f"status file {path} unreadable: {exc}")
        return 1
    ok, line = state.evaluate(current, time.time())
    print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
