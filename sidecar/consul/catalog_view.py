"""The servers' view of one of this pod's instances, scoped to this agent's node and this pod.

An ID names a pod, not its incarnation: a StatefulSet pod recreated elsewhere, or another
cluster's pod of the same name, has the same ID on another node; a force-deleted pod's
successor on the same node re-registers the same ID with another UID. So every read here is
about this agent's node, and an entry counts as ours only if its `k8s-pod-uid` is this pod's.

Node-scoped reads also keep the servers' work linear: a `/v1/health/service/<name>` blocking
query wakes for every change of every instance of the service (N confirming sidecars x N
changes in a rollout), a node-scoped one only for changes on its node. No single endpoint is
node-scoped, wakes on a check status change and carries address, port and meta, so a watch
reads two: the catalog's services of the node (address, port, UID; wakes on service changes
there) and the node's health (check statuses; wakes on check changes there).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from sidecar.consul.api import ConsulAgent
from sidecar.consul.blocking import BlockingIndex
from sidecar.registration import Instance, compare_checks, compare_service, entry_pod_uid, same_pod

log = logging.getLogger("katalog.catalog")

Entries = list[dict[str, Any]]


class CatalogReads(Protocol):
    """The reads a watch makes; ConsulAgent's, or another design's in the benchmark."""

    def node_of_service(self, service_id: str, timeout: float | None = None) -> str | None: ...

    def node_instance(self, node: str, service_name: str, service_id: str, index: int = 0,
                      wait: float = 0.0, timeout: float | None = None) -> tuple[int, Entries]: ...

    def node_checks(self, node: str, service_name: str, service_id: str, index: int = 0,
                    wait: float = 0.0, timeout: float | None = None) -> tuple[int, Entries]: ...


class InstanceWatch:
    """Blocking reads of one instance on this agent's node, with Consul's loop hygiene.

    Each method makes one or two reads and says what is still different (None: nothing).
    Call `delay()` before each call and wait that long: it keeps the minimum interval.
    `timeout`, when set, caps each read's own timeout (a drain keeps its deadline).
    """

    def __init__(self, reads: CatalogReads, instance: Instance,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._reads = reads
        self.instance = instance
        self._clock = clock
        self.node: str | None = None
        self._service_index = BlockingIndex()
        self._checks_index = BlockingIndex()
        self._service_matched = False

    def reset(self) -> None:
        """After a failed read: read afresh (the caller backs off)."""
        self._service_index.reset()
        self._checks_index.reset()
        self._service_matched = False

    def delay(self) -> float:
        current = self._checks_index if self._service_matched else self._service_index
        return current.delay(self._clock())

    def learn_node(self, timeout: float | None = None) -> str | None:
        """This agent's node, from the agent's own copy of the instance (kept once known:
        after deregistration the agent can no longer say)."""
        if self.node is None:
            self.node = self._reads.node_of_service(self.instance.service_id, timeout)
        return self.node

    # --- what callers ask ----------------------------------------------------------------
    def confirmed(self, wanted: Mapping[str, str], wait: float, timeout: float | None = None) -> str | None:
        """This pod's instance listed on this node at its address, with the pushed statuses."""
        node = self.learn_node(timeout)
        if node is None:
            self._stalled()
            return f"the agent does not hold {self.instance.service_id} (registering it again)"
        if not self._service_matched:
            mismatch = compare_service(self.instance, node, self._services(node, wait, timeout))
            if mismatch is not None:
                return mismatch
            self._service_matched = True
            wait = 0.0  # a fresh read of the checks at their current index, not a wait
        return compare_checks(self.instance, self._checks(node, wait, timeout), wanted)

    def drained(self, wanted: Mapping[str, str], wait: float, timeout: float | None = None) -> str | None:
        """This pod's instance shows `wanted` (critical) on this node, or nothing of ours is left."""
        node = self.learn_node(timeout)
        if node is None:
            return None  # the agent holds nothing of ours: it removes what it does not hold
        if not self._service_matched:
            if not self._ours(node, self._services(node, wait, timeout)):
                return None
            self._service_matched = True
            wait = 0.0
        return compare_checks(self.instance, self._checks(node, wait, timeout), wanted)

    def removed(self, wait: float, timeout: float | None = None) -> str | None:
        """No entry of this pod's instance is left on this node (another pod's may be)."""
        node = self.learn_node(timeout)
        if node is None:
            return None
        if self._ours(node, self._services(node, wait, timeout)):
            return f"catalog still lists {self.instance.service_id} on node {node}"
        return None

    # --- reads ---------------------------------------------------------------------------
    def _ours(self, node: str, entries: Entries) -> bool:
        listed = [e for e in entries if e.get("ID") == self.instance.service_id]
        ours = [e for e in listed if same_pod(self.instance, e)]
        if listed and not ours:
            log.debug("%s on node %s belongs to pod UID %s, not this pod", self.instance.service_id, node,
                      entry_pod_uid(listed[0]))
        return bool(ours)

    def _services(self, node: str, wait: float, timeout: float | None) -> Entries:
        inst, index = self.instance, self._service_index
        try:
            new, entries = self._reads.node_instance(node, inst.name, inst.service_id, index.started(self._clock()),
                                                     wait, timeout)
        except Exception:
            index.reset()
            raise
        index.returned(new)
        return entries

    def _checks(self, node: str, wait: float, timeout: float | None) -> Entries:
        inst, index = self.instance, self._checks_index
        try:
            new, checks = self._reads.node_checks(node, inst.name, inst.service_id, index.started(self._clock()),
                                                  wait, timeout)
        except Exception:
            index.reset()
            raise
        index.returned(new)
        return checks

    def _stalled(self) -> None:
        # Nothing was read: space out the next attempt as a stalled loop would be.
        self._service_index.started(self._clock())
        self._service_index.returned(0)


def foreign_pod_uid(agent: ConsulAgent, instance: Instance, timeout: float | None = None) -> str | None:
    """The UID of the pod that now owns this ID on this agent, when it is not this pod.

    A same-node successor (a force-deleted StatefulSet pod recreated at once) registers the
    same ID with its own UID; the old sidecar must not turn its checks critical or remove it.
    None when the instance is this pod's, or gone.
    """
    _, service = agent.agent_service(instance.service_id, timeout=timeout)
    if service is None or same_pod(instance, service):
        return None
    return entry_pod_uid(service) or "unknown"
