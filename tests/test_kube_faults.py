"""The pod watch in fault states (issue 10, items 6 and 8): no hot loop against a proxy that
closes streams at once, a quick reconnect after a long outage, and messages that say what is
really wrong (a real 403 body, a Role without `watch`, a missing token file, bookmarks).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from fakekube import FakeKube
from test_config import VALID
from test_kube_source import (  # noqa: F401 (kube, start: fixtures)
    NAME,
    NS,
    Running,
    _LongError,
    flip,
    kube,
    lists,
    start,
    wait_for_watch,
    watches,
)

from readiness_gate import state
from sidecar.config import load_config
from sidecar.consul.api import ConsulAgent
from sidecar.errors import ConfigError, KubernetesError
from sidecar.kube.client import KubeClient
from sidecar.kube.source import RECONNECT_MAX
from sidecar.status import StatusWriter
from sidecar.syncer import Syncer

pytestmark = pytest.mark.timeout(60)


class RecordingSleep:
    """The source's backoff sleep: records each delay, waits at most `cap` of it for real."""

    def __init__(self, cap: float) -> None:
        self.delays: list[float] = []
        self.cap = cap

    def __call__(self, stop: threading.Event, seconds: float) -> None:
        self.delays.append(seconds)
        stop.wait(min(seconds, self.cap))


# -- item 6: watch restarts ---------------------------------------------------------------------


def test_watch_streams_that_end_at_once_are_restarted_with_backoff_not_in_a_hot_loop(
        kube: FakeKube, start: Callable[..., Running]) -> None:
    kube.end_watches_at_once()  # a proxy in front of the API server that closes every stream
    running = start(inactivity=5.0, backoff_initial=0.2, backoff_max=2.0)
    running.sink.wait_observation(lambda o: o.ready)
    began = time.monotonic()
    time.sleep(3.0)  # the window
    window = [r for r in watches(kube) if r.time >= began]
    # Delays 0.1-0.2, 0.2-0.4, 0.4-0.8, 0.8-1.6, then 1-2 s: about five in 3 s. A hot loop makes thousands.
    assert 1 <= len(window) <= 10, len(window)
    assert len(lists(kube)) == 1  # a clean end resumes, it does not relist
    assert set(running.metrics.restarts) == {"ended"}
    kube.end_watches_at_once(False)
    flip(kube, running, False)  # and it still follows the pod


def test_long_streams_that_end_are_restarted_at_once(kube: FakeKube, start: Callable[..., Running]) -> None:
    sleep = RecordingSleep(cap=0.05)
    running = start(inactivity=5.0, watch_timeout=1, backoff_max=0.5, sleep=sleep)
    running.sink.wait_observation(lambda o: o.ready)
    wait_for_watch(kube, 4)  # three streams ended by the server after 1 s each: worth it, no backoff
    assert sleep.delays == []


def test_reconnect_delay_stays_short_through_a_long_outage_and_restarts_when_the_server_answers(
        kube: FakeKube, start: Callable[..., Running]) -> None:
    sleep = RecordingSleep(cap=0.02)
    running = start(inactivity=5.0, backoff_initial=0.5, backoff_max=30.0, sleep=sleep)
    running.sink.wait_observation(lambda o: o.ready)
    wait_for_watch(kube, 1)
    kube.stop()
    deadline = time.monotonic() + 20
    while len(sleep.delays) < 12 and time.monotonic() < deadline:  # long enough to reach any cap
        time.sleep(0.02)
    outage = list(sleep.delays)
    assert len(outage) >= 12
    assert max(outage) <= RECONNECT_MAX  # main: 30 s, so the server's return went unseen for up to 30 s
    kube.fail_next(503, n=1)  # the server answers again, if only with an error at first
    kube.start()
    running.sink.wait(lambda s: s.problems[-1] is None, timeout=10)
    after = sleep.delays[len(outage):]
    assert after and after[-1] <= 0.5  # the first delay once it answers starts afresh
    flip(kube, running, False)


def test_a_watch_inactivity_below_a_second_is_refused() -> None:
    """A silent watch restarts at once, so a tiny bound would be a hot loop on a quiet pod."""
    with pytest.raises(ConfigError) as info:
        load_config(dict(VALID, KATALOG_KUBE_WATCH_INACTIVITY="500ms"))
    assert info.value.problems == ["KATALOG_KUBE_WATCH_INACTIVITY='500ms': must be at least 1s"]
    assert load_config(dict(VALID, KATALOG_KUBE_WATCH_INACTIVITY="1s")).kubernetes.watch_inactivity == 1.0


# -- item 8: what the messages say ----------------------------------------------------------------


def test_a_real_sized_403_body_is_parsed_before_it_is_shortened(kube: FakeKube, tmp_path: Path) -> None:
    pod = "web-nobody"  # the pod of the real 403 in the issue: its body is 310 bytes
    kube.fail_next(403, verb="list")
    raw = requests.get(f"{kube.url}/api/v1/namespaces/{NS}/pods", params={"fieldSelector": f"metadata.name={pod}"},
                       timeout=5)
    assert raw.status_code == 403 and 307 <= len(raw.content) <= 314  # as long as a real one
    kube.fail_next(403, verb="list")
    client = KubeClient(kube.url, kube.token_file, tmp_path / "ca", 2.0)
    with pytest.raises(KubernetesError) as info:
        client.list_pod(NS, pod)
    message = str(info.value)
    assert message.endswith(f'(API server: pods "{pod}" is forbidden: User "system:serviceaccount:{NS}:default" '
                            f'cannot list resource "pods" in API group "" in the namespace "{NS}")')
    assert '"details"' not in message and "{" not in message


def test_a_role_without_watch_is_named_and_registers_nothing(
        kube: FakeKube, start: Callable[..., Running], caplog: pytest.LogCaptureFixture) -> None:
    kube.fail_next(403, n=1000, verb="watch")  # a Role with get and list, no watch
    running = start(inactivity=5.0)
    problem = running.sink.wait_problem(lambda p: p is not None)
    assert problem is not None
    assert problem.startswith(f"forbidden: the service account cannot watch pods in namespace {NS}; "
                              "grant get, list, watch on pods (see examples/rbac.yaml)")
    wait_for_watch(kube, 2)
    # The list worked, but a pod the sidecar cannot watch is not registered: its flips and its
    # deletion would go unseen. The gate says "waiting for the first readiness observation: forbidden ...".
    assert running.sink.observations == []
    logged = [r.getMessage() for r in caplog.records if r.name == "katalog.kube" and r.levelno >= logging.ERROR]
    assert len(logged) == 1 and "cannot watch pods" in logged[0]


def test_a_role_fixed_later_starts_the_pod(kube: FakeKube, start: Callable[..., Running]) -> None:
    kube.fail_next(403, n=2, verb="watch")
    running = start()
    running.sink.wait_problem(lambda p: p is not None)
    running.sink.wait_observation(lambda o: o.ready)
    assert running.sink.problems[-1] is None


@pytest.mark.parametrize("status", [401, 403])
def test_a_missing_token_file_is_named_not_blamed_on_rbac(kube: FakeKube, tmp_path: Path, status: int) -> None:
    if status == 403:
        kube.fail_next(403, n=2)  # a server that lets anonymous requests through to RBAC
    client = KubeClient(kube.url, tmp_path / "absent-token", tmp_path / "ca", 2.0)
    with pytest.raises(KubernetesError) as info:
        client.list_pod(NS, NAME)
    assert info.value.status == status
    assert str(info.value) == (
        f"the service-account token file {tmp_path / 'absent-token'} cannot be used (the file does not exist), "
        f"so the API server refused an anonymous request (HTTP {status}); mount the token "
        "(automountServiceAccountToken) or set KATALOG_KUBE_TOKEN_FILE")


def test_bookmarks_are_logged_at_debug(kube: FakeKube, start: Callable[..., Running],
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "katalog.kube")
    running = start(inactivity=5.0)
    running.sink.wait_observation(lambda o: o.ready)
    wait_for_watch(kube, 1)
    kube.annotate_pod(NS, NAME, "example.com/touched", "1")
    rv = kube.send_bookmark()
    deadline = time.monotonic() + 5
    expected = f"bookmark in the watch of pod {NS}/{NAME}: resourceVersion {rv}"
    while expected not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.02)
    assert expected in caplog.text


def test_a_source_problem_reaches_the_status_file_at_once(tmp_path: Path) -> None:
    """Not at the next heartbeat: the clock is frozen, so no heartbeat ever falls due."""
    config = load_config(dict(VALID, CONSUL_HTTP_ADDR="127.0.0.1:1", KATALOG_STATUS_FILE=str(tmp_path / "status.json")))
    agent = ConsulAgent(config.consul)  # never called: nothing is observed, so nothing registers
    writer = StatusWriter(config.status_file, gate_mode="latch", heartbeat_interval=5.0, agent=agent.address, pod="shop/web-0")
    syncer = Syncer(config, agent, writer, clock=lambda: 1000.0)
    code: list[int] = []
    thread = threading.Thread(target=lambda: code.append(syncer.run(threading.Event())), daemon=True)
    thread.start()

    def message() -> Any:
        try:
            return state.read(str(config.status_file)).get("message")
        except (OSError, ValueError):
            return None

    try:
        deadline = time.monotonic() + 5
        while message() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        forbidden = "forbidden: the service account cannot watch pods in namespace shop; grant get, list, watch on pods"
        syncer.problem(forbidden)
        deadline = time.monotonic() + 3  # well under the 5 s heartbeat, which never falls due anyway
        while message() != f"waiting for the first readiness observation: {forbidden}" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert message() == f"waiting for the first readiness observation: {forbidden}"
        assert state.read(str(config.status_file))["source_problem"] == forbidden
    finally:
        syncer.request_shutdown("test over")
        thread.join(10)
    assert code == [0]


def test_http_error_bodies_that_are_not_a_status_are_shortened_on_one_line(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LongError)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = KubeClient(f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "t", tmp_path / "ca", 2.0)
        with pytest.raises(KubernetesError) as info:
            client.list_pod(NS, NAME)
        assert str(info.value) == "list pods failed: HTTP 500 Internal Server Error: " + "x" * 300
    finally:
        server.shutdown()
        server.server_close()
