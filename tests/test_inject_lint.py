"""`katalog-sidecar inject` and `lint`: the pure logic, then the commands as a user pipes them."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sidecar_process import SIDECAR

from sidecar.config import load_config
from sidecar.manifests import templates as m
from sidecar.manifests.inject import InjectError, InjectOptions, inject
from sidecar.manifests.lint import RULES, lint

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
IMAGE = "registry.example/katalog-sidecar:0.1.0"
OPTIONS = InjectOptions(image=IMAGE, services="web:http")

Doc = dict[str, Any]


def pod_template() -> Doc:
    return {
        "metadata": {"labels": {"app": "web"}},
        "spec": {
            "serviceAccountName": "web",
            "containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"name": "http", "containerPort": 8080}]}],
        },
    }


def workload(kind: str, name: str = "web") -> Doc:
    api = {"Job": "batch/v1", "Pod": "v1"}.get(kind, "apps/v1")
    if kind == "Pod":
        template = pod_template()
        return {"apiVersion": api, "kind": "Pod", "metadata": {"name": name, **template["metadata"]}, "spec": template["spec"]}
    spec: Doc = {"template": pod_template()}
    if kind != "Job":
        spec["selector"] = {"matchLabels": {"app": "web"}}
    else:
        spec["template"]["spec"]["restartPolicy"] = "Never"  # a Job's template must set it
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name}, "spec": spec}


KINDS = ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "Pod"]
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
           "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}}


def spec_of(doc: Doc) -> Doc:
    (ref,) = list(m.pod_specs(doc))
    return ref.spec


# -- inject -------------------------------------------------------------------------------------


CLASSIC_KINDS = [k for k in KINDS if k != "Job"]  # a Job needs --native


@pytest.mark.parametrize("kind", CLASSIC_KINDS)
def test_inject_adds_the_sidecar_and_leaves_the_rest(kind: str) -> None:
    original = workload(kind)
    result = inject([original, SERVICE], OPTIONS)
    out, service = result.documents
    assert service == SERVICE, "other kinds pass through untouched"
    assert result.injected == [f"{kind}/web"] and result.unchanged == []
    spec = spec_of(out)
    web, sidecar = spec["containers"]
    assert web == original["spec"]["containers"][0] if kind == "Pod" else web == pod_template()["spec"]["containers"][0]
    assert sidecar["name"] == m.CONTAINER_NAME and sidecar["image"] == IMAGE
    env = {e["name"]: e for e in sidecar["env"]}
    for name, field in m.IDENTITY_FIELDS.items():
        assert env[name]["valueFrom"]["fieldRef"]["fieldPath"] == field
    assert env["KATALOG_SERVICES"]["value"] == "web:http"
    assert sidecar["readinessProbe"]["exec"]["command"] == ["readiness-gate"]
    assert {"name": m.STATUS_VOLUME, "mountPath": m.STATUS_DIR} in sidecar["volumeMounts"]
    assert any(v["name"] == m.STATUS_VOLUME and "emptyDir" in v for v in spec["volumes"])
    assert sidecar["resources"]["requests"] == {"cpu": "5m", "memory": "32Mi"}
    assert spec["terminationGracePeriodSeconds"] >= 25
    assert "readinessGates" not in spec
    assert original == workload(kind), "the input is not modified"


def test_inject_is_idempotent_and_deterministic() -> None:
    once = inject([workload("Deployment"), SERVICE], OPTIONS)
    twice = inject(once.documents, OPTIONS)
    assert twice.documents == once.documents
    assert twice.injected == [] and twice.unchanged == ["Deployment/web"]
    assert inject([workload("Deployment"), SERVICE], OPTIONS).documents == once.documents


def test_inject_native_condition_and_token() -> None:
    options = InjectOptions(image=IMAGE, services="web:http", native=True, gate="condition", token_secret="consul-token")
    spec = spec_of(inject([workload("StatefulSet")], options).documents[0])
    sidecar = spec["initContainers"][0]
    assert sidecar["restartPolicy"] == "Always" and len(spec["containers"]) == 1
    assert sidecar["readinessProbe"]["exec"]["command"] == ["readiness-gate"]  # defect 2: the staleness bound
    assert spec["readinessGates"] == [{"conditionType": m.CONDITION_TYPE}]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["KATALOG_GATE"] == "condition" and env["CONSUL_HTTP_TOKEN_FILE"] == "/etc/katalog/consul/token"
    assert any(v.get("secret", {}).get("secretName") == "consul-token" for v in spec["volumes"])
    assert spec["securityContext"]["fsGroup"] == 65532
    both = spec_of(inject([workload("Deployment")], InjectOptions(image=IMAGE, services="web:http", gate="both")).documents[0])
    assert both["readinessGates"] and both["containers"][1]["readinessProbe"]["exec"]["command"] == ["readiness-gate"]


def test_inject_copies_only_a_workload_level_annotation_into_the_environment() -> None:
    """On the workload itself the annotation never reaches the pods: it is copied."""
    deployment = workload("Deployment")
    deployment["metadata"]["annotations"] = {m.SERVICES_ANNOTATION: "web:http,admin:9000"}
    out = inject([deployment], InjectOptions(image=IMAGE)).documents
    env = {e["name"]: e.get("value") for e in spec_of(out[0])["containers"][1]["env"]}
    assert env["KATALOG_SERVICES"] == "web:http,admin:9000"


@pytest.mark.parametrize("annotations", [
    {m.SERVICES_ANNOTATION: "api:8080", "katalog-sidecar.io/tags": "v2", "katalog-sidecar.io/check-ttl": "30s"},
    {m.KATALOG_SYNC_SERVICES: "api", "katalog-sync.wish.com/service-tags": "urlprefix-/api"},
], ids=["ours", "katalog-sync"])
def test_inject_leaves_pod_annotations_as_the_source(annotations: dict[str, str]) -> None:
    """Copied into KATALOG_SERVICES, they would hide tags, meta, health and live edits (issue 20)."""
    pod = workload("Pod", "p")
    pod["metadata"]["annotations"] = dict(annotations)
    deployment = workload("Deployment")
    deployment["spec"]["template"]["metadata"]["annotations"] = dict(annotations)
    for doc in inject([pod, deployment], InjectOptions(image=IMAGE)).documents:
        sidecar = spec_of(doc)["containers"][1]
        assert "KATALOG_SERVICES" not in {e["name"] for e in sidecar["env"]}
        assert lint([doc]) == []
    # The sidecar then reads them, tags and all.
    config = load_config({"POD_NAME": "p", "POD_NAMESPACE": "shop", "POD_IP": "10.0.0.5", "HOST_IP": "10.0.0.1",
                          "KUBERNETES_SERVICE_HOST": "10.96.0.1"}, annotations, default_port=8080)
    assert config.services[0].tags


def test_inject_refuses_a_classic_sidecar_in_a_pod_that_must_complete() -> None:
    with pytest.raises(InjectError) as caught:
        inject([workload("Job")], OPTIONS)
    assert "Job/web: restartPolicy is Never" in str(caught.value) and "--native" in str(caught.value)
    pod = workload("Pod", "once")
    pod["spec"]["restartPolicy"] = "OnFailure"
    with pytest.raises(InjectError, match="Pod/once: restartPolicy is OnFailure"):
        inject([pod], OPTIONS)
    native = spec_of(inject([workload("Job")], InjectOptions(image=IMAGE, services="web:http", native=True)).documents[0])
    assert native["initContainers"][0]["restartPolicy"] == "Always"


def test_inject_expands_lists_and_keeps_a_longer_grace_period() -> None:
    long_grace = workload("Deployment", "slow")
    long_grace["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 120
    short = workload("Deployment", "fast")
    short["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 5
    listed = {"apiVersion": "v1", "kind": "List", "items": [long_grace, SERVICE, short]}
    result = inject([listed], OPTIONS)
    items = result.documents[0]["items"]
    assert result.injected == ["Deployment/slow", "Deployment/fast"]
    assert [spec_of(items[0])["terminationGracePeriodSeconds"], spec_of(items[2])["terminationGracePeriodSeconds"]] == [120, 30]
    assert items[1] == SERVICE


@pytest.mark.parametrize(("docs", "options", "expected"), [
    ([{"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"}, "spec": {}}], OPTIONS,
     "CronJob/nightly: not supported"),
    ([workload("Deployment")], InjectOptions(image=IMAGE), "Deployment/web: which services to register? Pass --services"),
    ([{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {"replicas": 1}}], OPTIONS,
     "Deployment/x: no spec.template.spec"),
    (["just a string"], OPTIONS, "not a Kubernetes object"),
    ([{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "v1", "kind": "ReplicationController",
                                                     "metadata": {"name": "rc"}, "spec": {}}]}], OPTIONS,
     "List items[0]: ReplicationController/rc: not supported"),
], ids=["cronjob", "no services", "no template", "not an object", "inside a list"])
def test_inject_refuses_with_a_clear_message(docs: list[Any], options: InjectOptions, expected: str) -> None:
    with pytest.raises(InjectError, match=None) as caught:
        inject(docs, options)
    assert expected in str(caught.value)


def test_injected_environment_is_a_valid_configuration(tmp_path: Path) -> None:
    """What inject writes loads as the sidecar's own configuration (downward API filled in)."""
    sidecar = spec_of(inject([workload("Deployment")], OPTIONS).documents[0])["containers"][1]
    values = {"metadata.name": "web-1", "metadata.namespace": "shop", "status.podIP": "10.0.0.5",
              "status.hostIP": "10.0.1.1", "metadata.uid": "3f1c6c1e-8a51-4c1e-9a5e-2f1d1f0b7a11"}
    environ = {e["name"]: e["value"] if "value" in e else values[e["valueFrom"]["fieldRef"]["fieldPath"]]
               for e in sidecar["env"]}
    environ.update(KATALOG_STATUS_FILE=str(tmp_path / "status.json"), KUBERNETES_SERVICE_HOST="10.96.0.1")
    config = load_config(environ)
    assert [s.port_name for s in config.services] == ["http"] and config.drain_timeout == 20.0


EXTRA_ENV = (("KATALOG_METRICS_ADDR", "$(POD_IP):9464"), ("KATALOG_LOG_FORMAT", "json"), ("A", "b=c"))


def test_sidecar_env_is_added_after_injects_own_and_loads_as_configuration(tmp_path: Path) -> None:
    """--sidecar-env: after the downward-API variables (the kubelet expands $(POD_IP) only from
    variables defined before it), in the order given, and lint still passes."""
    options = InjectOptions(image=IMAGE, services="web:http", extra_env=EXTRA_ENV)
    out = inject([workload("Deployment")], options).documents
    env = spec_of(out[0])["containers"][1]["env"]
    names = [e["name"] for e in env]
    assert names[-3:] == ["KATALOG_METRICS_ADDR", "KATALOG_LOG_FORMAT", "A"] and names.index("POD_IP") < names.index("KATALOG_METRICS_ADDR")
    assert env[-3:] == [{"name": n, "value": v} for n, v in EXTRA_ENV]
    assert [f for f in lint(out) if f.severity == "error"] == []
    values = {"metadata.name": "web-1", "metadata.namespace": "shop", "status.podIP": "10.0.0.5",
              "status.hostIP": "10.0.1.1", "metadata.uid": "3f1c6c1e-8a51-4c1e-9a5e-2f1d1f0b7a11"}
    environ = {e["name"]: e["value"] if "value" in e else values[e["valueFrom"]["fieldRef"]["fieldPath"]] for e in env}
    environ.update(KATALOG_METRICS_ADDR="10.0.0.5:9464", KATALOG_STATUS_FILE=str(tmp_path / "status.json"),
                   KUBERNETES_SERVICE_HOST="10.96.0.1")
    assert load_config(environ).log_format == "json"
    assert inject(out, options).unchanged == ["Deployment/web"]  # idempotent with it too


@pytest.mark.parametrize(("value", "expected"), [
    ("KATALOG_LOG_FORMAT", "'KATALOG_LOG_FORMAT': expected NAME=VALUE"),
    ("=json", "'' is not a valid environment variable name"),
    ("9LIVES=1", "'9LIVES' is not a valid environment variable name"),
    ("A B=1", "'A B' is not a valid environment variable name"),
    ("POD_UID=fixed", "POD_UID is written by inject itself: the pod's identity, set from the downward API (metadata.uid)"),
    ("POD_NAME=web", "POD_NAME is written by inject itself"),
    ("HOST_IP=10.0.0.1", "HOST_IP is written by inject itself"),
    ("KATALOG_SERVICES=web:80", "use --services"),
    ("KATALOG_GATE=condition", "use --gate"),
    ("KATALOG_DRAIN_TIMEOUT=60s", "use --drain-timeout"),
    ("CONSUL_HTTP_TOKEN_FILE=/t", "use --token-secret"),
    ("KATALOG_STATUS_FILE=/tmp/s", "readiness-gate reads"),
])
def test_sidecar_env_refuses_by_value_with_the_reason(value: str, expected: str) -> None:
    for command in (["inject", "--services", "web:http", "-"], ["webhook", "--image", IMAGE]):
        done = run([*command, "--sidecar-env", "KATALOG_LOG_FORMAT=json", "--sidecar-env", value],
                   yaml.safe_dump(workload("Deployment")))
        assert done.returncode == 2 and done.stdout == "", done
        assert f"Invalid value for '--sidecar-env': '{value}': " in done.stderr and expected in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_sidecar_env_given_twice_is_refused_and_the_library_checks_too() -> None:
    done = run(["inject", "--services", "web:http", "--sidecar-env", "A=1", "--sidecar-env", "A=2", "-"],
               yaml.safe_dump(workload("Deployment")))
    assert done.returncode == 2 and "'A=2': A is given twice" in done.stderr
    for extra in ((("POD_UID", "x"),), (("A", "1"), ("A", "2")), (("a b", "1"),)):
        with pytest.raises(InjectError):
            inject([workload("Deployment")], InjectOptions(image=IMAGE, services="web:http", extra_env=extra))


def test_the_inject_command_writes_sidecar_env() -> None:
    done = run(["inject", "--services", "web:http", "--sidecar-env", "KATALOG_METRICS_ADDR=$(POD_IP):9464",
                "--sidecar-env", "A=b=c", "-"], yaml.safe_dump(workload("Deployment")))
    assert done.returncode == 0, done.stderr
    (out,) = list(yaml.safe_load_all(done.stdout))
    assert out == inject([workload("Deployment")], InjectOptions(
        image=out["spec"]["template"]["spec"]["containers"][1]["image"], services="web:http",
        extra_env=(("KATALOG_METRICS_ADDR", "$(POD_IP):9464"), ("A", "b=c")))).documents[0]


# -- lint -----------------------------------------------------------------------------------------


def load(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_lint_passes_on_every_example(path: Path) -> None:
    assert lint(load(path)) == []


def test_lint_passes_on_all_examples_together() -> None:
    assert lint([d for path in EXAMPLES for d in load(path)]) == []


OPTION_SETS = [
    InjectOptions(image=IMAGE, services="web:http"),
    InjectOptions(image=IMAGE, services="web:8080", native=True),
    InjectOptions(image=IMAGE, services="web:http", gate="condition", token_secret="t"),
    InjectOptions(image=IMAGE, services="web:http,admin:9000", native=True, gate="both", drain_timeout=45.5),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("options", OPTION_SETS, ids=["classic", "native", "condition", "native-both"])
def test_lint_passes_on_everything_inject_produces(kind: str, options: InjectOptions) -> None:
    if kind == "Job" and not options.native:
        with pytest.raises(InjectError):  # refused: the Job would never complete
            inject([workload(kind), SERVICE], options)
        return
    out = inject([workload(kind), SERVICE], options).documents
    assert lint(out) == []
    if options.gate != "exec":
        # ... also together with RBAC that grants what condition mode needs.
        rbac = load(ROOT / "examples" / "rbac-condition.yaml")
        assert lint(out + rbac) == []


def injected() -> Doc:
    return inject([workload("Deployment")], OPTIONS).documents[0]


def sidecar_of(doc: Doc) -> Doc:
    found = m.find_sidecar(spec_of(doc))
    assert found is not None
    return found[2]


def set_env(name: str, value: str) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        env = sidecar_of(doc)["env"]
        env[:] = [e for e in env if e["name"] != name] + [{"name": name, "value": value}]
    return mutate


def drop_env(name: str) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        sidecar_of(doc)["env"] = [e for e in sidecar_of(doc)["env"] if e["name"] != name]
    return mutate


def _startup_gate(doc: Doc) -> None:
    sidecar_of(doc)["startupProbe"] = {"exec": {"command": ["readiness-gate"]}}


def _short_grace(doc: Doc) -> None:
    spec_of(doc)["terminationGracePeriodSeconds"] = 22


def _probe_other_file(doc: Doc) -> None:
    sidecar_of(doc)["readinessProbe"]["exec"]["command"] = ["readiness-gate", "/tmp/status.json"]


def _status_not_mounted(doc: Doc) -> None:
    sidecar_of(doc)["volumeMounts"] = []


def _pod_ip_from_host(doc: Doc) -> None:
    next(e for e in sidecar_of(doc)["env"] if e["name"] == "POD_IP")["valueFrom"]["fieldRef"]["fieldPath"] = "status.hostIP"


def _slow_probe(doc: Doc) -> None:
    sidecar_of(doc)["readinessProbe"].update(periodSeconds=30, timeoutSeconds=40)


def _gates_without_condition_mode(doc: Doc) -> None:
    spec_of(doc)["readinessGates"] = [{"conditionType": m.CONDITION_TYPE}]


def _renamed(doc: Doc) -> None:
    sidecar_of(doc)["name"] = "consul-sync"


def _no_gate(doc: Doc) -> None:
    del sidecar_of(doc)["readinessProbe"]


def _native_http(doc: Doc) -> None:
    spec = spec_of(doc)
    sidecar = spec["containers"].pop()
    sidecar["restartPolicy"] = "Always"
    spec["initContainers"] = [sidecar]
    set_env("KATALOG_READINESS_SOURCE", "http")(doc)


ROLE_WITHOUT_WATCH = [
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "reader"},
     "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "reader"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
     "subjects": [{"kind": "ServiceAccount", "name": "web"}]},
]


def _condition_without_rbac(doc: Doc) -> list[Doc]:
    out = inject([workload("Deployment")], InjectOptions(image=IMAGE, services="web:http", gate="condition")).documents
    return out + load(ROOT / "examples" / "rbac.yaml")


def _services_env_and_annotations(doc: Doc) -> None:
    doc["spec"]["template"]["metadata"]["annotations"] = {"katalog-sync.wish.com/service-names": "web"}


def _classic_in_a_job(doc: Doc) -> None:
    spec_of(doc)["restartPolicy"] = "OnFailure"


# One failing manifest per rule: (rule, how to break an injected Deployment, or a whole input).
BROKEN: list[tuple[str, Callable[[Doc], Any]]] = [
    ("KS001", _startup_gate),
    ("KS002", _short_grace),
    ("KS002", set_env("KATALOG_DRAIN_TIMEOUT", "40s")),
    ("KS003", _probe_other_file),
    ("KS004", _status_not_mounted),
    ("KS004", set_env("KATALOG_STATUS_FILE", "/var/katalog/status.json")),
    ("KS005", _pod_ip_from_host),
    ("KS005", drop_env("POD_NAMESPACE")),
    ("KS005", drop_env("HOST_IP")),
    ("KS006", set_env("KATALOG_SERVICES", "web:grpc")),
    ("KS007", _slow_probe),
    ("KS008", set_env("KATALOG_GATE", "condition")),
    ("KS008", _gates_without_condition_mode),
    ("KS009", _condition_without_rbac),
    ("KS010", lambda doc: [doc, *ROLE_WITHOUT_WATCH]),
    ("KS011", _renamed),
    ("KS012", _no_gate),
    ("KS013", _native_http),
    ("KS014", _services_env_and_annotations),
    ("KS015", _classic_in_a_job),
    ("KS016", drop_env("POD_UID")),
]


@pytest.mark.parametrize(("rule", "breaker"), BROKEN, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BROKEN)])
def test_each_rule_catches_its_mistake(rule: str, breaker: Callable[[Doc], Any]) -> None:
    doc = injected()
    assert lint([doc]) == []
    changed = breaker(doc)
    findings = lint(changed if isinstance(changed, list) else [doc])
    assert rule in {f.rule for f in findings}, findings
    found = next(f for f in findings if f.rule == rule)
    assert found.name == RULES[rule].name and found.fix and found.path and found.object


def test_every_rule_has_a_failing_manifest() -> None:
    assert {rule for rule, _ in BROKEN} == set(RULES)


def test_rule_ids_are_stable() -> None:
    """Ids are part of the interface (CI configs filter on them): never renumber."""
    assert {r.id: r.name for r in RULES.values()} == {
        "KS001": "gate-as-startup-or-liveness-probe", "KS002": "grace-period-below-drain",
        "KS003": "status-file-differs", "KS004": "status-file-not-on-volume", "KS005": "identity-fieldref",
        "KS006": "unknown-named-port", "KS007": "probe-timing", "KS008": "condition-without-readiness-gate",
        "KS009": "readiness-gate-without-rbac", "KS010": "role-without-watch", "KS011": "container-name-differs",
        "KS012": "no-gate", "KS013": "native-sidecar-without-pod-watch",
        "KS014": "services-env-hides-annotations", "KS015": "classic-sidecar-in-completing-pod", "KS016": "no-pod-uid",
    }


def test_a_wildcard_api_group_grants_the_condition() -> None:
    """apiGroups: ["*"] covers the core group: no false KS009."""
    out = inject([workload("Deployment")], InjectOptions(image=IMAGE, services="web:http", gate="condition")).documents
    rbac = load(ROOT / "examples" / "rbac-condition.yaml")
    role = next(d for d in rbac if d["kind"] == "Role")
    for rule in role["rules"]:
        rule["apiGroups"] = ["*"]
    assert lint(out + rbac) == []
    role["rules"] = [r for r in role["rules"] if "pods/status" not in r["resources"]]
    assert [f.rule for f in lint(out + rbac)] == ["KS009"]


def test_the_gate_in_another_container_gets_advice_that_works() -> None:
    doc = injected()
    spec_of(doc)["containers"][0]["readinessProbe"] = {"exec": {"command": ["readiness-gate"]}}
    spec_of(doc)["containers"][0]["env"] = [{"name": "KATALOG_STATUS_FILE", "value": "/shared/status.json"}]
    (finding,) = [f for f in lint([doc]) if f.rule == "KS003"]
    assert "only as the sidecar container's readinessProbe" in finding.fix
    assert "shared volume" not in finding.fix


# -- the commands ---------------------------------------------------------------------------------


def run(args: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([SIDECAR, *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_the_pipeline_stdin_to_stdout(tmp_path: Path) -> None:
    """`kubectl get deploy web -o yaml | katalog-sidecar inject --services web:http - | kubectl apply -f -`"""
    as_kubectl_gets_it = copy.deepcopy(workload("Deployment"))
    as_kubectl_gets_it["metadata"].update(resourceVersion="4711", uid="0d2f-...", generation=3)
    as_kubectl_gets_it["status"] = {"replicas": 1, "readyReplicas": 1}
    text = yaml.safe_dump(as_kubectl_gets_it, sort_keys=False)
    done = run(["inject", "--services", "web:http", "-"], text)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "injected Deployment/web\n"
    (out,) = list(yaml.safe_load_all(done.stdout))
    assert out["status"] == as_kubectl_gets_it["status"] and out["metadata"]["resourceVersion"] == "4711"
    linted = run(["lint", "-"], done.stdout)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    again = run(["inject", "--services", "web:http", "-"], done.stdout)
    assert (again.returncode, again.stdout) == (0, done.stdout)


def test_lint_exit_codes_and_json(tmp_path: Path) -> None:
    broken = injected()
    _short_grace(broken)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    done = run(["lint", "--output", "json", str(path)])
    assert done.returncode == 1
    (finding,) = json.loads(done.stdout)
    assert finding["rule"] == "KS002" and finding["severity"] == "error" and finding["source"] == f"{path}#1"
    assert finding["path"] == "spec.template.spec.terminationGracePeriodSeconds"
    text = run(["lint", str(path)])
    assert text.returncode == 1 and "KS002 grace-period-below-drain (error): Deployment/web" in text.stdout
    warning_only = injected()
    _slow_probe(warning_only)
    assert run(["lint", "-"], yaml.safe_dump(warning_only)).returncode == 0
    bad = run(["lint", "-"], "kind: [unclosed")
    assert bad.returncode == 2 and "not valid YAML" in bad.stderr and "Traceback" not in bad.stderr
    refused = run(["inject", "-"], yaml.safe_dump(workload("Deployment")))
    assert refused.returncode == 1 and refused.stdout == "" and "Pass --services" in refused.stderr


def test_the_daemon_never_imports_yaml() -> None:
    """PyYAML is for inject and lint only: not in `run`'s memory (RSS target) nor the gate's."""
    code = ("import sys, sidecar.cli, sidecar.syncer, sidecar.kube.source, sidecar.consul.api, sidecar.manifests.lint, "
            "sidecar.manifests.inject; print('yaml' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "False", done.stderr
