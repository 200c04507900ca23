"""The webhook's few Kubernetes API calls: its CA Secret, the caBundle of its
MutatingWebhookConfiguration, and the periodic check for opted-in pods without the sidecar.

Every call has a timeout; callers retry on their own period (the cert loop, the check loop),
so no call here retries by itself.
"""

from __future__ import annotations

import base64
import datetime
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from sidecar.manifests import templates as m
from sidecar.manifests.admission import DISABLED, ENABLED, INJECT_LABEL

log = logging.getLogger("katalog.webhook")

Doc = dict[str, Any]
NOT_INJECTED_REASON = "KatalogSidecarNotInjected"


class ApiError(Exception):
    def __init__(self, status: int, what: str, body: str = "") -> None:
        super().__init__(f"{what}: HTTP {status} {body[:200]}")
        self.status = status


@dataclass(frozen=True)
class KubeAccess:
    url: str
    token_file: Path
    ca_file: Path | None  # None: the system's CAs (or plain http)
    timeout: float = 5.0


class Kube:
    def __init__(self, access: KubeAccess) -> None:
        self.access = access
        self.session = requests.Session()
        self.session.trust_env = False

    def call(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
             params: dict[str, str] | None = None) -> Any:
        token = self.access.token_file.read_text().strip()  # re-read: bound tokens rotate
        response = self.session.request(
            method, self.access.url + path, json=None, data=None if body is None else _json(body), params=params,
            headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
            verify=str(self.access.ca_file) if self.access.ca_file else True, timeout=self.access.timeout)
        if response.status_code >= 300:
            raise ApiError(response.status_code, f"{method} {path}", response.text)
        return response.json() if response.content else None

    # -- the CA Secret, shared by every replica -------------------------------------------------

    def read_secret(self, namespace: str, name: str) -> Doc | None:
        try:
            found: Doc = self.call("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
            return found
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def create_secret(self, namespace: str, name: str, data: dict[str, bytes]) -> bool:
        """False when another replica created it first."""
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {"app.kubernetes.io/managed-by": "katalog-sidecar-webhook"}},
                "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}
        try:
            self.call("POST", f"/api/v1/namespaces/{namespace}/secrets", body)
            return True
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise

    def replace_secret(self, secret: Doc, data: dict[str, bytes]) -> bool:
        """False when the Secret changed since it was read (another replica rotated)."""
        meta = secret["metadata"]
        body = {**secret, "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}
        try:
            self.call("PUT", f"/api/v1/namespaces/{meta['namespace']}/secrets/{meta['name']}", body)
            return True
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise

    # -- the caBundle ------------------------------------------------------------------------------

    def ensure_ca_bundle(self, config_name: str, bundle: bytes, *, add: bool = False) -> bool:
        """Write `bundle` into every webhook of the configuration; True if anything changed.
        `add`: put it in front of what each webhook trusts now instead (a CA not yet known to
        be in use must never push out one that is: two replicas may start at once)."""
        path = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{config_name}"
        for _attempt in range(3):
            try:
                config: Doc = self.call("GET", path)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                # Not created yet (or renamed): served anyway, written once it exists.
                log.warning("MutatingWebhookConfiguration %s not found: its caBundle is written once it exists",
                            config_name)
                return False
            hooks = config.get("webhooks") or []

            def wanted(hook: Doc) -> str:
                current = base64.b64decode((hook.get("clientConfig") or {}).get("caBundle") or "")
                if add and bundle not in current:
                    return base64.b64encode(bundle + current).decode()
                return base64.b64encode(current if add else bundle).decode()

            if all((h.get("clientConfig") or {}).get("caBundle") == wanted(h) for h in hooks):
                return False
            for hook in hooks:
                hook.setdefault("clientConfig", {})["caBundle"] = wanted(hook)
            try:
                self.call("PUT", path, config)  # resourceVersion: a concurrent edit answers 409
                return True
            except ApiError as exc:
                if exc.status != 409:
                    raise
        raise ApiError(409, f"PUT {path}", "changed three times while writing the caBundle")

    # -- the check: opted-in pods that run without the sidecar ------------------------------------

    def pods_without_sidecar(self, own_namespace: str) -> list[Doc]:
        namespaces = self.call("GET", "/api/v1/namespaces", params={"labelSelector": f"{INJECT_LABEL}={ENABLED}"})
        pods: dict[str, Doc] = {}
        for ns in namespaces.get("items") or []:
            name = ns["metadata"]["name"]
            listed = self.call("GET", f"/api/v1/namespaces/{name}/pods",
                               params={"labelSelector": f"{INJECT_LABEL}!={DISABLED}"})
            for pod in listed.get("items") or []:
                pods[pod["metadata"]["uid"]] = pod
        labelled = self.call("GET", "/api/v1/pods", params={"labelSelector": f"{INJECT_LABEL}={ENABLED}"})
        for pod in labelled.get("items") or []:
            pods[pod["metadata"]["uid"]] = pod
        return [p for uid, p in sorted(pods.items())
                if p["metadata"].get("namespace") != own_namespace
                and not p["metadata"].get("deletionTimestamp")
                and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
                and m.find_sidecar(p.get("spec") or {}) is None]

    def warn_not_injected(self, pod: Doc, reporter: str) -> None:
        """A Warning Event on the pod, named after it so every replica writes the same one."""
        meta = pod["metadata"]
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name']}.katalog-not-injected", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "reason": NOT_INJECTED_REASON, "type": "Warning",
            "message": ("opted in to katalog-sidecar injection but admitted without the sidecar (the webhook was "
                        "down, unreachable or refused it): it is not registered in Consul and nothing holds its "
                        "rollout; delete the pod (or restart its workload) to inject it"),
            "source": {"component": reporter}, "reportingComponent": reporter, "reportingInstance": reporter,
            "firstTimestamp": now, "lastTimestamp": now, "eventTime": None, "count": 1,
        }
        try:
            self.call("POST", f"/api/v1/namespaces/{meta['namespace']}/events", event)
        except ApiError as exc:
            if exc.status != 409:  # 409: another replica reported it
                raise


def _json(body: Any) -> str:
    import json

    return json.dumps(body)
