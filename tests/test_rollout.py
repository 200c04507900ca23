"""A rolling update of 3 replicas (maxSurge 1, maxUnavailable 0) with real sidecars and gates."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fakekube import FakeKube

from bench.rollout import run_rollout, save

pytestmark = pytest.mark.consul


def _keep(result, name: str) -> None:
    """Samples feed the README's rollout chart (bench/run.py renders them)."""
    out = os.environ.get("KATALOG_ROLLOUT_SAMPLES_DIR")
    if out:
        save(result, Path(out) / f"{name}.json")


def test_rollout_with_consul_healthy_never_empties_the_catalog(server_client, tmp_path: Path) -> None:
    with FakeKube(tmp_path / "token") as kube:
        result = run_rollout(server_client, kube, tmp_path)
    _keep(result, "rollout-healthy")
    assert result.completed
    assert result.min_healthy >= 3, result.events
    assert result.final_ids == result.new_ids  # exactly the new pods, nothing else
    assert server_client.server.health("web") and {e["Service"]["ID"] for e in server_client.server.health("web")} \
        == result.new_ids


def test_rollout_holds_while_consul_servers_are_down(server_client, tmp_path: Path) -> None:
    with FakeKube(tmp_path / "token") as kube:
        result = run_rollout(server_client, kube, tmp_path, servers_down_for=8.0)
    _keep(result, "rollout-servers-down")
    assert result.completed
    down = [s for s in result.samples if not s.servers_up]
    assert down, "the server was never seen down"
    # While the servers were down no new pod became available, so no old pod was deleted,
    # and the old instances stayed passing (in the agent, which syncs them when servers return).
    assert all(s.deleted == 0 for s in down)
    seen = [s.agent_healthy for s in down if s.agent_healthy is not None]  # None: a sample that timed out
    assert seen and min(seen) >= 3
    first_available = next(t for t, e in result.events if e == "web-new-0 available")
    back = next(t for t, e in result.events if e == "Consul server starting")
    assert first_available > back
    assert result.min_healthy >= 3
    assert result.final_ids == result.new_ids
