"""TLS to the agent, against real agents serving HTTPS only, with a CA and certificates made by
`consul tls`: verification is on by default, and every failure names the setting to fix."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from consul_agents import ConsulAgent, TlsDevAgent, TlsMaterial, random_loopback
from sidecar_process import Sidecar, base_env

pytestmark = [pytest.mark.consul, pytest.mark.timeout(90)]

SERVICE_ID = "shop:web-7d4b9c-x2k8p:web"


@pytest.fixture(scope="module")
def pki(consul_bin: str, tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return TlsMaterial(consul_bin, tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(consul_bin: str, tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    """Another CA (with its own client certificate) that the agents do not trust."""
    return TlsMaterial(consul_bin, tmp_path_factory.mktemp("other-pki"))


@pytest.fixture
def start_agent(consul_bin: str, pki: TlsMaterial, tmp_path: Path) -> Iterator[Callable[..., TlsDevAgent]]:
    started: list[TlsDevAgent] = []

    def start(**kwargs: object) -> TlsDevAgent:
        agent = TlsDevAgent(consul_bin, tmp_path, pki, name=f"tls{len(started)}", **kwargs)  # type: ignore[arg-type]
        started.append(agent)
        return agent.start()

    try:
        yield start
    finally:
        for agent in started:
            agent.stop()


def tls_env(tmp_path: Path, url: str, **overrides: str) -> dict[str, str]:
    # A short drain bound: a sidecar that never reached the agent still tries to drain on
    # SIGTERM (a previous run may have registered), and gives up at this deadline.
    return base_env(tmp_path, url, **{"KATALOG_DRAIN_TIMEOUT": "2s", **overrides})


def stop_unreached(sidecar: Sidecar) -> None:
    """SIGTERM to a sidecar that never got through: bounded, exit 1, left to the TTL."""
    assert sidecar.terminate(timeout=15) == 1
    assert "drain incomplete before the deadline" in sidecar.logs()


def full_life(sidecar: Sidecar, agent: ConsulAgent) -> None:
    """Confirmed in the catalog, then drained and removed on SIGTERM."""
    assert sidecar.wait_gate(passing=True) == "ok (latched): web passing in the catalog"
    assert agent.passing_ids("web") == {SERVICE_ID}
    assert sidecar.terminate() == 0
    assert agent.health("web") == [] and agent.agent_services() == {}


def refused(sidecar: Sidecar, agent: ConsulAgent, reason: str) -> str:
    """The gate names the TLS failure; nothing reached the agent; it is logged once."""
    line = sidecar.wait_gate(passing=False, contains=reason)
    assert line.startswith(f"waiting for the agent at {agent.http}: TLS with the agent at {agent.http} failed: ")
    assert agent.agent_services() == {}
    for _ in range(3):
        sidecar.wait_gate(passing=False, contains=reason)
    assert sidecar.logs().count(f"ERROR katalog.sync: waiting for the agent at {agent.http}") == 1
    stop_unreached(sidecar)
    return line


def test_the_ca_is_enough_when_the_certificate_names_the_address(start_agent, pki: TlsMaterial, run_sidecar,
                                                                 tmp_path: Path) -> None:
    # `consul tls cert create -server` covers 127.0.0.1, server.dc1.consul and localhost.
    agent = start_agent()
    sidecar = run_sidecar(tls_env(tmp_path, agent.http, CONSUL_CACERT=str(pki.ca)))
    full_life(sidecar, agent)
    assert "WARNING" not in sidecar.logs()


def test_ssl_flag_turns_a_bare_address_into_https(start_agent, pki: TlsMaterial, run_sidecar, tmp_path: Path) -> None:
    agent = start_agent()
    sidecar = run_sidecar(tls_env(tmp_path, agent.addr, CONSUL_HTTP_SSL="true", CONSUL_CACERT=str(pki.ca)))
    full_life(sidecar, agent)


def test_an_address_the_certificate_does_not_name_needs_the_server_name(start_agent, pki: TlsMaterial, run_sidecar,
                                                                        tmp_path: Path) -> None:
    # As in a cluster: the agent is reached at $HOST_IP, which its certificate does not carry.
    host_ip = random_loopback()
    agent = start_agent(also_listen=[host_ip])
    url = agent.url_on(host_ip)
    first = run_sidecar(tls_env(tmp_path, url, CONSUL_CACERT=str(pki.ca)), name="no-server-name")
    line = first.wait_gate(passing=False, contains="not valid for")
    assert line == (f"waiting for the agent at {url}: TLS with the agent at {url} failed: the agent's certificate "
                    f"is not valid for '{host_ip}' (set CONSUL_TLS_SERVER_NAME to a name the certificate carries, "
                    "e.g. server.<datacenter>.consul)")
    stop_unreached(first)
    wrong = run_sidecar(tls_env(tmp_path, url, CONSUL_CACERT=str(pki.ca), CONSUL_TLS_SERVER_NAME="consul.example.com"),
                        name="wrong-server-name")
    wrong.wait_gate(passing=False, contains="not valid for 'consul.example.com'")
    stop_unreached(wrong)
    # urllib3 does not dump the peer certificate into the log on each attempt.
    assert "Certificate did not match" not in wrong.logs()
    second = run_sidecar(tls_env(tmp_path, url, CONSUL_CACERT=str(pki.ca), CONSUL_TLS_SERVER_NAME=pki.server_name),
                         name="server-name")
    full_life(second, agent)


@pytest.mark.parametrize("which", ["other-ca", "system-cas"])
def test_a_certificate_from_an_unknown_ca_is_refused(start_agent, other_pki: TlsMaterial, run_sidecar,
                                                     tmp_path: Path, which: str) -> None:
    agent = start_agent()
    overrides = {"CONSUL_CACERT": str(other_pki.ca)} if which == "other-ca" else {}
    sidecar = run_sidecar(tls_env(tmp_path, agent.http, **overrides))
    line = refused(sidecar, agent, "certificate verification failed")
    expected = "the CA in CONSUL_CACERT" if which == "other-ca" else "a CA of the system bundle (CONSUL_CACERT is not set)"
    assert line.endswith(f"certificate verification failed: the agent's certificate is not signed by {expected}")


def test_an_agent_that_requires_client_certificates(start_agent, pki: TlsMaterial, other_pki: TlsMaterial,
                                                    run_sidecar, tmp_path: Path) -> None:
    agent = start_agent(verify_incoming=True)
    without = run_sidecar(tls_env(tmp_path, agent.http, CONSUL_CACERT=str(pki.ca)), name="without")
    line = refused(without, agent, "requires a client certificate")
    assert line.endswith("the agent requires a client certificate (set CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY)")
    untrusted = run_sidecar(tls_env(tmp_path, agent.http, CONSUL_CACERT=str(pki.ca),
                                    CONSUL_CLIENT_CERT=str(other_pki.client_cert),
                                    CONSUL_CLIENT_KEY=str(other_pki.client_key)), name="untrusted")
    line = refused(untrusted, agent, "rejected the client certificate")
    assert line.endswith("the agent rejected the client certificate in CONSUL_CLIENT_CERT "
                         "(it must be signed by a CA in the agent's tls ca_file)")
    mismatched = run_sidecar(tls_env(tmp_path, agent.http, CONSUL_CACERT=str(pki.ca),
                                     CONSUL_CLIENT_CERT=str(pki.client_cert),
                                     CONSUL_CLIENT_KEY=str(other_pki.client_key)), name="mismatched")
    refused(mismatched, agent, "cannot use CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY")
    good = run_sidecar(tls_env(tmp_path, agent.http, CONSUL_CACERT=str(pki.ca), CONSUL_CLIENT_CERT=str(pki.client_cert),
                               CONSUL_CLIENT_KEY=str(pki.client_key)), name="with")
    full_life(good, agent)


def test_verification_off_works_and_warns_exactly_once(start_agent, run_sidecar, tmp_path: Path) -> None:
    agent = start_agent()
    sidecar = run_sidecar(tls_env(tmp_path, agent.http, CONSUL_HTTP_SSL_VERIFY="false", KATALOG_LOG_FORMAT="json"))
    full_life(sidecar, agent)
    lines = sidecar.logs().splitlines()
    records = [json.loads(line) for line in lines]  # nothing foreign (urllib3's warnings) in the JSON log
    warnings = [r for r in records if r["level"] == "warning"]
    assert [w["message"] for w in warnings] == ["CONSUL_HTTP_SSL_VERIFY=false: the agent's certificate is not verified"]


def test_plain_http_to_the_https_port_says_so(start_agent, run_sidecar, tmp_path: Path) -> None:
    agent = start_agent()
    plain = f"http://{agent.addr}"
    sidecar = run_sidecar(tls_env(tmp_path, plain))
    line = sidecar.wait_gate(passing=False, contains="use https:// in CONSUL_HTTP_ADDR")
    # The agent answers a plain request with a 400 and closes the connection without reading
    # the rest; a PUT's body still unread turns that close into a reset, mostly before the 400
    # can be read. Both say what to do.
    assert line in (
        f"waiting for the agent at {plain}: the agent at {plain} serves HTTPS on this port: "
        "use https:// in CONSUL_HTTP_ADDR or set CONSUL_HTTP_SSL=true",
        f"waiting for the agent at {plain}: the agent at {plain} reset the connection "
        "(if this port serves HTTPS, use https:// in CONSUL_HTTP_ADDR)",
    )
    assert agent.agent_services() == {}
    stop_unreached(sidecar)


def test_https_to_a_plain_http_port_says_so(dev_agent: ConsulAgent, pki: TlsMaterial, run_sidecar,
                                            tmp_path: Path) -> None:
    url = f"https://{dev_agent.addr}"
    sidecar = run_sidecar(tls_env(tmp_path, url, CONSUL_CACERT=str(pki.ca)))
    line = sidecar.wait_gate(passing=False, contains="does not speak TLS")
    assert line.endswith("the agent does not speak TLS on this port (use http:// in CONSUL_HTTP_ADDR, "
                         "or the agent's HTTPS port)")
    assert dev_agent.agent_services() == {}
    stop_unreached(sidecar)


def ca_directory(path: Path, *cas: Path) -> Path:
    """A CA directory as a mounted ConfigMap makes it: any file names, plus `..data` entries."""
    path.mkdir()
    for index, ca in enumerate(cas):
        (path / f"ca-{index}.crt").write_bytes(ca.read_bytes())
    (path / "..data").mkdir()
    return path


def test_a_ca_directory_verifies_the_agent(start_agent, pki: TlsMaterial, other_pki: TlsMaterial, run_sidecar,
                                           tmp_path: Path) -> None:
    agent = start_agent()
    # Every file of the directory is loaded (Consul's client does the same): the right CA may be any of them.
    cas = ca_directory(tmp_path / "cas", other_pki.ca, pki.ca)
    sidecar = run_sidecar(tls_env(tmp_path, agent.http, CONSUL_CAPATH=str(cas)))
    full_life(sidecar, agent)


def test_a_ca_directory_is_the_only_trust(start_agent, other_pki: TlsMaterial, run_sidecar, tmp_path: Path) -> None:
    agent = start_agent()
    sidecar = run_sidecar(tls_env(tmp_path, agent.http, CONSUL_CAPATH=str(ca_directory(tmp_path / "cas", other_pki.ca))))
    line = refused(sidecar, agent, "certificate verification failed")
    assert line.endswith("certificate verification failed: the agent's certificate is not signed by a CA in CONSUL_CAPATH")
