"""The I/O of `katalog-sidecar explain`: reads the pod, its Events and Consul; builds sidecar.explain.Facts.

Runs on the operator's machine: the Kubernetes API through their kubeconfig (get on pods and
list on events; no exec, no secrets), Consul through the pod's node agent where reachable and
the address they give. Every call has a timeout; nothing is retried (the operator runs it again).
"""

from __future__ import annotations

import base64
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from sidecar import annotations as pod_annotations
from sidecar import explain as ex
from sidecar.config import load_config
from sidecar.errors import ConfigError
from sidecar.manifests import CONDITION_TYPE
from sidecar.registration import POD_UID_META, build_instances

SIDECAR_CONTAINER = "katalog-sidecar"
GATE_COMMAND = "readiness-gate"
# Variables naming files inside the pod: meaningless on the operator's machine, and the token
# file is a secret this command never reads.
POD_FILES = ("CONSUL_HTTP_TOKEN_FILE", "CONSUL_CACERT", "CONSUL_CAPATH", "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY",
             "KATALOG_KUBE_TOKEN_FILE", "KATALOG_KUBE_CA_FILE", "KATALOG_STATUS_FILE")
Doc = dict[str, Any]


class ExplainError(Exception):
    """Cannot explain at all (no kubeconfig, no such pod): a message for the operator."""


# --- Kubernetes --------------------------------------------------------------------------------

@dataclass
class KubeAccess:
    server: str
    session: requests.Session
    namespace: str  # the context's namespace
    timeout: float

    def get(self, path: str, **params: str) -> Doc:
        try:
            response = self.session.get(self.server + path, params=params, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ExplainError(f"Kubernetes API at {self.server}: {exc}") from exc
        if response.status_code == 404:
            raise ExplainError(f"not found: {path}")
        if response.status_code in (401, 403):
            raise ExplainError(f"Kubernetes API refused GET {path} ({response.status_code}): {_message(response)}")
        if not response.ok:
            raise ExplainError(f"Kubernetes API GET {path}: {response.status_code} {_message(response)}")
        data = response.json()
        if not isinstance(data, dict):
            raise ExplainError(f"Kubernetes API GET {path}: not an object")
        return data


def _message(response: requests.Response) -> str:
    try:
        body = response.json()
        return str(body.get("message") or body) if isinstance(body, dict) else response.text[:300]
    except ValueError:
        return response.text[:300].strip()


def _data_file(data: str, directory: Path, name: str) -> str:
    path = directory / name
    path.write_bytes(base64.b64decode(data))
    return str(path)


def load_kubeconfig(path: str | None, context: str | None, timeout: float) -> KubeAccess:
    """The cluster, credentials and namespace of a kubeconfig context (token, client cert or basic auth)."""
    import yaml

    names = [p for p in (path or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")).split(os.pathsep) if p]
    config: Doc = {"clusters": [], "users": [], "contexts": []}
    for name in names:
        try:
            doc = yaml.safe_load(Path(name).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ExplainError(f"kubeconfig {name}: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise ExplainError(f"kubeconfig {name}: not valid YAML") from exc
        for key in ("clusters", "users", "contexts"):
            config[key] += doc.get(key) or []
        config.setdefault("current-context", doc.get("current-context"))
    wanted = context or config.get("current-context")

    def entry(kind: str, name: str | None) -> Doc:
        found = next((e for e in config[kind] if isinstance(e, dict) and e.get("name") == name), None)
        if found is None:
            raise ExplainError(f"kubeconfig: no {kind[:-1]} named {name!r}")
        return dict(found.get(kind[:-1]) or {})

    ctx = entry("contexts", wanted)
    cluster, user = entry("clusters", ctx.get("cluster")), entry("users", ctx.get("user"))
    server = str(cluster.get("server") or "").rstrip("/")
    if not server.startswith(("https://", "http://")):
        raise ExplainError(f"kubeconfig: cluster {ctx.get('cluster')!r} has no server URL")
    scratch = Path(tempfile.mkdtemp(prefix="katalog-explain-"))  # *-data decoded for requests
    session = requests.Session()
    session.trust_env = False
    if cluster.get("insecure-skip-tls-verify"):
        session.verify = False
    elif cluster.get("certificate-authority-data"):
        session.verify = _data_file(cluster["certificate-authority-data"], scratch, "ca.crt")
    elif cluster.get("certificate-authority"):
        session.verify = str(cluster["certificate-authority"])
    if user.get("token"):
        session.headers["Authorization"] = f"Bearer {user['token']}"
    elif user.get("tokenFile"):
        session.headers["Authorization"] = f"Bearer {Path(user['tokenFile']).read_text().strip()}"
    elif user.get("username"):
        session.auth = (str(user["username"]), str(user.get("password") or ""))
    cert: str | None = user.get("client-certificate") or (
        _data_file(user["client-certificate-data"], scratch, "client.crt") if user.get("client-certificate-data") else None)
    client_key: str | None = user.get("client-key") or (
        _data_file(user["client-key-data"], scratch, "client.key") if user.get("client-key-data") else None)
    if cert and client_key:
        session.cert = (str(cert), str(client_key))
    if user.get("exec") or user.get("auth-provider"):
        raise ExplainError("kubeconfig: exec and auth-provider credentials are not supported; "
                           "use a context with a token or a client certificate")
    return KubeAccess(server, session, str(ctx.get("namespace") or "default"), timeout)


def _find_sidecar(pod: Doc, wanted: str | None) -> tuple[Doc | None, bool]:
    """(the sidecar container's spec, whether it is a native sidecar)."""
    spec = pod.get("spec") or {}
    candidates = [(c, False) for c in spec.get("containers") or []]
    candidates += [(c, True) for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    if wanted:
        return next(((c, n) for c, n in candidates if c.get("name") == wanted), (None, False))

    def probes_gate(c: Doc) -> bool:
        command = (((c.get("readinessProbe") or {}).get("exec") or {}).get("command")) or []
        return any(GATE_COMMAND in str(part) for part in command)

    for test in (lambda c: c.get("name") == SIDECAR_CONTAINER, probes_gate,
                 lambda c: "katalog-sidecar" in str(c.get("image") or "")):
        found = next(((c, n) for c, n in candidates if test(c)), None)
        if found:
            return found
    return None, False


def _field(pod: Doc, path: str) -> str | None:
    meta, status, spec = pod.get("metadata") or {}, pod.get("status") or {}, pod.get("spec") or {}
    simple = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
              "metadata.uid": meta.get("uid"), "status.podIP": status.get("podIP"),
              "status.hostIP": status.get("hostIP"), "spec.nodeName": spec.get("nodeName"),
              "spec.serviceAccountName": spec.get("serviceAccountName")}
    if path in simple:
        value = simple[path]
        return None if value is None else str(value)
    for prefix, key in (("metadata.annotations['", "annotations"), ("metadata.labels['", "labels")):
        if path.startswith(prefix) and path.endswith("']"):
            value = (meta.get(key) or {}).get(path[len(prefix):-2])
            return None if value is None else str(value)
    return None


def _sidecar_env(pod: Doc, container: Doc) -> tuple[dict[str, str], list[str]]:
    """What the kubelet gave the sidecar, as far as the pod object tells (no Secrets read)."""
    env: dict[str, str] = {}
    notes: list[str] = []
    for var in container.get("env") or []:
        name = str(var.get("name") or "")
        if "value" in var:
            env[name] = str(var["value"])
        elif (var.get("valueFrom") or {}).get("fieldRef"):
            value = _field(pod, str(var["valueFrom"]["fieldRef"].get("fieldPath")))
            if value is not None:
                env[name] = value
        elif name not in ("CONSUL_HTTP_TOKEN",):
            notes.append(f"{name} comes from a Secret or ConfigMap, which explain does not read")
    if container.get("envFrom"):
        notes.append("envFrom is not read: settings from it are not known here")
    for name in POD_FILES:
        env.pop(name, None)
    # The kubelet gives every container the in-cluster API address; only its presence matters here.
    env.setdefault("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
    env.setdefault("KUBERNETES_SERVICE_PORT", "443")
    return env, notes


def _pod_facts(pod: Doc, sidecar: Doc | None, excluded: tuple[str, ...]) -> ex.PodFacts:
    meta, status, spec = pod.get("metadata") or {}, pod.get("status") or {}, pod.get("spec") or {}
    conditions = {str(c.get("type")): (str(c.get("status")), str(c.get("reason") or ""), str(c.get("message") or ""))
                  for c in status.get("conditions") or []}
    containers = []
    native = {c.get("name") for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"}
    # Classic init containers are done before the pod runs; native sidecars run beside the app.
    statuses = [cs for cs in status.get("initContainerStatuses") or [] if cs.get("name") in native]
    for cs in statuses + list(status.get("containerStatuses") or []):
        state = cs.get("state") or {}
        kind = next(iter(state), "unknown")
        detail = state.get(kind) or {}
        text = " ".join(str(detail.get(k)) for k in ("reason", "message") if detail.get(k))
        if kind == "terminated" and detail.get("exitCode") is not None:
            text = f"exit code {detail['exitCode']}" + (f", {text}" if text else "")
        containers.append(ex.Container(str(cs.get("name")), bool(cs.get("ready")), kind, text,
                                       int(cs.get("restartCount") or 0)))
    gate = "none"
    if sidecar is not None:
        exec_gate = any(GATE_COMMAND in str(p) for p in
                        (((sidecar.get("readinessProbe") or {}).get("exec") or {}).get("command") or []))
        condition_gate = any(g.get("conditionType") == CONDITION_TYPE for g in spec.get("readinessGates") or [])
        gate = "both" if exec_gate and condition_gate else "exec" if exec_gate else "condition" if condition_gate else "none"
    return ex.PodFacts(
        namespace=str(meta.get("namespace")), name=str(meta.get("name")), uid=str(meta.get("uid")),
        node=str(spec.get("nodeName") or ""), host_ip=str(status.get("hostIP") or ""),
        pod_ip=str(status.get("podIP") or ""), phase=str(status.get("phase") or ""),
        terminating=bool(meta.get("deletionTimestamp")), conditions=conditions, containers=tuple(containers),
        sidecar=None if sidecar is None else str(sidecar.get("name")), gate=gate, excluded=excluded)


def _events(kube: KubeAccess, namespace: str, name: str, uid: str) -> tuple[ex.Event, ...]:
    selector = f"involvedObject.kind=Pod,involvedObject.name={name},involvedObject.uid={uid}"
    items = kube.get(f"/api/v1/namespaces/{quote(namespace)}/events", fieldSelector=selector).get("items") or []

    def when(e: Doc) -> str:
        return str(e.get("lastTimestamp") or e.get("eventTime") or (e.get("metadata") or {}).get("creationTimestamp") or "")

    return tuple(ex.Event(str(e.get("reason") or ""), str(e.get("type") or ""), str(e.get("message") or ""),
                          int(e.get("count") or 1), when(e),
                          str((e.get("source") or {}).get("component") or e.get("reportingComponent") or ""))
                 for e in sorted(items, key=when))


# --- Consul ------------------------------------------------------------------------------------

@dataclass
class ConsulAccess:
    token: str | None
    verify: bool | str
    timeout: float

    def get(self, base: str, path: str, **params: str) -> Any:
        """Raises ValueError with a short reason."""
        headers = {"X-Consul-Token": self.token} if self.token else {}
        try:
            response = requests.get(base + path, params=params, headers=headers, timeout=self.timeout,
                                    verify=self.verify)
        except requests.Timeout as exc:
            raise ValueError(f"no answer within {self.timeout:g}s") from exc
        except requests.RequestException as exc:
            raise ValueError(f"cannot connect: {type(exc).__name__}") from exc
        if not response.ok:
            raise ValueError(f"{response.status_code} {response.text.strip()[:200]}")
        return response.json()


def _checks(items: Any, service_id: str) -> tuple[ex.Check, ...]:
    return tuple(ex.Check(str(c.get("CheckID")), str(c.get("Status")), str(c.get("Output") or "").strip())
                 for c in items if isinstance(c, dict) and c.get("ServiceID") == service_id)


def _agent_view(consul: ConsulAccess, address: str, expected: tuple[ex.Expected, ...],
                scope: Mapping[str, str]) -> ex.ConsulView:
    try:
        me = consul.get(address, "/v1/agent/self")
        services = consul.get(address, "/v1/agent/services", **scope)
        checks = consul.get(address, "/v1/agent/checks", **scope)
    except ValueError as exc:
        return ex.ConsulView(address, error=str(exc))
    node = str((me.get("Config") or {}).get("NodeName") or "")
    known = ((me.get("Stats") or {}).get("consul") or {}).get("known_servers")
    found = {}
    for e in expected:
        svc = services.get(e.service_id) if isinstance(services, dict) else None
        if isinstance(svc, dict):
            found[e.service_id] = ex.ConsulInstance(
                e.service_id, node, str(svc.get("Address") or ""), int(svc.get("Port") or 0),
                (svc.get("Meta") or {}).get(POD_UID_META), _checks(checks.values() if isinstance(checks, dict) else [],
                                                                   e.service_id))
    return ex.ConsulView(address, node=node, instances=found,
                         known_servers=int(str(known)) if str(known or "").isdigit() else None)


def _catalog_view(consul: ConsulAccess, address: str, expected: tuple[ex.Expected, ...], node: str | None,
                  host_ip: str, scope: Mapping[str, str]) -> ex.ConsulView:
    found = {}
    try:
        for e in expected:
            entries = consul.get(address, f"/v1/health/service/{quote(e.name, safe='')}",
                                 filter=f'Service.ID == "{e.service_id}"', **scope)
            # Scoped to the node when it is known: another node's entry with this ID (a
            # StatefulSet pod recreated elsewhere) is not this pod's.
            for entry in entries:
                svc, entry_node = entry.get("Service") or {}, str((entry.get("Node") or {}).get("Node") or "")
                if node and entry_node != node:
                    continue
                found[e.service_id] = ex.ConsulInstance(
                    e.service_id, entry_node, str(svc.get("Address") or ""), int(svc.get("Port") or 0),
                    (svc.get("Meta") or {}).get(POD_UID_META), _checks(entry.get("Checks") or [], e.service_id))
        if not node and host_ip:
            nodes = consul.get(address, "/v1/catalog/nodes", filter=f'Address == "{host_ip}"')
            node = str(nodes[0].get("Node")) if len(nodes) == 1 else None
        health, output = None, ""
        if node:
            for check in consul.get(address, f"/v1/health/node/{quote(node, safe='')}"):
                if check.get("CheckID") == "serfHealth":
                    health, output = str(check.get("Status")), str(check.get("Output") or "").strip()
    except ValueError as exc:
        return ex.ConsulView(address, error=str(exc), node=node)
    return ex.ConsulView(address, node=node, instances=found, node_health=health, node_health_output=output)


# --- all together ------------------------------------------------------------------------------

def gather(kube: KubeAccess, namespace: str, name: str, *, consul_addr: str | None, consul: ConsulAccess,
           container: str | None = None) -> ex.Facts:
    pod = kube.get(f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}")
    sidecar, _native = _find_sidecar(pod, container)
    notes: list[str] = []
    annotations = {str(k): str(v) for k, v in ((pod.get("metadata") or {}).get("annotations") or {}).items()}
    expected: tuple[ex.Expected, ...] = ()
    problems: tuple[str, ...] = ()
    source = "no sidecar container"
    scope: dict[str, str] = {}
    agent_address: str | None = None
    excluded = pod_annotations.excluded_containers(annotations)
    if sidecar is not None:
        env, env_notes = _sidecar_env(pod, sidecar)
        notes += env_notes
        ports = {str(p["name"]): int(p["containerPort"]) for c in (pod.get("spec") or {}).get("containers") or []
                 for p in c.get("ports") or [] if p.get("name") and p.get("containerPort")}
        first = next((int(p["containerPort"]) for c in (pod.get("spec") or {}).get("containers") or []
                      for p in c.get("ports") or [] if p.get("containerPort")), None)
        try:
            config = load_config(env, annotations, default_port=first)
            source = config.service_source
            excluded = tuple(sorted(set(excluded) | set(config.readiness.exclude_containers)))
            uid = str((pod.get("metadata") or {}).get("uid") or "") or None
            instances = build_instances(config, uid, ports)
            expected = tuple(ex.Expected(i.name, i.service_id, i.address, i.port, i.readiness_check_id,
                                         i.liveness_check_id, i.fixed_health) for i in instances)
            agent_address = config.consul.address if config.consul.host else None
            scope = {k: v for k, v in (("ns", config.consul.namespace), ("partition", config.consul.partition)) if v}
        except ConfigError as error:
            problems = tuple(error.problems)
            source = "invalid"
        except ValueError as error:
            problems = (str(error),)
            source = "invalid"
    facts_pod = _pod_facts(pod, sidecar, excluded)
    events = _events(kube, namespace, name, facts_pod.uid)
    agent = _agent_view(consul, agent_address, expected, scope) if agent_address and expected else None
    if agent is not None and agent.error:
        notes.append(f"the node's agent {agent_address} could not be read from here ({agent.error}); "
                     "the catalog is asked instead")
    catalog_address = consul_addr or agent_address
    catalog = None
    if catalog_address and expected:
        node = agent.node if agent is not None and not agent.error else None
        catalog = _catalog_view(consul, catalog_address, expected, node, facts_pod.host_ip, scope)
    return ex.Facts(facts_pod, expected, source, problems, events, agent, catalog, tuple(notes))
