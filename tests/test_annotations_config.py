"""Pod annotations as configuration: precedence, validation naming the annotation and value,
per-service fixed health, and the new standard Consul settings. Pure: no servers."""

from __future__ import annotations

import contextlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from fakekube import make_pod
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.annotations import KATALOG_SYNC_ANNOTATIONS, OUR_ANNOTATIONS
from sidecar.config import PENDING, annotation_reference, load_config
from sidecar.consul.api import ConsulAgent
from sidecar.errors import ConfigError, ConsulError
from sidecar.kube.pod_readiness import observe_pod
from sidecar.live_config import ConfigFollower
from sidecar.readiness import Observation
from sidecar.registration import (
    CRITICAL,
    DRAINING_STATE,
    LIVENESS_RUNNING,
    PASSING,
    WARNING,
    CheckState,
    build_instances,
    confirmed_summary,
    wanted_checks,
)

KS = "katalog-sync.wish.com/"
OURS = "katalog-sidecar.io/"
ENV = {"POD_NAME": "web-0", "POD_NAMESPACE": "shop", "POD_IP": "10.0.0.5", "HOST_IP": "10.0.0.1",
       "KATALOG_KUBE_API_URL": "http://127.0.0.1:1"}


def problems(env: dict[str, str], annotations: dict[str, str] | None, default_port: int | None = 8080) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(env, annotations, default_port=default_port)
    return caught.value.problems


# --- precedence ---------------------------------------------------------------------------

def test_before_the_pod_is_read_the_services_are_pending() -> None:
    config = load_config(ENV)
    assert config.services == () and config.service_source == PENDING


def test_environment_wins_and_says_the_annotations_are_ignored() -> None:
    config = load_config(dict(ENV, KATALOG_SERVICES="web:80"), {KS + "service-names": "other"}, default_port=8080)
    assert [(s.name, s.port) for s in config.services] == [("web", 80)]
    assert config.service_source == "environment"
    assert any("KATALOG_SERVICES is set" in n and "ignored" in n for n in config.notices)


def test_our_namespace_wins_over_katalog_syncs() -> None:
    config = load_config(ENV, {OURS + "services": "web:80", KS + "service-names": "other"}, default_port=8080)
    assert [s.name for s in config.services] == ["web"]
    assert config.service_source == "katalog-sidecar.io/ annotations"
    assert any("ignoring katalog-sync.wish.com/" in n for n in config.notices)


def test_a_pod_with_neither_names_both_ways() -> None:
    assert problems(ENV, {"unrelated/annotation": "x"}) == [
        "no services to register: set KATALOG_SERVICES in the sidecar's environment, or annotate the pod with "
        "katalog-sidecar.io/services (or katalog-sync's katalog-sync.wish.com/service-names)"]


def test_annotations_need_the_pod_watch() -> None:
    [line] = problems(dict(ENV, KATALOG_READINESS_SOURCE="fixed"), None)
    assert line.startswith("KATALOG_SERVICES is not set: set it, or leave KATALOG_READINESS_SOURCE at kubernetes")


def test_environment_registration_settings_are_not_mixed_with_annotations() -> None:
    lines = problems(dict(ENV, KATALOG_TAGS="a", KATALOG_SERVICE_WEB_META="x=1"), {KS + "service-names": "web"})
    assert [line.split("=")[0] for line in lines] == ["KATALOG_SERVICE_WEB_META", "KATALOG_TAGS"]
    assert all("applies only with KATALOG_SERVICES" in line for line in lines)


# --- katalog-sync's meaning -----------------------------------------------------------------

def test_katalog_sync_annotations() -> None:
    config = load_config(ENV, {
        KS + "service-names": "web,admin", KS + "service-port": "8080", KS + "service-port-admin": "9000",
        KS + "service-tags": "a,b", KS + "service-tags-admin": "internal",
        KS + "service-meta": "team:pay,tier:1", KS + "service-meta-admin": "tier:2",
        KS + "service-health-admin": "warning", KS + "container-exclude": "warmup", KS + "sidecar": "ks-sidecar",
        KS + "service-check-ttl": "30s", KS + "sync-interval": "2s",
    }, default_port=7000)
    web, admin = config.services
    assert (web.port, web.tags, dict(web.meta), web.health) == (8080, ("a", "b"), {"team": "pay", "tier": "1"}, None)
    assert (admin.port, admin.tags, dict(admin.meta), admin.health) == (9000, ("internal",), {"tier": "2"}, "warning")
    assert config.check_ttl == 30.0
    assert set(config.readiness.exclude_containers) >= {"warmup", "ks-sidecar"}
    assert config.notices == ("katalog-sync.wish.com/sync-interval='2s' ignored: katalog-sidecar watches the pod and "
                              "applies every change at once, so there is no sync interval",)


def test_the_first_container_port_is_the_default() -> None:
    config = load_config(ENV, {KS + "service-names": "web"}, default_port=8443)
    assert config.services[0].port == 8443
    assert problems(ENV, {KS + "service-names": "web"}, default_port=None) == [
        "katalog-sync.wish.com/service-names='web': service 'web' has no port: no katalog-sync.wish.com/service-port "
        "annotation and no containerPort in the pod spec"]


def test_the_environment_check_ttl_wins_over_the_annotation() -> None:
    config = load_config(dict(ENV, KATALOG_CHECK_TTL="20s"), {KS + "service-names": "web", KS + "service-check-ttl": "30s"},
                         default_port=8080)
    assert config.check_ttl == 20.0


def test_every_annotation_problem_at_once_naming_annotation_and_value() -> None:
    lines = problems(ENV, {
        KS + "service-names": "web,web api,,web", KS + "service-port": "http",
        KS + "service-meta": "team=pay,a:b:c,consul-x:1,k8s-pod:evil,external-sync-source:katalog-sync",
        KS + "service-tags": "a\nb", KS + "service-health": "degraded", KS + "service-check-ttl": "1s",
        KS + "service-port-wbe": "80",
    })
    assert lines == [
        "katalog-sync.wish.com/service-port-wbe='80': names no service listed in katalog-sync.wish.com/service-names",
        "katalog-sync.wish.com/service-port='http': port must be a number",
        "katalog-sync.wish.com/service-tags='a\\nb': tag 'a\\nb' contains a control character",
        "katalog-sync.wish.com/service-meta='team=pay,a:b:c,consul-x:1,k8s-pod:evil,external-sync-source:katalog-sync': "
        "meta item 'team=pay' is not key:value",
        "katalog-sync.wish.com/service-meta='team=pay,a:b:c,consul-x:1,k8s-pod:evil,external-sync-source:katalog-sync': "
        "meta item 'a:b:c' has more than one ':' (katalog-sync would drop it)",
        "katalog-sync.wish.com/service-meta='team=pay,a:b:c,consul-x:1,k8s-pod:evil,external-sync-source:katalog-sync': "
        "meta key 'consul-x': the prefix 'consul-' is reserved by Consul",
        "katalog-sync.wish.com/service-health='degraded': expected one of passing, warning, critical",
        "katalog-sync.wish.com/service-names='web,web api,,web': service name 'web api': letters, digits, '-', '_' "
        "and '.', at most 63 characters (the name is part of the instance's ID, which Consul's API takes in a URL path)",
        "katalog-sync.wish.com/service-names='web,web api,,web': service 'web' is listed twice",
        "katalog-sync.wish.com/service-check-ttl='1s': must be at least 3s (it is refreshed every third of it)",
    ]


def test_unknown_katalog_sync_annotations_are_a_notice_and_ours_a_problem() -> None:
    config = load_config(ENV, {KS + "service-names": "web", KS + "future-feature": "on"}, default_port=8080)
    assert any("future-feature" in n and "ignored" in n for n in config.notices)
    assert problems(ENV, {OURS + "services": "web:80", OURS + "tgas": "a"}) == [
        "katalog-sidecar.io/tgas='a': not an annotation katalog-sidecar knows (see the README's katalog-sidecar.io/ table)"]


# --- our namespace: the environment's meaning ----------------------------------------------

def test_our_annotations_mean_what_the_environment_means() -> None:
    env_config = load_config(dict(ENV, KATALOG_SERVICES="web:80,admin:http-admin", KATALOG_TAGS="a",
                                  KATALOG_META="team=pay,tier=1", KATALOG_SERVICE_ADMIN_META="tier=2",
                                  KATALOG_SERVICE_ADMIN_TAGS="internal", KATALOG_SERVICE_ADMIN_HEALTH="warning",
                                  KATALOG_EXCLUDE_CONTAINERS="warmup", KATALOG_CHECK_TTL="30s"))
    annotated = load_config(ENV, {OURS + "services": "web:80,admin:http-admin", OURS + "tags": "a",
                                  OURS + "meta": "team=pay,tier=1", OURS + "meta-admin": "tier=2",
                                  OURS + "tags-admin": "internal", OURS + "health-admin": "warning",
                                  OURS + "exclude-containers": "warmup", OURS + "check-ttl": "30s"})
    assert annotated.services == env_config.services
    assert annotated.check_ttl == env_config.check_ttl
    assert annotated.readiness.exclude_containers == env_config.readiness.exclude_containers
    assert dict(annotated.services[1].meta) == {"team": "pay", "tier": "2"}  # merged, like the environment


def test_our_annotation_problems_name_the_annotation() -> None:
    assert problems(ENV, {OURS + "services": "web:70000", OURS + "health-web": "up"}) == [
        "katalog-sidecar.io/services='web:70000': port must be between 1 and 65535",
        "katalog-sidecar.io/health-web='up': expected one of passing, warning, critical",
    ]


# --- per-service fixed health ---------------------------------------------------------------

def test_fixed_health_from_the_environment() -> None:
    config = load_config(dict(ENV, KATALOG_SERVICES="web:80,dns:53", KATALOG_SERVICE_DNS_HEALTH="Warning"))
    assert [s.health for s in config.services] == [None, "warning"]
    assert problems(dict(ENV, KATALOG_SERVICES="web:80", KATALOG_SERVICE_WEB_HEALTH="ok"), None) == [
        "KATALOG_SERVICE_WEB_HEALTH='ok': expected one of passing, warning, critical"]


def test_fixed_health_replaces_readiness_until_draining() -> None:
    config = load_config(dict(ENV, KATALOG_SERVICES="web:80,dns:53", KATALOG_SERVICE_DNS_HEALTH="warning"))
    web, dns = build_instances(config, None, None)
    unready, live = CheckState(CRITICAL, "not ready: app"), CheckState(PASSING, LIVENESS_RUNNING)
    assert wanted_checks(web, unready, live)[web.readiness_check_id] == unready
    assert wanted_checks(dns, unready, live)[dns.readiness_check_id].status == WARNING
    assert wanted_checks(dns, DRAINING_STATE, DRAINING_STATE)[dns.readiness_check_id] == DRAINING_STATE
    assert confirmed_summary([web, dns], {web.service_id: PASSING, dns.service_id: WARNING}) == \
        "web passing, dns warning in the catalog"
    assert confirmed_summary([web, dns], {}) == "web, dns passing in the catalog"


# --- the configuration follows the pod ------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def observe(self, observation: Observation) -> None:
        self.events.append(("observe", observation.ready))

    def problem(self, message: str | None) -> None:
        self.events.append(("problem", message))

    def reconfigure(self, config: object) -> None:
        self.events.append(("reconfigure", config))

    def config_problem(self, problems: list[str] | None) -> None:
        self.events.append(("config-problem", problems))


def test_follower_reloads_only_on_our_annotations_and_before_the_observation() -> None:
    pod = make_pod("web-0", "shop", ports={"http": 8080})
    pod["metadata"]["annotations"] = {KS + "service-names": "web", "deployment.kubernetes.io/revision": "1"}
    sink = Recorder()
    follower = ConfigFollower(ENV, load_config(ENV), sink)
    follower.observe(observe_pod(pod, "katalog-sidecar", ()))
    kinds = [kind for kind, _ in sink.events]
    assert kinds == ["reconfigure", "config-problem", "observe"]  # the config first, then what it applies to
    config = sink.events[0][1]
    assert [(s.name, s.port) for s in config.services] == [("web", 8080)]  # type: ignore[attr-defined]
    # Unrelated annotation edits and readiness flips cost no reload.
    pod["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "2"
    pod["status"]["containerStatuses"][0]["ready"] = False
    follower.observe(observe_pod(pod, "katalog-sidecar", ()))
    assert follower.reloads == 1
    # An edit to ours: a new configuration; an invalid one: problems, no configuration.
    pod["metadata"]["annotations"][KS + "service-tags"] = "v2"
    follower.observe(observe_pod(pod, "katalog-sidecar", ()))
    assert sink.events[-3][0] == "reconfigure" and sink.events[-3][1].services[0].tags == ("v2",)  # type: ignore[union-attr]
    pod["metadata"]["annotations"][KS + "service-port"] = "eighty"
    follower.observe(observe_pod(pod, "katalog-sidecar", ()))
    assert sink.events[-2] == ("config-problem", ["katalog-sync.wish.com/service-port='eighty': port must be a number"])
    assert follower.reloads == 3


# --- the remaining standard Consul settings --------------------------------------------------

def test_basic_auth_is_split_as_consuls_client_does_and_never_shown() -> None:
    base = dict(ENV, KATALOG_SERVICES="web:80")
    assert load_config(dict(base, CONSUL_HTTP_AUTH="ops:s3:cret")).consul.auth == ("ops", "s3:cret")
    assert load_config(dict(base, CONSUL_HTTP_AUTH="ops")).consul.auth == ("ops", "")
    assert "s3:cret" not in repr(load_config(dict(base, CONSUL_HTTP_AUTH="ops:s3:cret")))
    [line] = problems(dict(base, CONSUL_HTTP_AUTH="ops:pässwörd€"), None)
    assert "pässwörd" not in line and line.startswith("CONSUL_HTTP_AUTH (value not shown)")


def test_ca_directory(tmp_path: Path) -> None:
    base = dict(ENV, KATALOG_SERVICES="web:80")
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("not a certificate")
    (tmp_path / "file.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    assert problems(dict(base, CONSUL_CAPATH=str(tmp_path / "empty")), None) == [
        f"CONSUL_CAPATH={str(tmp_path / 'empty')!r}: no certificate file in the directory"]
    assert problems(dict(base, CONSUL_CAPATH=str(tmp_path / "junk")), None) == [
        f"CONSUL_CAPATH={str(tmp_path / 'junk')!r}: notes.txt holds no PEM certificate"]
    assert problems(dict(base, CONSUL_CAPATH=str(tmp_path / "file.pem")), None) == [
        f"CONSUL_CAPATH={str(tmp_path / 'file.pem')!r}: not a directory (use CONSUL_CACERT for a single file)"]


def test_namespace_and_partition() -> None:
    base = dict(ENV, KATALOG_SERVICES="web:80")
    consul = load_config(dict(base, CONSUL_NAMESPACE="team-a", CONSUL_PARTITION="eu")).consul
    assert (consul.namespace, consul.partition) == ("team-a", "eu")
    assert problems(dict(base, CONSUL_NAMESPACE="team a"), None) == [
        "CONSUL_NAMESPACE='team a': expected letters, digits and '-', at most 64 characters"]


def test_readme_annotation_tables_match_the_code() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"<!-- annotation-table:start -->\n(.*?)\n<!-- annotation-table:end -->", readme, re.S)
    assert block, "README.md lacks the generated annotation table markers"
    assert block.group(1) == annotation_reference(), "regenerate with: python scripts/update_readme.py"
    for annotation in OUR_ANNOTATIONS + KATALOG_SYNC_ANNOTATIONS:
        assert f"`{annotation.key}`" in block.group(1)


def test_the_migration_guide_maps_every_annotation_and_flag_and_the_readme_links_it() -> None:
    repo = Path(__file__).resolve().parent.parent
    guide = (repo / "docs" / "migrating-from-katalog-sync.md").read_text()
    assert "(docs/migrating-from-katalog-sync.md)" in (repo / "README.md").read_text()
    for annotation in KATALOG_SYNC_ANNOTATIONS:
        assert f"| `{annotation.key.removeprefix(KS)}` |" in guide, annotation.key
    # katalog-sync-daemon's and katalog-sync-sidecar's flags (from katalog-sync's README).
    flags = ["--log-level", "--bind-address", "--pprof-bind-address", "--min-sync-interval", "--max-sync-interval",
             "--default-sync-interval", "--default-check-ttl", "--sync-ttl-buffer-duration", "--kubelet-api",
             "--kubelet-api-insecure-skip-verify", "--katalog-sync-daemon", "--katalog-sync-daemon-max-backoff",
             "--namespace", "--pod-name", "--container-name"]
    for flag in flags:
        assert f"`{flag}`" in guide, flag


def test_with_services_from_the_environment_annotations_are_never_loaded(caplog: pytest.LogCaptureFixture) -> None:
    env = dict(ENV, KATALOG_SERVICES="web:80")
    sink = Recorder()
    follower = ConfigFollower(env, load_config(env), sink)
    pod = make_pod("web-0", "shop", ports={"http": 8080})
    for tags in ("a", "b"):
        pod["metadata"]["annotations"] = {KS + "service-names": "other", KS + "service-tags": tags}
        with caplog.at_level("INFO", logger="katalog.config"):
            follower.observe(observe_pod(pod, "katalog-sidecar", ()))
    assert follower.reloads == 0
    assert [kind for kind, _ in sink.events] == ["observe", "observe"]
    assert [r.getMessage() for r in caplog.records].count(
        "KATALOG_SERVICES is set: the pod's katalog-sidecar.io/ and katalog-sync.wish.com/ annotations are ignored") == 1


class Recording:
    """An HTTP server that answers every call with an empty JSON list and records the query."""

    def __init__(self) -> None:
        seen: list[tuple[str, str, dict[str, list[str]], str | None]] = []
        self.seen = seen

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = urlsplit(self.path)
                seen.append((self.command, parts.path, parse_qs(parts.query, keep_blank_values=True),
                             self.headers.get("Authorization")))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"[]")

            do_PUT = do_GET  # noqa: N815

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.addr = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_every_call_names_the_namespace_partition_and_basic_auth() -> None:
    """What an Enterprise agent (or a proxy) would receive; the open-source agent refuses
    `ns` and `partition` (tests/test_e2e_annotations.py), so this part is checked here."""
    recording = Recording()
    try:
        config = load_config(dict(ENV, KATALOG_SERVICES="web:80", CONSUL_HTTP_ADDR=recording.addr,
                                  CONSUL_NAMESPACE="team-a", CONSUL_PARTITION="eu", CONSUL_HTTP_AUTH="ops:pw"))
        agent = ConsulAgent(config.consul)
        agent.register_service({"ID": "x", "Name": "web"})
        agent.update_ttl_check("x:readiness", "passing", "ok")
        agent.agent_service("x")
        with contextlib.suppress(ConsulError):  # this server answers [] where the agent sends a map
            agent.node_of_service("x")
        with contextlib.suppress(ConsulError):
            agent.node_instance("node-a", "web", "x")
        agent.node_checks("node-a", "web", "x")
        agent.deregister_service("x")
    finally:
        recording.close()
    assert [path for _m, path, _q, _a in recording.seen] == [
        "/v1/agent/service/register", "/v1/agent/check/update/x:readiness", "/v1/agent/service/x",
        "/v1/agent/checks", "/v1/catalog/node-services/node-a", "/v1/health/node/node-a",
        "/v1/agent/service/deregister/x"]
    for _method, _path, query, authorization in recording.seen:
        assert (query["ns"], query["partition"]) == (["team-a"], ["eu"])
        assert authorization == "Basic b3BzOnB3"  # ops:pw


def test_a_huge_bad_annotation_gives_a_bounded_report() -> None:
    """Annotations hold up to 256 KiB and can be edited at runtime by anyone who may patch the pod."""
    junk = ",".join(f"k{n}" for n in range(40000))  # 40000 meta items without a ':'
    lines = problems(ENV, {KS + "service-names": "web", KS + "service-meta": junk, KS + "container-exclude": 7})  # type: ignore[dict-item]
    assert len(lines) == 51 and lines[-1] == f"... and {40000 - 50} more problems"
    assert max(len(line) for line in lines) < 1200
    assert sum(len(line) for line in lines) < 60_000


def test_non_string_annotation_values_are_left_out() -> None:
    pod = make_pod("web-0", "shop", containers=("app", "katalog-sidecar"), ports={"http": 8080})
    pod["metadata"]["annotations"] = {KS + "service-names": "web", KS + "container-exclude": ["app"], "x": None}
    observation = observe_pod(pod, "katalog-sidecar", ())
    assert observation.annotations == ((KS + "service-names", "web"),)


_KEYS = st.sampled_from([KS + k for k in ("service-names", "service-port", "service-tags", "service-meta",
                                          "service-health", "container-exclude", "sidecar", "service-check-ttl",
                                          "sync-interval", "service-port-web", "service-meta-web", "service-x")]
                        + [OURS + k for k in ("services", "tags", "meta", "tags-web", "meta-web", "health-web",
                                              "exclude-containers", "check-ttl", "other")])


@settings(max_examples=300, deadline=None)
@given(annotations=st.dictionaries(_KEYS | st.text(max_size=30), st.text(max_size=60), max_size=8),
       default_port=st.none() | st.integers(min_value=-5, max_value=70000))
def test_any_annotations_give_a_config_or_one_line_problems(annotations: dict[str, str], default_port: int | None) -> None:
    try:
        config = load_config(ENV, annotations, default_port=default_port)
    except ConfigError as error:
        assert error.problems and all("\n" not in p and "\r" not in p for p in error.problems)
    else:
        assert config.services
        for spec in config.services:
            assert spec.port_name or (spec.port is not None and 1 <= spec.port <= 65535)


def test_the_guide_lists_every_metric() -> None:
    from sidecar.metrics import Metrics

    guide = (Path(__file__).resolve().parent.parent / "docs" / "migrating-from-katalog-sync.md").read_text()
    names = {family.name for family in Metrics().registry.collect()}
    assert names
    for name in names:
        assert f"`{name}`" in guide or f"`{name}_total`" in guide, name


# --- katalog-sync pods that Consul and katalog-sync accept: registered, never refused (issue 20) ----

def test_tags_with_a_space_or_a_slash_are_registered_as_written() -> None:
    config = load_config(ENV, {KS + "service-names": "web", KS + "service-tags": "urlprefix-/api,env prod"},
                         default_port=8080)
    assert config.services[0].tags == ("urlprefix-/api", "env prod")
    assert config.notices == ()


def test_a_service_name_that_is_not_a_dns_label_is_registered_with_a_warning() -> None:
    config = load_config(ENV, {KS + "service-names": "hw_service"}, default_port=8080)
    assert [s.name for s in config.services] == ["hw_service"]
    assert config.notices == (
        "katalog-sync.wish.com/service-names='hw_service': service name 'hw_service' is not a DNS label (letters, "
        "digits and '-'): registered, but Consul's DNS interface will not answer for it (query it through the HTTP API)",)
    # The same rule for every source: our annotations and the environment.
    assert load_config(ENV, {OURS + "services": "hw_service:80"}).services[0].name == "hw_service"
    assert load_config(dict(ENV, KATALOG_SERVICES="hw_service:80")).notices


def test_user_meta_colliding_with_ours_is_dropped_with_a_warning_not_refused() -> None:
    config = load_config(ENV, {KS + "service-names": "web",
                               KS + "service-meta": "managed-by:helm,k8s-pod:x,external-sync-source:katalog-sync,"
                                                    "team:pay,external-k8s-link:a"},
                         default_port=8080)
    # Ours wins (registration writes our keys); katalog-sync's keys other than its marker are the user's.
    assert dict(config.services[0].meta) == {"team": "pay", "external-k8s-link": "a"}
    assert [n.split("': ", 1)[1].split(":")[0] for n in config.notices] == [
        "meta key 'managed-by' is set by katalog-sidecar itself", "meta key 'k8s-pod' is set by katalog-sidecar itself",
        "meta key 'external-sync-source' is ignored"]
    env_config = load_config(dict(ENV, KATALOG_SERVICES="web:80", KATALOG_META="managed-by=helm,team=pay"))
    assert dict(env_config.services[0].meta) == {"team": "pay"}
    assert any("'managed-by' is set by katalog-sidecar itself" in n for n in env_config.notices)


def test_empty_list_items_are_dropped_and_an_empty_health_is_unset() -> None:
    config = load_config(ENV, {KS + "service-names": "web,", KS + "service-health": "warning",
                               KS + "service-health-web": ""}, default_port=8080)
    assert [(s.name, s.health) for s in config.services] == [("web", "warning")]  # falls back, as katalog-sync
    config = load_config(ENV, {OURS + "services": "web:80,", OURS + "health-web": " "})
    assert [(s.name, s.health) for s in config.services] == [("web", None)]
    assert problems(ENV, {KS + "service-names": " , "}) == ["katalog-sync.wish.com/service-names=' , ': lists no service"]
    assert problems(ENV, {OURS + "services": ","}) == ["katalog-sidecar.io/services=',': lists no service"]
