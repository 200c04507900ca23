"""Writes the status file that readiness-gate and `katalog-sidecar status` read."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from readiness_gate import probe, state


class StatusWriter:
    def __init__(self, path: Path, *, gate_mode: str, heartbeat_interval: float, agent: str,
                 pod: str, wall: Callable[[], float] = time.time,
                 extra: Callable[[], Mapping[str, Any]] | None = None) -> None:
        """`extra` adds fields to every write (the workers' liveness, from the supervisor)."""
        self.path = path
        self._fixed = {
            "schema": state.SCHEMA,
            "pid": os.getpid(),
            # With the PID, identifies this process: a restarted container's sidecar is PID 1 again.
            "pid_start": probe.process_start(os.getpid()),
            "gate_mode": gate_mode,
            # Three missed heartbeats, and never less than 10s so a busy node does not flap.
            "stale_after": max(3 * heartbeat_interval, 10.0),
            "agent": agent,
            "pod": pod,
        }
        self._wall = wall
        self._extra = extra

    def write(self, **fields: Any) -> None:
        document = dict(self._fixed)
        if self._extra is not None:
            document.update(self._extra())
        document.update(fields)
        document["updated_at"] = self._wall()
        state.write_atomically(str(self.path), document)
