"""Before the first readiness observation: a previous process of this pod left its instance on
the agent (sidecar.adoption says what is adopted and why). Pure.

The instance's readiness is the best knowledge there is (a running sidecar keeps it through the
same API outage) and is refreshed unchanged. Its liveness is about the sidecar, not the app:
this sidecar runs, so it is pushed passing, whatever the dead process left (a liveness left
critical would have the agent reap a ready app's instance, since refreshing a critical TTL does
not reset its critical-since clock). If the agent lost the instance meanwhile (reaped, or
restarted without its state), it is registered again, with the adopted readiness, and logged.
"""

from __future__ import annotations

from collections.abc import Generator

from sidecar.core import actions as a
from sidecar.core.events import AgentInstance, FailureKind
from sidecar.core.faults import REFUSED_HOLD
from sidecar.core.report import Reporter
from sidecar.core.state import Answer, Context, Failed, Sleep, Task, call
from sidecar.registration import (
    LIVENESS_RUNNING,
    PASSING,
    CheckState,
    Instance,
    build_instances,
    check_ids,
    registration_payload,
    service_id,
)


class Adoption:
    def __init__(self, ctx: Context, reporter: Reporter) -> None:
        self._ctx = ctx
        self._reporter = reporter
        # Needs this pod's UID to tell its instance apart.
        self.active = bool(ctx.config.pod_uid)
        self.found: dict[str, CheckState] | None = None  # check ID -> status to keep (None: not looked yet)
        self._ports: dict[str, int] = {}  # port name -> the port the previous process registered

    def keep_alive(self) -> Task:
        ctx = self._ctx
        lost: str | None = None
        try:
            if self.found is not None and any(cid.rpartition(":")[0] in ctx.unverified for cid in self.found):
                self.found = None  # stalled: another pod may hold it now; look again (sidecar.core.stall)
            if self.found is None:
                self.found = yield from self._look()
                ctx.unverified.clear()  # read now (before the first observation nothing else is ours)
            for check_id, check in self.found.items():
                lost = check_id.rpartition(":")[0]
                yield from call(a.UpdateCheck(ctx.request_id(), None, check_id, check.status, check.output))
            lost = None
        except Failed as exc:
            if exc.kind in (FailureKind.NOT_FOUND, FailureKind.NO_TTL) and lost is not None:
                yield from self._register_again(lost)
            elif exc.kind is FailureKind.NOT_FOUND:
                self.found = {}
            else:
                # A 400/403 does not fix itself: one try per hold, as for every other write (the
                # capped backoff retried a forbidden refresh 14 times a minute; simulator seed 25).
                refused = exc.kind in (FailureKind.REJECTED, FailureKind.FORBIDDEN)
                delay = REFUSED_HOLD if refused else ctx.retry_backoff.next_delay()
                what = "look for this pod's instance on the agent" if self.found is None else "keep the adopted statuses alive"
                if ctx.state.last_error != str(exc):
                    ctx.warning(f"cannot {what}: {exc}; retrying in {delay:.1f}s")
                ctx.state.last_error = str(exc)
                ctx.timers.retry_at = ctx.now + delay
                self._reporter.maybe_heartbeat()
                return None
        ctx.timers.retry_at = None
        ctx.retry_backoff.reset()
        if not self.found:
            self.active = False  # nothing of ours on the agent
        ctx.timers.next_refresh = ctx.now + ctx.config.check_ttl / 3
        self._reporter.maybe_heartbeat()
        return None

    def _look(self) -> Generator[a.Call | Sleep, Answer, dict[str, CheckState]]:
        ctx = self._ctx
        found: dict[str, CheckState] = {}
        for spec in ctx.config.services:
            sid = service_id(ctx.config, spec.name)
            seen = yield from call(a.ReadAgentInstance(ctx.request_id(), None, sid))
            assert isinstance(seen, AgentInstance)
            if not (seen.present and ctx.config.pod_uid and seen.pod_uid == ctx.config.pod_uid):
                continue
            if spec.port_name and seen.port:
                self._ports[spec.port_name] = seen.port
            readiness_id, liveness_id = check_ids(sid)
            if readiness_id in seen.checks:
                found[readiness_id] = seen.checks[readiness_id]
            found[liveness_id] = CheckState(PASSING, LIVENESS_RUNNING)  # this sidecar runs
        if found:
            kept = ", ".join(f"{k} {v.status}" for k, v in sorted(found.items()))
            ctx.info(f"adopting the registration on the agent: keeping its statuses ({kept}) until the first readiness "
                     "observation; liveness passing, since this sidecar runs")
        return found

    def _register_again(self, sid: str) -> Task:
        """The agent no longer holds the adopted instance: register it again, adopted statuses pushed."""
        ctx = self._ctx
        assert self.found is not None
        inst = self._instance(sid)
        if inst is None:
            self.found = {k: v for k, v in self.found.items() if not k.startswith(f"{sid}:")}
            return None
        ctx.warning(f"the agent no longer holds the adopted instance {sid} (reaped, or the agent restarted without "
                    "its state): registering it again with its adopted readiness until the first observation")
        yield from call(a.Register(ctx.request_id(), None, sid, registration_payload(inst, ctx.config)))
        for check_id in check_ids(sid):
            check = self.found.get(check_id)
            if check is not None:
                yield from call(a.UpdateCheck(ctx.request_id(), None, check_id, check.status, check.output))
        return None

    def _instance(self, sid: str) -> Instance | None:
        ctx = self._ctx
        try:
            instances = build_instances(ctx.config, ctx.config.pod_uid, self._ports)
        except ValueError as exc:
            ctx.error(f"the agent no longer holds the adopted instance {sid} and it cannot be registered again "
                      f"before the pod is seen: {exc}")
            return None
        return next((i for i in instances if i.service_id == sid), None)
