"""Inputs that used to kill a worker thread silently (issue 10, item 5), and their class.

Each test feeds the input to the worker as it runs and checks that the worker goes on: the
readiness watch still sees a later flip, the confirmer still reports, and a setting that
would fail inside a thread is refused by the configuration instead.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fakekube import FakeKube
from sidecar_process import SIDECAR
from test_config import VALID
from test_kube_source import (  # noqa: F401 (kube, start: fixtures)
    NAME,
    NS,
    Running,
    flip,
    kube,
    lists,
    start,
    wait_for_watch,
    watches,
)

from sidecar.config import load_config
from sidecar.consul.api import ConsulAgent
from sidecar.consul.watchers import Confirmer, Expectation
from sidecar.errors import ConfigError, KubernetesError
from sidecar.kube.client import KubeClient
from sidecar.registration import Instance

pytestmark = pytest.mark.timeout(60)


# -- the pod watch ---------------------------------------------------------------------------


@pytest.mark.parametrize("metadata", ["a string", [1, 2], 42, None, {"resourceVersion": 7}, {"resourceVersion": ["x"]}],
                         ids=["string", "list", "number", "null", "number-rv", "list-rv"])
def test_bookmark_with_junk_metadata_does_not_kill_the_watch(
        kube: FakeKube, start: Callable[..., Running], metadata: Any) -> None:
    running = start(inactivity=5.0)
    running.sink.wait_observation(lambda o: o.ready)
    first = wait_for_watch(kube, 1)
    kube.inject_event("BOOKMARK", {"kind": "Pod", "apiVersion": "v1", "metadata": metadata})
    flip(kube, running, False)  # a later flip is still seen...
    assert running.thread.is_alive() and len(watches(kube)) == 1  # ...on the same stream
    kube.break_watches()
    resumed = wait_for_watch(kube, 2)
    assert int(resumed.query["resourceVersion"]) > int(first.query["resourceVersion"])  # junk is no resume point


def test_deletion_with_a_grace_period_no_float_can_hold_still_drains(
        kube: FakeKube, start: Callable[..., Running]) -> None:
    running = start(inactivity=5.0)
    running.sink.wait_observation(lambda o: o.ready)
    wait_for_watch(kube, 1)

    def mutate(pod: dict[str, Any]) -> None:
        pod["metadata"]["deletionTimestamp"] = "2026-11-28T10:00:00Z"
        pod["metadata"]["deletionGracePeriodSeconds"] = 10**400  # JSON allows it; float() raises OverflowError

    kube.update_pod(NS, NAME, mutate)
    seen = running.sink.wait_observation(lambda o: o.terminating)
    assert seen.grace_period is None


class _Lists(BaseHTTPRequestHandler):
    body: bytes = b""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def serve_json() -> Iterator[Callable[[Any], str]]:
    servers: list[ThreadingHTTPServer] = []

    def serve(document: Any) -> str:
        handler = type("Handler", (_Lists,), {"body": json.dumps(document).encode()})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("items", "found"), [
    ([{"metadata": "junk"}, {"metadata": None}, "x", None], None),
    ([{"metadata": ["web-0"]}, {"metadata": {"name": NAME}, "spec": {}}], {"metadata": {"name": NAME}, "spec": {}}),
], ids=["junk-items", "junk-then-the-pod"])
def test_list_items_with_junk_metadata_are_skipped(serve_json: Callable[[Any], str], tmp_path: Path,
                                                   items: list[Any], found: Any) -> None:
    url = serve_json({"kind": "PodList", "metadata": {"resourceVersion": "5"}, "items": items})
    assert KubeClient(url, tmp_path / "token", tmp_path / "ca", 2.0).list_pod(NS, NAME) == (found, "5")


@pytest.mark.parametrize("document", [
    {"kind": "PodList", "metadata": {"resourceVersion": "5"}, "items": 5},
    {"kind": "PodList", "metadata": {"resourceVersion": "5"}, "items": "web-0"},
    {"kind": "PodList", "metadata": {"resourceVersion": None}, "items": []},
    {"kind": "PodList", "metadata": "junk", "items": []},
    [1, 2],
], ids=["items-number", "items-string", "rv-null", "metadata-string", "not-an-object"])
def test_a_pod_list_of_the_wrong_shape_is_a_kubernetes_error(serve_json: Callable[[Any], str], tmp_path: Path,
                                                             document: Any) -> None:
    url = serve_json(document)
    with pytest.raises(KubernetesError, match="the API server sent a pod list"):
        KubeClient(url, tmp_path / "token", tmp_path / "ca", 2.0).list_pod(NS, NAME)


# -- the confirmer ------------------------------------------------------------------------------


# One document answers every path: /v1/agent/checks (the node name), then the node's services,
# then the node's checks. Each is junk at a different depth.
JUNK_ANSWERS = [
    (["an entry"], "GET /v1/agent/checks: the answer is not a map of checks"),
    ({"c": "junk"}, "the agent does not hold shop:web-0:web"),
    ({"c": {"Node": "n1"}, "Services": "web"}, "the answer's Services is not a list"),
    ({"c": {"Node": "n1"}, "Services": ["an entry", {"ID": ["x"]}, 5]},
     "the catalog does not list shop:web-0:web on node n1 yet"),
    ({"c": {"Node": "n1"}, "Services": [{"ID": "shop:web-0:web", "Address": "10.0.0.5", "Port": 8080}]},
     "GET /v1/health/node/n1: the answer is not a list of checks"),
]


@pytest.mark.parametrize(("answer", "reported"), JUNK_ANSWERS,
                         ids=["checks-list", "check-string", "services-string", "service-junk", "health-object"])
def test_junk_catalog_answers_are_reported_and_the_confirmer_keeps_going(
        serve_json: Callable[[Any], str], answer: Any, reported: str) -> None:
    url = serve_json(answer)
    agent = ConsulAgent(load_config(dict(VALID, CONSUL_HTTP_ADDR=url)).consul)
    posts: list[tuple[str, Any]] = []
    posted = threading.Condition()

    def post(kind: str, payload: Any) -> None:
        with posted:
            posts.append((kind, payload))
            posted.notify_all()

    confirmer = Confirmer(agent, 1.0, post)
    inst = Instance("web", "shop:web-0:web", "10.0.0.5", 8080, (), ())
    confirmer.start()
    try:
        confirmer.expect(Expectation(1, (inst,), {inst.service_id: {f"{inst.service_id}:readiness": "passing"}}))
        with posted:
            assert posted.wait_for(lambda: bool(posts), timeout=10), "the confirmer reported nothing"
        kind, (generation, message, _unreadable) = posts[0]
        assert (kind, generation) == ("confirm-pending", 1)
        assert reported in message
        assert confirmer._supervisor.statuses()[0].restarts == 0  # handled, not a crash
    finally:
        confirmer.stop()


def test_junk_checks_are_skipped_not_compared(serve_json: Callable[[Any], str]) -> None:
    url = serve_json(["a check", {"CheckID": ["x"], "Status": "passing"}, {"CheckID": "c1", "Status": "passing"}])
    agent = ConsulAgent(load_config(dict(VALID, CONSUL_HTTP_ADDR=url)).consul)
    _, checks = agent.node_checks("n1", "web", "shop:web-0:web")
    assert checks == [{"CheckID": "c1", "Status": "passing"}]


# -- settings that used to fail inside a thread --------------------------------------------------


@pytest.mark.parametrize(("variable", "value", "host"), [
    ("KATALOG_READINESS_TCP_ADDR", "a..b:80", "a..b"),
    ("KATALOG_READINESS_TCP_ADDR", "-" * 64 + ".example:80", "-" * 64 + ".example"),
    ("KATALOG_READINESS_TCP_ADDR", "\u00e9" * 70 + ":80", "\u00e9" * 70),
    ("KATALOG_METRICS_ADDR", "a..b:9464", "a..b"),
    ("KATALOG_READINESS_HTTP_URL", "http://a..b/ready", "a..b"),
    ("KATALOG_KUBE_API_URL", "https://a..b:6443", "a..b"),
    ("CONSUL_HTTP_ADDR", "a..b:8500", "a..b"),
])
def test_a_host_no_resolver_can_take_is_a_config_error(variable: str, value: str, host: str) -> None:
    source = {"KATALOG_READINESS_TCP_ADDR": "tcp", "KATALOG_READINESS_HTTP_URL": "http"}.get(variable, "fixed")
    env = dict(VALID, KATALOG_READINESS_SOURCE=source, **{variable: value})
    with pytest.raises(ConfigError) as info:
        load_config(env)
    assert info.value.problems == [f"{variable}={value!r}: host {host!r}: not an IP address or host name "
                                   "(letters, digits, '-' and '_' in dot-separated labels of 1 to 63 characters)"]


@pytest.mark.parametrize("value", ["app:8080", "127.0.0.1:8080", "[::1]:8080", "my_app.shop.svc.cluster.local.:80"])
def test_good_tcp_hosts_pass(value: str) -> None:
    load_config(dict(VALID, KATALOG_READINESS_SOURCE="tcp", KATALOG_READINESS_TCP_ADDR=value))


def test_check_config_rejects_the_bad_tcp_host() -> None:
    env = dict(VALID, KATALOG_READINESS_SOURCE="tcp", KATALOG_READINESS_TCP_ADDR="a..b:80")
    result = subprocess.run([SIDECAR, "check-config"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "config error: KATALOG_READINESS_TCP_ADDR='a..b:80': host 'a..b'" in result.stderr
    assert "Traceback" not in result.stderr
