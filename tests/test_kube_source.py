"""The Kubernetes readiness source and its client, against the fake API server.

No fixed sleeps where a condition can be awaited: the sink and the fake's request log both
let a test wait for what it expects, every wait bounded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fakekube import FakeKube, RecordedRequest, make_pod, status_object

from sidecar.errors import KubernetesError
from sidecar.kube.client import KubeClient
from sidecar.kube.source import KubernetesSource
from sidecar.readiness import Observation

pytestmark = pytest.mark.timeout(30)

NS, NAME = "shop", "web-0"
WAIT = 5.0


class RecordingSink:
    """Records what the source reports; tests wait on it instead of sleeping."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.observations: list[Observation] = []
        self.problems: list[str | None] = []

    def observe(self, observation: Observation) -> None:
        with self.cond:
            self.observations.append(observation)
            self.cond.notify_all()

    def problem(self, message: str | None) -> None:
        with self.cond:
            self.problems.append(message)
            self.cond.notify_all()

    def wait(self, predicate: Callable[[RecordingSink], bool], timeout: float = WAIT) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self), timeout):
                raise AssertionError(f"timed out; observations={self.observations} problems={self.problems}")

    def wait_observation(self, predicate: Callable[[Observation], bool], timeout: float = WAIT) -> Observation:
        self.wait(lambda s: any(predicate(o) for o in s.observations), timeout)
        return next(o for o in self.observations if predicate(o))

    def wait_problem(self, predicate: Callable[[str | None], bool], timeout: float = WAIT) -> str | None:
        self.wait(lambda s: any(predicate(p) for p in s.problems), timeout)
        return next(p for p in self.problems if predicate(p))


class RecordingMetrics:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.restarts: list[str] = []

    def request_error(self, kind: str) -> None:
        self.errors.append(kind)

    def watch_restart(self, reason: str) -> None:
        self.restarts.append(reason)


@dataclass
class Running:
    source: KubernetesSource
    sink: RecordingSink
    metrics: RecordingMetrics
    stop: threading.Event
    thread: threading.Thread

    def join(self, timeout: float = WAIT) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "run() did not return"


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKube]:
    with FakeKube(tmp_path / "token") as fake:
        fake.create_pod(make_pod(NAME, NS, ports={"http": 8080}))
        yield fake


@pytest.fixture
def start(kube: FakeKube, tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Start a source in a thread (inactivity 0.5 s, quick backoff); stopped after the test."""
    started: list[Running] = []

    def run(name: str = NAME, inactivity: float = 0.5, **kwargs: Any) -> Running:
        client = KubeClient(kube.url, kube.token_file, tmp_path / "no-ca.crt", inactivity)
        metrics = RecordingMetrics()
        kwargs = {"backoff_initial": 0.05, "backoff_max": 0.2, **kwargs}
        source = KubernetesSource(client, NS, name, "katalog-sidecar", (), inactivity, metrics=metrics, **kwargs)
        sink, stop = RecordingSink(), threading.Event()
        thread = threading.Thread(target=source.run, args=(stop, sink), daemon=True)
        thread.start()
        started.append(Running(source, sink, metrics, stop, thread))
        return started[-1]

    yield run
    for running in started:
        running.stop.set()
    for running in started:
        running.join()


def watches(kube: FakeKube) -> list[RecordedRequest]:
    return [r for r in kube.requests if r.is_watch]


def lists(kube: FakeKube) -> list[RecordedRequest]:
    return [r for r in kube.requests if not r.is_watch]


def wait_for_watch(kube: FakeKube, number: int, **query: str) -> RecordedRequest:
    """The `number`-th watch request (1-based), waiting for it; checks the given query items."""
    kube.wait_for_request(lambda r: len(watches(kube)) >= number)
    request = watches(kube)[number - 1]
    for key, value in query.items():
        assert request.query.get(key) == value, (key, request.query)
    return request


def flip(kube: FakeKube, running: Running, ready: bool) -> Observation:
    """Change the app's readiness and wait until the sink has seen it."""
    before = len(running.sink.observations)
    kube.set_container_ready(NS, NAME, "app", ready)
    running.sink.wait(lambda s: len(s.observations) > before and s.observations[-1].ready is ready)
    return running.sink.observations[-1]


# -- list, then watch ---------------------------------------------------------------------


def test_lists_then_watches_from_the_list_resource_version(kube: FakeKube, start: Callable[..., Running]) -> None:
    list_rv = kube.resource_version
    running = start()
    first = running.sink.wait_observation(lambda o: True)
    assert (first.ready, first.detail) == (True, "1 container ready")
    assert first.pod_uid == kube.pod(NS, NAME)["metadata"]["uid"]
    assert first.container_ports == {"http": 8080}
    watch = wait_for_watch(kube, 1)
    listed = kube.requests[0]
    assert not listed.is_watch
    assert listed.path == f"/api/v1/namespaces/{NS}/pods"
    assert listed.query == {"fieldSelector": f"metadata.name={NAME}"}
    assert watch.query["fieldSelector"] == f"metadata.name={NAME}"
    assert watch.query["resourceVersion"] == list_rv
    assert watch.query["allowWatchBookmarks"] == "true"
    assert 270 <= int(watch.query["timeoutSeconds"]) <= 330  # ~5 min, jittered
    assert running.sink.problems == []


def test_readiness_flip_propagates(kube: FakeKube, start: Callable[..., Running]) -> None:
    running = start()
    running.sink.wait_observation(lambda o: o.ready)
    wait_for_watch(kube, 1)
    kube.set_container_ready(NS, NAME, "app", False)
    down = running.sink.wait_observation(lambda o: not o.ready)
    assert down.detail == "not ready: app"
    kube.set_container_ready(NS, NAME, "app", True)
    running.sink.wait(lambda s: len(s.observations) == 3)
    assert running.sink.observations[-1].ready
    assert len(lists(kube)) == 1


def test_unchanged_readiness_sends_nothing(kube: FakeKube, start: Callable[..., Running]) -> None:
    running = start()
    running.sink.wait_observation(lambda o: o.ready)
    wait_for_watch(kube, 1)
    kube.annotate_pod(NS, NAME, "example.com/touched", "1")  # a new resourceVersion, same readiness
    kube.set_container_ready(NS, NAME, "app", False)
    running.sink.wait_observation(lambda o: not o.ready)
    assert [o.ready for o in running.sink.observations] == [True, False]


def test_steady_state_is_one_open_watch(kube: FakeKube, start: Callable[..., Running]) -> None:
    running = start(inactivity=5.0)
    running.sink.wait_observation(lambda o: o.ready)
    wait_for_watch(kube, 1)
    time.sleep(1.0)  # the point of the test: idle time passes and nothing is asked
    assert len(kube.requests) == 2
    assert kube.open_watches == 1
    started = time.monotonic()
    running.stop.set()
    running.join(timeout=2.0)  # a blocked read must not hold stop up until the 5 s timeout
    assert time.monotonic() - started < 2.0


# -- resourceVersion handling --------------------------------------------------------------


def test_bookmark_advances_the_resume_point(kube: FakeKube, start: Callable[..., Running]) -> None:
    running = start()
    running.sink.wait_observation(lambda o: o.ready)
    first = wait_for_watch(kube, 1)
    kube.create_pod(make_pod("other", "elsewhere"))  # moves the resourceVersion, not our pod
    bookmark_rv = kube.send_bookmark()
    assert bookmark_rv != first.query["resourceVersion"]
    kube.break_watches()
    wait_for_watch(kube, 2, resourceVersion=bookmark_rv)
    assert len(lists(kube)) == 1
    assert running.sink.observations[1:] == []  # a bookmark is not a change


def test_error_410_event_relists(kube: FakeKube, start: Callable[..., Running], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "katalog.kube")
    running = start()
    running.sink.wait_observation(lambda o: o.ready)
    wait_for_watch(kube, 1)
    kube.set_container_ready(NS, NAME, "app", False)
    running.sink.wait_observation(lambda o: not o.ready)
    kube.send_error_410_event()
    kube.wait_for_request(lambda r: len(lists(kube)) == 2)
    relist_rv = kube.resource_version
    wait_for_watch(kube, 2, resourceVersion=relist_rv)
    assert "expired; listing the pod again" in caplog.text
    assert "expired" in running.metrics.restarts
    assert [o.ready for o in running.sink.observations] == [True, False]  # the relist changed nothing
    assert running.sink.problems == []


@pytest.mark.parametrize("as_http_status", [True, False], ids=["http-410", "error-event-410"])
def test_resuming_from_expired_history_relists(kube: FakeKube, start: Callable[..., Running], as_http_status: bool) -> None:
    running = start()
    running.sink.wait_observation(lambda o: o.ready)
    old_rv = wait_for_watch(kube, 1).query["resourceVersion"]
    kube.stall_watches()  # this change will not reach the client through the open watch...
    kube.set_container_ready(NS, NAME, "app", False)
    kube.expire_history(as_http_status=as_http_status)  # ...nor through a resumed one
    down = running.sink.wait_observation(lambda o: not o.ready)
    assert down.detail == "not ready: app"
    resumed = wait_for_watch(kube, 2, resourceVersion=old_rv)
    assert resumed.status == (410 if as_http_status else 200)
    assert len(lists(kube)) == 2
    wait_for_watch(kube, 3, resourceVersion=kube.resource_version)  # from the relist
    assert running.sink.problems == []


def test_repeated_410s_back_off(kube: FakeKube, start: Callable[..., Running]) -> None:
    delays: list[float] = []

    def sleep(stop: threading.Event, seconds: float) -> None:
        delays.append(seconds)
        stop.wait(seconds)

    kube.fail_next(410, n=4, verb="watch")  # a server that answers every watch with 410
    running = start(sleep=sleep)
    wait_for_watch(kube, 5)
    assert len(lists(kube)) == 5
    assert len(delays) >= 3  # every relist after the first waits: no hot loop
    assert running.sink.problems == []


def test_normal_end_of_stream_rewatches_without_relisting(kube: FakeKube, start: Callable[..., Running]) -> None:
    running = start(inactivity=5.0, watch_timeout=1)
    running.sink.wait_observation(lambda o: o.ready)
    first = wait_for_watch(kube, 1, timeoutSeconds="1")
    second = wait_for_watch(kube, 2, resourceVersion=first.query["resourceVersion"])
    assert second.time - first.time >= 0.9  # the server ended it after timeoutSeconds
    assert len(lists(kube)) == 1
    assert "ended" in running.metrics.restarts


# -- dead and broken streams ----------------------------------------------------------------


def test_stalled_stream_is_restarted_after_inactivity(kube: FakeKube, start: Callable[..., Running]) -> None:
    running = start(inactivity=0.5)
    running.sink.wait_observation(lambda o: o.ready)
    first = wait_for_watch(kube, 1)
    kube.stall_watches()
    kube.set_container_ready(NS, NAME, "app", False)
    began = time.monotonic()
    running.sink.wait_observation(lambda o: not o.ready, timeout=3.0)
    assert time.monotonic() - began < 2.0
    wait_for_watch(kube, 2, resourceVersion=first.query["resourceVersion"])  # resumed, not relisted
    assert len(lists(kube)) == 1
    assert "inactivity" in running.metrics.restarts
    assert running.sink.problems == []  # silence alone is not an outage


def test_broken_stream_reconnects(kube: FakeKube, start: Callable[..., Running]) -> None:
    running = start(inactivity=5.0)
    running.sink.wait_observation(lambda o: o.ready)
    first = wait_for_watch(kube, 1)
    kube.break_watches()
    wait_for_watch(kube, 2, resourceVersion=first.query["resourceVersion"])
    flip(kube, running, False)
    assert len(lists(kube)) == 1
    assert "broken" in running.metrics.restarts
    assert running.sink.problems == []


def test_malformed_line_is_skipped(kube: FakeKube, start: Callable[..., Running], caplog: pytest.LogCaptureFixture) -> None:
    running = start(inactivity=5.0)
    running.sink.wait_observation(lambda o: o.ready)
    wait_for_watch(kube, 1)
    kube.send_raw_line(b'{"type": "MODIFIED", "object": {trunc\n')
    kube.send_raw_line(b"[1, 2]\n")
    flip(kube, running, False)
    assert len(watches(kube)) == 1  # the same stream went on
    assert caplog.text.count("malformed line") == 1


def test_unknown_event_type_is_skipped(kube: FakeKube, start: Callable[..., Running], caplog: pytest.LogCaptureFixture) -> None:
    running = start(inactivity=5.0)
    running.sink.wait_observation(lambda o: o.ready)
    wait_for_watch(kube, 1)
    kube.inject_event("FROBNICATED", {"kind": "Pod"})
    kube.inject_event("FROBNICATED", {"kind": "Pod"})
    flip(kube, running, False)
    assert len(watches(kube)) == 1
    assert caplog.text.count("unknown type") == 1


def test_error_event_other_than_410_backs_off_and_resumes(kube: FakeKube, start: Callable[..., Running]) -> None:
    running = start()
    running.sink.wait_observation(lambda o: o.ready)
    first = wait_for_watch(kube, 1)
    kube.inject_event("ERROR", status_object(500, "etcdserver: request timed out"))
    problem = running.sink.wait_problem(lambda p: p is not None)
    assert problem is not None and "etcdserver: request timed out" in problem
    wait_for_watch(kube, 2, resourceVersion=first.query["resourceVersion"])
    running.sink.wait(lambda s: s.problems[-1] is None)


# -- credentials and permissions ------------------------------------------------------------


def test_rotated_token_is_reread_after_401(kube: FakeKube, start: Callable[..., Running], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    running = start(inactivity=5.0)
    running.sink.wait_observation(lambda o: o.ready)
    wait_for_watch(kube, 1)
    kube.set_token("token-2")  # the kubelet rotated it; the client still holds token-1
    kube.break_watches()
    rejected = wait_for_watch(kube, 2)
    accepted = wait_for_watch(kube, 3)
    assert (rejected.status, accepted.status) == (401, 200)
    flip(kube, running, False)
    assert running.sink.problems == []
    assert "token-1" not in caplog.text and "token-2" not in caplog.text


def test_persistent_401_reports_unauthorized_then_recovers(
    kube: FakeKube, start: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    running = start(inactivity=5.0)
    running.sink.wait_observation(lambda o: o.ready)
    wait_for_watch(kube, 1)
    kube.set_token("token-3", write_file=False)  # the file still holds the old token
    kube.break_watches()
    problem = running.sink.wait_problem(lambda p: p is not None)
    assert problem is not None and problem.startswith("unauthorized")
    assert running.metrics.errors[0] == "unauthorized"
    assert len(running.sink.observations) == 1  # no not-ready observation meanwhile
    kube.token_file.write_text("token-3\n")
    running.sink.wait(lambda s: s.problems[-1] is None)
    flip(kube, running, False)
    assert "token-3" not in caplog.text


@pytest.mark.parametrize("verb", ["list", "watch"])
def test_403_names_the_verb_and_the_role_and_is_logged_once(
    kube: FakeKube, start: Callable[..., Running], caplog: pytest.LogCaptureFixture, verb: str
) -> None:
    kube.fail_next(403, n=3, verb=verb)
    running = start()
    problem = running.sink.wait_problem(lambda p: p is not None)
    assert problem is not None
    assert problem.startswith(f"forbidden: the service account cannot {verb} pods in namespace {NS}; ")
    assert "grant get, list, watch on pods (see examples/rbac.yaml)" in problem
    running.sink.wait(lambda s: bool(s.problems) and s.problems[-1] is None)  # the Role got fixed
    running.sink.wait_observation(lambda o: o.ready)
    forbidden_logs = [r for r in caplog.records if r.name == "katalog.kube" and "forbidden" in r.getMessage()]
    assert len(forbidden_logs) == 1
    assert running.metrics.errors == ["forbidden"] * 3


def test_a_first_403_is_retried_within_a_couple_of_seconds(kube: FakeKube, start: Callable[..., Running]) -> None:
    """Defect 7 (issue 18): every 403 waited backoff_max (24-30 s), however short the refusal."""
    kube.fail_next(403, n=1, verb="list")
    began = time.monotonic()
    running = start(backoff_max=30.0)
    running.sink.wait_observation(lambda o: o.ready)
    assert time.monotonic() - began < 4.0
    assert running.metrics.errors == ["forbidden"]


def test_repeated_403s_back_off_to_the_long_hold(kube: FakeKube, start: Callable[..., Running]) -> None:
    kube.fail_next(403, n=10, verb="list")
    running = start(backoff_max=30.0)
    time.sleep(4.0)
    # At 0 s, after 1-2 s, after 2-4 s more: at most three in 4 s, then the gaps double.
    assert running.metrics.errors in (["forbidden"] * 2, ["forbidden"] * 3)


class _Problems:
    def __init__(self) -> None:
        self.problems: list[str | None] = []

    def observe(self, observation: Observation) -> None:
        raise AssertionError("no observation from a failure")

    def problem(self, message: str | None) -> None:
        self.problems.append(message)


@pytest.mark.parametrize("draw", [0.0, 1.0])
def test_refusals_in_a_row_back_off_from_seconds_to_the_hold(draw: float) -> None:
    """A 2 s 403 met the first retry (1-2 s) and the second refusal waited a whole hold (48-60 s with
    backoff_max 60), so a flip right after a short refusal still took a minute to reach Consul
    (issue 18 defect 7 again; simulator seeds 8, 9, 1004). Refusals in a row now double from 1-2 s
    to backoff_max; a connection (or another kind of failure) starts the row afresh."""
    source = KubernetesSource(None, "ns", "web-0", "app", (), 60.0, backoff_max=60.0,  # type: ignore[arg-type]
                              rng=lambda: draw)
    sink = _Problems()
    refused = KubernetesError("pods \"web-0\" is forbidden (HTTP 403)", status=403)
    delays = [source._on_failure(refused, sink) for _ in range(8)]
    ceilings = [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert delays == [c * (0.5 + 0.5 * draw) for c in ceilings]
    assert sum(delays[:2]) <= 6.0, "a refusal of a few seconds is retried within seconds of its end"
    source._connected(sink)
    assert source._on_failure(refused, sink) == delays[0]
    source._on_failure(KubernetesError("connection refused", reason="unreachable"), sink)
    assert source._on_failure(refused, sink) == delays[0]


def test_fake_requires_the_name_selector(kube: FakeKube) -> None:
    # What a Role restricted with resourceNames does: list and watch need the name selector.
    import requests

    headers = {"Authorization": "Bearer token-1"}
    whole = requests.get(f"{kube.url}/api/v1/namespaces/{NS}/pods", headers=headers, timeout=5)
    assert whole.status_code == 403 and whole.json()["reason"] == "Forbidden"
    one = requests.get(f"{kube.url}/api/v1/namespaces/{NS}/pods", params={"fieldSelector": f"metadata.name={NAME}"}, headers=headers, timeout=5)
    assert one.status_code == 200 and one.json()["kind"] == "PodList"
    anonymous = requests.get(f"{kube.url}/api/v1/namespaces/{NS}/pods", params={"fieldSelector": f"metadata.name={NAME}"}, timeout=5)
    assert anonymous.status_code == 401 and anonymous.json()["code"] == 401


# -- outages: keep the last known status ---------------------------------------------------


def test_api_outage_reports_a_problem_and_keeps_the_status(
    kube: FakeKube, start: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "katalog.kube")
    running = start()
    running.sink.wait_observation(lambda o: o.ready)
    wait_for_watch(kube, 1)
    kube.stop()
    problem = running.sink.wait_problem(lambda p: p is not None)
    # Refused, or reset when the reconnect races the shutdown.
    assert problem is not None and problem.startswith(f"Kubernetes API unreachable: cannot connect to {kube.url}: ")  # refused, reset or failed: timing
    time.sleep(0.5)  # several retries happen while it is down
    assert len(running.sink.observations) == 1  # no not-ready observation: the last status stands
    assert caplog.text.count("Kubernetes API unreachable") == 1  # a transition, not every retry
    assert running.metrics.errors.count("unreachable") >= 2
    kube.start()
    running.sink.wait(lambda s: s.problems[-1] is None)
    assert "reachable again" in caplog.text
    flip(kube, running, False)


def test_server_errors_report_a_problem_then_recover(kube: FakeKube, start: Callable[..., Running]) -> None:
    kube.fail_next(500, n=2)
    running = start()
    problem = running.sink.wait_problem(lambda p: p is not None)
    assert problem is not None and problem.startswith("Kubernetes API unreachable: list pods failed: HTTP 500")
    running.sink.wait_observation(lambda o: o.ready)
    assert running.sink.problems == [problem, None]
    assert running.metrics.errors == ["server_error", "server_error"]


# -- termination ------------------------------------------------------------------------------


def test_deletion_timestamp_reports_terminating(kube: FakeKube, start: Callable[..., Running]) -> None:
    running = start()
    running.sink.wait_observation(lambda o: o.ready)
    wait_for_watch(kube, 1)
    kube.set_deletion_timestamp(NS, NAME, grace_seconds=45)
    seen = running.sink.wait_observation(lambda o: o.terminating)
    assert (seen.ready, seen.detail, seen.grace_period, seen.deleted) == (False, "pod is terminating", 45.0, False)
    assert running.thread.is_alive()


def test_deleted_pod_ends_run(kube: FakeKube, start: Callable[..., Running]) -> None:
    running = start()
    running.sink.wait_observation(lambda o: o.ready)
    wait_for_watch(kube, 1)
    uid = kube.pod(NS, NAME)["metadata"]["uid"]
    kube.delete_pod(NS, NAME)
    gone = running.sink.wait_observation(lambda o: o.deleted)
    assert (gone.ready, gone.terminating, gone.detail, gone.pod_uid) == (False, True, "pod deleted", uid)
    running.join()  # without stop being set


def test_missing_pod_counts_as_deleted(kube: FakeKube, start: Callable[..., Running]) -> None:
    running = start(name="no-such-pod")
    gone = running.sink.wait_observation(lambda o: True)
    assert (gone.ready, gone.deleted, gone.detail) == (False, True, "pod not found")
    running.join()
    assert watches(kube) == []


# -- the client alone ------------------------------------------------------------------------


class _LongError(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = ("x" * 5000).encode()
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def test_error_bodies_are_truncated(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LongError)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        token = tmp_path / "token"
        token.write_text("secret-token")
        client = KubeClient(f"http://127.0.0.1:{server.server_address[1]}", token, tmp_path / "ca", 2.0)
        with pytest.raises(KubernetesError) as info:
            client.list_pod(NS, NAME)
        assert info.value.status == 500
        assert len(str(info.value)) < 400
        assert "secret-token" not in str(info.value)
    finally:
        server.shutdown()
        server.server_close()


def test_missing_token_file_sends_no_token_and_says_so_once(kube: FakeKube, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    client = KubeClient(kube.url, tmp_path / "absent", tmp_path / "ca", 2.0)
    for _ in range(2):
        with pytest.raises(KubernetesError) as info:
            client.list_pod(NS, NAME)
        assert info.value.status == 401
    assert caplog.text.count("cannot read the service-account token file") == 1


def test_token_is_reread_after_a_minute(kube: FakeKube, tmp_path: Path) -> None:
    now = [0.0]
    client = KubeClient(kube.url, kube.token_file, tmp_path / "ca", 2.0, clock=lambda: now[0])
    client.list_pod(NS, NAME)
    kube.set_token("token-2")
    now[0] = 61.0
    client.list_pod(NS, NAME)
    assert [r.status for r in kube.requests] == [200, 200]  # no 401: re-read on its own


def test_https_without_ca_file_falls_back_to_system_cas(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    KubeClient("https://kubernetes.default.svc", tmp_path / "token", tmp_path / "missing-ca.crt", 2.0)
    assert "verifying the API server with the system CAs" in caplog.text


def test_closed_client_refuses_requests(kube: FakeKube, tmp_path: Path) -> None:
    client = KubeClient(kube.url, kube.token_file, tmp_path / "ca", 2.0)
    client.close()
    with pytest.raises(KubernetesError, match="closed"):
        client.watch_pod(NS, NAME, kube.resource_version, 60)
