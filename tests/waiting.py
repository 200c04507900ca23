"""Polling for the real-cluster tests: a condition that becomes true, or TimeoutError naming it.

(The Consul-only tests use `sidecar_process.wait_until`, which raises AssertionError with the
last value; these tests catch TimeoutError to say more about what they were waiting for.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(interval)
