"""Is the app ready? Table-driven tests of the pure pod logic (no servers)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import pytest
from fakekube import make_pod
from hypothesis import given
from hypothesis import strategies as st

from sidecar.config import ServiceSpec
from sidecar.kube.pod_readiness import container_ports, grace_seconds, observe_pod
from sidecar.registration import resolve_port

SIDECAR = "katalog-sidecar"


def pod(
    containers: dict[str, bool | None],
    init: dict[str, tuple[str | None, bool | None]] | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A minimal pod: container name -> ready (None: no status entry yet);
    init container name -> (restartPolicy, ready)."""
    spec: dict[str, Any] = {"containers": [{"name": n} for n in containers]}
    status: dict[str, Any] = {
        "containerStatuses": [{"name": n, "ready": r} for n, r in containers.items() if r is not None]
    }
    if init:
        spec["initContainers"] = [
            {"name": n, **({"restartPolicy": policy} if policy else {})} for n, (policy, _) in init.items()
        ]
        status["initContainerStatuses"] = [{"name": n, "ready": r} for n, (_, r) in init.items() if r is not None]
    return {"metadata": {"uid": "uid-1", **(metadata or {})}, "spec": spec, "status": status}


@dataclass
class Case:
    id: str
    pod: dict[str, Any]
    ready: bool
    detail: str
    excluded: Collection[str] = ()
    own: str = SIDECAR
    terminating: bool = False
    grace: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("all ready", pod({"app": True, "worker": True, SIDECAR: True}), True, "all 2 containers ready"),
    Case("single app container", pod({"app": True, SIDECAR: False}), True, "1 container ready"),
    Case("one not ready", pod({"app": True, "worker": False, SIDECAR: True}), False, "not ready: worker"),
    Case("names sorted", pod({"zeta": False, "alpha": False, SIDECAR: True}), False, "not ready: alpha, zeta"),
    Case("missing status", pod({"app": None, SIDECAR: True}), False, "not ready: app"),
    Case("no statuses at all", {"metadata": {}, "spec": {"containers": [{"name": "app"}]}}, False, "not ready: app"),
    Case("ready must be true, not truthy", pod({"app": "yes", SIDECAR: True}), False, "not ready: app"),  # type: ignore[dict-item]
    Case("own container ignored", pod({"app": True, SIDECAR: False}), True, "1 container ready"),
    Case("other own name", pod({"app": True, "sync": False}), True, "1 container ready", own="sync"),
    Case("excluded ignored", pod({"app": True, "debug": False, SIDECAR: True}), True, "1 container ready", excluded=["debug"]),
    Case(
        "native sidecar counts",
        pod({"app": True, SIDECAR: True}, init={"proxy": ("Always", False)}),
        False,
        "not ready: proxy",
    ),
    Case(
        "native sidecar ready",
        pod({"app": True, SIDECAR: True}, init={"proxy": ("Always", True)}),
        True,
        "all 2 containers ready",
    ),
    Case(
        "native sidecar without status",
        pod({"app": True, SIDECAR: True}, init={"proxy": ("Always", None)}),
        False,
        "not ready: proxy",
    ),
    Case(
        "classic init container ignored",
        pod({"app": True, SIDECAR: True}, init={"migrate": (None, False)}),
        True,
        "1 container ready",
    ),
    Case(
        "own container as native sidecar",
        pod({"app": True}, init={SIDECAR: ("Always", False)}),
        True,
        "1 container ready",
    ),
    Case("only the sidecar", pod({SIDECAR: False}), True, "no app containers to check"),
    Case("everything excluded", pod({"app": False, SIDECAR: True}), True, "no app containers to check", excluded=["app"]),
    Case(
        "deletionTimestamp",
        pod({"app": True, SIDECAR: True}, metadata={"deletionTimestamp": "2024-05-01T10:00:00Z", "deletionGracePeriodSeconds": 45}),
        False,
        "pod is terminating",
        terminating=True,
        grace=45.0,
    ),
    Case(
        "deletionTimestamp without grace period",
        pod({"app": True}, metadata={"deletionTimestamp": "2024-05-01T10:00:00Z"}),
        False,
        "pod is terminating",
        terminating=True,
    ),
    Case("junk tolerated", {"metadata": None, "spec": {"containers": [None, {"name": 3}]}, "status": []}, True, "no app containers to check"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_observe_pod(case: Case) -> None:
    observation = observe_pod(case.pod, case.own, case.excluded)
    assert (observation.ready, observation.detail) == (case.ready, case.detail)
    assert observation.terminating is case.terminating
    assert observation.grace_period == case.grace
    assert observation.deleted is False


def test_observation_carries_uid_and_ports() -> None:
    realistic = make_pod("web-0", "shop", ports={"http": 8080, "metrics": 9090}, uid="u-42")
    observation = observe_pod(realistic, SIDECAR, ())
    assert observation.pod_uid == "u-42"
    assert observation.container_ports == {"http": 8080, "metrics": 9090}
    assert (observation.ready, observation.detail) == (True, "1 container ready")


def test_realistic_pod_with_native_sidecar_not_ready() -> None:
    realistic = make_pod("web-0", native_sidecars=["envoy"], init_containers=["migrate"], ready={"envoy": False})
    assert observe_pod(realistic, SIDECAR, ()).detail == "not ready: envoy"


def test_container_ports_cover_init_containers_and_skip_unnamed() -> None:
    spec = {
        "containers": [
            {"name": "app", "ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 9000}]},
            {"name": "worker", "ports": [{"name": "grpc", "containerPort": 50051}]},
        ],
        "initContainers": [{"name": "proxy", "restartPolicy": "Always", "ports": [{"name": "admin", "containerPort": 15000}]}],
    }
    assert container_ports({"spec": spec}) == {"http": 8080, "grpc": 50051, "admin": 15000}


@given(
    st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), st.one_of(st.booleans(), st.none()), max_size=6),
    st.randoms(),
)
def test_detail_is_stable_whatever_the_order(containers: dict[str, bool | None], rnd: Any) -> None:
    # Check output must not change with ordering noise: Consul writes to Raft on every change.
    shuffled = list(containers.items())
    rnd.shuffle(shuffled)
    a = observe_pod(pod(containers), SIDECAR, ())
    b = observe_pod(pod(dict(shuffled)), SIDECAR, ())
    assert a == b
    assert a.ready == all(v is True for v in containers.values())


def test_terminating_detail_has_no_timestamp() -> None:
    one = pod({"app": True}, metadata={"deletionTimestamp": "2024-05-01T10:00:00Z"})
    two = pod({"app": True}, metadata={"deletionTimestamp": "2024-05-01T10:00:07Z"})
    first, second = observe_pod(one, SIDECAR, ()), observe_pod(two, SIDECAR, ())
    assert first.detail == second.detail == "pod is terminating"  # check output: stable text
    # The timestamp itself is kept apart: the drain's deadline (a second deletion may shorten it).
    assert second.deletion_at is not None and first.deletion_at is not None
    assert second.deletion_at - first.deletion_at == 7.0


def _named(port_name: str) -> ServiceSpec:
    return ServiceSpec("web", None, port_name, (), ())


@pytest.mark.parametrize(
    ("name", "ports", "expected"),
    [("http", {"http": 8080}, 8080), ("admin", {"http": 8080, "admin": 9000}, 9000)],
)
def test_resolve_port(name: str, ports: dict[str, int], expected: int) -> None:
    assert resolve_port(_named(name), ports) == expected


@pytest.mark.parametrize(
    ("ports", "listed"),
    [({"metrics": 9090, "http": 8080}, "named ports: http, metrics"), ({}, "named ports: none"), (None, "named ports: none")],
)
def test_resolve_port_lists_what_exists(ports: dict[str, int] | None, listed: str) -> None:
    with pytest.raises(ValueError, match="uses container port 'web'") as info:
        resolve_port(_named("web"), ports)
    assert listed in str(info.value)


def test_ports_consul_cannot_take_are_not_ports() -> None:
    junk = pod({"app": True})
    junk["spec"]["containers"][0]["ports"] = [
        {"name": "flag", "containerPort": True}, {"name": "zero", "containerPort": 0},
        {"name": "big", "containerPort": 70000}, {"name": "text", "containerPort": "80"},
        {"name": "http", "containerPort": 8080},
    ]
    assert container_ports(junk) == {"http": 8080}


@pytest.mark.parametrize(
    ("value", "expected"),
    [(30, 30.0), (2.5, 2.5), (0, 0.0), (10**400, None), (float("nan"), None), (float("inf"), None),
     (-1, None), (True, None), ("30", None), (None, None)],
)
def test_grace_period_junk_is_no_grace_period(value: object, expected: float | None) -> None:
    assert grace_seconds(value) == expected
    terminating = pod({"app": True}, metadata={"deletionTimestamp": "2024-05-01T10:00:00Z",
                                               "deletionGracePeriodSeconds": value})
    assert observe_pod(terminating, SIDECAR, ()).grace_period == expected  # never an OverflowError
