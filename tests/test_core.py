"""The sync core, in-process and pure (sidecar.core): events in, actions out, virtual time."""

from __future__ import annotations

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


def test_sigterm_during_a_call_waits_for_its_answer_then_drains() -> None:
    run = Run()
    run.hold = True
    run.send(e.PodObserved(observation(ready=True)))
    assert len(run.held) == 1 and isinstance(run.held[0], a.Register)
    run.send(e.Terminate("SIGTERM", run.now))
    assert run.core.phase is Phase.DRAINING
    assert len(run.held) == 1, "a second call while one is in flight"
    run.release()
    assert run.exit == 0
    assert run.agent.services == {}


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
