"""The manifests in examples/ agree with the code they deploy.

Every check reads the code's own source of truth (the settings in sidecar.config, the console
scripts in setup.cfg, the requests the Kubernetes client really sends) instead of repeating
it, so a change on either side that breaks the examples fails here. Each rule is a function
returning problems; the examples must produce none, and broken copies of them must produce
the expected one, so no rule passes vacuously.
"""

from __future__ import annotations

import configparser
import copy
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from fakekube import FakeKube, make_pod

from readiness_gate.probe import DEFAULT_STATUS_FILE
from sidecar.cli import main as cli_main
from sidecar.config import SETTING_NAMES, SETTINGS, Config, load_config, service_env_key
from sidecar.errors import ConfigError
from sidecar.kube.client import RBAC_HINT
from sidecar.kube.source import KubernetesSource
from sidecar.manifests import CONDITION_TYPE
from sidecar.readiness import Observation

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
DEPLOYMENT_FILES = sorted(EXAMPLES.glob("deployment-*.yaml"))
SIDECAR_IMAGE = "katalog-sidecar"  # the sidecar container is the one running this image

DEFAULTS = {s.env: s.default for s in SETTINGS}
# Pod identity comes from the downward API, each variable from exactly this field.
IDENTITY_FIELDS = {
    "POD_NAME": "metadata.name",
    "POD_NAMESPACE": "metadata.namespace",
    "POD_IP": "status.podIP",
    "HOST_IP": "status.hostIP",
    "POD_UID": "metadata.uid",
}
# What the kubelet would substitute for each downward-API field.
FIELD_VALUES = {
    "metadata.name": "web-7d4b9c8f6-x2x9q",
    "metadata.namespace": "shop",
    "metadata.uid": "0b8e7a4c-3f5d-4a51-9d6e-6c1f2a7b9e30",
    "status.podIP": "10.244.1.17",
    "status.hostIP": "192.168.0.11",
}
# What the kubelet sets in every container (the in-cluster API address).
CLUSTER_ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
# The only access the sidecar may need: get, list and watch on pods, in its own namespace.
# What the defaults use: the pod watch and Events (KATALOG_EVENTS=true), nothing more.
ROLE_RULES = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
              {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]}]
DRAIN_MARGIN = 5.0  # seconds the grace period must leave after KATALOG_DRAIN_TIMEOUT
PROBE_RANGES = {"periodSeconds": (2, 5), "timeoutSeconds": (1, 2), "failureThreshold": (1, 3)}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")

Doc = dict[str, Any]


# -- reading the examples -------------------------------------------------------------------


def load_docs(path: Path) -> list[Doc]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def console_scripts() -> dict[str, str]:
    """Installed commands -> what they run: entry points, and plain scripts (bin/) by the
    module they import (readiness-gate is one, to keep pip's launcher off the probe path)."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    scripts: dict[str, str] = {}
    for line in parser["options.entry_points"]["console_scripts"].strip().splitlines():
        name, _, target = line.partition("=")
        scripts[name.strip()] = target.strip()
    for line in parser["options"].get("scripts", "").strip().splitlines():
        script = ROOT / line.strip()
        if script.read_text().startswith("#!/bin/sh\n"):
            # readiness-gate is a shell script; readiness_gate.probe is its Python twin.
            scripts[script.name] = "readiness_gate.probe:main"
            continue
        imported = re.search(r"^from ([\w.]+) import (\w+)$", script.read_text(), re.M)
        assert imported, f"{script} imports no entry function"
        scripts[script.name] = f"{imported.group(1)}:{imported.group(2)}"
    return scripts


def package_version() -> str:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    return parser["metadata"]["version"]


def pod_spec(doc: Doc) -> Doc | None:
    if doc.get("kind") == "Pod":
        return doc["spec"]
    if doc.get("kind") in WORKLOADS:
        return doc["spec"]["template"]["spec"]
    return None


def all_containers(spec: Doc) -> list[Doc]:
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def find_sidecar(spec: Doc) -> Doc:
    found = [c for c in all_containers(spec) if SIDECAR_IMAGE in str(c.get("image", ""))]
    assert len(found) == 1, f"expected one katalog-sidecar container, found {[c.get('name') for c in found]}"
    return found[0]


def is_native(spec: Doc, container: Doc) -> bool:
    return any(c is container for c in spec.get("initContainers") or []) and container.get("restartPolicy") == "Always"


def env_entries(container: Doc) -> dict[str, Doc]:
    return {entry["name"]: entry for entry in container.get("env") or []}


def effective(container: Doc, name: str) -> str:
    """The value the sidecar sees: the literal in the manifest, or the setting's default."""
    entry = env_entries(container).get(name)
    if entry is not None and "value" in entry:
        return str(entry["value"])
    return DEFAULTS[name]


def service_names(container: Doc) -> list[str]:
    return [item.partition(":")[0].strip() for item in effective(container, "KATALOG_SERVICES").split(",") if item.strip()]


def named_ports(spec: Doc) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in all_containers(spec) for p in c.get("ports") or [] if "name" in p}


def pod_specs() -> list[tuple[str, Doc]]:
    """(id, pod spec) of every workload in every example."""
    found = []
    for path in EXAMPLE_FILES:
        for doc in load_docs(path):
            spec = pod_spec(doc)
            if spec is not None:
                found.append((f"{path.name}:{doc['metadata']['name']}", spec))
    return found


def rbac_docs() -> list[Doc]:
    return load_docs(EXAMPLES / "rbac.yaml")


# -- the environment the kubelet would give the sidecar ---------------------------------------


def sidecar_environ(spec: Doc, tmp_path: Path) -> dict[str, str]:
    """The sidecar's environment as the kubelet builds it, with files under `tmp_path`.

    Downward-API fields get plausible values. A value that is a path inside one of the
    container's volume mounts is moved under `tmp_path`; inside a Secret volume the file is
    created, as the kubelet would project it. A path outside every mount is left as it is,
    so load_config reports it unreadable.
    """
    sidecar = find_sidecar(spec)
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    mounts = {m["mountPath"].rstrip("/"): volumes[m["name"]] for m in sidecar.get("volumeMounts") or []}
    environ = dict(CLUSTER_ENV)
    for entry in sidecar.get("env") or []:
        if "value" in entry:
            value = str(entry["value"])
        else:
            field = entry["valueFrom"]["fieldRef"]["fieldPath"]
            value = FIELD_VALUES[field]
        environ[entry["name"]] = _relocate(value, mounts, tmp_path)
    return environ


def _relocate(value: str, mounts: dict[str, Doc], tmp_path: Path) -> str:
    for mount_path, volume in mounts.items():
        if value.startswith(mount_path + "/"):
            moved = tmp_path / value.lstrip("/")
            moved.parent.mkdir(parents=True, exist_ok=True)
            if "secret" in volume:
                moved.write_text("3f8ab1c2-0000-4000-8000-000000000000\n")
            return str(moved)
    return value


def example_config(spec: Doc, tmp_path: Path, **overrides: str) -> Config:
    return load_config({**sidecar_environ(spec, tmp_path), **overrides})


# -- the rules ----------------------------------------------------------------------------------


def env_problems(spec: Doc) -> list[str]:
    """Every variable set on the sidecar is a documented setting; identity comes from the pod."""
    sidecar = find_sidecar(spec)
    problems = []
    if sidecar.get("envFrom"):
        problems.append("envFrom on the sidecar: variables must be listed, so they can be checked")
    names = [entry["name"] for entry in sidecar.get("env") or []]
    if len(names) != len(set(names)):
        problems.append(f"variables set twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
    per_service = {
        f"KATALOG_SERVICE_{service_env_key(name)}_{kind}" for name in service_names(sidecar) for kind in ("TAGS", "META")
    }
    for name, entry in env_entries(sidecar).items():
        if name not in SETTING_NAMES and name not in per_service:
            problems.append(f"{name} is not a setting of sidecar.config (nor a per-service variable of a listed service)")
        if name in IDENTITY_FIELDS:
            field = ((entry.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
            if field != IDENTITY_FIELDS[name]:
                problems.append(f"{name} must come from the downward API field {IDENTITY_FIELDS[name]}, not {entry}")
        elif "valueFrom" in entry:
            problems.append(f"{name}: only the pod identity comes from valueFrom (the token through its file)")
    for name in ("POD_NAME", "POD_NAMESPACE", "POD_IP"):
        if name not in names:
            problems.append(f"{name} is not set (required; downward API {IDENTITY_FIELDS[name]})")
    if "HOST_IP" not in names and "CONSUL_HTTP_ADDR" not in names:
        problems.append("neither HOST_IP nor CONSUL_HTTP_ADDR: the sidecar cannot find the agent")
    if "CONSUL_HTTP_TOKEN" in names:
        problems.append("CONSUL_HTTP_TOKEN in the manifest: use CONSUL_HTTP_TOKEN_FILE from a Secret volume")
    return problems


def probe_problems(spec: Doc) -> list[str]:
    """readiness-gate is the sidecar's readinessProbe, with sane timings, and never a startupProbe."""
    scripts = console_scripts()
    gate = next(name for name, target in scripts.items() if target.startswith("readiness_gate."))
    problems = []
    for container in all_containers(spec):
        for kind in ("startupProbe", "livenessProbe"):
            command = ((container.get(kind) or {}).get("exec") or {}).get("command") or []
            if any(gate in str(part) for part in command):
                problems.append(f"{container['name']}: {gate} as {kind} (it waits for the app and Consul: deadlock or restarts)")
    sidecar = find_sidecar(spec)
    probe = sidecar.get("readinessProbe") or {}
    command = (probe.get("exec") or {}).get("command")
    # Condition mode: the pod's readiness gate replaces the probe (a pod may have both).
    condition = effective(sidecar, "KATALOG_GATE") == "condition" and {"conditionType": CONDITION_TYPE} in (
        spec.get("readinessGates") or [])
    if command != [gate] and not (condition and not probe):
        problems.append(f"the sidecar's readinessProbe must be exec {[gate]}, not {command}")
    for key, (low, high) in PROBE_RANGES.items() if probe or not condition else ():
        value = probe.get(key)
        if not isinstance(value, int) or not low <= value <= high:
            problems.append(f"readinessProbe.{key}={value!r}: set it between {low} and {high}")
    args = list(sidecar.get("command") or []) + list(sidecar.get("args") or [])
    if sidecar.get("command"):
        problems.append("the sidecar overrides the image's ENTRYPOINT (katalog-sidecar)")
    if args and args[0] not in cli_main.commands:
        problems.append(f"args {args}: {args[0]!r} is not a katalog-sidecar command")
    return problems


def container_problems(spec: Doc) -> list[str]:
    """Name, status file on an emptyDir, read-only root, non-root, resources."""
    sidecar = find_sidecar(spec)
    problems = []
    expected = effective(sidecar, "KATALOG_CONTAINER_NAME")
    if sidecar["name"] != expected:
        problems.append(f"container {sidecar['name']!r} != KATALOG_CONTAINER_NAME {expected!r}: it would wait for itself")
    status_dir = str(PurePosixPath(effective(sidecar, "KATALOG_STATUS_FILE")).parent)
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    mount = next((m for m in sidecar.get("volumeMounts") or [] if m["mountPath"].rstrip("/") == status_dir), None)
    if mount is None or "emptyDir" not in volumes.get(mount["name"], {}):
        problems.append(f"the status file's directory {status_dir} is not an emptyDir mount")
    elif mount.get("readOnly") or mount.get("subPath"):
        problems.append(f"the status mount {status_dir} must be writable and not a subPath")
    security = sidecar.get("securityContext") or {}
    if security.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem is not true")
    if security.get("runAsNonRoot") is not True:
        problems.append("runAsNonRoot is not true")
    if security.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation is not false")
    resources = sidecar.get("resources") or {}
    if not {"cpu", "memory"} <= set(resources.get("requests") or {}) or "memory" not in (resources.get("limits") or {}):
        problems.append("the sidecar needs cpu and memory requests and a memory limit")
    return problems


def pod_problems(spec: Doc, config: Config) -> list[str]:
    """Grace period, API access and ports, against the configuration the sidecar would load."""
    sidecar = find_sidecar(spec)
    problems = []
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace < config.drain_timeout + DRAIN_MARGIN:
        problems.append(
            f"terminationGracePeriodSeconds={grace} leaves under {DRAIN_MARGIN:g}s after "
            f"KATALOG_DRAIN_TIMEOUT ({config.drain_timeout:g}s): the kubelet would kill the drain"
        )
    ports = named_ports(spec)
    for service in config.services:
        if service.port_name and service.port_name not in ports:
            problems.append(f"service {service.name}: no container port named {service.port_name!r} in the pod")
    if config.readiness.source == "kubernetes":
        if spec.get("automountServiceAccountToken") is False:
            problems.append("readiness from the pod watch, but automountServiceAccountToken is false")
        bound = {s["name"] for d in rbac_docs() if d["kind"] == "RoleBinding" for s in d["subjects"]}
        if spec.get("serviceAccountName") not in bound:
            problems.append(f"serviceAccountName {spec.get('serviceAccountName')!r} is not bound by rbac.yaml")
    else:
        if spec.get("automountServiceAccountToken") is not False:
            problems.append("no pod watch: the pod needs no token (automountServiceAccountToken: false)")
        if is_native(spec, sidecar):
            problems.append("without the pod watch the sidecar drains on SIGTERM, which a native sidecar gets too late")
    if config.readiness.source == "http" and config.readiness.http_url:
        url = urlsplit(config.readiness.http_url)
        app_ports = {p["containerPort"] for c in all_containers(spec) if c is not sidecar for p in c.get("ports") or []}
        if url.hostname not in ("127.0.0.1", "localhost") or url.port not in app_ports:
            problems.append(f"KATALOG_READINESS_HTTP_URL {config.readiness.http_url} is not a port of the app in this pod")
    return problems


def all_problems(spec: Doc, tmp_path: Path) -> list[str]:
    problems = env_problems(spec) + probe_problems(spec) + container_problems(spec)
    try:
        config = example_config(spec, tmp_path)
    except ConfigError as error:
        return problems + [f"load_config: {p}" for p in error.problems]
    return problems + pod_problems(spec, config)


# -- the examples pass ------------------------------------------------------------------------------


def test_every_example_parses_and_each_deployment_has_one_sidecar() -> None:
    names = {p.name for p in EXAMPLE_FILES}
    assert {"deployment-classic-sidecar.yaml", "deployment-native-sidecar.yaml", "deployment-http-probe.yaml", "rbac.yaml"} <= names
    for path in EXAMPLE_FILES:
        for doc in load_docs(path):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), (path.name, doc)
    for path in DEPLOYMENT_FILES:
        specs = [pod_spec(d) for d in load_docs(path) if pod_spec(d) is not None]
        assert len(specs) == 1, path.name
        find_sidecar(specs[0])


@pytest.mark.parametrize(("name", "spec"), pod_specs(), ids=[i for i, _ in pod_specs()])
def test_example_follows_every_rule(name: str, spec: Doc, tmp_path: Path) -> None:
    assert all_problems(spec, tmp_path) == []


def test_the_variants_are_what_their_names_say(tmp_path: Path) -> None:
    specs = {path.name: pod_spec(next(d for d in load_docs(path) if pod_spec(d))) for path in DEPLOYMENT_FILES}
    native = specs["deployment-native-sidecar.yaml"]
    classic = specs["deployment-classic-sidecar.yaml"]
    http = specs["deployment-http-probe.yaml"]
    assert native is not None and classic is not None and http is not None
    assert is_native(native, find_sidecar(native))
    assert not is_native(classic, find_sidecar(classic))
    assert example_config(classic, tmp_path / "c").readiness.source == "kubernetes"
    assert example_config(native, tmp_path / "n").readiness.source == "kubernetes"
    http_config = example_config(http, tmp_path / "h")
    assert http_config.readiness.source == "http"
    assert http_config.readiness.http_url == "http://127.0.0.1:8080/ready"


def test_deployments_roll_one_pod_at_a_time_without_losing_capacity() -> None:
    for path in DEPLOYMENT_FILES:
        deployment = next(d for d in load_docs(path) if d["kind"] == "Deployment")
        rolling = deployment["spec"]["strategy"]["rollingUpdate"]
        assert deployment["spec"]["replicas"] == 3, path.name
        assert (rolling["maxSurge"], rolling["maxUnavailable"]) == (1, 0), path.name


def test_sidecar_image_is_this_version() -> None:
    for _, spec in pod_specs():
        image = find_sidecar(spec)["image"]
        assert image.rpartition(":")[2] == package_version(), image


def test_native_example_warns_against_the_gate_as_startup_probe() -> None:
    text = (EXAMPLES / "deployment-native-sidecar.yaml").read_text()
    head = text.split("apiVersion:", 1)[0]  # in the comment above the manifest, not buried in it
    assert re.search(r"NEVER use readiness-gate as the startupProbe", head)
    assert "deadlock" in head
    readme = (EXAMPLES / "README.md").read_text()
    assert "startupProbe" in readme and "deadlock" in readme


def test_readme_names_every_example_file() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    for path in EXAMPLE_FILES:
        assert f"`{path.name}`" in readme, path.name


def test_gate_and_sidecar_default_to_the_same_status_file() -> None:
    assert DEFAULTS["KATALOG_STATUS_FILE"] == DEFAULT_STATUS_FILE


# -- RBAC: exactly what the client uses -----------------------------------------------------------


def test_role_grants_the_pod_watch_and_events_and_nothing_more() -> None:
    docs = rbac_docs()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Role", "RoleBinding", "ServiceAccount"], "no ClusterRole: namespace only"
    role = next(d for d in docs if d["kind"] == "Role")
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    account = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert role["rules"] == ROLE_RULES
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"]}]
    assert "examples/rbac.yaml" in RBAC_HINT  # the 403 message sends operators to this file


class _Sink:
    def __init__(self) -> None:
        self.observations: list[Observation] = []
        self.problems: list[str | None] = []
        self.seen = threading.Event()

    def observe(self, observation: Observation) -> None:
        self.observations.append(observation)
        self.seen.set()

    def problem(self, message: str | None) -> None:
        self.problems.append(message)


@pytest.fixture
def fake_kube(tmp_path: Path) -> Iterator[FakeKube]:
    with FakeKube(tmp_path / "kube-token") as kube:
        yield kube


def _pod_from_template(spec: Doc, sidecar: Doc) -> Doc:
    """The pod the Deployment creates, the sidecar not Ready yet (its gate waits for Consul)."""
    natives = [c["name"] for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    apps = [c["name"] for c in spec["containers"]]
    pod = make_pod(
        FIELD_VALUES["metadata.name"],
        FIELD_VALUES["metadata.namespace"],
        containers=apps,
        native_sidecars=natives,
        ready={sidecar["name"]: False},
        uid=FIELD_VALUES["metadata.uid"],
    )
    pod["spec"] = copy.deepcopy(spec)
    return pod


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", [p for p in DEPLOYMENT_FILES if p.name != "deployment-http-probe.yaml"], ids=lambda p: p.name)
def test_sidecar_configured_as_in_the_example_needs_only_the_roles_verbs(
    path: Path, fake_kube: FakeKube, tmp_path: Path
) -> None:
    """Run the pod watch with the example's configuration against the fake API server.

    The requests it sends need no verb beyond the Role's (and each carries the name field
    selector a `resourceNames` restriction requires); the app counts as ready although the
    sidecar is not (KATALOG_CONTAINER_NAME matches); the named port resolves in the pod.
    """
    spec = next(s for s in (pod_spec(d) for d in load_docs(path)) if s is not None)
    sidecar = find_sidecar(spec)
    fake_kube.create_pod(_pod_from_template(spec, sidecar))
    config = example_config(
        spec, tmp_path, KATALOG_KUBE_API_URL=fake_kube.url, KATALOG_KUBE_TOKEN_FILE=str(fake_kube.token_file)
    )
    source = KubernetesSource.from_config(config)
    sink, stop = _Sink(), threading.Event()
    thread = threading.Thread(target=source.run, args=(stop, sink), daemon=True)
    thread.start()
    try:
        assert sink.seen.wait(10), f"no observation; problems: {sink.problems}"
        fake_kube.wait_for_request(lambda r: r.is_watch and r.status == 200, timeout=10)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    first = sink.observations[0]
    assert first.ready, first.detail
    assert sink.problems in ([], [None])
    for service in config.services:
        if service.port_name:
            assert first.container_ports is not None and service.port_name in first.container_ports
    granted = set(ROLE_RULES[0]["verbs"])
    requests = fake_kube.requests
    assert requests
    selector = f"metadata.name={config.pod_name}"
    for request in requests:
        verb = "watch" if request.is_watch else "list"
        assert request.method == "GET" and verb in granted, request
        assert request.path == f"/api/v1/namespaces/{config.pod_namespace}/pods", request
        assert request.query.get("fieldSelector") == selector, request


# -- the rules catch what they are for ---------------------------------------------------------------


def _classic() -> Doc:
    spec = pod_spec(next(d for d in load_docs(EXAMPLES / "deployment-classic-sidecar.yaml") if pod_spec(d)))
    assert spec is not None
    return copy.deepcopy(spec)


def _native() -> Doc:
    spec = pod_spec(next(d for d in load_docs(EXAMPLES / "deployment-native-sidecar.yaml") if pod_spec(d)))
    assert spec is not None
    return copy.deepcopy(spec)


def _set_env(name: str, value: str) -> Callable[[Doc], None]:
    def mutate(spec: Doc) -> None:
        env = find_sidecar(spec).setdefault("env", [])
        env[:] = [e for e in env if e["name"] != name] + [{"name": name, "value": value}]

    return mutate


def _startup_gate(spec: Doc) -> None:
    find_sidecar(spec)["startupProbe"] = {"exec": {"command": ["readiness-gate"]}, "periodSeconds": 2}


def _rename_sidecar(spec: Doc) -> None:
    find_sidecar(spec)["name"] = "consul-sync"


def _status_on_root(spec: Doc) -> None:
    find_sidecar(spec)["volumeMounts"] = [m for m in find_sidecar(spec)["volumeMounts"] if m["mountPath"] != "/run/katalog"]


def _writable_root(spec: Doc) -> None:
    find_sidecar(spec)["securityContext"]["readOnlyRootFilesystem"] = False


def _short_grace(spec: Doc) -> None:
    spec["terminationGracePeriodSeconds"] = 22


def _token_outside_secret(spec: Doc) -> None:
    _set_env("CONSUL_HTTP_TOKEN_FILE", "/var/run/consul/token")(spec)


def _pod_ip_from_host(spec: Doc) -> None:
    env = find_sidecar(spec)["env"]
    next(e for e in env if e["name"] == "POD_IP")["valueFrom"]["fieldRef"]["fieldPath"] = "status.hostIP"


def _slow_probe(spec: Doc) -> None:
    find_sidecar(spec)["readinessProbe"]["periodSeconds"] = 10


def _http_source_in_native(spec: Doc) -> None:
    _set_env("KATALOG_READINESS_SOURCE", "http")(spec)
    _set_env("KATALOG_READINESS_HTTP_URL", "http://127.0.0.1:8080/ready")(spec)
    _set_env("KATALOG_SERVICES", "web:8080")(spec)
    spec["automountServiceAccountToken"] = False


BROKEN = [
    ("unknown variable", _classic, _set_env("KATALOG_SERVICE_API_TAGS", "v2"),
     "KATALOG_SERVICE_API_TAGS is not a setting"),
    ("misspelt setting", _classic, _set_env("KATALOG_DRAIN_TIMEOUTS", "20s"), "KATALOG_DRAIN_TIMEOUTS is not a setting"),
    ("identity from the wrong field", _classic, _pod_ip_from_host, "POD_IP must come from the downward API field status.podIP"),
    ("gate as startupProbe", _native, _startup_gate, "readiness-gate as startupProbe"),
    ("sidecar renamed only in the spec", _classic, _rename_sidecar, "!= KATALOG_CONTAINER_NAME"),
    ("status file not on an emptyDir", _classic, _status_on_root, "is not an emptyDir mount"),
    ("writable root", _classic, _writable_root, "readOnlyRootFilesystem is not true"),
    ("grace period too short", _classic, _short_grace, "terminationGracePeriodSeconds=22"),
    ("drain timeout raised alone", _classic, _set_env("KATALOG_DRAIN_TIMEOUT", "28s"), "terminationGracePeriodSeconds=30"),
    ("token file outside the Secret", _classic, _token_outside_secret, "load_config: CONSUL_HTTP_TOKEN_FILE="),
    ("named port that does not exist", _classic, _set_env("KATALOG_SERVICES", "web:grpc"), "no container port named 'grpc'"),
    ("gate period too long", _classic, _slow_probe, "readinessProbe.periodSeconds=10"),
    ("http source as a native sidecar", _native, _http_source_in_native, "a native sidecar gets too late"),
    ("invalid value", _classic, _set_env("KATALOG_GATE_MODE", "sometimes"), "load_config: KATALOG_GATE_MODE='sometimes'"),
]


@pytest.mark.parametrize(("case", "base", "mutate", "expected"), BROKEN, ids=[b[0] for b in BROKEN])
def test_rules_catch_a_broken_example(
    case: str, base: Callable[[], Doc], mutate: Callable[[Doc], None], expected: str, tmp_path: Path
) -> None:
    spec = base()
    assert all_problems(spec, tmp_path / "before") == []
    mutate(spec)
    problems = all_problems(spec, tmp_path / "after")
    assert any(expected in p for p in problems), problems

