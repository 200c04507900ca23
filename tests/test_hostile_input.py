"""Hostile input: any environment, any registration the configuration lets through, and a
Kubernetes watch that sends junk.

- The configuration parser turns any environment into a Config or a ConfigError listing
  problems (each one non-empty line); never another exception, so never a traceback.
- Every registration built from a valid configuration is accepted by a real agent (HTTP 200).
- The pod watch survives malformed lines, unknown event types, objects missing fields and
  objects of several MB; it logs each kind of junk once, and junk never makes the app ready.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from consul_agents import ConsulAgent
from fakekube import FakeKube, make_pod
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sidecar_process import base_env
from test_config import VALID
from test_kube_source import (  # noqa: F401 (kube: fixture)
    NAME,
    NS,
    Running,
    kube,
    lists,
    start,  # noqa: F401 (fixture)
    wait_for_watch,
    watches,
)
from test_secrets import HostileAgent

from sidecar.config import RESERVED_META_KEYS, SETTING_NAMES, Config, load_config, service_env_key
from sidecar.errors import ConfigError
from sidecar.registration import build_instances, registration_payload

pytestmark = pytest.mark.timeout(120)

# -- the configuration parser ---------------------------------------------------------------

KEYS = sorted(k for k in SETTING_NAMES if "<NAME>" not in k) + [
    "KATALOG_SERVICE_WEB_TAGS", "KATALOG_SERVICE_WEB_META", "KATALOG_SERVICE_API_TAGS",
    "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT",
]
# Pieces that sit on the parser's edges: separators, schemes, brackets, units, limits,
# reserved names, control characters, a NUL, an undecodable byte as os.environ shows it.
FRAGMENTS = [
    "", " ", ",", ":", "=", "/", "[", "]", "://", "http://", "https://", "unix://", "[::1]", "::", "0.0.0.0",
    "127.0.0.1", "10.0.0.5", "0", "1", "-1", "08", "65535", "65536", "99999999999999999999", "1.5", ".", "ms",
    "s", "m", "h", "1e400", "2562048h", "web", "web:80", "api:http", "web-", "WEB", "a" * 64, "é" * 300,
    "consul-", "external-source", "k8s-pod", "true", "false", "off", "kubernetes", "http", "tcp", "fixed",
    "ready", "not-ready", "latch", "continuous", "json", "debug", "\n", "\r", "\t", "\x0b", "\x1c", "\x85",
    "\u2028", "\x00", "\udcff", "%", "?", "#", "@",
]
values = st.one_of(
    st.text(max_size=30),
    st.lists(st.sampled_from(FRAGMENTS), max_size=6).map("".join),
    st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=5), max_size=4).map(",".join),
)


@st.composite
def environments(draw: st.DrawFn) -> dict[str, str]:
    env = dict(draw(st.sampled_from([{}, VALID])))
    keys = st.sampled_from(KEYS) | st.text(max_size=20) | st.text(max_size=8).map("KATALOG_SERVICE_".__add__)
    for key in draw(st.lists(st.sampled_from(KEYS) | keys, max_size=8)):
        env[key] = draw(values)
    return env


def consul_meta_problem(key: str, value: str) -> str | None:
    """Consul's own rules (agent/structs validateMetaPair), counting bytes as Go does."""
    if not re.fullmatch(r"[a-zA-Z0-9_-]+", key) or len(key) > 128 or key.startswith("consul-"):
        return f"bad meta key {key!r}"
    if len(value.encode("utf-8", "surrogatepass")) > 512:
        return f"meta value of {key!r} too long"
    return None


def check_config(config: Config) -> None:
    assert config.services
    for spec in config.services:
        assert (spec.port is None) != (spec.port_name is None)
        assert spec.port is None or 1 <= spec.port <= 65535
        assert len(spec.meta) <= 64
        for key, value in spec.meta:
            assert consul_meta_problem(key, value) is None and key not in RESERVED_META_KEYS
    assert 3 <= config.check_ttl <= 86400
    for seconds in (config.check_ttl, config.deregister_critical_after, config.heartbeat_interval,
                    config.confirm_wait, config.consul.timeout):
        assert 0 < seconds < 2**63 / 1e9


@settings(max_examples=1500, deadline=None, derandomize=True)
@given(environments())
def test_any_environment_gives_a_config_or_every_problem_on_one_line(env: dict[str, str]) -> None:
    try:
        config = load_config(env)
    except ConfigError as error:
        assert error.problems
        for problem in error.problems:
            assert isinstance(problem, str) and problem.strip()
            assert len(problem.splitlines()) == 1, problem
    else:
        check_config(config)


# Found by the property above (each was a traceback, or a value Consul rejects later):
@pytest.mark.parametrize("variable, value, expected", [
    ("CONSUL_HTTP_ADDR", "http://[", "CONSUL_HTTP_ADDR='http://[': expected host:port"),
    ("KATALOG_KUBE_API_URL", "https://[::1", "KATALOG_KUBE_API_URL='https://[::1': expected an http:// or https:// URL"),
    ("CONSUL_HTTP_TOKEN_FILE", "/run/a\x00b", "CONSUL_HTTP_TOKEN_FILE='/run/a\\x00b': not a file path"),
    ("KATALOG_CHECK_TTL", "2562048h", "KATALOG_CHECK_TTL='2562048h': too long (at most 2562047h)"),
    ("KATALOG_CHECK_TTL", "9" * 400 + "h", "KATALOG_CHECK_TTL='999"),
    ("KATALOG_CHECK_TTL", "25h", "KATALOG_CHECK_TTL='25h': at most 24h (a dead pod's instance stays passing this long)"),
    ("KATALOG_DEREGISTER_CRITICAL_AFTER", "2562048h", "KATALOG_DEREGISTER_CRITICAL_AFTER='2562048h': too long (at most 2562047h)"),
    ("KATALOG_META", "k=" + "é" * 300, "meta value of 'k' is longer than 512 bytes in UTF-8"),
    ("POD_UID", "u" * 513, "POD_UID='uuu"),
    ("KATALOG_SERVICES", "0\r0", "KATALOG_SERVICES='0\\r0': service '0\\r0' has no port (write NAME:PORT)"),
    ("KATALOG_SERVICE_X\nY_TAGS", "a", "'KATALOG_SERVICE_X\\nY_TAGS'='a': names no service listed in KATALOG_SERVICES"),
])
def test_edges_found_by_the_property(variable: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({**VALID, variable: value})
    assert [p for p in info.value.problems if expected in p], info.value.problems


# -- registrations the builder produces, against a real agent ---------------------------------

dns_label = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z")
# DNS labels and what katalog-sync users also register (`hw_service`): Consul takes both.
service_name = st.from_regex(r"\A[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\Z") | st.from_regex(r"\A[a-zA-Z0-9_.-]{1,63}\Z")
port_name = st.from_regex(r"\A[a-z]([a-z0-9-]{0,13}[a-z0-9])?\Z")
no_commas = st.text(st.characters(blacklist_characters=",", blacklist_categories=("Cs",)), max_size=300)
# Spaces and '/' included (fabio's `urlprefix-/api`, `env prod`): Consul takes them.
tag = st.text(st.characters(blacklist_characters=",", blacklist_categories=("Cs", "Zl", "Zp", "Cc")),
              min_size=1, max_size=60)
# Values near Consul's 512-byte limit, in characters of 1 to 4 bytes.
long_value = st.sampled_from(["a", "é", "€", "😀", "\udcff"]).flatmap(
    lambda ch: st.integers(100, 520).map(lambda n: ch * n))
meta_item = st.tuples(st.from_regex(r"\A[a-zA-Z0-9_-]{1,130}\Z"), no_commas | long_value)
duration = st.one_of(st.integers(3, 10**11).map(lambda n: f"{n}s"), st.integers(3000, 10**7).map(lambda n: f"{n}ms"),
                     st.sampled_from(["15s", "1m", "1m30s", "2562047h", "2562048h", "72h"]))


@st.composite
def valid_setups(draw: st.DrawFn) -> tuple[Config, dict[str, int]]:
    names = draw(st.lists(service_name, min_size=1, max_size=3, unique_by=service_env_key))
    kube = draw(st.booleans())
    ports: dict[str, int] = {}
    items = []
    for name in names:
        if kube and draw(st.booleans()):
            pname = draw(port_name)
            ports[pname] = draw(st.integers(1, 65535))
            items.append(f"{name}:{pname}")
        else:
            items.append(f"{name}:{draw(st.integers(1, 65535))}")
    env = {
        "POD_NAME": draw(st.from_regex(r"\A[a-z0-9]([a-z0-9.-]{0,60}[a-z0-9])?\Z")),
        "POD_NAMESPACE": draw(dns_label),
        "POD_IP": str(draw(st.ip_addresses())),
        "HOST_IP": "127.0.0.1",
        "KATALOG_SERVICES": ",".join(items),
        "KATALOG_TAGS": ",".join(draw(st.lists(tag, max_size=4))),
        "KATALOG_META": ",".join(f"{k}={v}" for k, v in draw(st.lists(meta_item, max_size=5))),
        "KATALOG_CHECK_TTL": draw(duration),
        "KATALOG_DEREGISTER_CRITICAL_AFTER": draw(st.sampled_from(["1m", "90s", "72h"]) | duration),
        "KATALOG_READINESS_SOURCE": "kubernetes" if kube else "fixed",
        "KATALOG_KUBE_API_URL": "http://127.0.0.1:1",
    }
    if draw(st.booleans()):
        env["POD_UID"] = draw(st.uuids().map(str) | st.text(min_size=1, max_size=600))
    if draw(st.booleans()):
        env["KATALOG_CLUSTER_NAME"] = draw(dns_label)
    for name in names:
        if draw(st.booleans()):
            env[f"KATALOG_SERVICE_{service_env_key(name)}_META"] = ",".join(
                f"{k}={v}" for k, v in draw(st.lists(meta_item, max_size=70)))
        if draw(st.booleans()):
            env[f"KATALOG_SERVICE_{service_env_key(name)}_TAGS"] = ",".join(draw(st.lists(tag, max_size=3)))
    try:
        config = load_config(env)
    except ConfigError:
        config = None
    assume(config is not None)
    assert config is not None
    return config, ports


@pytest.fixture(scope="module")
def shared_agent(consul_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsulAgent]:
    agent = ConsulAgent(consul_bin, tmp_path_factory.mktemp("agent"), "hostile", "127.0.0.1", [], dev=True).start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    # One connection for every example: the agent answers 429 past 200 connections per client.
    with requests.Session() as s:
        yield s


@pytest.mark.consul
@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(valid_setups())
def test_every_registration_of_a_valid_config_is_accepted(shared_agent: ConsulAgent, session: requests.Session,
                                                          setup: tuple[Config, dict[str, int]]) -> None:
    config, ports = setup
    for instance in build_instances(config, None, ports):
        payload = registration_payload(instance, config)
        response = session.put(f"{shared_agent.http}/v1/agent/service/register",
                               params={"replace-existing-checks": "true"}, data=json.dumps(payload), timeout=10)
        assert response.status_code == 200, (response.text, payload)
        session.put(f"{shared_agent.http}/v1/agent/service/deregister/{instance.service_id}",
                    timeout=10).raise_for_status()


def test_an_agent_answering_junk_is_reported_not_a_crash(run_sidecar, tmp_path: Path) -> None:
    agent = HostileAgent("junk")  # 200 and HTML to everything: writes "succeed", reads cannot
    try:
        sidecar = run_sidecar(base_env(tmp_path, agent.addr, KATALOG_DRAIN_TIMEOUT="2s"))
        line = sidecar.wait_gate(passing=False, contains="not JSON")
        assert line == "agent accepted web but the catalog cannot be read: the answer is not JSON (HTTP 200, 23 bytes)"
        for _ in range(3):  # still alive, still saying why
            sidecar.wait_gate(passing=False, contains="not JSON")
        assert sidecar.terminate(timeout=15) == 1
        assert "Traceback" not in sidecar.logs()
    finally:
        agent.close()


# -- the Kubernetes watch -------------------------------------------------------------------------


# The watch tests' fixtures (`kube`, `start`) are reused; these tests pass a longer inactivity
# bound, because large objects take a while to stream and that must not count as silence.
SLOW = 5.0


def set_ready(kube: FakeKube, running: Running, ready: bool) -> None:
    before = len(running.sink.observations)
    kube.set_container_ready(NS, NAME, "app", ready)
    running.sink.wait(lambda s: len(s.observations) > before and s.observations[-1].ready is ready)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("katalog.kube") and r.levelno >= logging.WARNING]


JUNK_OBJECTS: list[Any] = [
    {},  # no metadata at all
    {"metadata": None, "spec": None, "status": None},
    {"kind": "Pod", "metadata": {"name": NAME, "namespace": NS}},  # no spec: would read as "no app containers"
    {"kind": "Pod", "metadata": {"name": NAME, "namespace": NS}, "spec": {"containers": "junk"}, "status": []},
    {"kind": "Pod", "metadata": {"name": "someone-else", "namespace": NS, "resourceVersion": "bogus"},
     "spec": {"containers": [{"name": "x"}]}, "status": {}},
    "a string",
    [1, 2, 3],
    None,
]


def test_objects_missing_fields_are_skipped_logged_once_and_never_make_the_app_ready(
        kube: FakeKube, start: Callable[..., Running], caplog: pytest.LogCaptureFixture) -> None:
    running = start(inactivity=SLOW)
    running.sink.wait_observation(lambda o: o.ready)
    first = wait_for_watch(kube, 1)
    set_ready(kube, running, False)
    for _ in range(3):  # the same junk again and again: still one line per kind
        for obj in JUNK_OBJECTS:
            kube.inject_event("MODIFIED", obj)
        kube.send_raw_line(b'{"type": "MODIFIED"}')  # no object at all
        kube.inject_event("DELETED", {"metadata": {"name": "someone-else"}})
    set_ready(kube, running, True)
    # Nothing in between: no "ready" from an empty object, no deletion from another pod's.
    assert [o.ready for o in running.sink.observations] == [True, False, True]
    assert not any(o.terminating for o in running.sink.observations)
    assert running.sink.problems == []
    assert len(watches(kube)) == 1 and len(lists(kube)) == 1  # the same stream went on
    # A junk object's resourceVersion is not where the next watch resumes.
    kube.break_watches()
    resumed = wait_for_watch(kube, 2)
    assert resumed.query["resourceVersion"] != "bogus" and int(resumed.query["resourceVersion"]) > int(first.query["resourceVersion"])
    skipped = [w for w in warnings_of(caplog) if "skipping" in w]
    assert len(skipped) == len(set(skipped)), skipped  # each kind once
    assert 1 <= len(skipped) <= 4, skipped


def test_malformed_lines_of_every_kind_are_survived_and_logged_once(
        kube: FakeKube, start: Callable[..., Running], caplog: pytest.LogCaptureFixture) -> None:
    running = start(inactivity=SLOW)
    running.sink.wait_observation(lambda o: o.ready)
    wait_for_watch(kube, 1)
    junk = [
        b'{"type": "MODIFIED", "object": {trunc',
        b"\xff\xfe\x00 not utf-8",
        b"null",
        b'"just a string"',
        b'{"type": 42, "object": {}}',
        b"[" * 100_000,  # nesting deep enough to exhaust the JSON decoder's recursion limit
        b'{"type": "MODIFIED", "object": ' + b"x" * 3_000_000,  # a 3 MB line that is not JSON
    ]
    for line in junk * 2:
        kube.send_raw_line(line)
    set_ready(kube, running, False)
    assert len(watches(kube)) == 1
    assert running.sink.problems == []
    assert running.thread.is_alive()
    malformed = [w for w in warnings_of(caplog) if "malformed line" in w]
    assert len(malformed) == 1 and len(malformed[0]) < 200, malformed


def test_unexpected_event_types_are_logged_once_each(kube: FakeKube, start: Callable[..., Running],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    running = start(inactivity=SLOW)
    running.sink.wait_observation(lambda o: o.ready)
    wait_for_watch(kube, 1)
    for _ in range(3):
        for kind in ("FROBNICATED", "modified", "", "X" * 10_000):
            kube.inject_event(kind, make_pod(NAME, NS, ready=False))
    set_ready(kube, running, False)
    assert [o.ready for o in running.sink.observations] == [True, False]
    unknown = [w for w in warnings_of(caplog) if "unknown type" in w]
    assert len(unknown) == 4 and all(len(w) < 200 for w in unknown), unknown


def test_objects_of_several_megabytes(kube: FakeKube, start: Callable[..., Running],
                                      caplog: pytest.LogCaptureFixture) -> None:
    running = start(inactivity=SLOW)
    running.sink.wait_observation(lambda o: o.ready)
    wait_for_watch(kube, 1)
    big = "x" * 4_000_000  # a 4 MB annotation (the API server allows 256 KiB; a proxy might not care)

    def mutate(pod: dict[str, Any]) -> None:
        pod["metadata"].setdefault("annotations", {})["example.com/blob"] = big
        pod["status"]["containerStatuses"][0]["ready"] = False

    began = time.monotonic()
    kube.update_pod(NS, NAME, mutate)
    running.sink.wait_observation(lambda o: not o.ready, timeout=10)
    assert time.monotonic() - began < 5.0
    # A relist carries the big object too.
    kube.send_error_410_event()
    kube.wait_for_request(lambda r: len(lists(kube)) == 2, timeout=10)
    set_ready(kube, running, True)
    assert [o.ready for o in running.sink.observations] == [True, False, True]
    assert running.sink.problems == [] and warnings_of(caplog) == []
