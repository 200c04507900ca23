"""The headline, with the real Deployment controller and the pod runner as kubelet (one node,
one client agent; tests/test_node_rollout.py runs it on real kubelets): a rolling update of the
example Deployment (3 replicas, maxSurge 1, maxUnavailable 0) never leaves Consul's catalog with
fewer passing instances than replicas, and holds while the Consul servers are down.

The claim, exactly: the instances' service checks (the sidecar's) never leave fewer than
`replicas` passing; with every check counted, fewer only at a moment when Consul's failure
detector holds the node's `serfHealth` not passing. All pods here share one node, so such a
moment fails every instance at once: the "minimum 0 passing" this test once saw under load
(issue 19) is that shape, and the samples now say which node failed instead of hiding it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from katalog_cluster import KatalogCluster

from bench.rollout import REPLICAS, SERVERS_DOWN_FOR, RolloutResult, claim_violations, run_rollout, save

pytestmark = [pytest.mark.consul, pytest.mark.kube]


def _keep(result: RolloutResult, name: str) -> None:
    """Samples feed the README's rollout chart (bench/run.py renders them)."""
    out = os.environ.get("KATALOG_ROLLOUT_SAMPLES_DIR")
    if out:
        save(result, Path(out) / f"{name}.json")


def test_rollout_with_consul_healthy_never_empties_the_catalog(katalog_cluster: KatalogCluster) -> None:
    result = run_rollout(katalog_cluster)
    _keep(result, "rollout-healthy")
    assert result.completed, result.events
    problems = claim_violations(result)
    assert not problems, (problems, result.events)
    assert len(result.new_ids) == REPLICAS
    assert result.final_ids == result.new_ids  # exactly the new pods, nothing else
    assert max(s.deleted for s in result.samples) == REPLICAS  # the controller replaced every old pod


def test_rollout_holds_while_consul_servers_are_down(katalog_cluster: KatalogCluster) -> None:
    result = run_rollout(katalog_cluster, servers_down_for=SERVERS_DOWN_FOR)
    _keep(result, "rollout-servers-down")
    assert result.completed, result.events
    down = [s for s in result.samples if not s.servers_up]
    assert down, "the server was never seen down"
    # While the servers were down no new pod became Ready, so the controller deleted no old pod,
    # and the old instances stayed passing (in the agent, which syncs them when servers return).
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
