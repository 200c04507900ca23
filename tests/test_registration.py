"""What gets registered and how the catalog is compared: pure, no servers."""

from __future__ import annotations

import pytest

from sidecar.config import load_config
from sidecar.registration import (
    CRITICAL,
    PASSING,
    Instance,
    build_instances,
    compare_checks,
    compare_service,
    registration_payload,
    same_pod,
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


INSTANCE = Instance("web", "shop:web-0:web", "10.0.0.5", 8080, (), (("k8s-pod-uid", "uid-new"),))
CHECKS = {"shop:web-0:web:readiness": PASSING, "shop:web-0:web:liveness": PASSING}


def service(address: str = "10.0.0.5", port: int = 8080, uid: str | None = "uid-new") -> dict[str, object]:
    meta = {"k8s-pod-uid": uid} if uid else {}
    return {"ID": "shop:web-0:web", "Service": "web", "Address": address, "Port": port, "Meta": meta}


def checks(readiness: str = PASSING) -> list[dict[str, object]]:
    return [{"CheckID": "shop:web-0:web:readiness", "ServiceID": "shop:web-0:web", "Status": readiness},
            {"CheckID": "shop:web-0:web:liveness", "ServiceID": "shop:web-0:web", "Status": PASSING}]


@pytest.mark.parametrize(("entries", "expected"), [
    ([service()], None),
    ([], "agent accepted web but the catalog does not list shop:web-0:web on node node-b yet"),
    ([service(port=80)], "catalog lists shop:web-0:web at 10.0.0.5:80, expected 10.0.0.5:8080"),
    ([service(address="10.0.0.6")], "catalog lists shop:web-0:web at 10.0.0.6:8080, expected 10.0.0.5:8080"),
    # Every entry is examined, not the first one only.
    ([{"ID": "shop:web-0:admin"}, service()], None),
    ([service(address="10.0.0.6", uid="uid-old"), service()], None),
    # A previous incarnation of the pod (same ID, other UID) is not this pod's registration.
    ([service(address="10.0.0.6", uid="uid-old")],
     "catalog lists shop:web-0:web on node node-b for pod UID uid-old, not this pod (uid-new): "
     "waiting for this pod's registration"),
    # An entry that does not say its UID (an older sidecar's) is this pod's by node, ID and
    # address, but not confirmed until the servers have the meta registered now.
    ([service(uid=None)], "catalog lists shop:web-0:web with other meta than registered"),
])
def test_compare_service(entries, expected) -> None:
    assert compare_service(INSTANCE, "node-b", entries) == expected


def test_without_a_known_uid_node_and_id_decide() -> None:
    anonymous = Instance("web", "shop:web-0:web", "10.0.0.5", 8080, (), ())
    assert anonymous.pod_uid is None
    assert same_pod(anonymous, service(uid="anything")) and same_pod(INSTANCE, service(uid=None))
    assert not same_pod(INSTANCE, service(uid="uid-old"))


@pytest.mark.parametrize(("entries", "expected"), [
    (checks(), None),
    (checks(CRITICAL), "catalog shows check shop:web-0:web:readiness critical, pushed passing"),
    (checks()[1:], "catalog shows check shop:web-0:web:readiness missing, pushed passing"),
    # Another instance's check of the same ID would not be on this node; skip it anyway.
    ([{"CheckID": "shop:web-0:web:readiness", "ServiceID": "other", "Status": PASSING}, *checks()[1:]],
     "catalog shows check shop:web-0:web:readiness missing, pushed passing"),
])
def test_compare_checks(entries, expected) -> None:
    assert compare_checks(INSTANCE, entries, CHECKS) == expected
