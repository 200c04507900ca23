"""What the core does when an agent call fails, and with what the agent watch sees: retry
backoff and holds, an agent that comes back, an instance the agent lost, an instance another
pod took over. Pure."""

from __future__ import annotations

import logging

from sidecar import observers as so
from sidecar.core import events as e
from sidecar.core.events import Failure, FailureKind
from sidecar.core.state import Context

# A safety net only: while the agent watches see the agent down, they wake the core when it is back.
AGENT_DOWN_RETRY = 30.0
# Reads that recover re-push our statuses at most this often: a restarted agent gets them at
# once, a proxy that cuts long-polls every few seconds costs nothing more than steady state.
RECOVERY_REFRESH_EVERY = 30.0
REFUSED_HOLD = 60.0  # after a 400/403: a permission or validation error does not fix itself


class AgentFaults:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._waiting_for_agent = False  # the pending retry waits for the agent watch to see it back
        self._earliest_retry = 0.0  # what the backoff allows, when the agent watch brings a retry forward
        self._last_recovery = float("-inf")

    def read_failed(self, event: e.AgentReadFailed) -> None:
        self._ctx.watched[event.service_id] = True

    def seen(self, event: e.AgentSeen) -> None:
        ctx = self._ctx
        was_failing = ctx.watched.get(event.service_id, False)
        if event.service_id in ctx.watched:
            ctx.watched[event.service_id] = False
        if self.other_pod(event.service_id, event.present, event.pod_uid):
            return
        if was_failing:
            self.agent_back(ctx.now, event.present)
        if not event.present:
            self.agent_lost(event.service_id)

    def failed(self, failure: Failure) -> None:
        ctx, s = self._ctx, self._ctx.state
        exc = failure.message
        if failure.kind in (FailureKind.REJECTED, FailureKind.FORBIDDEN):
            fix = ("CONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN_FILE (ACL policy)" if failure.kind is FailureKind.FORBIDDEN
                   else "KATALOG_SERVICES, KATALOG_TAGS, KATALOG_META")
            if "Consul Enterprise feature" in exc:
                fix = "CONSUL_NAMESPACE / CONSUL_PARTITION: this agent is not Consul Enterprise"
            elif fix.startswith("KATALOG_SERVICES") and ctx.config.service_source != "environment":
                fix = f"the pod's {ctx.config.service_source}"
            text = f"Consul refused {', '.join(i.name for i in s.instances)}: {exc} (fix {fix})"
            delay = REFUSED_HOLD
            s.agent_problem_fatal = True
        else:
            text = f"waiting for the agent at {ctx.agent_address}: {exc}"
            s.agent_problem_fatal = False  # the refusal, if any, is no longer what holds the gate
            delay = ctx.retry_backoff.next_delay()
            self._earliest_retry = ctx.now + delay
            if failure.kind is FailureKind.UNAVAILABLE and ctx.watched and all(ctx.watched.values()):
                # The agent watches probe it every 0.8-1.6 s and report when it answers, which
                # brings the retry forward (to no earlier than the backoff): a retry of our own
                # would only add requests.
                delay = AGENT_DOWN_RETRY
        self._waiting_for_agent = delay == AGENT_DOWN_RETRY
        s.last_error = text
        if text != s.agent_problem:
            when = "when it answers again" if delay == AGENT_DOWN_RETRY else f"in {delay:.1f}s"
            ctx.error(f"{text}; retrying {when}")
            if s.agent_problem_fatal:
                ctx.notify(so.CONSUL_REFUSED, text)
        s.agent_problem = text
        ctx.timers.retry_at = ctx.now + delay

    # --- what the agent watch saw ------------------------------------------------------------
    def agent_back(self, at: float, present: bool) -> None:
        """The agent answers reads again after failing. That proves nothing about writes, and a
        read that recovers is common (a proxy that cuts idle long-polls, a flaky network), so it
        never resets the backoff or a hold and never re-registers by itself: an instance the
        agent lost is seen as absent (agent_lost). It may have restarted with its state: re-push
        our statuses once (a TTL refresh, no Raft write when unchanged), at most once per
        RECOVERY_REFRESH_EVERY; and a retry that was waiting for the agent to come back (the
        long AGENT_DOWN_RETRY) comes forward, but no earlier than its backoff allows."""
        ctx = self._ctx
        t = ctx.timers
        if self._waiting_for_agent and t.retry_at is not None:
            t.retry_at = min(t.retry_at, max(at, self._earliest_retry))
        if not present or at < self._last_recovery + RECOVERY_REFRESH_EVERY:
            return
        self._last_recovery = at
        ctx.info(f"agent at {ctx.agent_address} answers again: re-pushing status (our instance is still there)")
        t.next_refresh = min(t.next_refresh, at)
        t.next_readiness_refresh = min(t.next_readiness_refresh, at)

    def other_pod(self, sid: str, present: bool, uid: str | None) -> bool:
        """True while another pod (UID) holds `sid` on this agent: a same-node successor with the
        same name took it over. Every write of ours stops (its checks are not ours to refresh),
        the gate fails and says why; when that instance is gone, ours is registered again."""
        ctx, s = self._ctx, self._ctx.state
        ours = (s.observation.pod_uid if s.observation else None) or ctx.config.pod_uid
        if present and uid and ours and uid != ours:
            if s.superseded.get(sid) != uid:
                ctx.warning(f"{sid} now belongs to pod UID {uid} on this agent, not to this pod ({ours}): "
                            "leaving it alone (superseded: no write of ours)")
            s.superseded[sid] = uid
            s.registered.discard(sid)
            return True
        if s.superseded.pop(sid, None) is not None:
            ctx.info(f"{sid} no longer belongs to another pod on this agent")
        return False

    def agent_lost(self, sid: str) -> None:
        s = self._ctx.state
        if sid in s.registered:
            self._ctx.log(logging.WARNING, f"agent no longer knows {sid}: registering it again")
            s.registered.discard(sid)

