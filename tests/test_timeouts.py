"""No network call without a timeout: an agent that accepts connections and never answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sidecar_process import base_env

from sidecar.config import load_config
from sidecar.consul.api import ConsulAgent
from sidecar.errors import ConsulTimeout


class BlackHole:
    """Listens, accepts, reads, and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def test_adapter_calls_time_out(black_hole: BlackHole) -> None:
    config = load_config({"POD_NAME": "p", "POD_NAMESPACE": "n", "POD_IP": "10.0.0.1", "KATALOG_SERVICES": "web:80",
                          "KATALOG_READINESS_SOURCE": "fixed", "CONSUL_HTTP_ADDR": black_hole.addr,
                          "KATALOG_CONSUL_TIMEOUT": "300ms"})
    agent = ConsulAgent(config.consul)
    calls = [
        lambda: agent.service_checks("n:p:web"),
        lambda: agent.update_ttl_check("c", "passing", "ok"),
        lambda: agent.node_of_service("n:p:web"),
        lambda: agent.node_instance("node-a", "web", "n:p:web"),
        lambda: agent.node_checks("node-a", "web", "n:p:web"),
        # A blocking query may take its wait plus Consul's jitter; only then does the margin start.
        lambda: agent.node_checks("node-a", "web", "n:p:web", index=5, wait=0.5),
        lambda: agent.node_instance("node-a", "web", "n:p:web", index=5, wait=0.5),
        lambda: agent.agent_service("n:p:web", "abc", wait=0.5),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(ConsulTimeout, match=f"the agent at http://{black_hole.addr} did not answer in time"):
            call()
        assert time.monotonic() - started < 5.0


def test_sidecar_and_gate_give_up_in_bounded_time(black_hole: BlackHole, run_sidecar, tmp_path: Path) -> None:
    env = base_env(tmp_path, black_hole.addr, KATALOG_CONSUL_TIMEOUT="500ms", KATALOG_DRAIN_TIMEOUT="3s")
    sidecar = run_sidecar(env)
    line = sidecar.wait_gate(passing=False, contains="did not answer in time", timeout=20)
    assert line == f"waiting for the agent at http://{black_hole.addr}: the agent at http://{black_hole.addr} did not answer in time"
    # The gate reads a file; however stuck the agent is, it answers at once.
    started = time.monotonic()
    code, _ = sidecar.gate()
    assert code == 1 and time.monotonic() - started < 5.0
    started = time.monotonic()
    # A previous run may have registered the instance, so it still tries to drain, gives up at
    # the deadline, says what it leaves to the TTL and the reaper, and exits 1.
    assert sidecar.terminate(timeout=20) == 1
    assert time.monotonic() - started < 3.0 + 2.0
    assert "drain incomplete before the deadline: the liveness check goes critical within 15s" in sidecar.logs()
