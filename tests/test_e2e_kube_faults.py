"""Kubernetes faults of issue 10 seen where an operator sees them: the gate line, the log and
the agent, with the installed sidecar against a real Consul agent and the fake API server."""

from __future__ import annotations

import pytest
from test_e2e_kubernetes import NS, POD, create, kube, kube_env  # noqa: F401 (kube: fixture)

pytestmark = [pytest.mark.consul, pytest.mark.timeout(90)]


def test_a_role_without_watch_fails_the_gate_naming_the_verb(dev_agent, kube, run_sidecar, tmp_path) -> None:
    create(kube, app=True, worker=True)
    kube.fail_next(403, n=1000, verb="watch")  # get and list allowed, watch not
    sidecar = run_sidecar(kube_env(tmp_path, dev_agent, kube))
    line = sidecar.wait_gate(passing=False, contains="cannot watch pods")
    assert line == (
        f"waiting for the first readiness observation: forbidden: the service account cannot watch pods in "
        f"namespace {NS}; grant get, list, watch on pods (see examples/rbac.yaml) (API server: pods \"{POD}\" is "
        f"forbidden: User \"system:serviceaccount:{NS}:default\" cannot watch resource \"pods\" in API group \"\" "
        f"in the namespace \"{NS}\")")
    assert dev_agent.agent_services() == {}  # nothing registered for a pod it cannot follow
    assert f"ERROR katalog.kube: forbidden: the service account cannot watch pods in namespace {NS}" in sidecar.logs()
    assert "Traceback" not in sidecar.logs()
