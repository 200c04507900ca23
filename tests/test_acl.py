"""ACLs with default deny, against a real agent: the example policy is enough and each of its
rules is needed; a refused write and a filtered read each say what the token lacks; a rewritten
token file is picked up without a restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from consul_agents import REPO, AclDevAgent, write_token_file
from http_app import ToggleApp
from sidecar_process import base_env, wait_until

pytestmark = [pytest.mark.consul, pytest.mark.timeout(90)]

POLICY_FILE = REPO / "examples" / "consul-acl-policy.hcl"
SERVICE_ID = "shop:web-7d4b9c-x2k8p:web"
WRITE_RULE = 'service "web" {\n  policy = "write"\n}'
NODE_RULE = 'node_prefix "" {\n  policy = "read"\n}'


def example_policy() -> str:
    text = POLICY_FILE.read_text()
    assert WRITE_RULE in text and NODE_RULE in text, "the tests below derive their variants from these rules"
    return text


def without_write() -> str:
    """The example policy with the service rule lowered to read: everything but service:write."""
    return example_policy().replace(WRITE_RULE, WRITE_RULE.replace('"write"', '"read"'))


def without_node_read() -> str:
    """The example policy without its node rule: service:write (and so service:read) only."""
    return example_policy().replace(NODE_RULE, "")


def acl_env(tmp_path: Path, agent: AclDevAgent, token: str, **overrides: str) -> dict[str, str]:
    token_file = tmp_path / "consul-token"
    write_token_file(token_file, token)
    return base_env(tmp_path, agent.addr, CONSUL_HTTP_TOKEN_FILE=str(token_file), **overrides)


def test_the_example_policy_carries_the_whole_life(acl_agent: AclDevAgent, run_sidecar, tmp_path: Path) -> None:
    token = acl_agent.create_token(example_policy(), "katalog-web")
    with ToggleApp() as app:
        sidecar = run_sidecar(acl_env(tmp_path, acl_agent, token, KATALOG_READINESS_SOURCE="http",
                                      KATALOG_READINESS_HTTP_URL=app.url, KATALOG_READINESS_PROBE_INTERVAL="100ms",
                                      KATALOG_GATE_MODE="continuous"))
        sidecar.wait_gate(passing=False, contains="app is not ready: HTTP probe")
        app.ready = True
        assert sidecar.wait_gate(passing=True) == "ok: web passing in the catalog"
        assert acl_agent.passing_ids("web") == {SERVICE_ID}
        app.ready = False
        sidecar.wait_gate(passing=False, contains="not ready")
        assert acl_agent.passing_ids("web") == set()
        app.ready = True
        sidecar.wait_gate(passing=True)
        assert sidecar.terminate() == 0
    assert acl_agent.health("web") == [] and acl_agent.agent_services() == {}
    logs = sidecar.logs()
    assert f"{SERVICE_ID} critical in the catalog: traffic drains" in logs
    assert f"{SERVICE_ID} removed from the catalog" in logs
    assert "Permission denied" not in logs and "hides" not in logs


def test_the_minimum_found_on_a_real_agent(acl_agent: AclDevAgent) -> None:
    """What the example policy's comments claim: node:write is not needed for the TTL checks,
    and without node:read the health endpoint answers an empty 200, not a 403."""
    token = acl_agent.create_token(WRITE_RULE, "service-write-only")
    headers = {"X-Consul-Token": token}

    def put(path: str, body: object = None) -> requests.Response:
        return requests.put(f"{acl_agent.http}{path}", headers=headers, timeout=10,
                            data=json.dumps(body) if body is not None else None)

    check = {"CheckID": f"{SERVICE_ID}:readiness", "Name": "r", "TTL": "15s", "Status": "critical"}
    register = {"ID": SERVICE_ID, "Name": "web", "Address": "10.42.0.17", "Port": 8080, "Checks": [check]}
    assert put("/v1/agent/service/register?replace-existing-checks=true", register).status_code == 200
    assert put(f"/v1/agent/check/update/{SERVICE_ID}:readiness", {"Status": "passing", "Output": "ok"}).status_code == 200
    assert requests.get(f"{acl_agent.http}/v1/agent/service/{SERVICE_ID}", headers=headers, timeout=10).status_code == 200
    # The servers have it (the management token sees it) ...
    wait_until(lambda: acl_agent.passing_ids("web") == {SERVICE_ID}, what="instance passing in the catalog")
    # ... but this token's read is filtered to nothing, with a 200.
    hidden = requests.get(f"{acl_agent.http}/v1/health/service/web", headers=headers, timeout=10)
    assert (hidden.status_code, hidden.json()) == (200, [])
    assert hidden.headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
    assert put(f"/v1/agent/service/deregister/{SERVICE_ID}").status_code == 200
    # A token without service:write on the name gets a 403 that names permission and service.
    reader = acl_agent.create_token(without_write(), "read-only")
    refused = requests.put(f"{acl_agent.http}/v1/agent/service/register", headers={"X-Consul-Token": reader},
                           data=json.dumps(register), timeout=10)
    assert refused.status_code == 403
    assert "lacks permission 'service:write' on \"web\"" in refused.text


def test_missing_service_write_is_a_403_naming_permission_and_service(acl_agent: AclDevAgent, run_sidecar,
                                                                      tmp_path: Path) -> None:
    token = acl_agent.create_token(without_write(), "no-write")
    sidecar = run_sidecar(acl_env(tmp_path, acl_agent, token))
    line = sidecar.wait_gate(passing=False, contains="Consul refused web")
    assert "PUT /v1/agent/service/register: Permission denied" in line
    assert "lacks permission 'service:write' on \"web\"" in line
    assert line.endswith("(fix CONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN_FILE (ACL policy))")
    code, report = sidecar.status()
    assert code == 1 and "lacks permission 'service:write'" in report
    assert acl_agent.agent_services() == {}
    # A refusal does not fix itself: one log line, no retry storm while the gate keeps failing.
    for _ in range(3):
        sidecar.wait_gate(passing=False, contains="Consul refused web")
    logs = sidecar.logs()
    assert logs.count("ERROR katalog.sync: Consul refused web") == 1, logs
    assert "retrying in 60.0s" in logs
    assert token not in logs
    assert sidecar.terminate() == 0  # nothing was registered: nothing to drain


def test_missing_reads_say_the_catalog_hides_the_service(acl_agent: AclDevAgent, run_sidecar, tmp_path: Path) -> None:
    token = acl_agent.create_token(without_node_read(), "no-node-read")
    sidecar = run_sidecar(acl_env(tmp_path, acl_agent, token))
    line = sidecar.wait_gate(passing=False, contains="hides")
    assert line == (
        "agent accepted web but the catalog cannot be read: the catalog hides web from this token "
        "(X-Consul-Results-Filtered-By-ACLs): it needs service:read on \"web\" and node:read on this "
        "agent's node (see examples/consul-acl-policy.hcl)")
    # The write side worked: the agent and the servers have the instance, passing.
    assert SERVICE_ID in acl_agent.agent_services()
    wait_until(lambda: acl_agent.passing_ids("web") == {SERVICE_ID}, what="instance passing in the catalog")
    for _ in range(3):
        assert sidecar.gate()[0] == 1
    # Termination cannot see the instance go critical through this token, says so, and still
    # deregisters (removal needs service:write only). Confirmation reads this agent's node, which
    # the token may not see at all, so the removal cannot be confirmed either: the exit code
    # and the last words say the agent removed it and the catalog did not confirm.
    assert sidecar.terminate() == 1
    assert acl_agent.health("web") == [] and acl_agent.agent_services() == {}
    logs = sidecar.logs()
    assert "confirming critical in the catalog: the catalog hides web" in logs
    assert "the agent deregistered shop:web-7d4b9c-x2k8p:web but the catalog did not confirm the removal" in logs


def test_rewritten_token_file_is_used_without_a_restart(acl_agent: AclDevAgent, run_sidecar, tmp_path: Path) -> None:
    weak = acl_agent.create_token(without_write(), "weak")
    good = acl_agent.create_token(example_policy(), "good")
    env = acl_env(tmp_path, acl_agent, weak)
    sidecar = run_sidecar(env)
    sidecar.wait_gate(passing=False, contains="lacks permission 'service:write' on \"web\"")
    write_token_file(Path(env["CONSUL_HTTP_TOKEN_FILE"]), good)
    # Well inside the 60 s a refusal otherwise waits: the next heartbeat notices the new file.
    sidecar.wait_gate(passing=True, timeout=10)
    assert acl_agent.passing_ids("web") == {SERVICE_ID}
    assert sidecar.proc is not None and sidecar.proc.poll() is None  # the same process
    assert "accepts our writes again" in sidecar.logs()
    assert sidecar.terminate() == 0
    assert acl_agent.health("web") == []
    assert weak not in sidecar.logs() and good not in sidecar.logs()


def test_unknown_token_is_named_as_such(acl_agent: AclDevAgent, run_sidecar, tmp_path: Path) -> None:
    sidecar = run_sidecar(acl_env(tmp_path, acl_agent, "00000000-1111-4222-8333-444444444444"))
    line = sidecar.wait_gate(passing=False, contains="Consul refused web")
    assert "ACL not found" in line and "CONSUL_HTTP_TOKEN" in line
    assert "00000000-1111-4222-8333-444444444444" not in line


def test_an_unreadable_token_file_keeps_the_last_token_and_says_so_once(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    from sidecar.consul.api import TokenProvider

    token_file = tmp_path / "consul-token"
    write_token_file(token_file, "first-token")
    tokens = TokenProvider(None, token_file)
    assert tokens.get() == "first-token"
    token_file.unlink()  # a rotation half done, or a Secret volume being swapped
    assert [tokens.get() for _ in range(5)] == ["first-token"] * 5
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"cannot read CONSUL_HTTP_TOKEN_FILE {token_file}: No such file or directory "
                        "(keeping the last token read)"]
    write_token_file(token_file, "second-token")
    assert tokens.get() == "second-token"
    assert "first-token" not in caplog.text and "second-token" not in caplog.text
