"""The webhook's decision on one AdmissionReview (v1): pure, JSON in, JSON out.

Injection is `inject`'s own code on the pod (one code path: the webhook cannot write anything
`katalog-sidecar inject` would not). It depends only on the pod in the review: no lookup of any
other object, so the order in which a workload's objects are created makes no difference.

Who is injected is decided by the MutatingWebhookConfiguration's selectors (the chart writes
them): pods in namespaces labelled `katalog-sidecar.io/inject=enabled`, and pods labelled
`katalog-sidecar.io/inject=enabled` anywhere else. A label, not an annotation, for the pod:
the apiserver filters on labels, so no other pod of the cluster is ever sent to the webhook.
`katalog-sidecar.io/inject=disabled` on a pod opts it out of its namespace's injection. Here,
as a second line: never the webhook's own namespace, never a pod that already carries the
sidecar (idempotent: a re-invoked or repeated review changes nothing).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from sidecar.manifests import templates as m
from sidecar.manifests.inject import InjectError, InjectOptions, inject

INJECT_LABEL = "katalog-sidecar.io/inject"
ENABLED = "enabled"
DISABLED = "disabled"

Doc = dict[str, Any]


def patch_for(pod: Doc, options: InjectOptions) -> list[Doc]:
    """The JSON Patch that turns `pod` into what `inject` writes (empty: nothing to do).
    Raises InjectError where `inject` refuses."""
    result = inject([pod], options)
    if not result.injected:
        return []
    new_spec = result.documents[0]["spec"]
    old_spec = pod.get("spec") or {}
    # "add" on an existing member replaces it (RFC 6902), so one op per changed field of the spec.
    return [{"op": "add", "path": f"/spec/{key}", "value": value}
            for key, value in new_spec.items() if old_spec.get(key) != value]


def review(body: Any, options: InjectOptions, own_namespace: str) -> tuple[Doc, str]:
    """(the AdmissionReview response, what happened: injected, skipped-*, refused or invalid)."""
    request = body.get("request") if isinstance(body, dict) else None
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        return _response(body, "", [], None), "invalid"
    uid = request["uid"]
    pod = request.get("object")
    namespace = request.get("namespace") or ""
    if request.get("operation") != "CREATE" or (request.get("kind") or {}).get("kind") != "Pod" \
            or not isinstance(pod, dict) or request.get("subResource"):
        return _response(body, uid, [], None), "skipped-not-a-pod-creation"
    if namespace == own_namespace:
        return _response(body, uid, [], None), "skipped-own-namespace"
    labels = m.mapping(m.mapping(pod.get("metadata")).get("labels"))
    if labels.get(INJECT_LABEL) == DISABLED:
        return _response(body, uid, [], None), "skipped-opted-out"
    if m.find_sidecar(m.mapping(pod.get("spec"))) is not None:
        return _response(body, uid, [], None), "skipped-has-sidecar"
    try:
        ops = patch_for({**pod, "kind": "Pod"}, options)
    except InjectError as exc:
        # Admitted as it is (never block a pod): the warning is shown to whoever created it,
        # and the periodic check reports the pod as not injected.
        return _response(body, uid, [], f"katalog-sidecar not injected: {exc}"), "refused"
    return _response(body, uid, ops, None), "injected" if ops else "skipped-has-sidecar"


def _response(body: Any, uid: str, ops: list[Doc], warning: str | None) -> Doc:
    api_version = body.get("apiVersion") if isinstance(body, dict) else None
    response: Doc = {"uid": uid, "allowed": True}
    if ops:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(ops, separators=(",", ":")).encode()).decode()
    if warning:
        response["warnings"] = [warning[:500]]
    return {"apiVersion": api_version or "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
