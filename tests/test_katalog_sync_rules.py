"""A pod annotated for katalog-sync registers what katalog-sync's rules give.

`katalog_sync_expects` is katalog-sync's documented behaviour, written here from its
documentation (README annotation table, issue 14) and not from its code:
- one instance per name in `service-names` (comma-separated);
- port: `service-port-<name>`, else `service-port`, else the first `containerPort` of the
  pod's containers;
- tags: `service-tags-<name>` replaces `service-tags` (comma-separated);
- meta: `service-meta-<name>` replaces `service-meta` (`k:v,k2:v2`), beside katalog-sync's
  own keys;
- status: `service-health-<name>`, else `service-health`, else passing while every container
  is ready, leaving out `container-exclude` and the `sidecar` container; a pod being deleted is
  not ready.

Each case runs on two pods: the one a katalog-sync user runs today (with katalog-sync's
sidecar container) for the expectation, and the same pod with katalog-sidecar in place of
katalog-sync's sidecar for ours, with the annotations untouched. Only the tool's own meta keys
differ by design (docs/migrating-from-katalog-sync.md); the user's meta must be identical.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pytest
from fakekube import make_pod

from sidecar.config import RESERVED_META_KEYS, load_config
from sidecar.kube.pod_readiness import container_ports, first_container_port, observe_pod
from sidecar.registration import LIVENESS_RUNNING, PASSING, CheckState, build_instances, wanted_checks

KS = "katalog-sync.wish.com/"
KATALOG_SYNC_KEYS = {"external-source", "external-sync-source", "external-k8s-link", "external-k8s-namespace",
                     "external-k8s-pod"}
ENV = {"POD_NAME": "hw-5d8f7-abcde", "POD_NAMESPACE": "hw", "POD_IP": "10.0.0.7", "HOST_IP": "10.0.0.1",
       "KATALOG_KUBE_API_URL": "http://127.0.0.1:1"}

Registration = tuple[str, int, tuple[str, ...], dict[str, str], str]  # name, port, tags, user meta, status


def katalog_sync_expects(pod: Mapping[str, Any]) -> list[Registration]:
    """katalog-sync's documented rules, applied to the pod it would see."""
    notes = pod["metadata"].get("annotations", {})

    def per(kind: str, name: str) -> str | None:
        return notes.get(f"{KS}{kind}-{name}", notes.get(f"{KS}{kind}"))

    first_port = next(p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", []))
    skipped = set(notes.get(KS + "container-exclude", "").split(",")) | {notes.get(KS + "sidecar")}
    ready = not pod["metadata"].get("deletionTimestamp") and all(
        s["ready"] for s in pod["status"]["containerStatuses"] if s["name"] not in skipped)
    result = []
    for name in notes[KS + "service-names"].split(","):
        port = int(per("service-port", name) or first_port)
        tags = tuple(per("service-tags", name).split(",")) if per("service-tags", name) is not None else ()
        meta_text = per("service-meta", name)
        meta = dict(item.split(":") for item in meta_text.split(",")) if meta_text else {}
        status = per("service-health", name) or ("passing" if ready else "critical")
        result.append((name, port, tags, meta, status))
    return result


def ours(pod: Mapping[str, Any], own: str = "katalog-sidecar") -> list[Registration]:
    """What katalog-sidecar registers for the pod: the real config, registration and readiness code."""
    notes = pod["metadata"].get("annotations", {})
    config = load_config(ENV, notes, default_port=first_container_port(pod, own))
    observation = observe_pod(pod, own, config.readiness.exclude_containers)
    readiness = CheckState(PASSING if observation.ready else "critical", observation.detail)
    result = []
    for inst in build_instances(config, observation.pod_uid, container_ports(pod)):
        status = wanted_checks(inst, readiness, CheckState(PASSING, LIVENESS_RUNNING))[inst.readiness_check_id].status
        user_meta = {k: v for k, v in inst.meta if k not in RESERVED_META_KEYS}
        result.append((inst.name, inst.port, inst.tags, user_meta, status))
    return result


def katalog_sync_pod(annotations: Mapping[str, str], ready: Mapping[str, bool],
                     containers: tuple[str, ...] = ("hw", "katalog-sync-sidecar"), port: int = 8080) -> dict[str, Any]:
    pod = make_pod("hw-5d8f7-abcde", "hw", containers=containers, ready=dict(ready), ports={"http": port})
    pod["metadata"]["annotations"] = dict(annotations)
    return pod


def with_our_sidecar(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The same pod after the migration step: katalog-sidecar in place of katalog-sync's sidecar."""
    ours_pod = copy.deepcopy(dict(pod))
    for entry in ours_pod["spec"]["containers"] + ours_pod["status"]["containerStatuses"]:
        if entry["name"] == "katalog-sync-sidecar":
            entry["name"] = "katalog-sidecar"
    return ours_pod


# (case, annotations, containers' readiness) - the combinations katalog-sync's documentation
# describes, one or two features at a time, then together as in its example Deployment.
CASES: list[tuple[str, dict[str, str], dict[str, bool]]] = [
    ("names only: first containerPort", {KS + "service-names": "hw"}, {}),
    ("service-port", {KS + "service-names": "hw", KS + "service-port": "9000"}, {}),
    ("per-service port replaces service-port",
     {KS + "service-names": "hw,hw-admin", KS + "service-port": "9000", KS + "service-port-hw-admin": "9100"}, {}),
    ("per-service port, others take the containerPort",
     {KS + "service-names": "hw,hw-admin", KS + "service-port-hw-admin": "9100"}, {}),
    ("service-tags", {KS + "service-names": "hw", KS + "service-tags": "a,b"}, {}),
    ("per-service tags replace service-tags",
     {KS + "service-names": "hw,hw-admin", KS + "service-tags": "a,b", KS + "service-tags-hw-admin": "admin"}, {}),
    ("service-meta", {KS + "service-names": "hw", KS + "service-meta": "team:payments,tier:1"}, {}),
    ("per-service meta replaces service-meta (no merge)",
     {KS + "service-names": "hw,hw-admin", KS + "service-meta": "team:payments,tier:1",
      KS + "service-meta-hw-admin": "tier:2"}, {}),
    ("service-health warning for every service", {KS + "service-names": "hw,hw-dns", KS + "service-health": "warning"},
     {"hw": False}),
    ("per-service health, the other follows readiness",
     {KS + "service-names": "hw,hw-dns", KS + "service-health-hw-dns": "passing"}, {"hw": False}),
    ("per-service health replaces service-health",
     {KS + "service-names": "hw,hw-dns", KS + "service-health": "critical", KS + "service-health-hw-dns": "passing"},
     {}),
    ("container-exclude leaves a container out of readiness",
     {KS + "service-names": "hw", KS + "container-exclude": "warmup,debug"},
     {"warmup": False, "debug": False}),
    ("sidecar annotation names katalog-sync's sidecar",
     {KS + "service-names": "hw", KS + "sidecar": "katalog-sync-sidecar"}, {"katalog-sync-sidecar": False}),
    ("check TTL and sync interval change no registration field",
     {KS + "service-names": "hw", KS + "service-check-ttl": "30s", KS + "sync-interval": "2s"}, {}),
    ("tags with '/' and a space (fabio's urlprefix)",
     {KS + "service-names": "hw", KS + "service-tags": "urlprefix-/api,env prod"}, {}),
    ("a service name that is not a DNS label", {KS + "service-names": "hw_service,hw"}, {}),
    ("katalog-sync's example Deployment",
     {KS + "sidecar": "katalog-sync-sidecar", KS + "service-names": "hw-service-name,servicename2",
      KS + "service-port": "8080", KS + "service-tags": "a,b", KS + "sync-interval": "2s"}, {}),
    ("everything at once",
     {KS + "service-names": "hw,hw-admin,hw-dns", KS + "service-port": "8080", KS + "service-port-hw-admin": "9100",
      KS + "service-tags": "v2,blue", KS + "service-tags-hw-dns": "dns", KS + "service-meta": "team:payments",
      KS + "service-meta-hw-admin": "team:sre,internal:yes", KS + "service-health-hw-dns": "warning",
      KS + "container-exclude": "warmup", KS + "sidecar": "katalog-sync-sidecar", KS + "service-check-ttl": "20s"},
     {"warmup": False}),
]


@pytest.mark.parametrize("app_ready", [True, False], ids=["app ready", "app not ready"])
@pytest.mark.parametrize(("case", "annotations", "ready"), CASES, ids=[c[0] for c in CASES])
def test_registration_equals_katalog_sync_rules(case: str, annotations: dict[str, str], ready: dict[str, bool],
                                                app_ready: bool) -> None:
    containers = ("hw", "warmup", "debug", "katalog-sync-sidecar") if "container-exclude" in case or case == "everything at once" \
        else ("hw", "katalog-sync-sidecar")
    readiness = {"hw": app_ready, **{k: v for k, v in ready.items() if k != "hw" or app_ready}}
    today = katalog_sync_pod(annotations, readiness, containers)
    expected = katalog_sync_expects(today)
    assert ours(with_our_sidecar(today)) == expected
    assert expected  # the model registered something: the case tests a registration


def test_a_pod_being_deleted_drains_even_a_fixed_health() -> None:
    """The one deliberate difference in status: katalog-sync keeps a fixed health until the pod
    is gone; katalog-sidecar drains every service at deletionTimestamp (see the guide)."""
    today = katalog_sync_pod({KS + "service-names": "hw,hw-dns", KS + "service-health-hw-dns": "passing"}, {})
    today["metadata"]["deletionTimestamp"] = "2026-11-28T16:00:00Z"
    assert [r[4] for r in katalog_sync_expects(today)] == ["critical", "passing"]
    assert [r[4] for r in ours(with_our_sidecar(today))] == ["critical", "critical"]
    assert [r[:4] for r in ours(with_our_sidecar(today))] == [r[:4] for r in katalog_sync_expects(today)]


def test_the_model_differs_where_the_rules_differ() -> None:
    """The comparison can fail: our own meta-merging namespace gives another result."""
    notes = {KS + "service-names": "hw,hw-admin", KS + "service-meta": "team:payments,tier:1",
             KS + "service-meta-hw-admin": "tier:2"}
    pod = katalog_sync_pod(notes, {})
    merged = katalog_sync_pod({"katalog-sidecar.io/services": "hw:8080,hw-admin:8080",
                               "katalog-sidecar.io/meta": "team=payments,tier=1", "katalog-sidecar.io/meta-hw-admin": "tier=2"},
                              {})
    assert ours(with_our_sidecar(merged)) != katalog_sync_expects(pod)
    assert ours(with_our_sidecar(merged))[1][3] == {"team": "payments", "tier": "2"}
    assert katalog_sync_expects(pod)[1][3] == {"tier": "2"}
