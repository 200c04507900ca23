"""The headline on real nodes: kube-scheduler, four kubelets with containerd running the
project's image, each node with its own Consul client agent. A rolling update of the classic
example (3 replicas, maxSurge 1, maxUnavailable 0) decided by the real Deployment controller
from the Ready conditions the real kubelets derive from the manifest's probes.

The claim, exactly: at every sample the Consul servers' catalog lists at least `replicas`
instances of `web` whose checks all pass, except at a moment when Consul's own failure
detector holds a node's `serfHealth` not passing (it then fails that node's instances, a fault
of the node, not of what the sidecar registered); the instances' *service* checks (the
sidecar's) never leave fewer than `replicas` passing. Such a moment is reported, not hidden.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from bench.rollout import REPLICAS, SERVERS_DOWN_FOR, RolloutResult, claim_violations, run_rollout, save

pytestmark = [pytest.mark.consul, pytest.mark.kube]


def _keep(result: RolloutResult, name: str) -> None:
    """Samples feed the README's rollout chart (bench/rollout.py renders them)."""
    out = os.environ.get("KATALOG_ROLLOUT_SAMPLES_DIR")
    if out:
        save(result, Path(out) / f"{name}.json")


def test_rollout_on_real_nodes_with_consul_healthy(node_cluster: Any) -> None:
    result = run_rollout(node_cluster)
    _keep(result, "rollout-healthy")
    assert result.kubelet.startswith("kubelet v1.34"), result.kubelet
    assert result.completed, (result.events, node_cluster.logs())
    problems = claim_violations(result)
    assert not problems, (problems, result.events)
    assert len(result.new_ids) == REPLICAS
    assert result.final_ids == result.new_ids  # exactly the new pods, nothing else
    assert max(s.deleted for s in result.samples) == REPLICAS  # the controller replaced every old pod


def test_rollout_on_real_nodes_holds_while_consul_servers_are_down(node_cluster: Any) -> None:
    result = run_rollout(node_cluster, servers_down_for=SERVERS_DOWN_FOR)
    _keep(result, "rollout-servers-down")
    assert result.completed, (result.events, node_cluster.logs())
    down = [s for s in result.samples if not s.servers_up]
    assert down, "the server was never seen down"
    # While the servers were down no new pod became Ready (its sidecar cannot confirm), so the
    # controller deleted no old pod, and the old instances stayed passing in their agents.
    assert any(s.created >= 1 for s in down), "the controller never started the rollout"
    assert all(s.deleted == 0 for s in down), result.events
    seen = [s.agent_healthy for s in down if s.agent_healthy is not None]  # None: a sample that timed out
    assert seen and min(seen) >= REPLICAS
    back = next(t for t, e in result.events if e == "Consul server starting")
    first_ready = min(t for t, e in result.events if e.startswith("new pod ") and e.endswith(" ready"))
    assert first_ready > back, result.events
    problems = claim_violations(result)
    assert not problems, (problems, result.events)
    assert result.final_ids == result.new_ids
