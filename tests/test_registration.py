"""What gets registered and how the catalog is compared: pure, no servers."""

from __future__ import annotations

import pytest

from sidecar.config import load_config
from sidecar.registration import (
    CRITICAL,
    PASSING,
    Instance,
    build_instances,
    compare_with_catalog,
    registration_payload,
    service_id,
)

ENV = {"POD_NAME": "web-0", "POD_NAMESPACE": "shop", "POD_IP": "10.0.0.5", "HOST_IP": "10.0.0.1",
       "KATALOG_SERVICES": "web:8080,admin:http-admin", "KATALOG_META": "team=pay",
       "KATALOG_KUBE_API_URL": "http://127.0.0.1:1"}


def test_ids_are_stable_and_unique_across_namespaces_and_clusters() -> None:
    config = load_config(ENV)
    assert service_id(config, "web") == "shop:web-0:web"
    other_ns = load_config(dict(ENV, POD_NAMESPACE="shop-web", POD_NAME="0"))
    assert service_id(other_ns, "web") != service_id(config, "web")
    clustered = load_config(dict(ENV, KATALOG_CLUSTER_NAME="eu-1"))
    assert service_id(clustered, "web") == "eu-1:shop:web-0:web"


def test_named_port_resolution_and_tool_meta_wins() -> None:
    config = load_config(ENV)
    web, admin = build_instances(config, "uid-1", {"http-admin": 9000})
    assert (web.port, admin.port) == (8080, 9000)
    assert dict(web.meta) == {"external-source": "kubernetes", "managed-by": "katalog-sidecar",
                              "k8s-namespace": "shop", "k8s-pod": "web-0", "k8s-pod-uid": "uid-1", "team": "pay"}
    with pytest.raises(ValueError, match=r"named ports: grpc, http\)$"):
        build_instances(config, None, {"http": 80, "grpc": 90})


def test_payload_has_two_ttl_checks_and_only_liveness_reaps() -> None:
    config = load_config(dict(ENV, KATALOG_CHECK_TTL="10s", KATALOG_DEREGISTER_CRITICAL_AFTER="90s"))
    web = build_instances(config, None, {"http-admin": 9000})[0]
    payload = registration_payload(web, config)
    readiness, liveness = payload["Checks"]
    assert (payload["ID"], payload["Address"], payload["Port"]) == ("shop:web-0:web", "10.0.0.5", 8080)
    assert readiness["CheckID"] == "shop:web-0:web:readiness" and "DeregisterCriticalServiceAfter" not in readiness
    assert liveness["DeregisterCriticalServiceAfter"] == "90s"
    # Liveness catches a dead sidecar; readiness needs a TTL only because Consul requires one.
    assert (liveness["TTL"], readiness["TTL"]) == ("10s", "100s")
    # Start critical: never served before the real status is pushed.
    assert readiness["Status"] == liveness["Status"] == CRITICAL


INSTANCE = Instance("web", "shop:web-0:web", "10.0.0.5", 8080, (), ())
CHECKS = {"shop:web-0:web:readiness": PASSING, "shop:web-0:web:liveness": PASSING}


def entry(address: str = "10.0.0.5", port: int = 8080, readiness: str = PASSING) -> dict[str, object]:
    return {"Service": {"ID": "shop:web-0:web", "Address": address, "Port": port},
            "Checks": [{"CheckID": "serfHealth", "Status": "passing"},
                       {"CheckID": "shop:web-0:web:readiness", "Status": readiness},
                       {"CheckID": "shop:web-0:web:liveness", "Status": PASSING}]}


@pytest.mark.parametrize(("entries", "expected"), [
    ([entry()], None),
    ([], "agent accepted web but the catalog does not list shop:web-0:web yet"),
    ([entry(port=80)], "catalog lists shop:web-0:web at 10.0.0.5:80, expected 10.0.0.5:8080"),
    ([entry(address="10.0.0.6")], "catalog lists shop:web-0:web at 10.0.0.6:8080, expected 10.0.0.5:8080"),
    ([entry(readiness=CRITICAL)], "catalog shows check shop:web-0:web:readiness critical, pushed passing"),
])
def test_compare_with_catalog(entries, expected) -> None:
    assert compare_with_catalog(INSTANCE, entries, CHECKS) == expected
