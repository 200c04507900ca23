"""The sidecar and readiness-gate run as a user (and kubelet) would: installed console scripts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

SIDECAR = shutil.which("katalog-sidecar") or "katalog-sidecar"
GATE = shutil.which("readiness-gate") or "readiness-gate"


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
               what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    last: T = predicate()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)
        last = predicate()
    return last


def base_env(tmp_path: Path, agent_addr: str, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KATALOG_", "CONSUL_", "POD_"))}
    env.update({
        "POD_NAME": "web-7d4b9c-x2k8p",
        "POD_NAMESPACE": "shop",
        "POD_IP": "10.42.0.17",
        "POD_UID": "3f1c6c1e-8a51-4c1e-9a5e-2f1d1f0b7a11",
        "CONSUL_HTTP_ADDR": agent_addr,
        "KATALOG_SERVICES": "web:8080",
        "KATALOG_READINESS_SOURCE": "fixed",
        "KATALOG_STATUS_FILE": str(tmp_path / "run" / "status.json"),
        "KATALOG_METRICS_ADDR": "off",
        "KATALOG_CHECK_TTL": "15s",
        "KATALOG_HEARTBEAT_INTERVAL": "1s",
        "KATALOG_CONFIRM_WAIT": "2s",
        "KATALOG_DRAIN_TIMEOUT": "10s",
    })
    env.update(overrides)
    return env


class Sidecar:
    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sidecar:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([SIDECAR, "run"], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def gate(self) -> tuple[int, str]:
        result = subprocess.run([GATE], env=self.env, capture_output=True, text=True, timeout=10)
        return result.returncode, (result.stdout + result.stderr).strip()

    def wait_gate(self, passing: bool, timeout: float = 15.0, contains: str = "") -> str:
        def check() -> str | None:
            code, line = self.gate()
            if (code == 0) == passing and contains in line:
                return line
            return None

        return wait_until(check, timeout, 0.1, f"gate {'pass' if passing else 'fail'} containing {contains!r}")

    def status(self) -> tuple[int, str]:
        result = subprocess.run([SIDECAR, "status"], env=self.env, capture_output=True, text=True, timeout=10)
        return result.returncode, result.stdout

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def passing_in_catalog(agent: Any, service: str, service_id: str) -> bool:
    return service_id in agent.passing_ids(service)
