"""The contract of the two writes the sidecar makes (its pod condition, its Events), checked
against the fake and a real kube-apiserver alike, so the fake cannot accept what the real server
refuses. Plain HTTP through `requests`, with a service account's token; `writer` may patch
pods/status and create and patch events, `reader` may not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fakekube import FakeKube, make_pod

NS, POD = "contract-w", "web-0"
STATUS = f"/api/v1/namespaces/{NS}/pods/{POD}/status"
EVENTS = f"/api/v1/namespaces/{NS}/events"
SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
CONDITION = "katalog-sidecar.io/consul-confirmed"


class Adapter:
    url: str
    tokens: dict[str, str]
    verify: bool | str = True

    def send(self, method: str, path: str, who: str = "writer", body: Any = None,
             content_type: str = "application/json", **params: str) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}", "Content-Type": content_type,
                   "Accept": "application/json"}
        return requests.request(method, self.url + path, json=body, headers=headers, params=params,
                                verify=self.verify, timeout=10)

    def stop(self) -> None: ...


class FakeAdapter(Adapter):
    def __init__(self, tmp: Path) -> None:
        self.kube = FakeKube(tmp / "token", token="writer-token").start()
        self.kube.create_pod(make_pod(POD, NS))
        self.url, self.tokens = self.kube.url, {"writer": "writer-token"}

    def stop(self) -> None:
        self.kube.stop()


class RealAdapter(Adapter):
    def __init__(self, binaries: dict[str, str], tmp: Path) -> None:
        from kube_control_plane import ControlPlane  # type: ignore[import-not-found]

        self.cp = ControlPlane(binaries, tmp, controller_manager=False).start()
        try:
            api = self.cp.api
            api.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
            # No controller manager here to create `default`, which admission wants for a pod.
            api.post(f"/api/v1/namespaces/{NS}/serviceaccounts", {"metadata": {"name": "default"}})
            api.post(f"/api/v1/namespaces/{NS}/pods", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": POD},
                                                       "spec": {"containers": [{"name": "app", "image": "x.invalid/a:1"}]}})
            rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}"
            self.tokens = {}
            for account, rules in (("writer", [{"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]},
                                               {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]}]),
                                   ("reader", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}])):
                api.post(f"/api/v1/namespaces/{NS}/serviceaccounts", {"metadata": {"name": account}})
                api.post(f"{rbac}/roles", {"metadata": {"name": account}, "rules": rules})
                api.post(f"{rbac}/rolebindings", {
                    "metadata": {"name": account},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
                    "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": NS}]})
                answer = api.post(f"/api/v1/namespaces/{NS}/serviceaccounts/{account}/token",
                                  {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                   "spec": {"expirationSeconds": 3600}})
                self.tokens[account] = answer["status"]["token"]
        except BaseException:
            self.cp.stop()
            raise
        self.url, self.verify = self.cp.url, str(self.cp.pki.ca_crt)

    def stop(self) -> None:
        self.cp.stop()


@pytest.fixture(scope="module", params=["fake", "real"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Adapter]:
    tmp = tmp_path_factory.mktemp(f"contract-writes-{request.param}")
    adapter: Adapter = FakeAdapter(tmp) if request.param == "fake" else RealAdapter(
        request.getfixturevalue("kube_binaries"), tmp)
    try:
        yield adapter
    finally:
        adapter.stop()


def condition(status: str, reason: str) -> dict[str, Any]:
    return {"status": {"conditions": [{"type": CONDITION, "status": status, "reason": reason, "message": reason,
                                       "lastTransitionTime": "2026-11-28T17:00:00Z"}]}}


def test_a_strategic_merge_patch_sets_one_condition_by_type(server: Adapter) -> None:
    first = server.send("PATCH", STATUS, body=condition("False", "WaitingForConsul"), content_type=SMP)
    assert first.status_code == 200, first.text
    assert (first.json()["kind"], first.json()["apiVersion"]) == ("Pod", "v1")
    second = server.send("PATCH", STATUS, body=condition("True", "Confirmed"), content_type=SMP)
    assert second.status_code == 200, second.text
    ours = [c for c in second.json()["status"]["conditions"] if c["type"] == CONDITION]
    assert [(c["status"], c["reason"]) for c in ours] == [("True", "Confirmed")]  # merged by type, not appended


def test_a_patch_needs_a_patch_content_type(server: Adapter) -> None:
    response = server.send("PATCH", STATUS, body=condition("True", "Confirmed"), content_type="application/json")
    assert response.status_code == 415
    assert (response.json()["kind"], response.json()["reason"]) == ("Status", "UnsupportedMediaType")


def test_patching_pods_status_without_the_verb_is_a_403_naming_it(server: Adapter) -> None:
    if "reader" not in server.tokens:
        assert isinstance(server, FakeAdapter)
        server.kube.forbid("patch", "pods/status")
        server.tokens["reader"] = server.tokens["writer"]
    try:
        response = server.send("PATCH", STATUS, who="reader", body=condition("True", "Confirmed"), content_type=SMP)
    finally:
        if isinstance(server, FakeAdapter):
            server.kube.allow("patch", "pods/status")
            del server.tokens["reader"]
    assert response.status_code == 403
    body = response.json()
    assert (body["reason"], body["code"], body["details"]) == ("Forbidden", 403, {"name": POD, "kind": "pods"})
    account = "reader" if isinstance(server, RealAdapter) else "default"
    assert body["message"] == (f'pods "{POD}" is forbidden: User "system:serviceaccount:{NS}:{account}" cannot patch '
                               f'resource "pods/status" in API group "" in the namespace "{NS}"')


def event(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": NS},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": POD, "namespace": NS},
            "reason": "Registered", "message": "registered", "type": "Normal", "count": 1,
            "firstTimestamp": "2026-11-28T17:00:00Z", "lastTimestamp": "2026-11-28T17:00:00Z",
            "source": {"component": "katalog-sidecar"}, "reportingComponent": "katalog-sidecar",
            "reportingInstance": POD}


def test_an_event_is_created_counted_and_listed_by_involved_object(server: Adapter) -> None:
    created = server.send("POST", EVENTS, body=event(f"{POD}.1"))
    assert created.status_code == 201, created.text
    assert created.json()["metadata"]["uid"] and created.json()["metadata"]["resourceVersion"].isdigit()
    again = server.send("POST", EVENTS, body=event(f"{POD}.1"))
    assert (again.status_code, again.json()["reason"]) == (409, "AlreadyExists")
    counted = server.send("PATCH", f"{EVENTS}/{POD}.1", body={"count": 2, "lastTimestamp": "2026-11-28T17:00:05Z"},
                          content_type=MERGE)
    assert counted.status_code == 200 and counted.json()["count"] == 2
    listed = server.send("GET", EVENTS, fieldSelector=f"involvedObject.name={POD}")
    if isinstance(server, RealAdapter):  # the writer may not list; the test's admin token may
        listed = requests.get(server.url + EVENTS, params={"fieldSelector": f"involvedObject.name={POD}"},
                              headers={"Authorization": f"Bearer {server.cp.api.token}"}, verify=server.verify,
                              timeout=10)
    assert listed.status_code == 200
    items = listed.json()["items"]
    assert [(e["metadata"]["name"], e["count"], e["type"]) for e in items] == [(f"{POD}.1", 2, "Normal")]
    gone = server.send("PATCH", f"{EVENTS}/{POD}.gone", body={"count": 2}, content_type=MERGE)
    assert (gone.status_code, gone.json()["reason"]) == (404, "NotFound")


def test_an_event_for_another_namespace_is_invalid(server: Adapter) -> None:
    body = event(f"{POD}.2")
    body["involvedObject"]["namespace"] = "elsewhere"
    response = server.send("POST", EVENTS, body=body)
    assert (response.status_code, response.json()["reason"]) == (422, "Invalid")
