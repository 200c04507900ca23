"""The fault proxies the regression tests put in front of a real Consul agent do what they say.

Toxiproxy (tests/toxiproxy.py): latency, a connection that stops answering, cut connections.
The counting proxy (tests/counting_proxy.py): status codes on matching requests, held writes,
and blocking queries cut after a few seconds. Each against a real dev agent.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests
from counting_proxy import CountingProxy, long_poll, writes

pytestmark = [pytest.mark.consul, pytest.mark.timeout(60)]

REGISTER = {"Name": "web", "ID": "web-1", "Port": 8080}


def test_toxiproxy_adds_latency_hangs_and_cuts(dev_agent, toxiproxy) -> None:
    proxy = toxiproxy.proxy("agent", dev_agent.addr)
    url = f"http://{proxy.addr}/v1/agent/self"
    assert requests.get(url, timeout=5).status_code == 200

    latency = proxy.add("latency", latency=600)
    started = time.monotonic()
    assert requests.get(url, timeout=5).status_code == 200
    assert time.monotonic() - started >= 0.6  # a lower bound: load can only add to it
    proxy.remove(latency)

    hang = proxy.add("timeout", timeout=0)  # the agent stops answering, the connection stays open
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(url, timeout=1)
    proxy.remove(hang)
    assert requests.get(url, timeout=5).status_code == 200

    # A blocking query in flight when the proxy is cut ends with a broken connection, not an answer.
    index = requests.get(f"http://{proxy.addr}/v1/catalog/services", timeout=5).headers["X-Consul-Index"]
    session = requests.Session()
    waiting = time.monotonic()
    proxy_cut_after = 1.0

    def cut_later() -> None:
        time.sleep(proxy_cut_after)
        proxy.cut()

    threading.Thread(target=cut_later, daemon=True).start()
    with pytest.raises(requests.exceptions.ConnectionError):
        session.get(f"http://{proxy.addr}/v1/catalog/services", params={"index": index, "wait": "20s"}, timeout=30)
    assert time.monotonic() - waiting < 15  # cut, not the 20 s wait running out
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url, timeout=2)  # and new connections are refused
    proxy.restore()
    assert requests.get(url, timeout=5).status_code == 200


def test_counting_proxy_refuses_delays_and_cuts_long_polls(dev_agent) -> None:
    with CountingProxy("127.0.0.1", int(dev_agent.addr.rsplit(":", 1)[1])) as proxy:
        base = f"http://{proxy.addr}"
        proxy.refuse(500, when=writes, body="rpc error: test")
        answer = requests.put(f"{base}/v1/agent/service/register", json=REGISTER, timeout=5)
        assert (answer.status_code, answer.text) == (500, "rpc error: test")
        assert requests.get(f"{base}/v1/agent/services", timeout=5).json() == {}  # reads still forwarded
        assert dev_agent.agent_services() == {}  # and the write never reached the agent

        proxy.heal()
        proxy.delay(1.0, when=writes)
        started = time.monotonic()
        assert requests.put(f"{base}/v1/agent/service/register", json=REGISTER, timeout=5).status_code == 200
        assert time.monotonic() - started >= 1.0
        assert set(dev_agent.agent_services()) == {"web-1"}

        proxy.heal()
        proxy.cut_long_polls(after=1.0)
        index = requests.get(f"{base}/v1/agent/service/web-1", timeout=5).headers["X-Consul-ContentHash"]
        assert requests.get(f"{base}/v1/agent/services", timeout=5).status_code == 200  # not a long-poll: answered
        current = requests.get(f"{base}/v1/catalog/service/web", timeout=5).headers["X-Consul-Index"]
        started = time.monotonic()
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"{base}/v1/catalog/service/web", params={"index": current, "wait": "20s"}, timeout=30)
        assert time.monotonic() - started < 15 and proxy.cuts == 1
        # The agent's own hash-blocking views are long-polls too (the sidecar's agent watcher).
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"{base}/v1/agent/service/web-1", params={"hash": index, "wait": "20s"}, timeout=30)
        assert proxy.cuts == 2
        assert [s.path.split("?")[0] for s in proxy.seen if long_poll(s)] == ["/v1/catalog/service/web",
                                                                             "/v1/agent/service/web-1"]
