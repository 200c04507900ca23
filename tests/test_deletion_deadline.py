"""The drain's deadline from the pod's deletionTimestamp (simulator seeds 30, 682, 1203): a process
restarted during the termination counts its budget from the deletion, not from its own start.
Pure: the parse, the driver's clock conversion, sidecar.core.terminate.drain_deadline, and the
core driven on a virtual clock (core_harness)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from core_harness import UID, AgentModel, Run, config, observation

from sidecar.core import actions as a
from sidecar.core import events as e
from sidecar.core.state import Context
from sidecar.core.terminate import MIN_DRAIN, SIGKILL_RESERVE, drain_deadline
from sidecar.kube.pod_readiness import deletion_time, observe_pod
from sidecar.readiness import Observation, on_clock
from sidecar.registration import CheckState

SID = "shop:web-0:web"


# --- the parse and the conversion ---------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "expected"),
    [("2026-12-07T04:20:00Z", 1796617200.0), ("2026-12-07T04:20:00+00:00", 1796617200.0),
     ("2026-12-07T05:20:00+01:00", 1796617200.0), ("2026-12-07T04:20:00.5Z", 1796617200.5),
     ("2026-12-07T04:20:00", None), ("gone", None), ("", None), (1796617200, None), (None, None),
     ("99999-01-01T00:00:00Z", None)],
)
def test_deletion_timestamp_is_parsed_as_rfc3339_with_a_zone_or_not_at_all(value: object, expected: float | None) -> None:
    assert deletion_time(value) == expected


def test_the_observation_of_a_terminating_pod_carries_its_deletion_time() -> None:
    pod = {"metadata": {"uid": UID, "deletionTimestamp": "2026-12-07T04:20:00Z", "deletionGracePeriodSeconds": 30},
           "spec": {"containers": [{"name": "app"}]}, "status": {}}
    seen = observe_pod(pod, "katalog-sidecar", ())
    assert seen.terminating and seen.grace_period == 30.0 and seen.deletion_at == 1796617200.0
    assert seen.deletion_deadline is None  # on the core's clock only once the driver converts it


def test_the_driver_puts_the_deletion_on_the_cores_clock() -> None:
    seen = Observation(False, "pod is terminating", terminating=True, grace_period=30.0, deletion_at=1000.0)
    assert on_clock(seen, now=50.0, wall_now=990.0).deletion_deadline == 60.0
    assert on_clock(seen, now=50.0, wall_now=1010.0).deletion_deadline == 40.0  # already past: kept, bounded later
    plain = Observation(True, "ready")
    assert on_clock(plain, now=50.0, wall_now=990.0) is plain
    assert on_clock(replace(seen, deletion_at=float("inf")), 50.0, 990.0).deletion_deadline is None
    # Derived: the same pod seen at two moments is the same observation (the source sends only changes).
    assert on_clock(seen, 50.0, 990.0) == on_clock(seen, 51.0, 990.0)


# --- drain_deadline ------------------------------------------------------------------------------

def _ctx(now: float, obs: Observation | None, drain_timeout: str = "20s") -> Context:
    ctx = Context(config(KATALOG_DRAIN_TIMEOUT=drain_timeout), "127.0.0.1:8500", random.Random(1).random)
    ctx.now = now
    ctx.state.observation = obs
    return ctx


def _terminating(grace: float | None, deadline: float | None) -> Observation:
    return Observation(False, "pod is terminating", terminating=True, grace_period=grace, deletion_deadline=deadline)


@pytest.mark.parametrize(
    ("since", "grace", "deletion_deadline", "expected", "why"),
    [
        (None, 30.0, None, 100.0 + 20.0, "no deletionTimestamp: min(drain timeout, grace - reserve) from now"),
        (None, 10.0, None, 100.0 + 8.0, "a grace period shorter than the drain timeout"),
        (None, 30.0, 130.0, 100.0 + 20.0, "deleted just now: the SIGTERM-based deadline is the earlier"),
        (None, 30.0, 106.0, 106.0 - SIGKILL_RESERVE, "restarted 24 s into a 30 s grace: 4 s left"),
        (98.0, 10.0, 107.0, 107.0 - SIGKILL_RESERVE, "SIGTERM 2 s ago, the deletion 3 s ago"),
        (98.0, 10.0, 120.0, 98.0 + 8.0, "SIGTERM-based from the signal, earlier than the deletion's"),
        (None, 30.0, 100.5, 100.0 + MIN_DRAIN, "the deletion past (a node clock ahead): still a last second"),
        (None, 30.0, -1e12, 100.0 + MIN_DRAIN, "absurdly far in the past: the same"),
        (None, 30.0, 1e12, 100.0 + 20.0, "absurdly far ahead (a node clock behind): the SIGTERM-based one"),
        (None, 0.0, 100.0, 100.0 + 20.0, "a 0 s grace: no grace term, as before (the kubelet gives it 2 s)"),
        (None, None, 101.0, 100.0 + 20.0, "no grace period known: the deletion time alone is not trusted"),
    ],
)
def test_drain_deadline_is_the_earlier_of_sigterm_and_deletion(since: float | None, grace: float | None,
                                                               deletion_deadline: float | None, expected: float,
                                                               why: str) -> None:
    assert drain_deadline(_ctx(100.0, _terminating(grace, deletion_deadline)), since) == pytest.approx(expected), why


def test_drain_deadline_without_an_observation_is_the_drain_timeout_from_the_signal() -> None:
    assert drain_deadline(_ctx(100.0, None), since=99.0) == 99.0 + 20.0


# --- the core: a restart during the termination deregisters before the SIGKILL ---------------------

def _left_by_a_previous_process() -> AgentModel:
    agent = AgentModel()
    agent.services[SID] = UID
    agent.checks[f"{SID}:readiness"] = CheckState("passing", "app ready")
    agent.checks[f"{SID}:liveness"] = CheckState("passing", "katalog-sidecar is running")
    # The servers cannot be read (seed 30: the catalog down): confirming critical would take
    # every second it is given.
    agent.fail = lambda call: (e.Failure(e.FailureKind.SERVER_ERROR, "No cluster leader")
                               if isinstance(call, a.ReadCatalog) else None)
    return agent


@pytest.mark.parametrize("left", [4.0, 6.0, 12.0])
def test_a_restart_during_the_termination_deregisters_before_the_deletion_deadline(left: float) -> None:
    """Restarted `left` + 2 s before the SIGKILL of a 30 s grace, the drain timeout 20 s: it
    deregisters `SIGKILL_RESERVE` before the deletionTimestamp, not 20 s after its own start."""
    run = Run(config(KATALOG_DRAIN_TIMEOUT="20s"), agent=_left_by_a_previous_process())
    run.latency = 0.05
    started = run.now
    sigkill = started + left + SIGKILL_RESERVE
    run.send(e.PodObserved(observation(ready=False, terminating=True, grace_period=30.0, deletion_deadline=sigkill)))
    run.advance(30)
    deregistered = [t for t, x in run.timeline if isinstance(x, a.Deregister)]
    assert deregistered, "never deregistered"
    assert deregistered[0] <= sigkill - SIGKILL_RESERVE, f"deregistered {deregistered[0] - started:.2f}s after start"
    assert run.agent.services == {}
    assert f"the pod's deletionTimestamp leaves {left + SIGKILL_RESERVE:.1f}s of its grace period: the drain ends " \
           f"within {left:.1f}s" in run.logs()


def test_a_deletion_seen_at_once_logs_nothing_new() -> None:
    """A running sidecar that sees the deletion: the timestamp's truncation to the second and the
    watch's latency make the deletion-based deadline a little earlier; no line for that."""
    ctx = _ctx(100.0, _terminating(10.0, 109.4))
    assert drain_deadline(ctx, None) == pytest.approx(107.4)
    assert not [x for x in ctx.out if isinstance(x, a.Log)]
    ctx = _ctx(100.0, _terminating(10.0, 105.0))
    assert drain_deadline(ctx, None) == pytest.approx(103.0)
    assert [x.message for x in ctx.out if isinstance(x, a.Log)] == [
        "the pod's deletionTimestamp leaves 5.0s of its grace period: the drain ends within 3.0s"]
