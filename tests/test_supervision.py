"""Worker threads never die silently: supervision, liveness in /healthz and `status`.

The supervisor is driven in-process: a test decides when a worker fails and when a restart
backoff ends (an injected sleep), so no test depends on timing.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from fakekube import FakeKube
from test_kube_source import (  # noqa: F401 (kube: fixture)
    NAME,
    NS,
    RecordingSink,
    flip,
    kube,  # noqa: F401 (fixture)
    wait_for_watch,
)

from readiness_gate import state
from sidecar import logs
from sidecar.kube.client import KubeClient
from sidecar.kube.source import KubernetesSource
from sidecar.metrics import Metrics
from sidecar.readiness import Observation
from sidecar.status import StatusWriter
from sidecar.status_report import render
from sidecar.supervision import FINISHED, RESTARTING, RUNNING, Supervisor

pytestmark = pytest.mark.timeout(30)
WAIT = 5.0


def wait_for(predicate: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Gate:
    """An injected backoff sleep that waits until the test opens it (or stop is set)."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.open = threading.Event()

    def sleep(self, stop: threading.Event, seconds: float) -> None:
        self.delays.append(seconds)
        while not (self.open.is_set() or stop.is_set()):
            time.sleep(0.005)


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def test_a_failing_worker_is_logged_and_restarted_with_capped_backoff(
        stop: threading.Event, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    restarted: list[str] = []

    def work() -> None:
        calls.append(1)
        if len(calls) <= 5:
            raise ValueError(f"bad input number {len(calls)}")
        stop.wait()

    gate = Gate()
    gate.open.set()
    supervisor = Supervisor(initial=1.0, cap=4.0, rng=lambda: 1.0, sleep=gate.sleep, on_restart=restarted.append)
    supervisor.start("readiness", work, stop)
    wait_for(lambda: len(calls) == 6, "the sixth start")
    assert gate.delays == [1.0, 2.0, 4.0, 4.0, 4.0]  # capped exponential backoff
    assert restarted == ["readiness"] * 5
    (status,) = supervisor.statuses()
    assert (status.name, status.state, status.restarts) == ("readiness", RUNNING, 5)
    assert status.last_error == "ValueError: bad input number 5"
    failures = [r for r in caplog.records if r.name == "katalog.supervisor"]
    assert len(failures) == 5 and all(r.levelno == logging.ERROR and r.exc_info for r in failures)
    assert failures[0].getMessage() == ("worker readiness failed: ValueError: bad input number 1; "
                                        "restarting it in 1.0s (failure 1)")


def test_a_worker_that_fails_on_every_start_is_not_a_hot_loop(stop: threading.Event) -> None:
    calls: list[float] = []

    def work() -> None:
        calls.append(time.monotonic())
        raise RuntimeError("always")

    Supervisor(initial=0.05, cap=0.2, rng=lambda: 0.0).start("w", work, stop)
    time.sleep(1.0)  # the window: delays of 0.025, 0.05, 0.1, then 0.1 each (half the ceiling, rng 0)
    assert 3 <= len(calls) <= 14, len(calls)


def test_a_worker_that_returns_is_finished_not_restarted(stop: threading.Event) -> None:
    supervisor = Supervisor()
    thread = supervisor.start("done", lambda: None, stop)
    thread.join(WAIT)
    assert [(s.state, s.restarts) for s in supervisor.statuses()] == [(FINISHED, 0)]


def test_stop_ends_a_restart_backoff(stop: threading.Event) -> None:
    supervisor = Supervisor(initial=3600.0, cap=3600.0)

    def work() -> None:
        raise RuntimeError("boom")

    thread = supervisor.start("w", work, stop)
    wait_for(lambda: supervisor.down(), "the failure")
    stop.set()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert supervisor.statuses()[0].state == FINISHED


def test_failure_is_logged_in_the_json_format_with_its_traceback(stop: threading.Event) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, threading.excepthook)
    stream = io.StringIO()
    try:
        logs.setup("json", "info")
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        gate = Gate()
        supervisor = Supervisor(sleep=gate.sleep)

        def work() -> None:
            raise KeyError("metadata")

        supervisor.start("confirmer", work, stop)
        wait_for(lambda: gate.delays, "the failure")
    finally:
        root.handlers[:], level, threading.excepthook = saved
        root.setLevel(level)
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line["level"] == "error" and line["logger"] == "katalog.supervisor"
    assert line["message"].startswith("worker confirmer failed: KeyError: 'metadata'; restarting it in ")
    assert "Traceback" in line["exception"] and "raise KeyError" in line["exception"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_secret_in_a_failure_is_redacted_in_the_traceback_too(stop: threading.Event, fmt: str) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, threading.excepthook)
    stream = io.StringIO()
    try:
        logs.setup(fmt, "info", secrets=lambda: ["s3cr3t-token"])
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        gate = Gate()

        def work() -> None:
            raise RuntimeError("request with header X-Consul-Token: s3cr3t-token failed")

        Supervisor(sleep=gate.sleep).start("w", work, stop)
        wait_for(lambda: gate.delays, "the failure")
    finally:
        root.handlers[:], level, threading.excepthook = saved
        root.setLevel(level)
    text = stream.getvalue()
    assert "s3cr3t-token" not in text
    assert text.count("[redacted]") >= 2  # the message, and the traceback (its last line, the source line)


def test_an_unsupervised_thread_that_dies_is_logged(caplog: pytest.LogCaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threading, "excepthook", logs._log_thread_death)

    def die() -> None:
        raise RuntimeError("boom")

    thread = threading.Thread(target=die, name="helper")
    thread.start()
    thread.join(WAIT)
    assert "thread helper died: RuntimeError: boom" in caplog.text


# -- liveness: /healthz, the status file, `katalog-sidecar status` ----------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Loop:
    last_loop = 0.0  # the sync loop ran "now": Metrics below gets a clock frozen at 0


def test_healthz_is_503_while_a_worker_is_down_and_lists_restarts(stop: threading.Event) -> None:
    gate = Gate()
    supervisor = Supervisor(sleep=gate.sleep)
    failed = threading.Event()

    def work() -> None:
        if not failed.is_set():
            failed.set()
            raise UnicodeError("label empty or too long")
        stop.wait()

    port = _free_port()
    Metrics(clock=lambda: 0.0).serve(("127.0.0.1", port), _Loop(), workers=supervisor.statuses)
    url = f"http://127.0.0.1:{port}/healthz"
    supervisor.start("readiness", work, stop)
    wait_for(lambda: supervisor.down(), "the failure")
    down = requests.get(url, timeout=5)
    assert down.status_code == 503
    assert down.text.startswith("worker readiness down, restarting\n")
    assert "worker readiness: restarting, restarted 1 time (last failure: UnicodeError: label empty or too long)" in down.text
    gate.open.set()
    wait_for(lambda: supervisor.statuses()[0].state == RUNNING, "the restart")
    up = requests.get(url, timeout=5)
    assert up.status_code == 200
    assert up.text == "ok\nworker readiness: running, restarted 1 time (last failure: UnicodeError: label empty or too long)\n"


def test_status_file_and_status_command_list_each_worker(tmp_path: Path, stop: threading.Event) -> None:
    gate = Gate()
    supervisor = Supervisor(sleep=gate.sleep)
    supervisor.start("confirmer", stop.wait, stop)

    def work() -> None:
        raise AttributeError("'str' object has no attribute 'get'")

    supervisor.start("readiness", work, stop)
    wait_for(lambda: supervisor.down(), "the failure")
    writer = StatusWriter(tmp_path / "status.json", gate_mode="latch", heartbeat_interval=5.0,
                          agent="http://10.0.0.1:8500", pod="shop/web-0", extra=supervisor.report)
    writer.write(phase=state.CONFIRMED, message="web passing in the catalog", since=time.time(),
                 ever_confirmed=True, services=[])
    doc = state.read(str(tmp_path / "status.json"))
    assert doc["workers"] == [
        {"name": "confirmer", "state": RUNNING, "restarts": 0, "last_error": None, "crash_looping": False},
        {"name": "readiness", "state": RESTARTING, "restarts": 1,
         "last_error": "AttributeError: 'str' object has no attribute 'get'", "crash_looping": False},
    ]
    ok, line = state.evaluate(doc, time.time(), lambda _pid: True)
    text = render(doc, ok, line, time.time())
    assert "workers:    confirmer running, readiness restarting" in text
    assert "readiness: restarted 1 time(s) after a failure; last: AttributeError: 'str' object has no attribute 'get'" in text


# -- a real worker: the pod watch, restarted after an unexpected failure ----------------------


class FailingOnceSink(RecordingSink):
    """A sink that fails on its first observation, as a bug in the watch's handling would."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def observe(self, observation: Observation) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("bug while handling the first observation")
        super().observe(observation)


def test_the_pod_watch_is_restarted_after_a_failure_and_follows_the_pod_again(
        kube: FakeKube, tmp_path: Path, stop: threading.Event) -> None:  # noqa: F811 (fixture)
    client = KubeClient(kube.url, kube.token_file, tmp_path / "no-ca.crt", 5.0)
    source = KubernetesSource(client, NS, NAME, "katalog-sidecar", (), 5.0, backoff_initial=0.05, backoff_max=0.2)
    sink = FailingOnceSink()
    gate = Gate()
    gate.open.set()
    supervisor = Supervisor(sleep=gate.sleep)
    supervisor.start("readiness", lambda: source.run(stop, sink), stop)
    sink.wait_observation(lambda o: o.ready)  # the restarted worker reported the pod
    assert supervisor.statuses()[0].restarts == 1
    kube.set_container_ready(NS, NAME, "app", False)
    sink.wait_observation(lambda o: not o.ready)
    closers = [t for t in threading.enumerate() if t.name == "kube-watch-stop"]
    assert len(closers) == 1  # a restart does not start another helper thread


def test_a_worker_failing_quickly_three_times_in_a_row_is_crash_looping_until_it_runs_stably() -> None:
    """Issue 18, item 8: the status file says so (and the sync loop fails the gate)."""
    from sidecar.supervision import CRASH_LOOP_AFTER

    now = [0.0]
    runs = []
    release = threading.Event()

    def work() -> None:
        runs.append(now[0])
        if len(runs) <= CRASH_LOOP_AFTER:
            raise RuntimeError("boom")
        release.wait(10)

    supervisor = Supervisor(initial=0.001, cap=0.002, stable_after=60.0, clock=lambda: now[0])
    stop = threading.Event()
    supervisor.start("readiness", work, stop)
    deadline = time.monotonic() + 5
    while len(runs) <= CRASH_LOOP_AFTER and time.monotonic() < deadline:
        time.sleep(0.01)
    (status,) = supervisor.statuses()
    assert status.crash_looping and status.restarts == CRASH_LOOP_AFTER
    assert supervisor.report()["workers"][0]["crash_looping"] is True
    now[0] = 61.0  # running for longer than stable_after since its last start
    (status,) = supervisor.statuses()
    assert not status.crash_looping
    stop.set()
    release.set()
