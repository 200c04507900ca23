"""In-memory models of the node's Consul agent and of the servers' catalog, on a virtual clock.

Only what the sidecar's correctness depends on (consul-and-kubernetes-facts.md, sections 1-4):
- two TTL checks per instance; a missed TTL turns a check critical ("TTL expired");
- re-registration keeps the checks' status and output; a new check starts critical;
- a TTL update on an unknown check answers 500 "does not have associated TTL";
- the reaper runs every 30 s and removes a service whose check carrying
  DeregisterCriticalServiceAfter (at least 1 min) has been critical that long; refreshing a
  critical check does not reset when it became critical;
- restarts with state (registrations persisted, a TTL state restored only if unexpired) or
  without (-dev: everything lost);
- anti-entropy: changes reach the servers shortly after they happen while the servers answer,
  otherwise at the next retry or periodic full sync, the agent being authoritative for its node;
- node-scoped catalog reads with blocking indexes: /v1/health/node/<node> wakes on a check
  change on that node, /v1/catalog/node-services/<node> only on a service change.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sim.clock import Timer, VirtualClock

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
REAP_INTERVAL = 30.0
DEREGISTER_MIN = 60.0
AE_RETRY = 15.0
AE_FULL_SYNC = 60.0


@dataclass
class Reply:
    status: int
    body: Any = None
    index: int = 0
    text: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Check:
    check_id: str
    service_id: str
    name: str
    status: str
    output: str
    ttl: float
    deregister_after: float | None
    initial_status: str
    expires_at: float = 0.0
    critical_since: float | None = None
    timer: Timer | None = field(default=None, repr=False)

    def as_json(self, node: str) -> dict[str, Any]:
        return {"Node": node, "CheckID": self.check_id, "Name": self.name, "Status": self.status,
                "Output": self.output, "ServiceID": self.service_id, "Type": "ttl"}


@dataclass
class Service:
    id: str
    name: str
    address: str
    port: int
    tags: tuple[str, ...]
    meta: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        return {"ID": self.id, "Service": self.name, "Address": self.address, "Port": self.port,
                "Tags": list(self.tags), "Meta": dict(self.meta)}

    def content_hash(self) -> str:
        return format(abs(hash((self.id, self.name, self.address, self.port, self.tags,
                                tuple(sorted(self.meta.items()))))), "x")


Waiter = Callable[[Reply], object]


@dataclass
class _Wait:
    key: tuple[str, str]
    after: int
    done: Waiter
    timer: Timer | None = None
    active: bool = True
    content_hash: str = ""


class ConsulServers:
    """The servers' catalog, node-scoped. `up=False`: reads fail, agent syncs fail."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.up = True
        self.raft_index = 1
        self.services: dict[str, dict[str, dict[str, Any]]] = {}
        self.checks: dict[str, dict[str, dict[str, Any]]] = {}
        self.index: dict[tuple[str, str], int] = {}
        self._waits: list[_Wait] = []
        self.writes = 0

    def sync_node(self, node: str, services: Mapping[str, Service], checks: Mapping[str, Check]) -> bool:
        """A full sync of the agent's state for its node; False when the servers do not answer."""
        if not self.up:
            return False
        new_services = {sid: s.as_json() for sid, s in services.items()}
        new_checks = {cid: c.as_json(node) for cid, c in checks.items()}
        if new_services != self.services.get(node, {}):
            self.services[node] = new_services
            self._bump(node, "services")
            self._bump(node, "checks")  # health/node lists the services' checks
        if new_checks != self.checks.get(node, {}):
            self.checks[node] = new_checks
            self._bump(node, "checks")
        return True

    def _bump(self, node: str, kind: str) -> None:
        self.raft_index += 1
        self.writes += 1
        self.index[(node, kind)] = self.raft_index
        for wait in [w for w in self._waits if w.key == (node, kind) and self.raft_index > w.after]:
            self._finish(wait)

    def _finish(self, wait: _Wait) -> None:
        if not wait.active:
            return
        wait.active = False
        if wait.timer is not None:
            wait.timer.cancel()
        self._waits.remove(wait)
        wait.done(self.read(*wait.key))

    def read(self, node: str, kind: str) -> Reply:
        if not self.up:
            return Reply(500, text="rpc error making call: No cluster leader")
        index = max(1, self.index.get((node, kind), 1))
        if kind == "services":
            services = list(self.services.get(node, {}).values())
            return Reply(200, {"Node": {"Node": node}, "Services": copy.deepcopy(services)}, index)
        return Reply(200, copy.deepcopy(list(self.checks.get(node, {}).values())), index)

    def blocking_read(self, node: str, kind: str, index: int, wait: float, done: Waiter) -> Callable[[], None]:
        """Answer now if the index moved past `index`, else when it does or `wait` runs out.
        Returns a function that cuts the long-poll (the caller then gets nothing)."""
        current = self.index.get((node, kind), 1)
        if not self.up or index <= 0 or current > index:
            done(self.read(node, kind))
            return lambda: None
        waiter = _Wait((node, kind), index, done)
        waiter.timer = self.clock.after(wait, lambda: self._finish(waiter), "catalog wait")
        self._waits.append(waiter)

        def cut() -> None:
            if waiter.active:
                waiter.active = False
                if waiter.timer is not None:
                    waiter.timer.cancel()
                self._waits.remove(waiter)
        return cut

    # --- for invariants ---
    def instance(self, node: str, service_id: str) -> tuple[dict[str, Any] | None, dict[str, str]]:
        """(the service entry, {check ID: status} of its checks) as the servers have them."""
        entry = self.services.get(node, {}).get(service_id)
        statuses = {c["CheckID"]: c["Status"] for c in self.checks.get(node, {}).values()
                    if c["ServiceID"] == service_id}
        return entry, statuses


class AgentModel:
    """The node's Consul agent: local state, TTL timers, the reaper, anti-entropy."""

    def __init__(self, node: str, clock: VirtualClock, servers: ConsulServers, rng: random.Random,
                 persist: bool = True) -> None:
        self.node = node
        self.clock = clock
        self.servers = servers
        self.rng = rng
        self.persist = persist
        self.running = True
        self.services: dict[str, Service] = {}
        self.checks: dict[str, Check] = {}
        self._waits: dict[str, list[_Wait]] = {}
        self._sync_timer: Timer | None = None
        self._reap_timer: Timer | None = None
        self._periodic: Timer | None = None
        self.reaped: list[tuple[float, str, str | None]] = []  # (time, service ID, its pod UID)
        self.restarts = 0
        self._start_timers()

    # --- lifecycle ---
    def _start_timers(self) -> None:
        self._reap_timer = self.clock.after(self.rng.uniform(0, REAP_INTERVAL), self._reap, "reaper")
        self._periodic = self.clock.after(self.rng.uniform(0, AE_FULL_SYNC), self._periodic_sync, "anti-entropy")

    def stop(self) -> None:
        """The agent process exits (a DaemonSet rollout, a crash): nothing answers, no timers."""
        if not self.running:
            return
        self.running = False
        for timer in (self._sync_timer, self._reap_timer, self._periodic):
            if timer is not None:
                timer.cancel()
        for check in self.checks.values():
            if check.timer is not None:
                check.timer.cancel()
        waiting = [wait for waits in self._waits.values() for wait in waits]
        self._waits.clear()
        for wait in waiting:  # open long-polls end with the connection
            wait.active = False
            if wait.timer is not None:
                wait.timer.cancel()
            wait.done(Reply(0, text="connection reset by peer"))
        if not self.persist:
            self.services.clear()
            self.checks.clear()

    def start(self) -> None:
        """Start again, with what was persisted: TTL states restored only if not yet expired."""
        if self.running:
            return
        self.running = True
        self.restarts += 1
        now = self.clock.now
        for check in self.checks.values():
            if check.expires_at <= now:
                check.status, check.output = check.initial_status, ""
            check.critical_since = now if check.status == CRITICAL else None
            self._arm(check)
        self._start_timers()
        self._changed()

    # --- HTTP API (the fault layer decides whether a request gets here) ---
    def register(self, payload: Mapping[str, Any]) -> Reply:
        sid = str(payload.get("ID") or payload["Name"])
        meta = {str(k): str(v) for k, v in (payload.get("Meta") or {}).items()}
        service = Service(sid, str(payload["Name"]), str(payload.get("Address", "")), int(payload.get("Port", 0)),
                          tuple(payload.get("Tags") or ()), meta)
        old_checks = {cid: c for cid, c in self.checks.items() if c.service_id == sid}
        new_checks: dict[str, Check] = {}
        for spec in list(payload.get("Checks") or ()) + ([payload["Check"]] if payload.get("Check") else []):
            cid = str(spec.get("CheckID") or f"service:{sid}")
            ttl = _seconds(spec.get("TTL"))
            if ttl is None or ttl <= 0:
                return Reply(400, text="Invalid check: TTL must be > 0 for TTL checks")
            dca = _seconds(spec.get("DeregisterCriticalServiceAfter"))
            initial = str(spec.get("Status") or CRITICAL)
            old = old_checks.pop(cid, None)
            check = Check(cid, sid, str(spec.get("Name") or cid), initial, "", ttl,
                          None if dca is None else max(dca, DEREGISTER_MIN), initial)
            if old is not None:  # "Restore the fields from the snapshot": status and output survive
                check.status, check.output, check.critical_since = old.status, old.output, old.critical_since
                if old.timer is not None:
                    old.timer.cancel()
            elif check.status == CRITICAL:
                check.critical_since = self.clock.now
            new_checks[cid] = check
        for cid, old in old_checks.items():  # replace-existing-checks is not used: old checks stay
            new_checks[cid] = old
        self.services[sid] = service
        for cid, check in new_checks.items():
            self.checks[cid] = check
            self._arm(check)
        self._changed(sid)
        return Reply(200)

    def deregister(self, service_id: str) -> Reply:
        self._remove(service_id)
        return Reply(200)

    def update_check(self, check_id: str, status: str, output: str) -> Reply:
        if status not in (PASSING, WARNING, CRITICAL):
            return Reply(400, text=f"Invalid check status: '{status}'")
        check = self.checks.get(check_id)
        if check is None:
            return Reply(500, text=f'CheckID "{check_id}" does not have associated TTL')
        changed = (check.status, check.output) != (status, output)
        self._set_status(check, status, output)
        self._arm(check)
        if changed:
            self._changed(check.service_id)
        return Reply(200)

    def service(self, service_id: str) -> Reply:
        service = self.services.get(service_id)
        if service is None:
            return Reply(404, text=f"unknown service ID: {service_id}")
        body = service.as_json()
        body["ContentHash"] = service.content_hash()
        return Reply(200, body)

    def service_checks(self, service_id: str) -> Reply:
        return Reply(200, {cid: c.as_json(self.node) for cid, c in self.checks.items() if c.service_id == service_id})

    def wait_service(self, service_id: str, content_hash: str, wait: float, done: Waiter) -> Callable[[], None]:
        """Hash-blocking GET /v1/agent/service/<id>: answers when the hash differs or `wait` ends."""
        reply = self.service(service_id)
        current = reply.body.get("ContentHash") if reply.ok else None
        if not content_hash or current != content_hash:
            done(reply)
            return lambda: None
        waiter = _Wait(("service", service_id), 0, done, content_hash=content_hash)
        waiter.timer = self.clock.after(wait, lambda: self._wake(waiter), "agent wait")
        self._waits.setdefault(service_id, []).append(waiter)

        def cut() -> None:
            if waiter.active:
                waiter.active = False
                if waiter.timer is not None:
                    waiter.timer.cancel()
                self._waits.get(service_id, []).remove(waiter)
        return cut

    def _wake(self, waiter: _Wait) -> None:
        if not waiter.active:
            return
        waiter.active = False
        if waiter.timer is not None:
            waiter.timer.cancel()
        sid = waiter.key[1]
        if waiter in self._waits.get(sid, []):
            self._waits[sid].remove(waiter)
        waiter.done(self.service(sid))

    # --- internals ---
    def _set_status(self, check: Check, status: str, output: str) -> None:
        if status == CRITICAL and check.status != CRITICAL:
            check.critical_since = self.clock.now
        elif status != CRITICAL:
            check.critical_since = None
        check.status, check.output = status, output
        check.expires_at = self.clock.now + check.ttl

    def _arm(self, check: Check) -> None:
        if check.timer is not None:
            check.timer.cancel()
        check.expires_at = self.clock.now + check.ttl
        check.timer = self.clock.at(check.expires_at, lambda: self._expire(check), "ttl")

    def _expire(self, check: Check) -> None:
        if self.checks.get(check.check_id) is not check or not self.running:
            return
        output = "TTL expired" + (f" (last output before timeout follows): {check.output}" if check.output else "")
        if check.status != CRITICAL:
            check.critical_since = self.clock.now
        changed = (check.status, check.output) != (CRITICAL, output)
        check.status, check.output = CRITICAL, output
        check.timer = None
        if changed:
            self._changed(check.service_id)

    def _reap(self) -> None:
        if not self.running:
            return
        now = self.clock.now
        for check in list(self.checks.values()):
            if (check.deregister_after is not None and check.status == CRITICAL and check.critical_since is not None
                    and now - check.critical_since >= check.deregister_after and check.service_id in self.services):
                self.reaped.append((now, check.service_id, self.services[check.service_id].meta.get("k8s-pod-uid")))
                self._remove(check.service_id)
        self._reap_timer = self.clock.after(REAP_INTERVAL, self._reap, "reaper")

    def _remove(self, service_id: str) -> None:
        existed = self.services.pop(service_id, None) is not None
        for cid in [cid for cid, c in self.checks.items() if c.service_id == service_id]:
            check = self.checks.pop(cid)
            if check.timer is not None:
                check.timer.cancel()
            existed = True
        if existed:
            self._changed(service_id)

    def _changed(self, service_id: str | None = None) -> None:
        for sid in [service_id] if service_id is not None else list(self._waits):
            current = self.service(sid)
            now_hash = current.body.get("ContentHash") if current.ok else None
            for waiter in list(self._waits.get(sid, [])):
                if now_hash != waiter.content_hash:
                    self._wake(waiter)
        if self._sync_timer is None or self._sync_timer.cancelled:
            self._sync_timer = self.clock.after(self.rng.uniform(0.001, 0.02), self._sync, "sync changes")

    def _sync(self) -> None:
        self._sync_timer = None
        if not self.running:
            return
        if not self.servers.sync_node(self.node, self.services, self.checks):
            self._sync_timer = self.clock.after(AE_RETRY, self._sync, "sync retry")

    def _periodic_sync(self) -> None:
        if not self.running:
            return
        self.servers.sync_node(self.node, self.services, self.checks)
        self._periodic = self.clock.after(AE_FULL_SYNC + self.rng.uniform(0, 10), self._periodic_sync, "anti-entropy")

    # --- for invariants ---
    def pod_uid_of(self, service_id: str) -> str | None:
        service = self.services.get(service_id)
        return None if service is None else service.meta.get("k8s-pod-uid")


def _seconds(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value)
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit):
            try:
                return float(text[: -len(unit)]) * units[unit]
            except ValueError:
                return None
    return None
