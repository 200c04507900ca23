"""The sync core, in-process and pure (sidecar.core): events in, actions out, virtual time."""

from __future__ import annotations

from collections.abc import Callable

from core_harness import UID, AgentModel, Run, config, observation

from sidecar.core import actions as a
from sidecar.core import events as e
from sidecar.core.phases import Phase

SID = "shop:web-0:web"


def test_first_observation_registers_pushes_and_confirms() -> None:
    run = Run()
    assert run.core.phase is Phase.STARTING
    run.send(e.PodObserved(observation(ready=True)))
    assert [type(c).__name__ for c in run.calls()] == ["Register", "UpdateCheck", "UpdateCheck"]
    assert run.agent.services == {SID: UID}
    assert run.agent.checks[f"{SID}:readiness"].status == "passing"
    assert run.core.phase is Phase.CONFIRMED
    assert run.last_status()["phase"] == "confirmed"
    assert [x for x in run.actions if isinstance(x, a.GateVerdict)][-1].passes


def test_phases_follow_the_table_through_a_flip_and_a_drain() -> None:
    run = Run(auto_confirm=False)
    run.send(e.PodObserved(observation(ready=True)))
    assert run.core.phase is Phase.CONFIRMING
    run.send(e.ConfirmResult(1, "confirmed"))
    assert run.core.phase is Phase.CONFIRMED
    run.hold = True
    run.send(e.PodObserved(observation(ready=False)))
    assert run.core.phase is Phase.REGISTERING  # the push is in flight
    run.release()
    assert run.core.phase is Phase.CONFIRMING
    run.send(e.Terminate("SIGTERM", run.now))
    assert run.exit == 0
    assert run.core.phase is Phase.EXITED
    changes = [(x.old, x.new) for x in run.actions if isinstance(x, a.PhaseChanged)]
    assert changes == [("starting", "registering"), ("registering", "confirming"), ("confirming", "confirmed"),
                       ("confirmed", "registering"), ("registering", "confirming"), ("confirming", "draining"),
                       ("draining", "exited")]
    assert run.agent.services == {}


def test_sigterm_during_a_slow_call_starts_the_drain_at_once() -> None:
    run = Run()
    run.hold = True
    run.send(e.PodObserved(observation(ready=True)))
    assert len(run.held) == 1 and isinstance(run.held[0], a.Register)
    run.send(e.Terminate("SIGTERM", run.now))
    assert run.core.phase is Phase.DRAINING
    assert len(run.held) == 2, "the drain waited for the call in flight"  # the call in flight is left to finish
    run.release()  # the stale answer first: ignored
    run.advance(5)
    assert run.exit == 0


def test_ttls_are_refreshed_at_a_third_of_the_ttl_with_no_other_write() -> None:
    run = Run(config(KATALOG_CHECK_TTL="15s"))
    run.send(e.PodObserved(observation(ready=True)))
    before = len(run.calls())
    run.advance(16)
    refreshes = run.calls()[before:]
    assert refreshes and all(isinstance(c, a.UpdateCheck) and c.check_id.endswith(":liveness") for c in refreshes)
    assert 2 <= len(refreshes) <= 3


def test_a_failing_agent_is_retried_with_capped_backoff() -> None:
    agent = AgentModel(fail=lambda _c: e.Failure(e.FailureKind.UNAVAILABLE, "connection refused"))
    run = Run(agent=agent)
    run.send(e.PodObserved(observation(ready=True)))
    run.advance(60)
    registers = run.calls(a.Register)
    assert 6 <= len(registers) <= 16, len(registers)  # 0.2 s doubling to a 10 s cap (half jittered)
    assert run.core.phase is Phase.REGISTERING
    assert "waiting for the agent" in run.last_status()["message"]


# --- defect 1: read flaps reset nothing ------------------------------------------------------

def _flapping(run: Run, seconds: float, every: float = 2.5) -> None:
    """The agent watch's long-poll is cut every `every` seconds and answers again at once."""
    end = run.now + seconds
    while run.now < end:
        run.advance(every)
        run.send(e.AgentReadFailed(SID, e.Failure(e.FailureKind.UNAVAILABLE, "connection reset")))
        run.send(e.AgentSeen(SID, True, UID))


def _writes_fail(kind: e.FailureKind) -> Callable[[a.Call], e.Failure | None]:
    def fail(call: a.Call) -> e.Failure | None:
        return e.Failure(kind, "refused") if isinstance(call, (a.Register, a.UpdateCheck)) else None
    return fail


def test_read_flaps_while_writes_fail_keep_the_backoff() -> None:
    run = Run()
    run.send(e.PodObserved(observation(ready=True)))
    run.agent.fail = _writes_fail(e.FailureKind.SERVER_ERROR)
    run.send(e.PodObserved(observation(ready=False)))  # a push that fails from now on
    before = len(run.calls(a.UpdateCheck))
    _flapping(run, 120)
    tries = len(run.calls(a.UpdateCheck)) - before
    assert tries / 120 <= 0.2, f"{tries} tries in 120 s"
    assert len(run.calls(a.Register)) == 1


def test_read_flaps_never_shorten_the_hold_after_a_403() -> None:
    run = Run()
    run.agent.fail = _writes_fail(e.FailureKind.FORBIDDEN)
    run.send(e.PodObserved(observation(ready=True)))
    run.send(e.AgentSeen(SID, True, UID))
    _flapping(run, 180)
    assert len(run.calls(a.Register)) <= 1 + 180 / 60, len(run.calls(a.Register))


def test_read_flaps_with_writes_working_register_nothing_and_confirm_nothing_new() -> None:
    run = Run()
    run.send(e.PodObserved(observation(ready=True)))
    confirms = len([x for x in run.actions if isinstance(x, a.Confirm)])
    _flapping(run, 60)
    assert len(run.calls(a.Register)) == 1
    assert len([x for x in run.actions if isinstance(x, a.Confirm)]) == confirms
    assert run.core.phase is Phase.CONFIRMED
    assert sum("answers again" in line for line in run.logs()) <= 2  # once per 30 s at most


def test_an_agent_that_comes_back_empty_gets_our_instance_again_at_once() -> None:
    run = Run()
    run.send(e.PodObserved(observation(ready=True)))
    run.agent.fail = lambda _c: e.Failure(e.FailureKind.UNAVAILABLE, "connection refused")
    run.send(e.AgentReadFailed(SID, e.Failure(e.FailureKind.UNAVAILABLE, "connection refused")))
    run.advance(20)  # refreshes fail; the retry waits for the watch
    run.agent = AgentModel()  # back, without its state
    run.send(e.AgentSeen(SID, False))
    run.advance(0.5)
    assert run.agent.services == {SID: UID}
    assert run.agent.checks[f"{SID}:readiness"].status == "passing"


# --- defect 4: superseded by a same-node successor ---------------------------------------------

def test_an_instance_taken_over_by_another_uid_stops_every_write_and_fails_even_a_latched_gate() -> None:
    run = Run()
    run.send(e.PodObserved(observation(ready=True)))
    assert [x for x in run.actions if isinstance(x, a.GateVerdict)][-1].passes
    run.agent.services[SID] = "uid-2"  # the successor registered the same ID
    run.send(e.AgentSeen(SID, True, "uid-2"))
    before = len(run.calls())
    run.advance(120)
    assert run.calls()[before:] == [], "a write to another pod's instance"
    assert run.core.phase is Phase.SUPERSEDED
    verdict = [x for x in run.actions if isinstance(x, a.GateVerdict)][-1]
    assert not verdict.passes and verdict.line.startswith("superseded: shop:web-0:web on this agent now belongs to pod UID uid-2")
    # A SIGTERM drains nothing of the other pod's.
    run.send(e.Terminate("SIGTERM", run.now))
    assert run.exit == 0 and run.agent.services == {SID: "uid-2"}
    assert not [c for c in run.calls()[before:] if not isinstance(c, a.ReadAgentInstance)]


def test_when_the_other_pods_instance_is_gone_ours_is_registered_again() -> None:
    run = Run()
    run.send(e.PodObserved(observation(ready=True)))
    run.send(e.AgentSeen(SID, True, "uid-2"))
    del run.agent.services[SID]
    run.send(e.AgentSeen(SID, False))
    assert run.agent.services == {SID: UID}
    assert run.core.phase is Phase.CONFIRMED


def test_superseded_in_continuous_mode_sleeps_until_the_heartbeat() -> None:
    """A superseded sidecar runs no round, so the continuous mode's re-check deadline never moved:
    next_deadline() stayed in the past and every Tick wrote the status file again at one instant
    (a hot loop; simulator seed 1025)."""
    run = Run(config(KATALOG_GATE_MODE="continuous"))
    run.send(e.PodObserved(observation(ready=True)))
    run.agent.services[SID] = "uid-2"
    run.send(e.AgentSeen(SID, True, "uid-2"))
    assert run.core.phase is Phase.SUPERSEDED
    ticks, end = 0, run.now + 120.0
    while run.core.next_deadline() <= end:
        deadline = run.core.next_deadline()
        assert deadline > run.now, f"next_deadline() {deadline} is not after now {run.now}: a Tick spin"
        run.now = deadline
        run.send(e.Tick())
        ticks += 1
    assert 0 < ticks <= 120, f"{ticks} Ticks in 120 s while superseded"
    assert run.core.phase is Phase.SUPERSEDED


# --- a stall (SIGSTOP) across a same-node successor's takeover (simulator: foreign-write) --------

def _taken_over_while_stopped(run: Run, seconds: float = 60.0) -> None:
    """The successor (same name, new UID) registers our service ID while this process is stopped:
    no AgentSeen was handled, and the clock jumps past every deadline of the core's."""
    from sidecar.registration import CheckState

    run.agent.services[SID] = "uid-2"
    run.agent.checks[f"{SID}:readiness"] = CheckState("critical", "successor: app not ready")
    run.agent.checks[f"{SID}:liveness"] = CheckState("passing", "successor running")
    run.now += seconds


def test_a_drain_after_a_stall_reads_the_owner_and_leaves_the_successors_instance_alone() -> None:
    """The drain trusted `registered` ("the agent watch saw no other UID"), which a stall makes
    stale: the old sidecar, continued and SIGTERMed, turned the successor's checks critical and
    deregistered its instance (simulator seeds 10, 99, 1062)."""
    run = Run()
    run.send(e.PodObserved(observation(ready=True)))
    before = len(run.calls())
    _taken_over_while_stopped(run)
    run.send(e.Terminate("SIGTERM", run.now))
    assert run.exit == 0
    assert run.agent.services == {SID: "uid-2"}
    assert run.agent.checks[f"{SID}:readiness"].output == "successor: app not ready"
    assert run.agent.checks[f"{SID}:liveness"].status == "passing"
    assert all(isinstance(c, a.ReadAgentInstance) for c in run.calls()[before:]), run.calls()[before:]
    logs = run.logs()
    assert any(line.startswith("this process did not run for ") for line in logs), logs
    assert any("now belongs to pod UID uid-2" in line for line in logs), logs


def test_a_round_after_a_stall_reads_the_owner_before_its_ttl_refresh() -> None:
    """No SIGTERM (yet): the TTL refresh that fell due while stopped must not reach the successor."""
    run = Run()
    run.send(e.PodObserved(observation(ready=True)))
    before = len(run.calls())
    _taken_over_while_stopped(run)
    run.send(e.Tick())
    assert [type(c) for c in run.calls()[before:]] == [a.ReadAgentInstance]
    assert run.core.phase is Phase.SUPERSEDED
    run.advance(60)
    assert all(isinstance(c, a.ReadAgentInstance) for c in run.calls()[before:])
    assert run.agent.checks[f"{SID}:liveness"].output == "successor running"


def test_no_stall_no_extra_read() -> None:
    """Deadlines met (the loop woke for each): refreshes go out with no ownership read."""
    run = Run()
    run.send(e.PodObserved(observation(ready=True)))
    before = len(run.calls())
    run.advance(60)
    assert run.calls()[before:] and not run.calls(a.ReadAgentInstance)


def test_a_takeover_seen_during_a_slow_drain_stops_its_writes_to_that_instance() -> None:
    """The kubelet SIGTERMs the old sidecar as it starts the successor: with a slow agent the
    drain still runs when the successor registers. Its agent watch goes on during the drain, and
    what it sees stops the drain's next writes (simulator seed 133)."""
    run = Run()
    run.send(e.PodObserved(observation(ready=True)))
    before = len(run.calls())
    run.hold = True
    run.send(e.Terminate("SIGTERM", run.now))
    assert isinstance(run.held[0], a.UpdateCheck)  # readiness critical: under way
    _taken_over_while_stopped(run, seconds=1.0)
    run.send(e.AgentSeen(SID, True, "uid-2"))
    run.release()
    run.advance(30)
    assert run.exit == 0
    writes = [c for c in run.calls()[before:] if not isinstance(c, (a.ReadAgentInstance, a.ReadCatalog))]
    assert len(writes) == 1, writes  # the one in flight when the successor came; nothing after
    assert run.agent.services == {SID: "uid-2"}
    assert run.agent.checks[f"{SID}:liveness"].output == "successor running"


def test_a_drain_of_an_instance_no_watch_follows_reads_its_owner_before_each_write() -> None:
    """A registration whose round failed further on never got its agent watch: a read at the
    drain's start goes stale while a slow agent takes seconds a write (simulator seeds 133, 816)."""
    run = Run(config(KATALOG_SERVICES="web:8080,api:9090"))
    failing = {"on": True}
    run.agent.fail = lambda call: (e.Failure(e.FailureKind.UNAVAILABLE, "connection reset")
                                   if failing["on"] and isinstance(call, a.Register) and call.service_id.endswith(":api")
                                   else None)
    run.send(e.PodObserved(observation(ready=True)))
    assert SID in run.agent.services and not run.calls(a.ReadAgentInstance)
    before = len(run.calls())
    failing["on"] = False
    run.hold = True
    run.send(e.Terminate("SIGTERM", run.now))
    run.release()
    calls = run.calls()[before:]
    writes_to_web = [i for i, c in enumerate(calls) if isinstance(c, (a.UpdateCheck, a.Deregister))
                     and (getattr(c, "check_id", "") or getattr(c, "service_id", "")).startswith(SID)]
    assert writes_to_web and all(isinstance(calls[i - 1], a.ReadAgentInstance) and calls[i - 1].service_id == SID
                                 for i in writes_to_web), calls
    assert run.exit == 0 and SID not in run.agent.services


def test_after_a_stall_statuses_are_pushed_and_confirmed_again_before_the_gate_passes() -> None:
    """A stop longer than the TTL: the agent let the checks go critical meanwhile while the status
    file still said confirmed, and the gate passed on it when the process ran again (simulator
    seed 191, gate-needs-catalog)."""
    run = Run(config(KATALOG_GATE_MODE="continuous"), auto_confirm=False)
    run.send(e.PodObserved(observation(ready=True)))
    run.send(e.ConfirmResult(1, "confirmed"))
    assert [x for x in run.actions if isinstance(x, a.GateVerdict)][-1].passes
    before = len(run.actions)
    run.now += 60.0
    run.send(e.Tick())
    after = run.actions[before:]
    assert not [x for x in after if isinstance(x, a.GateVerdict)][-1].passes
    pushed = {c.check_id for c in after if isinstance(c, a.UpdateCheck)}
    assert pushed == {f"{SID}:readiness", f"{SID}:liveness"}
    (confirm,) = [x for x in after if isinstance(x, a.Confirm)]
    run.send(e.ConfirmResult(confirm.expectation.generation, "confirmed"))
    assert [x for x in run.actions if isinstance(x, a.GateVerdict)][-1].passes


def test_a_flip_to_ready_does_not_pass_the_gate_on_the_previous_confirmation() -> None:
    """The app turns ready while a round is still running (a slow agent's TTL refresh): the
    confirmation of the previous generation (critical in the catalog) passed the gate before the
    push even began (simulator seed 183, gate-needs-catalog)."""
    run = Run(config(KATALOG_GATE_MODE="continuous"), auto_confirm=False)
    run.send(e.PodObserved(observation(ready=False)))
    run.send(e.ConfirmResult(1, "confirmed"))
    run.hold = True
    run.advance(6)  # a TTL refresh in flight
    assert run.held
    flipped = len(run.actions)
    run.send(e.PodObserved(observation(ready=True)))
    run.advance(2 * run.core.config.heartbeat_interval)  # heartbeats while the refresh hangs
    verdicts = [x for x in run.actions[flipped:] if isinstance(x, a.GateVerdict)]
    assert verdicts and not any(v.passes for v in verdicts), verdicts
    run.release()
    run.advance(1)
    (confirm,) = [x for x in run.actions if isinstance(x, a.Confirm)][-1:]
    run.send(e.ConfirmResult(confirm.expectation.generation, "confirmed"))
    assert [x for x in run.actions if isinstance(x, a.GateVerdict)][-1].passes


def test_a_restart_on_a_terminating_pod_retries_a_failed_ownership_read() -> None:
    """One 500 on the read (a read flap) left the instance the previous process left passing
    (simulator seed 204)."""
    agent = _left_by_a_previous_process()
    failures = [e.Failure(e.FailureKind.SERVER_ERROR, "Unexpected response code: 500")]
    agent.fail = lambda call: failures.pop() if failures and isinstance(call, a.ReadAgentInstance) else None
    run = Run(agent=agent)
    run.send(e.PodObserved(observation(ready=False, terminating=True)))
    run.advance(5)
    assert run.agent.services == {}, "left passing on the agent"


# --- defect 3: a restart on a terminating pod drains what it finds -----------------------------

def _left_by_a_previous_process(uid: str = UID) -> AgentModel:
    from sidecar.registration import CheckState

    agent = AgentModel()
    agent.services[SID] = uid
    agent.checks[f"{SID}:readiness"] = CheckState("passing", "app ready")
    agent.checks[f"{SID}:liveness"] = CheckState("passing", "katalog-sidecar is running")
    return agent


def test_a_restart_on_a_terminating_pod_drains_the_instance_it_finds() -> None:
    run = Run(agent=_left_by_a_previous_process())
    run.send(e.PodObserved(observation(ready=False, terminating=True)))
    run.advance(5)
    assert run.agent.services == {}, "left passing on the agent"
    assert "nothing was registered: nothing to drain" not in run.logs()
    assert run.core.phase is Phase.DRAINED


def test_a_restart_on_a_terminating_pod_leaves_another_pods_instance_alone() -> None:
    run = Run(agent=_left_by_a_previous_process(uid="uid-2"))
    run.send(e.PodObserved(observation(ready=False, terminating=True)))
    run.advance(5)
    assert run.agent.services == {SID: "uid-2"}
    assert not run.calls(a.UpdateCheck) and not run.calls(a.Deregister)
    assert "nothing was registered: nothing to drain" in run.logs()


# --- defect 6: adoption keeps liveness passing; a lost adopted instance is registered again ------

def test_an_adopted_instance_gets_liveness_passing_whatever_the_dead_process_left() -> None:
    from sidecar.registration import CheckState

    agent = _left_by_a_previous_process()
    agent.checks[f"{SID}:liveness"] = CheckState("critical", "TTL expired")  # restarted after the TTL
    run = Run(agent=agent)
    run.advance(1)  # the pod API is unreachable: no observation
    assert run.core.phase is Phase.ADOPTING
    assert agent.checks[f"{SID}:liveness"] == CheckState("passing", "katalog-sidecar is running")
    assert agent.checks[f"{SID}:readiness"] == CheckState("passing", "app ready")  # kept, unchanged


def test_an_adopted_instance_the_agent_lost_is_registered_again_and_logged() -> None:
    run = Run(agent=_left_by_a_previous_process())
    run.advance(1)
    del run.agent.services[SID]
    run.agent.checks.clear()  # reaped by the agent
    run.advance(10)  # the next refresh finds it gone
    assert run.agent.services == {SID: UID}
    assert run.agent.checks[f"{SID}:readiness"].status == "passing"
    assert run.agent.checks[f"{SID}:liveness"].status == "passing"
    assert any("no longer holds the adopted instance" in line for line in run.logs())


def test_a_forbidden_adoption_refresh_is_tried_once_per_hold() -> None:
    """Adoption's TTL refreshes retried a 403 with the capped backoff (14 writes in 60 s where one
    try per 60 s hold is promised; simulator seed 25: restarted during an API outage, token
    without service:write)."""
    agent = _left_by_a_previous_process()
    run = Run(agent=agent)
    run.advance(1)
    assert run.core.phase is Phase.ADOPTING
    agent.fail = lambda call: (e.Failure(e.FailureKind.FORBIDDEN, "Permission denied: token lacks permission "
                                         "'service:write'") if isinstance(call, a.UpdateCheck) else None)
    before = len(run.calls(a.UpdateCheck))
    run.advance(120)
    tries = [t for t, x in run.timeline if isinstance(x, a.UpdateCheck)][before:]
    assert 2 <= len(tries) <= 3, f"{len(tries)} refreshes in 120 s under a 403"
    assert all(b - a_ >= 59.0 for a_, b in zip(tries, tries[1:], strict=False)), tries


# --- defect 5: a slow agent (3 s a call, under the timeout) --------------------------------------

FOUR = "web:8080,admin:9000,grpc:9090,debug:9999"


def test_a_slow_agent_keeps_the_heartbeat_during_a_long_round() -> None:
    run = Run(config(KATALOG_SERVICES=FOUR))
    run.latency = 3.0
    run.send(e.PodObserved(observation(ready=True)))
    assert len(run.agent.services) == 4  # 12 calls, 36 virtual seconds
    writes = [t for t, x in run.timeline if isinstance(x, a.WriteStatus)]
    gaps = [later - earlier for earlier, later in zip(writes, writes[1:], strict=False)]
    assert writes[-1] >= 36 and max(gaps) <= run.core.config.heartbeat_interval + run.latency, gaps


def test_a_slow_agent_drain_deregisters_every_instance_within_the_budget() -> None:
    run = Run(config(KATALOG_SERVICES=FOUR, KATALOG_DRAIN_TIMEOUT="20s"))
    run.send(e.PodObserved(observation(ready=True)))
    run.latency = 3.0
    signalled = run.now
    run.send(e.Terminate("SIGTERM", signalled))
    run.advance(30)
    assert run.exit is not None
    assert run.agent.services == {}, f"left: {sorted(run.agent.services)}"
    deregisters = run.calls(a.Deregister)
    assert len(deregisters) == 4
    assert run.now - signalled <= 20 + run.latency


def test_a_registration_in_flight_at_sigterm_cannot_land_after_the_deregistration() -> None:
    run = Run()
    run.hold = True
    run.send(e.PodObserved(observation(ready=True)))
    register = run.held.pop(0)
    run.send(e.Terminate("SIGTERM", run.now))
    run.hold = False
    run.release()  # the drain's critical pushes answer (404: nothing registered yet)
    run.advance(3)
    assert not run.calls(a.Deregister)[-1:] or run.exit is None, "deregistered before the registration answered"
    run.send(run.agent.answer(register))  # the registration lands now
    run.advance(10)
    assert run.calls(a.Deregister) and run.agent.services == {}
    assert run.exit == 0


# --- issue 18, item 8: a re-registration inside a TTL refresh is confirmed --------------------

def test_a_re_registration_inside_a_ttl_refresh_is_confirmed_again() -> None:
    run = Run(auto_confirm=False)
    run.send(e.PodObserved(observation(ready=True)))
    run.send(e.ConfirmResult(1, "confirmed"))
    assert run.core.phase is Phase.CONFIRMED
    run.agent.services.clear()
    run.agent.checks.clear()  # the agent restarted without its state; its watch has not said so
    run.advance(6)  # the liveness refresh finds the check gone and registers again
    assert len(run.calls(a.Register)) == 2
    confirms = [x.expectation.generation for x in run.actions if isinstance(x, a.Confirm)]
    assert confirms == [1, 2], confirms
    assert run.core.phase is Phase.CONFIRMING


# --- issue 18, item 8: a crash-looping readiness worker fails the gate -------------------------

def test_a_crash_looping_readiness_worker_fails_even_a_latched_gate_and_says_so() -> None:
    run = Run()
    run.send(e.PodObserved(observation(ready=True)))
    assert [x for x in run.actions if isinstance(x, a.GateVerdict)][-1].passes
    run.send(e.WorkerDown("readiness", "last failure: RuntimeError: boom"))
    verdict = [x for x in run.actions if isinstance(x, a.GateVerdict)][-1]
    assert not verdict.passes
    assert verdict.line == ("worker down: the readiness worker is crash-looping (last failure: RuntimeError: boom): "
                            "the app's readiness is not being followed")
    assert run.last_status()["phase"] == "worker-down"
    run.send(e.WorkerDown("readiness", None))
    assert [x for x in run.actions if isinstance(x, a.GateVerdict)][-1].passes
