"""Configuration: every bad setting is reported at once, naming the variable and the value."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest
from sidecar_process import SIDECAR, base_env, wait_until

from sidecar.config import SETTINGS, load_config, reference_table
from sidecar.errors import ConfigError

VALID = {
    "POD_NAME": "web-0",
    "POD_NAMESPACE": "shop",
    "POD_IP": "10.0.0.5",
    "HOST_IP": "10.0.0.1",
    "KATALOG_SERVICES": "web:8080",
    "KATALOG_READINESS_SOURCE": "fixed",
}

# (case, variables to set (None deletes), the exact problem line expected)
BAD_CONFIGS = [
    ("missing pod name", {"POD_NAME": None}, "POD_NAME is not set: Pod name (downward API `metadata.name`). Required."),
    ("missing pod ip", {"POD_IP": None}, "POD_IP is not set: Pod IP, registered as the service address (downward API `status.podIP`). Required."),
    ("pod ip not an ip", {"POD_IP": "10.0.0"}, "POD_IP='10.0.0': not an IP address"),
    ("unspecified pod ip", {"POD_IP": "0.0.0.0"}, "POD_IP='0.0.0.0': 0.0.0.0 and :: cannot be registered"),
    ("bad namespace", {"POD_NAMESPACE": "Shop_1"}, "POD_NAMESPACE='Shop_1': not a valid namespace name"),
    ("no agent address", {"HOST_IP": None}, "CONSUL_HTTP_ADDR and HOST_IP are both unset: set HOST_IP from the downward API (status.hostIP) or CONSUL_HTTP_ADDR"),
    ("bad agent scheme", {"CONSUL_HTTP_ADDR": "unix:///var/run/consul.sock"}, "CONSUL_HTTP_ADDR='unix:///var/run/consul.sock': scheme must be http:// or https://"),
    ("bad agent port", {"CONSUL_HTTP_ADDR": "localhost:85x0"}, "CONSUL_HTTP_ADDR='localhost:85x0': expected host:port, http://host:port or https://host:port"),
    ("no services", {"KATALOG_SERVICES": None}, "KATALOG_SERVICES is not set: set it, or leave KATALOG_READINESS_SOURCE at kubernetes and annotate the pod with katalog-sidecar.io/services (or katalog-sync.wish.com/service-names); annotations are read through the pod watch"),
    ("port out of range", {"KATALOG_SERVICES": "web:70000"}, "KATALOG_SERVICES='web:70000': port must be between 1 and 65535"),
    ("port missing", {"KATALOG_SERVICES": "web"}, "KATALOG_SERVICES='web': service 'web' has no port (write web:PORT)"),
    ("empty service name", {"KATALOG_SERVICES": "web:80,,api:81"}, "KATALOG_SERVICES='web:80,,api:81': empty service name"),
    ("duplicate service", {"KATALOG_SERVICES": "web:80,web:81"}, "KATALOG_SERVICES='web:80,web:81': service 'web' is listed twice"),
    ("service name unusable in an ID", {"KATALOG_SERVICES": "web/api:80"}, "KATALOG_SERVICES='web/api:80': service name 'web/api': letters, digits, '-', '_' and '.', at most 63 characters (the name is part of the instance's ID, which Consul's API takes in a URL path)"),
    ("bad named port", {"KATALOG_SERVICES": "web:Http_Port"}, "KATALOG_SERVICES='web:Http_Port': port 'Http_Port' of 'web' is neither a number nor a container port name"),
    ("meta key chars", {"KATALOG_META": "team.name=x"}, "KATALOG_META='team.name=x': meta key 'team.name' may only contain letters, digits, '_' and '-'"),
    ("meta reserved by consul", {"KATALOG_META": "consul-x=1"}, "KATALOG_META='consul-x=1': meta key 'consul-x': the prefix 'consul-' is reserved by Consul"),
    ("meta value too long", {"KATALOG_META": "a=" + "x" * 513}, "KATALOG_META='a=" + "x" * 513 + "': meta value of 'a' is longer than 512 characters"),
    ("meta not key=value", {"KATALOG_META": "team"}, "KATALOG_META='team': meta item 'team' is not key=value"),
    ("ttl not a duration", {"KATALOG_CHECK_TTL": "15 seconds"}, "KATALOG_CHECK_TTL='15 seconds': not a duration (use e.g. 500ms, 15s, 1m30s)"),
    ("ttl too short", {"KATALOG_CHECK_TTL": "1s"}, "KATALOG_CHECK_TTL='1s': must be at least 3s (it is refreshed every third of it)"),
    ("deregister below consul minimum", {"KATALOG_DEREGISTER_CRITICAL_AFTER": "30s"}, "KATALOG_DEREGISTER_CRITICAL_AFTER='30s': Consul's minimum is 1m"),
    ("unknown gate mode", {"KATALOG_GATE_MODE": "sometimes"}, "KATALOG_GATE_MODE='sometimes': expected one of latch, continuous"),
    ("unknown gate", {"KATALOG_GATE": "probe"}, "KATALOG_GATE='probe': expected one of exec, condition"),
    ("condition gate outside a cluster", {"KATALOG_GATE": "condition"}, "KATALOG_KUBE_API_URL is not set and KUBERNETES_SERVICE_HOST is empty: not in a cluster? KATALOG_GATE=condition sets the pod condition through the API: set KATALOG_KUBE_API_URL"),
    ("events not a bool", {"KATALOG_EVENTS": "sometimes"}, "KATALOG_EVENTS='sometimes': expected true or false"),
    ("unknown readiness source", {"KATALOG_READINESS_SOURCE": "kubelet"}, "KATALOG_READINESS_SOURCE='kubelet': expected one of kubernetes, http, tcp, fixed"),
    ("http source without url", {"KATALOG_READINESS_SOURCE": "http"}, "KATALOG_READINESS_HTTP_URL is not set, but KATALOG_READINESS_SOURCE is http"),
    ("tcp source bad addr", {"KATALOG_READINESS_SOURCE": "tcp", "KATALOG_READINESS_TCP_ADDR": "8080"}, "KATALOG_READINESS_TCP_ADDR='8080': expected host:port"),
    ("client cert without key", {"CONSUL_CLIENT_CERT": "@file"}, "CONSUL_CLIENT_CERT='@file': needs CONSUL_CLIENT_KEY as well"),
    ("unreadable token file", {"CONSUL_HTTP_TOKEN_FILE": "/nonexistent/token"}, "CONSUL_HTTP_TOKEN_FILE='/nonexistent/token': cannot read the file (No such file or directory)"),
    ("bool not a bool", {"CONSUL_HTTP_SSL_VERIFY": "maybe"}, "CONSUL_HTTP_SSL_VERIFY='maybe': expected true or false"),
    ("per-service var for unknown service", {"KATALOG_SERVICE_WBE_TAGS": "x"}, "KATALOG_SERVICE_WBE_TAGS='x': names no service listed in KATALOG_SERVICES"),
    ("named port without kubernetes", {"KATALOG_SERVICES": "web:http"}, "KATALOG_SERVICES='web:http': named port 'http' needs KATALOG_READINESS_SOURCE=kubernetes (it is resolved from the pod spec)"),
    ("bad log format", {"KATALOG_LOG_FORMAT": "xml"}, "KATALOG_LOG_FORMAT='xml': expected one of text, json"),
    ("bad metrics addr", {"KATALOG_METRICS_ADDR": "9464"}, "KATALOG_METRICS_ADDR='9464': expected host:port"),
    ("kubernetes source outside a cluster", {"KATALOG_READINESS_SOURCE": "kubernetes"}, "KATALOG_KUBE_API_URL is not set and KUBERNETES_SERVICE_HOST is empty: not in a cluster? Set KATALOG_KUBE_API_URL, or KATALOG_READINESS_SOURCE=http|tcp|fixed"),
]


def _env(changes: dict[str, str | None], tmp_path: Path) -> dict[str, str]:
    env = dict(VALID)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value.replace("@file", str(tmp_path / "cert.pem"))
    (tmp_path / "cert.pem").write_text("not really a cert")
    return env


def test_valid_config_loads() -> None:
    config = load_config(VALID)
    assert config.consul.address == "http://10.0.0.1:8500"
    assert [(s.name, s.port) for s in config.services] == [("web", 8080)]
    assert config.gate_mode == "latch" and config.check_ttl == 15.0


@pytest.mark.parametrize(("case", "changes", "expected"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_each_bad_setting_names_variable_and_value(case: str, changes: dict[str, str | None], expected: str,
                                                   tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_env(changes, tmp_path))
    expected = expected.replace("@file", str(tmp_path / "cert.pem"))
    assert caught.value.problems == [expected]


def test_all_problems_are_reported_at_once() -> None:
    env = dict(VALID, POD_IP="nope", KATALOG_GATE_MODE="x", KATALOG_CHECK_TTL="soon", KATALOG_SERVICES="a:0")
    with pytest.raises(ConfigError) as caught:
        load_config(env)
    names = [p.split("=")[0].split(" ")[0] for p in caught.value.problems]
    assert names == ["POD_IP", "KATALOG_SERVICES", "KATALOG_CHECK_TTL", "KATALOG_GATE_MODE"]


def test_consul_addr_forms() -> None:
    assert load_config(dict(VALID, CONSUL_HTTP_ADDR="consul.local:8501")).consul.address == "http://consul.local:8501"
    assert load_config(dict(VALID, CONSUL_HTTP_ADDR="https://consul.local")).consul.address == "https://consul.local:443"
    # Like Consul's own client: http:// does not downgrade CONSUL_HTTP_SSL=true.
    assert load_config(dict(VALID, CONSUL_HTTP_ADDR="http://c:8501", CONSUL_HTTP_SSL="true")).consul.address == "https://c:8501"


def test_per_service_overrides() -> None:
    config = load_config(dict(VALID, KATALOG_SERVICES="web:80,my-api:81", KATALOG_TAGS="a,b", KATALOG_META="team=x,env=prod",
                              KATALOG_SERVICE_MY_API_TAGS="c", KATALOG_SERVICE_MY_API_META="env=staging"))
    web, api = config.services
    assert web.tags == ("a", "b") and dict(web.meta) == {"team": "x", "env": "prod"}
    assert api.tags == ("c",) and dict(api.meta) == {"team": "x", "env": "staging"}


def test_token_is_not_in_repr() -> None:
    config = load_config(dict(VALID, CONSUL_HTTP_TOKEN="s3cr3t-token-value"))
    assert "s3cr3t" not in repr(config)


def test_readme_configuration_table_matches_the_code() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"<!-- config-table:start -->\n(.*?)\n<!-- config-table:end -->", readme, re.S)
    assert block, "README.md lacks the generated configuration table markers"
    assert block.group(1) == reference_table(), "regenerate with: python scripts/update_readme.py"
    assert len(SETTINGS) == reference_table().count("\n") - 1


@pytest.mark.consul
@pytest.mark.parametrize(("case", "changes", "expected"), BAD_CONFIGS[:3] + BAD_CONFIGS[15:18],
                         ids=[c[0] for c in BAD_CONFIGS[:3] + BAD_CONFIGS[15:18]])
def test_bad_config_end_to_end_registers_nothing_and_gate_says_why(case, changes, expected, dev_agent, run_sidecar,
                                                                   tmp_path: Path) -> None:
    env = base_env(tmp_path, dev_agent.addr)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    sidecar = run_sidecar(env)
    line = sidecar.wait_gate(passing=False, contains="config error")
    assert line == f"config error: {expected}"
    assert "Traceback" not in sidecar.logs()
    assert f"config error: {expected}" in sidecar.logs()
    assert dev_agent.agent_services() == {}
    # Documented exit path: it stays up reporting, and exits 2 when the pod is terminated.
    assert sidecar.proc.poll() is None
    sidecar.signal(signal.SIGTERM)
    assert sidecar.proc.wait(timeout=10) == 2
    assert dev_agent.agent_services() == {}


def test_check_config_command_lists_problems_and_exits_2(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "POD_IP": "x"}
    result = subprocess.run([SIDECAR, "check-config"], env=env, capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "config error: POD_IP='x': not an IP address" in lines
    assert all(line.startswith("config error: ") for line in lines) and len(lines) >= 4
    assert "Traceback" not in result.stderr
    wait_until(lambda: True)
