"""One contract, two servers: what the sidecar relies on from the pods API, checked against
the fake (tests/fakekube.py) and a real kube-apiserver alike, so the fake cannot drift from
the real wire format. The client is a service account whose Role allows get, list and watch
on one pod name only (`resourceNames`), as examples/rbac.yaml suggests for fixed names.

Each test talks plain HTTP through `requests`; the two adapters differ only in how they make
things happen (create, change or delete a pod, expire history).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fakekube import FakeKube, make_pod

NS, POD, SA = "contract", "web-0", "reader"
PODS = f"/api/v1/namespaces/{NS}/pods"
BY_NAME = {"fieldSelector": f"metadata.name={POD}"}


class Adapter:
    url: str
    token: str
    verify: bool | str = True

    def create_pod(self, name: str) -> None: ...

    def touch(self, name: str, value: str) -> None: ...

    def delete(self, name: str) -> None: ...

    def expire_history(self) -> None: ...

    def get(self, path: str, token: str | None = None, **params: str) -> requests.Response:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return requests.get(self.url + path, params=params, headers=headers, verify=self.verify, timeout=10)

    def watch(self, read_timeout: float = 30.0, **params: str) -> Watch:
        """One watch, open once this returns; iterate for its events until the server ends it."""
        params = {"watch": "true", **BY_NAME, **params}
        response = requests.get(self.url + PODS, params=params, headers={"Authorization": f"Bearer {self.token}"},
                                verify=self.verify, stream=True, timeout=(5, read_timeout))
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("application/json")
        return Watch(response)


class Watch:
    def __init__(self, response: requests.Response) -> None:
        self.response = response
        self.lines = (line for line in response.iter_lines() if line)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        return dict(json.loads(next(self.lines)))

    def close(self) -> None:
        self.response.close()


class FakeAdapter(Adapter):
    def __init__(self, tmp: Path) -> None:
        self.kube = FakeKube(tmp / "token", token="reader-token", service_account=SA, pod_names={POD}).start()
        self.url, self.token, self.verify = self.kube.url, "reader-token", True

    def create_pod(self, name: str) -> None:
        self.kube.create_pod(make_pod(name, NS))

    def touch(self, name: str, value: str) -> None:
        self.kube.annotate_pod(NS, name, "contract/touch", value)

    def delete(self, name: str) -> None:
        self.kube.delete_pod(NS, name)

    def expire_history(self) -> None:
        self.kube.expire_history()

    def stop(self) -> None:
        self.kube.stop()


class RealAdapter(Adapter):
    def __init__(self, binaries: dict[str, str], tmp: Path) -> None:
        from kube_control_plane import ControlPlane

        self.cp = ControlPlane(binaries, tmp, controller_manager=False).start()
        try:
            api = self.cp.api
            api.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
            for account in (SA, "default"):  # no controller manager here to create `default`
                api.post(f"/api/v1/namespaces/{NS}/serviceaccounts", {"metadata": {"name": account}})
            rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/" + NS
            api.post(f"{rbac}/roles", {"metadata": {"name": SA}, "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"], "resourceNames": [POD]}]})
            api.post(f"{rbac}/rolebindings", {
                "metadata": {"name": SA}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SA},
                "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": NS}]})
            answer = api.post(f"/api/v1/namespaces/{NS}/serviceaccounts/{SA}/token",
                              {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                               "spec": {"expirationSeconds": 3600}})
        except BaseException:
            self.cp.stop()
            raise
        self.url, self.token, self.verify = self.cp.url, answer["status"]["token"], str(self.cp.pki.ca_crt)

    def create_pod(self, name: str) -> None:
        self.cp.api.post(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                                "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]}})

    def touch(self, name: str, value: str) -> None:
        self.cp.api.merge_patch(f"{PODS}/{name}", {"metadata": {"annotations": {"contract/touch": value}}})

    def delete(self, name: str) -> None:
        self.cp.api.delete(f"{PODS}/{name}", {"gracePeriodSeconds": 0})

    def expire_history(self) -> None:
        """Other objects change, etcd compacts, and the API server restarts: its new watch cache
        holds nothing older, and neither does etcd."""
        for _ in range(3):
            self.cp.api.post(f"/api/v1/namespaces/{NS}/configmaps", {"metadata": {"generateName": "churn-"}})
        self.cp.etcd.compact()
        self.cp.restart_apiserver(crash=False)

    def stop(self) -> None:
        self.cp.stop()


@pytest.fixture(scope="module", params=["fake", "real"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Adapter]:
    tmp = tmp_path_factory.mktemp(f"contract-{request.param}")
    if request.param == "fake":
        adapter: FakeAdapter | RealAdapter = FakeAdapter(tmp)
    else:
        adapter = RealAdapter(request.getfixturevalue("kube_binaries"), tmp)
    try:
        adapter.create_pod(POD)
        yield adapter
    finally:
        adapter.stop()


def test_list_by_name_is_a_podlist(server: Adapter) -> None:
    response = server.get(PODS, **BY_NAME)
    assert response.status_code == 200
    body = response.json()
    assert (body["kind"], body["apiVersion"]) == ("PodList", "v1")
    assert body["metadata"]["resourceVersion"].isdigit()
    [item] = body["items"]
    assert "kind" not in item and "apiVersion" not in item  # list items carry neither
    meta = item["metadata"]
    assert (meta["name"], meta["namespace"]) == (POD, NS)
    assert meta["uid"] and meta["resourceVersion"].isdigit()


def _compact_json(body: dict[str, Any]) -> bytes:
    """How the API server writes a Status: compact JSON, keys in its order, then a newline."""
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _forbidden(verb: str, name: str | None) -> dict[str, Any]:
    what = f'pods "{name}"' if name else "pods"
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f'{what} is forbidden: User "system:serviceaccount:{NS}:{SA}" cannot {verb} resource "pods" '
                       f'in API group "" in the namespace "{NS}"',
            "reason": "Forbidden", "details": {"name": name, "kind": "pods"} if name else {"kind": "pods"},
            "code": 403}


@pytest.mark.parametrize("watch", [False, True], ids=["list", "watch"])
def test_without_the_name_selector_is_forbidden(server: Adapter, watch: bool) -> None:
    response = server.get(PODS, **({"watch": "true"} if watch else {}))
    assert response.status_code == 403
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.content == _compact_json(_forbidden("watch" if watch else "list", None))


def test_another_name_is_forbidden_with_a_body_over_300_bytes(server: Adapter) -> None:
    response = server.get(PODS, fieldSelector="metadata.name=someone-else")
    assert response.status_code == 403
    assert response.content == _compact_json(_forbidden("list", "someone-else"))
    # Longer than the 300 bytes a client may keep of an error body: it must parse first.
    assert len(response.content) > 300


def test_unknown_token_is_401_status(server: Adapter) -> None:
    response = server.get(PODS, token="not-a-token", **BY_NAME)  # noqa: S106
    assert response.status_code == 401
    assert response.content == _compact_json({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                              "status": "Failure", "message": "Unauthorized",
                                              "reason": "Unauthorized", "code": 401})


def test_watch_from_the_list_version_sends_changes_only(server: Adapter) -> None:
    rv = server.get(PODS, **BY_NAME).json()["metadata"]["resourceVersion"]
    events = server.watch(resourceVersion=rv, allowWatchBookmarks="true", timeoutSeconds="20")
    server.touch(POD, "a")
    first = next(events)  # no synthetic ADDED first: the change itself
    assert first["type"] == "MODIFIED"
    obj = first["object"]
    assert (obj["kind"], obj["apiVersion"], obj["metadata"]["name"]) == ("Pod", "v1", POD)
    assert obj["metadata"]["annotations"]["contract/touch"] == "a"
    assert int(obj["metadata"]["resourceVersion"]) > int(rv)  # the test may compare; clients must not
    events.close()


def test_watch_without_a_version_starts_with_added(server: Adapter) -> None:
    events = server.watch(timeoutSeconds="20")
    first = next(events)
    assert first["type"] == "ADDED" and first["object"]["metadata"]["name"] == POD
    assert (first["object"]["kind"], first["object"]["apiVersion"]) == ("Pod", "v1")
    events.close()


def test_watch_ends_cleanly_at_timeout_seconds(server: Adapter) -> None:
    rv = server.get(PODS, **BY_NAME).json()["metadata"]["resourceVersion"]
    received = list(server.watch(resourceVersion=rv, timeoutSeconds="2", read_timeout=30))
    assert received == []  # nothing changed; the stream just ends


def test_too_old_version_is_an_error_event_in_a_200_stream(server: Adapter) -> None:
    rv = server.get(PODS, **BY_NAME).json()["metadata"]["resourceVersion"]
    server.expire_history()
    [event] = list(server.watch(resourceVersion=rv, timeoutSeconds="20"))
    assert event["type"] == "ERROR"
    status = event["object"]
    assert (status["kind"], status["apiVersion"], status["status"]) == ("Status", "v1", "Failure")
    assert (status["code"], status["reason"]) == (410, "Expired")
    assert status["message"].startswith(f"too old resource version: {rv} (")


def test_deletion_marks_the_pod_then_deletes_it(server: Adapter) -> None:
    rv = server.get(PODS, **BY_NAME).json()["metadata"]["resourceVersion"]
    # The reader may watch POD only; the deletion of POD is what it would see.
    events = server.watch(resourceVersion=rv, timeoutSeconds="20")
    server.delete(POD)
    received = []
    for event in events:
        received.append(event)
        if event["type"] == "DELETED":
            break
    events.close()
    # Even with gracePeriodSeconds=0 the server first marks the pod (MODIFIED), then removes it.
    assert [e["type"] for e in received] == ["MODIFIED", "DELETED"]
    for event in received:
        meta = event["object"]["metadata"]
        assert meta["name"] == POD and meta["deletionTimestamp"] and meta["deletionGracePeriodSeconds"] == 0
    server.create_pod(POD)  # for the tests that follow (module-scoped server)


def test_bookmark_carries_only_a_resource_version(server: Adapter) -> None:
    """With allowWatchBookmarks, a watch whose `timeoutSeconds` runs out after another pod changed
    gets a BOOKMARK 2 s before the end (the real watch cache's timing; changes to other kinds
    do not count), carrying only the resourceVersion."""
    rv = server.get(PODS, **BY_NAME).json()["metadata"]["resourceVersion"]
    events = server.watch(resourceVersion=rv, allowWatchBookmarks="true", timeoutSeconds="6", read_timeout=30)
    time.sleep(0.5)
    server.create_pod("other")  # the cluster moves on; the watched pod does not
    received = list(events)
    events.close()
    server.delete("other")
    bookmarks = [e for e in received if e["type"] == "BOOKMARK"]
    assert bookmarks, received
    # The real watch cache may send a second one when its periodic bookmark tick falls inside
    # the window; every one of them has the same shape.
    for bookmark in bookmarks:
        obj = bookmark["object"]
        assert int(obj["metadata"]["resourceVersion"]) > int(rv)
        assert obj == {"kind": "Pod", "apiVersion": "v1",
                       "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                       "spec": {"containers": None}, "status": {}}
    assert received == bookmarks  # the watched pod did not change: nothing else


def test_no_bookmark_when_no_pod_changed(server: Adapter) -> None:
    """A quiet cluster: the watch ends at `timeoutSeconds` without a bookmark."""
    rv = server.get(PODS, **BY_NAME).json()["metadata"]["resourceVersion"]
    events = server.watch(resourceVersion=rv, allowWatchBookmarks="true", timeoutSeconds="4", read_timeout=30)
    assert list(events) == []
