"""The core's phases and the transitions allowed between them: one table, checked at a glance.

A transition not in TRANSITIONS is a bug in the core (`ImpossibleTransition`), never a state
the sidecar can be in. The status file's phase (readiness_gate.state: starting, syncing,
confirmed, draining, stopped, config-error) is derived from these (`STATUS_PHASE`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from readiness_gate import state as status_state

if TYPE_CHECKING:
    from sidecar.core.state import SyncState


class Phase(enum.Enum):
    STARTING = "starting"  # no readiness observation (or no services) yet; nothing found to adopt
    ADOPTING = "adopting"  # before the first observation: keeping this pod's instance, found on the agent, alive
    REGISTERING = "registering"  # agent writes pending or failing (backoff / hold)
    CONFIRMING = "confirming"  # the agent holds what we want; waiting for the servers' catalog
    CONFIRMED = "confirmed"  # the catalog shows every instance as pushed
    SUPERSEDED = "superseded"  # another pod (UID) holds our service ID on this node: no writes of ours
    FAILED_OPEN = "failed-open"  # fail-open-after ran out while Consul could not confirm: the gate passes, writes go on
    DRAINING = "draining"  # deletionTimestamp or SIGTERM: critical, confirm, deregister, confirm
    DRAINED = "drained"  # drained before SIGTERM (deletionTimestamp): heartbeat only, until SIGTERM
    EXITED = "exited"  # `Exit` returned: no further event is handled


S = Phase
# phase -> {next phase: what takes it there}. Every other change is an ImpossibleTransition.
TRANSITIONS: Mapping[Phase, Mapping[Phase, str]] = {
    S.STARTING: {
        S.ADOPTING: "this pod's instance (its UID) found on the agent before the first observation",
        S.REGISTERING: "first observation with services configured",
        S.DRAINING: "SIGTERM, or the first observation is terminating",
    },
    S.ADOPTING: {
        S.STARTING: "the adopted instance is gone from the agent",
        S.REGISTERING: "first observation",
        S.DRAINING: "SIGTERM, or the first observation is terminating",
    },
    S.REGISTERING: {
        S.FAILED_OPEN: "fail-open-after ran out since the app was ready, the agent unreachable (never for a 403/400)",
        S.CONFIRMING: "every write accepted",
        S.CONFIRMED: "writes accepted again, nothing changed since the last confirmation",
        S.SUPERSEDED: "another pod's UID on our service ID",
        S.DRAINING: "SIGTERM or deletionTimestamp",
    },
    S.CONFIRMING: {
        S.FAILED_OPEN: "fail-open-after ran out since the app was ready, the catalog not confirming",
        S.CONFIRMED: "the catalog matches the pushed generation",
        S.REGISTERING: "a write is due (status change, agent lost the instance, config edit)",
        S.SUPERSEDED: "another pod's UID on our service ID",
        S.DRAINING: "SIGTERM or deletionTimestamp",
    },
    S.CONFIRMED: {
        S.CONFIRMING: "confirmation lost (continuous mode re-check)",
        S.REGISTERING: "a write is due (status change, agent lost the instance, config edit)",
        S.SUPERSEDED: "another pod's UID on our service ID",
        S.DRAINING: "SIGTERM or deletionTimestamp",
    },
    S.FAILED_OPEN: {
        S.CONFIRMED: "the catalog confirms: the failed-open state ends by itself",
        S.REGISTERING: "a reason of the pod's own (app not ready, a 403/400) closes the gate again",
        S.CONFIRMING: "a reason of the pod's own (app not ready) closes the gate again",
        S.SUPERSEDED: "another pod's UID on our service ID",
        S.DRAINING: "SIGTERM or deletionTimestamp",
    },
    S.SUPERSEDED: {
        S.DRAINING: "SIGTERM or deletionTimestamp (nothing of ours is written)",
        S.REGISTERING: "the other pod's instance is gone from the agent",
    },
    S.DRAINING: {
        S.DRAINED: "drain finished before SIGTERM (deletionTimestamp)",
        S.EXITED: "drain finished after SIGTERM",
    },
    S.DRAINED: {
        S.EXITED: "SIGTERM",
    },
    S.EXITED: {},
}


def derive(s: SyncState, *, exited: bool, drained: bool, adopting: bool, writes_pending: Callable[[], bool]) -> Phase:
    """The phase the core's state is in (`Core` checks each change against TRANSITIONS)."""
    if exited:
        return Phase.EXITED
    if drained:
        return Phase.DRAINED
    if s.draining:
        return Phase.DRAINING
    if s.superseded:
        return Phase.SUPERSEDED
    if s.failed_open:
        return Phase.FAILED_OPEN
    if s.observation is None or not s.instances:
        return Phase.ADOPTING if adopting else Phase.STARTING
    if s.agent_problem or writes_pending():
        return Phase.REGISTERING
    return Phase.CONFIRMED if s.confirmed_generation == s.generation else Phase.CONFIRMING


class ImpossibleTransition(Exception):
    """The core tried a transition the table does not allow: a bug, reported with both phases."""


def check(current: Phase, new: Phase) -> None:
    if new is not current and new not in TRANSITIONS[current]:
        raise ImpossibleTransition(f"{current.value} -> {new.value} is not an allowed transition")


# What the status file says in each phase, when no problem takes precedence (a config error
# with nothing registered reports config-error whatever the phase).
STATUS_PHASE: Mapping[Phase, str] = {
    S.STARTING: status_state.SYNCING,  # the CLI writes "starting" once, before the core runs
    S.ADOPTING: status_state.SYNCING,
    S.REGISTERING: status_state.SYNCING,
    S.CONFIRMING: status_state.SYNCING,
    S.CONFIRMED: status_state.CONFIRMED,
    S.SUPERSEDED: status_state.SYNCING,
    S.FAILED_OPEN: status_state.FAILED_OPEN,
    S.DRAINING: status_state.DRAINING,
    S.DRAINED: status_state.STOPPED,
    S.EXITED: status_state.STOPPED,
}


def table_markdown() -> str:
    """The transition table as the README shows it (tests check the README against this)."""
    rows = ["| from | to | when |", "|---|---|---|"]
    for source, targets in TRANSITIONS.items():
        for target, why in targets.items():
            rows.append(f"| {source.value} | {target.value} | {why} |")
    return "\n".join(rows)
