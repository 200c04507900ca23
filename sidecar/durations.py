"""Go-style durations ("500ms", "15s", "1m30s"), the syntax Consul and Kubernetes users know."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Return seconds. Raises ValueError with a message fit to show a user."""
    value = text.strip()
    if not value:
        raise ValueError("empty duration")
    pos = 0
    total = 0.0
    for match in _PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(value) or pos == 0:
        raise ValueError("not a duration (use e.g. 500ms, 15s, 1m30s)")
    return total


def format_duration(seconds: float) -> str:
    """The form Consul accepts in TTL fields: whole seconds where possible, else ms."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{int(round(seconds * 1000))}ms"
