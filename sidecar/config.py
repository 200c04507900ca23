"""Configuration: every setting, its default and its documentation, in one place.

`load_config(environ, annotations)` builds one frozen `Config` and validates it in a single
pass that collects every problem, each naming the variable (or pod annotation) and the
offending value. The README's configuration tables are generated from `SETTINGS` and
`sidecar.annotations` (`katalog-sidecar config-reference`) and a test keeps them identical.

Where the services come from, in this order (the first that applies wins, nothing is mixed):
1. `KATALOG_SERVICES` in the environment, with the other `KATALOG_*` variables; the pod's
   annotations are then ignored.
2. The pod's `katalog-sidecar.io/` annotations (`…/services` present).
3. The pod's `katalog-sync.wish.com/` annotations (`…/service-names` present), with
   katalog-sync's meaning.
Annotations are read from the pod watch, so (2) and (3) need the `kubernetes` readiness source;
they are re-read whenever they change, and the running pod's registration follows.
"""

from __future__ import annotations

import ipaddress
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from sidecar import annotations as pod_annotations
from sidecar.durations import parse_duration
from sidecar.errors import ConfigError


@dataclass(frozen=True)
class Setting:
    env: str
    default: str
    help: str


SETTINGS: tuple[Setting, ...] = (
    # Pod identity: the downward API provides these (see examples/).
    Setting("POD_NAME", "", "Pod name (downward API `metadata.name`). Required."),
    Setting("POD_NAMESPACE", "", "Pod namespace (downward API `metadata.namespace`). Required."),
    Setting("POD_IP", "", "Pod IP, registered as the service address (downward API `status.podIP`). Required."),
    Setting("HOST_IP", "", "Node IP (downward API `status.hostIP`); the agent is reached at `http://$HOST_IP:8500` unless `CONSUL_HTTP_ADDR` is set."),
    Setting("POD_UID", "", "Pod UID (downward API `metadata.uid`); added to the service meta when set. A restarted sidecar needs it to recognise its pod's instance before it sees the pod (keeping its statuses alive through an API outage)."),
    # Consul agent connection: the standard variables of Consul's own tools.
    Setting("CONSUL_HTTP_ADDR", "", "Agent address: `host:port`, `http://host:port` or `https://host:port`. Empty: `http://$HOST_IP:8500`."),
    Setting("CONSUL_HTTP_TOKEN", "", "ACL token. Never logged or written anywhere."),
    Setting("CONSUL_HTTP_TOKEN_FILE", "", "File holding the ACL token; takes precedence over `CONSUL_HTTP_TOKEN` and is re-read so a rotated token is used without a restart."),
    Setting("CONSUL_HTTP_SSL", "false", "`true` uses HTTPS when `CONSUL_HTTP_ADDR` has no scheme."),
    Setting("CONSUL_HTTP_SSL_VERIFY", "true", "`false` skips certificate verification (a warning is logged once)."),
    Setting("CONSUL_CACERT", "", "CA bundle used to verify the agent's certificate."),
    Setting("CONSUL_CLIENT_CERT", "", "Client certificate for agents that require one; needs `CONSUL_CLIENT_KEY`."),
    Setting("CONSUL_CLIENT_KEY", "", "Key of `CONSUL_CLIENT_CERT`."),
    Setting("CONSUL_TLS_SERVER_NAME", "", "Name to verify in the agent's certificate instead of the host in the address."),
    Setting("CONSUL_CAPATH", "", "Directory of CA certificates (every PEM file in it) used to verify the agent's certificate; `CONSUL_CACERT` wins when both are set, as in Consul's own client."),
    Setting("CONSUL_HTTP_AUTH", "", "`user:password` for HTTP basic authentication (e.g. a proxy in front of the agent). Never logged."),
    Setting("CONSUL_NAMESPACE", "", "Consul Enterprise namespace, sent as the `ns` parameter of every call. The open-source agent refuses it (HTTP 400)."),
    Setting("CONSUL_PARTITION", "", "Consul Enterprise admin partition, sent as the `partition` parameter of every call. The open-source agent refuses it (HTTP 400)."),
    Setting("KATALOG_CONSUL_TIMEOUT", "5s", "Timeout of one call to the agent. Blocking queries get their wait plus a margin on top."),
    # What to register.
    Setting("KATALOG_SERVICES", "", "Services of this pod, comma-separated `name:port`; port is a number or a named container port (`web:8080,admin:http-admin`). Unset: the pod's annotations name them (see [Pod annotations](#pod-annotations))."),
    Setting("KATALOG_TAGS", "", "Tags for every service, comma-separated."),
    Setting("KATALOG_META", "", "Meta for every service, comma-separated `key=value`. A key the tool writes itself (`managed-by`, `k8s-pod`, ...) is ignored with a warning."),
    Setting("KATALOG_SERVICE_<NAME>_TAGS", "", "Tags for one service, replacing `KATALOG_TAGS` (`<NAME>`: the service name upper-cased, `-` and `.` as `_`)."),
    Setting("KATALOG_SERVICE_<NAME>_META", "", "Meta for one service, merged over `KATALOG_META` key by key."),
    Setting("KATALOG_SERVICE_<NAME>_HEALTH", "", "Fixed health of one service: `passing`, `warning` or `critical`, whatever the app's readiness (e.g. a DNS-only service). Draining at termination still turns it critical."),
    Setting("KATALOG_CLUSTER_NAME", "", "Cluster name, added to service IDs and meta. Set it whenever several Kubernetes clusters register into one Consul datacenter, not only when they share agents: without it, same-named pods of two clusters get the same service ID (each sidecar still confirms and drains only its own node's instance, but the ID is ambiguous to operators and tools, and clusters sharing an agent would overwrite each other)."),
    Setting("KATALOG_CHECK_TTL", "15s", "TTL of the liveness check: a dead or hung sidecar's instance turns critical this long after its last refresh. The readiness check gets ten times it. Each is refreshed every third of its TTL."),
    Setting("KATALOG_DEREGISTER_CRITICAL_AFTER", "1m", "`DeregisterCriticalServiceAfter` of the liveness check: how long after the sidecar stops the agent reaps the instance (Consul's minimum is 1m)."),
    # Readiness source.
    Setting("KATALOG_READINESS_SOURCE", "kubernetes", "Where the app's readiness comes from: `kubernetes` (watch the own pod), `http`, `tcp` or `fixed`."),
    Setting("KATALOG_CONTAINER_NAME", "katalog-sidecar", "This sidecar's own container name, left out of the readiness of the pod."),
    Setting("KATALOG_EXCLUDE_CONTAINERS", "", "Other containers to leave out of the readiness of the pod, comma-separated."),
    Setting("KATALOG_READINESS_HTTP_URL", "", "With source `http`: the app is ready while this URL answers 200 to 399, as for kubelet's `httpGet` probe (no proxy variables, certificate not verified, redirects not followed)."),
    Setting("KATALOG_READINESS_TCP_ADDR", "", "With source `tcp`: the app is ready while `host:port` accepts connections."),
    Setting("KATALOG_READINESS_FIXED", "ready", "With source `fixed`: `ready` or `not-ready`."),
    Setting("KATALOG_READINESS_PROBE_INTERVAL", "2s", "With sources `http` and `tcp`: time between probes."),
    Setting("KATALOG_READINESS_PROBE_TIMEOUT", "1s", "With sources `http` and `tcp`: timeout of one probe."),
    Setting("KATALOG_KUBE_API_URL", "", "Kubernetes API URL. Empty: in-cluster, from `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`."),
    Setting("KATALOG_KUBE_TOKEN_FILE", "/var/run/secrets/kubernetes.io/serviceaccount/token", "Service-account token, re-read periodically and after a 401."),
    Setting("KATALOG_KUBE_CA_FILE", "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt", "CA of the API server (ignored for `http://` URLs)."),
    Setting("KATALOG_KUBE_TIMEOUT", "10s", "Timeout of one Kubernetes API request (connect, list)."),
    Setting("KATALOG_KUBE_WATCH_INACTIVITY", "90s", "A watch that sends nothing for this long is restarted, at once and from the same resourceVersion. The API server sends bookmarks only once something changed since the watch began, so on a quiet cluster the watch restarts once per this period: harmless, one request."),
    # Gate and status.
    Setting("KATALOG_STATUS_FILE", "/run/katalog/status.json", "Status file written by the sidecar and read by `readiness-gate` and `status`. Put it on an emptyDir."),
    Setting("KATALOG_GATE_MODE", "latch", "`latch`: once confirmed, the gate stays open through Consul outages. `continuous`: the gate closes whenever confirmation is lost."),
    Setting("KATALOG_GATE", "exec", "`exec`: `readiness-gate` (the exec probe) reads the status file. `condition`: the sidecar also sets the pod condition `katalog-sidecar.io/consul-confirmed` on its own pod (PATCH `pods/status`; the pod lists it in `readinessGates`; needs `patch` on `pods/status`). The status file is written either way."),
    Setting("KATALOG_EVENTS", "true", "Kubernetes Events on the pod: registered, confirmed, confirmation lost, draining, deregistered, and each fault. Needs `create`, `patch` on `events`; without them the sidecar logs that once and carries on."),
    Setting("KATALOG_HEARTBEAT_INTERVAL", "5s", "How often the status file is refreshed; the gate fails when it is older than three intervals, and never sooner than after 10s (a busy node must not flap the gate)."),
    Setting("KATALOG_CONFIRM_WAIT", "10s", "Wait of one blocking catalog query while confirming a change."),
    Setting("KATALOG_RECONFIRM_INTERVAL", "60s", "In `continuous` mode: how often the catalog is read again in steady state."),
    Setting("KATALOG_FAIL_OPEN_AFTER", "", "Off by default (the gate holds the rollout until Consul confirms). A duration (`10m`): once the gate has been held that long since the app turned ready *because Consul cannot confirm* (agent unreachable, catalog unreadable or not confirming), it opens anyway, loudly (gate line, `status`, Warning Event `ConsulGateFailedOpen`, `katalog_gate_failed_open`), and registration goes on. Never for the pod's own reasons. Per pod: annotation `katalog-sidecar.io/fail-open-after`."),
    Setting("KATALOG_DRAIN_TIMEOUT", "20s", "Bound on draining and deregistering at termination when the pod's grace period is unknown. Keep it below `terminationGracePeriodSeconds`."),
    # Operations.
    Setting("KATALOG_LOG_FORMAT", "text", "`text` or `json`."),
    Setting("KATALOG_LOG_LEVEL", "info", "`debug`, `info`, `warning` or `error`."),
    Setting("KATALOG_METRICS_ADDR", "0.0.0.0:9464", "Listen address of `/metrics` and `/healthz`; `off` disables it."),
)

SETTING_NAMES = frozenset(s.env for s in SETTINGS)
_DEFAULTS = {s.env: s.default for s in SETTINGS}

# Keys the sidecar writes into every instance's meta; user meta may not set them.
TOOL_NAME = "katalog-sidecar"
RESERVED_META_KEYS = frozenset(
    {"external-source", "managed-by", "k8s-namespace", "k8s-pod", "k8s-pod-uid", "k8s-cluster"}
)
# katalog-sync deregisters every instance on its agent that carries this key with value
# `katalog-sync` and that it does not sync itself: an instance of ours must never carry it.
KATALOG_SYNC_MARKER = "external-sync-source"

GATE_MODES = ("latch", "continuous")
GATES = ("exec", "condition")
READINESS_SOURCES = ("kubernetes", "http", "tcp", "fixed")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

_META_KEY = re.compile(r"^[a-zA-Z0-9_-]+$")
_SERVICE_NAME = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
# What Consul's API takes and our instance IDs can carry (katalog-sync users name `hw_service`).
_SERVICE_NAME_ANY = re.compile(r"^[a-zA-Z0-9_.-]{1,63}$")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
# A host name label as resolvers take it (underscores occur in real names, e.g. in /etc/hosts).
_HOST_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_MIN_DEREGISTER_AFTER = 60.0  # Consul raises smaller values to 1m; we refuse them instead.
_MAX_DURATION = 9223372036.0  # Go's time.Duration limit (~292 years): Consul rejects anything longer
_MAX_META_VALUE_BYTES = 512  # Consul counts bytes (Go's len), not characters
_MAX_SHOWN = 1024  # characters of a bad value quoted in a problem
_MAX_PROBLEMS = 50
# Registration derives longer TTLs from KATALOG_CHECK_TTL (the readiness check's is a multiple
# of it); a day keeps every derived TTL far inside Consul's limit, and is already far longer
# than anyone should wait for a dead pod's instance to turn critical.
_MAX_CHECK_TTL = 86400.0


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    port: int | None  # None while `port_name` is still to be resolved from the pod spec
    port_name: str | None
    tags: tuple[str, ...]
    meta: tuple[tuple[str, str], ...]
    health: str | None = None  # a fixed status; None: follows the app's readiness


@dataclass(frozen=True)
class ConsulSettings:
    scheme: str
    host: str
    port: int
    token: str | None = field(repr=False)
    token_file: Path | None
    verify: bool
    ca_cert: Path | None
    client_cert: Path | None
    client_key: Path | None
    tls_server_name: str | None
    timeout: float
    ca_path: Path | None = None
    auth: tuple[str, str] | None = field(default=None, repr=False)
    namespace: str | None = None
    partition: str | None = None

    @property
    def address(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


@dataclass(frozen=True)
class ReadinessSettings:
    source: str
    container_name: str
    exclude_containers: tuple[str, ...]
    http_url: str | None
    tcp_host: str | None
    tcp_port: int | None
    fixed_ready: bool
    probe_interval: float
    probe_timeout: float


@dataclass(frozen=True)
class KubernetesSettings:
    api_url: str | None
    token_file: Path
    ca_file: Path
    timeout: float
    watch_inactivity: float


@dataclass(frozen=True)
class Config:
    pod_name: str
    pod_namespace: str
    pod_ip: str
    pod_uid: str | None
    cluster_name: str | None
    consul: ConsulSettings
    services: tuple[ServiceSpec, ...]
    check_ttl: float
    deregister_critical_after: float
    readiness: ReadinessSettings
    kubernetes: KubernetesSettings
    status_file: Path
    gate_mode: str
    gate: str  # "exec" or "condition" (also PATCH the pod condition)
    events: bool
    heartbeat_interval: float
    confirm_wait: float
    reconfirm_interval: float
    drain_timeout: float
    log_format: str
    log_level: str
    metrics_addr: tuple[str, int] | None
    # "environment", or the annotation namespace the services came from, or PENDING before
    # the pod's annotations have been read.
    service_source: str = "environment"
    notices: tuple[str, ...] = field(default=(), compare=False)  # said once in the log
    fail_open_after: float | None = None  # KATALOG_FAIL_OPEN_AFTER (or the pod's annotation); None: never


class _Collector:
    """Reads variables and records every problem instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []
        self.notices: list[str] = []
        self.annotated: pod_annotations.PodAnnotations | None = None

    def raw(self, name: str) -> str:
        return self.environ.get(name, _DEFAULTS.get(name, "")).strip()

    def bad(self, name: str, value: str, why: str) -> None:
        # Variable names are the user's too (KATALOG_SERVICE_*): one line, whatever they hold.
        shown = name if name.isprintable() else repr(name)
        # Every problem repeats the value: a huge one (an annotation may hold 256 KiB, and is
        # editable at runtime) must not make the report, the log and the gate line huge.
        text = repr(value) if len(value) <= _MAX_SHOWN else f"{value[:_MAX_SHOWN]!r}... ({len(value)} characters)"
        self.problems.append(f"{shown}={text}: {why}")

    def notice(self, name: str, value: str, why: str) -> None:
        """Like `bad`, for something accepted with a warning (said once in the log)."""
        shown = name if name.isprintable() else repr(name)
        text = repr(value) if len(value) <= _MAX_SHOWN else f"{value[:_MAX_SHOWN]!r}... ({len(value)} characters)"
        self.notices.append(f"{shown}={text}: {why}")

    def required(self, name: str) -> str:
        value = self.raw(name)
        if not value:
            self.problems.append(f"{name} is not set: {_help(name)}")
        return value

    def duration(self, name: str, minimum: float = 0.0) -> float:
        value = self.raw(name)
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.bad(name, value, str(exc))
            return parse_duration(_DEFAULTS[name]) if _DEFAULTS.get(name) else 1.0
        if not math.isfinite(seconds) or seconds > _MAX_DURATION:
            self.bad(name, value, "too long (at most 2562047h)")
            return parse_duration(_DEFAULTS[name]) if _DEFAULTS.get(name) else 1.0
        if seconds <= minimum:
            self.bad(name, value, "must be greater than " + ("zero" if minimum == 0 else f"{minimum:g}s"))
        return seconds

    def boolean(self, name: str) -> bool:
        value = self.raw(name).lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        self.bad(name, self.raw(name), "expected true or false")
        return _DEFAULTS[name] == "true"

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        value = self.raw(name).lower()
        if value not in choices:
            self.bad(name, self.raw(name), "expected one of " + ", ".join(choices))
        # An invalid value never reaches a Config; returning it keeps the checks that depend
        # on it (e.g. "kubernetes needs an API URL") from adding a second, misleading problem.
        return value

    def readable_file(self, name: str) -> Path | None:
        value = self.raw(name)
        if not value:
            return None
        path = Path(value)
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            self.bad(name, value, f"cannot read the file ({exc.strerror or exc})")
        except ValueError:  # a NUL in the path
            self.bad(name, value, "not a file path")
        return path


def _help(name: str) -> str:
    for setting in SETTINGS:
        if setting.env == name:
            return setting.help
    return ""


def _split_url(text: str) -> SplitResult | None:
    """urlsplit, or None where it raises (an unbalanced '[' is an "Invalid IPv6 URL")."""
    try:
        return urlsplit(text)
    except ValueError:
        return None


def host_problem(host: str) -> str | None:
    """Why `host` is neither an IP address nor a host name, or None.

    Checked here because the socket layer fails late and badly: `a..b` passes urlsplit and
    then raises UnicodeError ("label empty or too long") inside the thread that connects.
    """
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253 or not all(_HOST_LABEL.match(label) for label in name.split(".")):
        return ("not an IP address or host name (letters, digits, '-' and '_' in dot-separated "
                "labels of 1 to 63 characters)")
    return None


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def service_env_key(service_name: str) -> str:
    """`my-api` -> `MY_API`, the <NAME> part of per-service variables."""
    return re.sub(r"[-.]", "_", service_name).upper()


def _parse_port(c: _Collector, name: str, value: str, text: str) -> int | None:
    """`text` is the port part of the variable's `value`; problems name the whole value."""
    if not text.isdigit():
        c.bad(name, value, "port must be a number")
        return None
    port = int(text)
    if not 1 <= port <= 65535:
        c.bad(name, value, "port must be between 1 and 65535")
        return None
    return port


def _parse_meta(c: _Collector, name: str, value: str, separator: str = "=") -> dict[str, str]:
    meta: dict[str, str] = {}
    for item in _split_list(value):
        key, sep, val = item.partition(separator)
        key, val = key.strip(), val.strip()
        if not sep:
            c.bad(name, value, f"meta item {item!r} is not key{separator}value")
        elif separator == ":" and ":" in val:
            # katalog-sync silently drops such an item; refusing it says so instead.
            c.bad(name, value, f"meta item {item!r} has more than one ':' (katalog-sync would drop it)")
        elif not _META_KEY.match(key):
            c.bad(name, value, f"meta key {key!r} may only contain letters, digits, '_' and '-'")
        elif len(key) > 128:
            c.bad(name, value, f"meta key {key[:20]!r}... is longer than 128 characters")
        elif key.startswith("consul-"):
            c.bad(name, value, f"meta key {key!r}: the prefix 'consul-' is reserved by Consul")
        elif key in RESERVED_META_KEYS:
            # Ours wins (consumers select our instances by these keys); the pod is not refused.
            c.notice(name, value, f"meta key {key!r} is set by katalog-sidecar itself: the item is ignored "
                     "and katalog-sidecar's value is registered")
        elif key == KATALOG_SYNC_MARKER:
            c.notice(name, value, f"meta key {key!r} is ignored: it marks katalog-sync's instances, and katalog-sync "
                     "deregisters every instance carrying it that it does not sync itself")
        elif len(val) > _MAX_META_VALUE_BYTES:
            c.bad(name, value, f"meta value of {key!r} is longer than 512 characters")
        elif len(val.encode("utf-8", "surrogatepass")) > _MAX_META_VALUE_BYTES:
            c.bad(name, value, f"meta value of {key!r} is longer than 512 bytes in UTF-8")
        elif key in meta:
            c.bad(name, value, f"meta key {key!r} is given twice")
        else:
            meta[key] = val
    return meta


def _parse_tags(c: _Collector, name: str, value: str) -> tuple[str, ...]:
    # Consul takes any tag text: fabio's `urlprefix-/api` and `env prod` are real tags. Only
    # control characters are refused (a tag is shown on one line in every Consul UI and log).
    tags = _split_list(value)
    for tag in tags:
        if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in tag):
            c.bad(name, value, f"tag {tag!r} contains a control character")
    return tuple(dict.fromkeys(tags))


def _parse_services(c: _Collector, pod_meta_count: int) -> tuple[ServiceSpec, ...]:
    name = "KATALOG_SERVICES"
    value = c.required(name)
    if not value:
        return ()
    pod_tags = _parse_tags(c, "KATALOG_TAGS", c.raw("KATALOG_TAGS"))
    pod_meta = _parse_meta(c, "KATALOG_META", c.raw("KATALOG_META"))
    services: list[ServiceSpec] = []
    seen_names: set[str] = set()
    seen_keys: dict[str, str] = {}
    for item in value.split(","):
        item = item.strip()
        svc_name, sep, port_text = item.partition(":")
        svc_name, port_text = svc_name.strip(), port_text.strip()
        if not item or not svc_name:
            c.bad(name, value, "empty service name")
            continue
        if not sep or not port_text:
            c.bad(name, value, f"service {svc_name!r} has no port (write {svc_name if svc_name.isprintable() else 'NAME'}:PORT)")
            continue
        if not _check_service_name(c, name, value, svc_name, seen_names):
            continue
        env_key = service_env_key(svc_name)
        if env_key in seen_keys:
            c.bad(name, value, f"services {seen_keys[env_key]!r} and {svc_name!r} share the variable prefix KATALOG_SERVICE_{env_key}_")
        seen_keys[env_key] = svc_name
        port: int | None = None
        port_name: str | None = None
        if port_text.isdigit():
            port = _parse_port(c, name, value, port_text)
        elif _PORT_NAME.match(port_text) and len(port_text) <= 15:
            port_name = port_text
        else:
            c.bad(name, value, f"port {port_text!r} of {svc_name!r} is neither a number nor a container port name")
        tags_var = f"KATALOG_SERVICE_{env_key}_TAGS"
        meta_var = f"KATALOG_SERVICE_{env_key}_META"
        health_var = f"KATALOG_SERVICE_{env_key}_HEALTH"
        tags = _parse_tags(c, tags_var, c.environ[tags_var]) if tags_var in c.environ else pod_tags
        meta = dict(pod_meta)
        meta.update(_parse_meta(c, meta_var, c.environ.get(meta_var, "")))
        if len(meta) + pod_meta_count > 64:
            c.bad(meta_var, c.environ.get(meta_var, ""), f"service {svc_name!r} would carry more than 64 meta pairs (Consul's limit, counting the tool's own)")
        health = _parse_health(c, health_var, c.environ[health_var]) if health_var in c.environ else None
        services.append(ServiceSpec(svc_name, port, port_name, tags, tuple(sorted(meta.items())), health))
    # A per-service variable for a service that is not listed is almost always a typo.
    known = {f"KATALOG_SERVICE_{service_env_key(s.name)}_{kind}" for s in services for kind in ("TAGS", "META", "HEALTH")}
    for var in sorted(c.environ):
        if var.startswith("KATALOG_SERVICE_") and var not in known and services:
            c.bad(var, c.environ[var], "names no service listed in KATALOG_SERVICES")
    return tuple(services)


def _check_service_name(c: _Collector, name: str, value: str, svc_name: str, seen: set[str]) -> bool:
    if not _SERVICE_NAME_ANY.match(svc_name):
        c.bad(name, value, f"service name {svc_name!r}: letters, digits, '-', '_' and '.', at most 63 characters "
              "(the name is part of the instance's ID, which Consul's API takes in a URL path)")
        return False
    if not _SERVICE_NAME.match(svc_name):
        # Consul registers it and logs the same warning: its DNS interface only serves DNS labels.
        c.notice(name, value, f"service name {svc_name!r} is not a DNS label (letters, digits and '-'): registered, "
                 "but Consul's DNS interface will not answer for it (query it through the HTTP API)")
    if svc_name in seen:
        c.bad(name, value, f"service {svc_name!r} is listed twice")
        return False
    seen.add(svc_name)
    return True


def _parse_health(c: _Collector, name: str, value: str) -> str | None:
    health = value.strip().lower()
    if health not in pod_annotations.HEALTH_STATUSES:
        c.bad(name, value, "expected one of " + ", ".join(pod_annotations.HEALTH_STATUSES))
        return None
    return health


# The services are named by the pod's annotations, which have not been read yet.
PENDING = "pod annotations (not read yet)"
_ENV_ONLY = ("KATALOG_TAGS", "KATALOG_META")


def _services_from_annotations(c: _Collector, annotations: Mapping[str, str] | None,
                               default_port: int | None, pod_meta_count: int) -> tuple[tuple[ServiceSpec, ...], str]:
    """Services from the pod's annotations (KATALOG_SERVICES is unset): (specs, source)."""
    # Registration settings of the environment apply only with KATALOG_SERVICES: ignoring
    # them silently would hide a half-finished migration.
    for var in sorted(c.environ):
        if var in _ENV_ONLY or var.startswith("KATALOG_SERVICE_"):
            c.bad(var, c.environ[var], "applies only with KATALOG_SERVICES; with services from pod annotations "
                  "use the annotations (see the README's Pod annotations)")
    if annotations is None:
        return (), PENDING
    pod = pod_annotations.read(dict(pod_annotations.relevant(annotations)))
    if pod is None:
        c.problems.append(
            "no services to register: set KATALOG_SERVICES in the sidecar's environment, or annotate the pod "
            f"with {pod_annotations.OURS}services (or katalog-sync's {pod_annotations.KATALOG_SYNC}service-names)")
        return (), PENDING
    c.problems.extend(pod.problems)
    c.notices.extend(pod.notices)
    c.annotated = pod
    services: list[ServiceSpec] = []
    seen: set[str] = set()
    for entry in pod.entries:
        if not _check_service_name(c, pod.services.key, pod.services.value, entry.name, seen):
            continue
        port: int | None = None
        port_name: str | None = None
        if entry.port is None or entry.port_text is None:
            port = default_port
            if port is None:
                c.bad(pod.services.key, pod.services.value,
                      f"service {entry.name!r} has no port: no {pod_annotations.KATALOG_SYNC}service-port annotation "
                      "and no containerPort in the pod spec")
            elif not 1 <= port <= 65535:
                c.bad(pod.services.key, pod.services.value,
                      f"service {entry.name!r}: the pod's first containerPort {port} is not a port")
                port = None
        elif entry.port_text.isdigit() or pod.namespace == pod_annotations.KATALOG_SYNC:
            port = _parse_port(c, entry.port.key, entry.port.value, entry.port_text)
        elif _PORT_NAME.match(entry.port_text) and len(entry.port_text) <= 15:
            port_name = entry.port_text
        else:
            c.bad(entry.port.key, entry.port.value,
                  f"port {entry.port_text!r} of {entry.name!r} is neither a number nor a container port name")
        tags = _parse_tags(c, entry.tags.key, entry.tags.value) if entry.tags else ()
        meta: dict[str, str] = {}
        for raw in entry.meta:
            meta.update(_parse_meta(c, raw.key, raw.value, pod.meta_separator))
        if len(meta) + pod_meta_count > 64:
            last = entry.meta[-1]
            c.bad(last.key, last.value, f"service {entry.name!r} would carry more than 64 meta pairs (Consul's limit, counting the tool's own)")
        health = _parse_health(c, entry.health.key, entry.health.value) if entry.health else None
        services.append(ServiceSpec(entry.name, port, port_name, tags, tuple(sorted(meta.items())), health))
    return tuple(services), pod.namespace + " annotations"


def _parse_consul(c: _Collector, host_ip: str) -> ConsulSettings:
    ssl = c.boolean("CONSUL_HTTP_SSL")
    addr = c.raw("CONSUL_HTTP_ADDR")
    scheme = "https" if ssl else "http"
    host, port = "127.0.0.1", 8500
    if not addr:
        if not host_ip:
            c.problems.append("CONSUL_HTTP_ADDR and HOST_IP are both unset: set HOST_IP from the downward API (status.hostIP) or CONSUL_HTTP_ADDR")
        else:
            host = host_ip
    else:
        text = addr if "://" in addr else f"{scheme}://{addr}"
        parts = _split_url(text)
        try:
            parsed_port = parts.port if parts is not None else -1
        except ValueError:
            parsed_port = -1
        if parts is None:
            c.bad("CONSUL_HTTP_ADDR", addr, "expected host:port, http://host:port or https://host:port")
        elif parts.scheme not in ("http", "https"):
            c.bad("CONSUL_HTTP_ADDR", addr, "scheme must be http:// or https://")
        elif not parts.hostname or parsed_port == -1 or (parts.path not in ("", "/")):
            c.bad("CONSUL_HTTP_ADDR", addr, "expected host:port, http://host:port or https://host:port")
        elif (why := host_problem(parts.hostname)) is not None:
            c.bad("CONSUL_HTTP_ADDR", addr, f"host {parts.hostname!r}: {why}")
        else:
            # http:// does not downgrade CONSUL_HTTP_SSL=true, as in Consul's own client.
            scheme = "https" if ssl else parts.scheme
            host = parts.hostname
            port = parsed_port if parsed_port is not None else (443 if scheme == "https" else 8500)
    token = c.raw("CONSUL_HTTP_TOKEN") or None
    token_file = c.readable_file("CONSUL_HTTP_TOKEN_FILE")
    cert = c.readable_file("CONSUL_CLIENT_CERT")
    key = c.readable_file("CONSUL_CLIENT_KEY")
    if (cert is None) != (key is None):
        missing, present = ("CONSUL_CLIENT_KEY", "CONSUL_CLIENT_CERT") if key is None else ("CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY")
        c.bad(present, c.raw(present), f"needs {missing} as well")
    ca_path = _parse_ca_path(c)
    auth = _parse_auth(c)
    namespace = c.raw("CONSUL_NAMESPACE") or None
    partition = c.raw("CONSUL_PARTITION") or None
    for var, name in (("CONSUL_NAMESPACE", namespace), ("CONSUL_PARTITION", partition)):
        if name and (not _CONSUL_NAME.match(name) or len(name) > 64):
            c.bad(var, name, "expected letters, digits and '-', at most 64 characters")
    return ConsulSettings(
        scheme=scheme,
        host=host,
        port=port,
        token=token,
        token_file=token_file,
        verify=c.boolean("CONSUL_HTTP_SSL_VERIFY"),
        ca_cert=c.readable_file("CONSUL_CACERT"),
        client_cert=cert,
        client_key=key,
        tls_server_name=c.raw("CONSUL_TLS_SERVER_NAME") or None,
        timeout=c.duration("KATALOG_CONSUL_TIMEOUT"),
        ca_path=ca_path,
        auth=auth,
        namespace=namespace,
        partition=partition,
    )


_CONSUL_NAME = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?$")


def _parse_auth(c: _Collector) -> tuple[str, str] | None:
    """`user:password` (or `user` alone), split as Consul's client does. Problems never show it."""
    value = c.environ.get("CONSUL_HTTP_AUTH", "")
    if not value:
        return None
    user, _sep, password = value.partition(":")
    try:
        (user + password).encode("latin-1")  # what HTTP basic authentication can carry
    except UnicodeEncodeError:
        c.problems.append("CONSUL_HTTP_AUTH (value not shown): only Latin-1 characters can be sent in basic authentication")
        return None
    return user, password


def load_ca_dir(path: Path) -> str:
    """Every certificate of every file in `path`, as one PEM text (Consul's client loads a
    CA directory the same way: any file name, every file). Raises ValueError naming a file
    without certificates, OSError when the directory cannot be read."""
    pems = []
    # Names starting with "." are a mounted Secret's or ConfigMap's own `..data` links.
    for entry in sorted(p for p in path.iterdir() if not p.name.startswith(".")):
        if not entry.is_file():
            continue
        text = entry.read_text(encoding="ascii", errors="replace")
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ValueError(f"{entry.name} holds no PEM certificate")
        pems.append(text)
    if not pems:
        raise ValueError("no certificate file in the directory")
    return "\n".join(pems)


def _parse_ca_path(c: _Collector) -> Path | None:
    value = c.raw("CONSUL_CAPATH")
    if not value:
        return None
    path = Path(value)
    try:
        load_ca_dir(path)
    except NotADirectoryError:
        c.bad("CONSUL_CAPATH", value, "not a directory (use CONSUL_CACERT for a single file)")
    except OSError as exc:
        c.bad("CONSUL_CAPATH", value, f"cannot read the directory ({exc.strerror or exc})")
    except ValueError as exc:
        c.bad("CONSUL_CAPATH", value, str(exc))
    return path


def _parse_host_port(c: _Collector, name: str, value: str) -> tuple[str, int] | None:
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host:
        c.bad(name, value, "expected host:port")
        return None
    why = host_problem(host)
    if why is not None:
        c.bad(name, value, f"host {host!r}: {why}")
    port = _parse_port(c, name, value, port_text)
    return (host, port) if port is not None and why is None else None


def _check_url(c: _Collector, name: str, url: str) -> None:
    parts = _split_url(url)
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        c.bad(name, url, "expected an http:// or https:// URL")
    elif (why := host_problem(parts.hostname)) is not None:
        c.bad(name, url, f"host {parts.hostname!r}: {why}")


def _parse_readiness(c: _Collector) -> ReadinessSettings:
    source = c.choice("KATALOG_READINESS_SOURCE", READINESS_SOURCES)
    http_url = c.raw("KATALOG_READINESS_HTTP_URL") or None
    tcp = c.raw("KATALOG_READINESS_TCP_ADDR")
    tcp_host, tcp_port = None, None
    if source == "http":
        if not http_url:
            c.problems.append("KATALOG_READINESS_HTTP_URL is not set, but KATALOG_READINESS_SOURCE is http")
        else:
            _check_url(c, "KATALOG_READINESS_HTTP_URL", http_url)
    if source == "tcp":
        if not tcp:
            c.problems.append("KATALOG_READINESS_TCP_ADDR is not set, but KATALOG_READINESS_SOURCE is tcp")
        else:
            parsed = _parse_host_port(c, "KATALOG_READINESS_TCP_ADDR", tcp)
            if parsed:
                tcp_host, tcp_port = parsed
    fixed = c.choice("KATALOG_READINESS_FIXED", ("ready", "not-ready"))
    return ReadinessSettings(
        source=source,
        container_name=c.raw("KATALOG_CONTAINER_NAME") or "katalog-sidecar",
        exclude_containers=tuple(_split_list(c.raw("KATALOG_EXCLUDE_CONTAINERS"))),
        http_url=http_url,
        tcp_host=tcp_host,
        tcp_port=tcp_port,
        fixed_ready=fixed == "ready",
        probe_interval=c.duration("KATALOG_READINESS_PROBE_INTERVAL"),
        probe_timeout=c.duration("KATALOG_READINESS_PROBE_TIMEOUT"),
    )


def _parse_kubernetes(c: _Collector, source: str, condition_gate: bool = False) -> KubernetesSettings:
    api_url = c.raw("KATALOG_KUBE_API_URL") or None
    if api_url:
        _check_url(c, "KATALOG_KUBE_API_URL", api_url)
    elif source == "kubernetes" or condition_gate:
        host = c.environ.get("KUBERNETES_SERVICE_HOST", "").strip()
        port = c.environ.get("KUBERNETES_SERVICE_PORT", "443").strip()
        if not host:
            c.problems.append(
                "KATALOG_KUBE_API_URL is not set and KUBERNETES_SERVICE_HOST is empty: not in a cluster? "
                + ("KATALOG_GATE=condition sets the pod condition through the API: set KATALOG_KUBE_API_URL"
                   if source != "kubernetes" else
                   "Set KATALOG_KUBE_API_URL, or KATALOG_READINESS_SOURCE=http|tcp|fixed")
            )
        elif (why := host_problem(host)) is not None:
            c.bad("KUBERNETES_SERVICE_HOST", host, why)
        else:
            bracketed = f"[{host}]" if ":" in host else host
            api_url = f"https://{bracketed}:{port}"
    return KubernetesSettings(
        api_url=api_url,
        token_file=Path(c.raw("KATALOG_KUBE_TOKEN_FILE")),
        ca_file=Path(c.raw("KATALOG_KUBE_CA_FILE")),
        timeout=c.duration("KATALOG_KUBE_TIMEOUT"),
        watch_inactivity=_watch_inactivity(c),
    )


def _watch_inactivity(c: _Collector) -> float:
    seconds = c.duration("KATALOG_KUBE_WATCH_INACTIVITY")
    if 0 < seconds < 1:
        # A silent watch is restarted at once: below a second that is a hot loop on a quiet pod.
        c.bad("KATALOG_KUBE_WATCH_INACTIVITY", c.raw("KATALOG_KUBE_WATCH_INACTIVITY"), "must be at least 1s")
    return seconds


def load_config(environ: Mapping[str, str], annotations: Mapping[str, str] | None = None, *,
                default_port: int | None = None) -> Config:
    """Build the configuration, or raise ConfigError listing every problem.

    `annotations` are the pod's (None: not read yet; then, without KATALOG_SERVICES, the
    Config names no services and `service_source` is PENDING). `default_port` is the first
    containerPort of the pod spec, katalog-sync's port when no annotation gives one.
    """
    c = _Collector(environ)
    pod_name = c.required("POD_NAME")
    if pod_name and (not _DNS_SUBDOMAIN.match(pod_name) or len(pod_name) > 253):
        c.bad("POD_NAME", pod_name, "not a valid pod name")
    namespace = c.required("POD_NAMESPACE")
    if namespace and (not _DNS_LABEL.match(namespace) or len(namespace) > 63):
        c.bad("POD_NAMESPACE", namespace, "not a valid namespace name")
    pod_ip = c.required("POD_IP")
    if pod_ip:
        try:
            ip = ipaddress.ip_address(pod_ip)
            if ip.is_unspecified:
                c.bad("POD_IP", pod_ip, "0.0.0.0 and :: cannot be registered")
        except ValueError:
            c.bad("POD_IP", pod_ip, "not an IP address")
    host_ip = c.raw("HOST_IP")
    cluster = c.raw("KATALOG_CLUSTER_NAME") or None
    if cluster and (not _DNS_LABEL.match(cluster) or len(cluster) > 63):
        c.bad("KATALOG_CLUSTER_NAME", cluster, "must be lower-case letters, digits and '-'")
    pod_uid = c.raw("POD_UID") or None
    if pod_uid and len(pod_uid.encode("utf-8", "surrogatepass")) > _MAX_META_VALUE_BYTES:
        c.bad("POD_UID", pod_uid, "not a pod UID (downward API `metadata.uid`): longer than a meta value may be")
    tool_meta_count = 4 + (pod_uid is not None) + (cluster is not None)
    consul = _parse_consul(c, host_ip)
    source_name = c.raw("KATALOG_READINESS_SOURCE").lower()
    if c.raw("KATALOG_SERVICES"):
        services, service_source = _parse_services(c, tool_meta_count), "environment"
        if annotations and pod_annotations.has_services(annotations):
            c.notices.append("KATALOG_SERVICES is set: the pod's katalog-sidecar.io/ and katalog-sync.wish.com/ "
                             "annotations are ignored")
    elif source_name != "kubernetes":
        c.problems.append(
            "KATALOG_SERVICES is not set: set it, or leave KATALOG_READINESS_SOURCE at kubernetes and annotate the "
            f"pod with {pod_annotations.OURS}services (or {pod_annotations.KATALOG_SYNC}service-names); "
            "annotations are read through the pod watch")
        services, service_source = (), PENDING
    else:
        services, service_source = _services_from_annotations(c, annotations, default_port, tool_meta_count)
    ttl_raw = c.annotated.check_ttl if c.annotated else None
    if ttl_raw is not None and "KATALOG_CHECK_TTL" not in environ:
        check_ttl = _check_ttl(c, ttl_raw.key, ttl_raw.value)
    else:
        check_ttl = _check_ttl(c, "KATALOG_CHECK_TTL", None)
    dereg = c.duration("KATALOG_DEREGISTER_CRITICAL_AFTER")
    if 0 < dereg < _MIN_DEREGISTER_AFTER:
        c.bad("KATALOG_DEREGISTER_CRITICAL_AFTER", c.raw("KATALOG_DEREGISTER_CRITICAL_AFTER"), "Consul's minimum is 1m")
    readiness = _parse_readiness(c)
    if c.annotated and c.annotated.exclude:
        readiness = replace(readiness, exclude_containers=tuple(
            dict.fromkeys(readiness.exclude_containers + c.annotated.exclude)))
    gate = c.choice("KATALOG_GATE", GATES)
    events = c.boolean("KATALOG_EVENTS")
    # The condition is set through the API server: it needs one even without the pod watch.
    kubernetes = _parse_kubernetes(c, readiness.source, condition_gate=gate == "condition")
    if readiness.source != "kubernetes":
        for svc in services:
            if svc.port_name:
                c.bad("KATALOG_SERVICES", c.raw("KATALOG_SERVICES"), f"named port {svc.port_name!r} needs KATALOG_READINESS_SOURCE=kubernetes (it is resolved from the pod spec)")
    status_file = c.raw("KATALOG_STATUS_FILE")
    if not status_file:
        c.problems.append("KATALOG_STATUS_FILE is empty")
    heartbeat = c.duration("KATALOG_HEARTBEAT_INTERVAL")
    metrics_raw = c.raw("KATALOG_METRICS_ADDR")
    metrics_addr = None
    if metrics_raw.lower() not in ("off", ""):
        metrics_addr = _parse_host_port(c, "KATALOG_METRICS_ADDR", metrics_raw)
    gate_mode = c.choice("KATALOG_GATE_MODE", GATE_MODES)
    confirm_wait = c.duration("KATALOG_CONFIRM_WAIT")
    reconfirm_interval = c.duration("KATALOG_RECONFIRM_INTERVAL")
    drain_timeout = c.duration("KATALOG_DRAIN_TIMEOUT")
    fail_open_after = _fail_open_after(c, annotations)
    log_format = c.choice("KATALOG_LOG_FORMAT", LOG_FORMATS)
    log_level = c.choice("KATALOG_LOG_LEVEL", LOG_LEVELS)
    if c.problems:
        # A pod-wide annotation shared by services is reported once; a flood is cut short.
        problems = list(dict.fromkeys(c.problems))
        if len(problems) > _MAX_PROBLEMS:
            problems = problems[:_MAX_PROBLEMS] + [f"... and {len(problems) - _MAX_PROBLEMS} more problems"]
        raise ConfigError(problems)
    return Config(
        pod_name=pod_name,
        pod_namespace=namespace,
        pod_ip=pod_ip,
        pod_uid=pod_uid,
        cluster_name=cluster,
        consul=consul,
        services=services,
        check_ttl=check_ttl,
        deregister_critical_after=dereg,
        readiness=readiness,
        kubernetes=kubernetes,
        status_file=Path(status_file),
        gate_mode=gate_mode,
        gate=gate,
        events=events,
        heartbeat_interval=heartbeat,
        confirm_wait=confirm_wait,
        reconfirm_interval=reconfirm_interval,
        drain_timeout=drain_timeout,
        fail_open_after=fail_open_after,
        log_format=log_format,
        log_level=log_level,
        metrics_addr=metrics_addr,
        service_source=service_source,
        notices=tuple(c.notices),
    )


def _fail_open_after(c: _Collector, annotations: Mapping[str, str] | None) -> float | None:
    """KATALOG_FAIL_OPEN_AFTER, else the pod's annotation; None (off) when neither is set."""
    if c.raw("KATALOG_FAIL_OPEN_AFTER"):
        return c.duration("KATALOG_FAIL_OPEN_AFTER")
    value = (annotations or {}).get(pod_annotations.FAIL_OPEN_AFTER, "").strip()
    if not value:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        c.problems.append(f"{pod_annotations.FAIL_OPEN_AFTER}={value!r}: {exc}")
        return None
    if not 0 < seconds <= _MAX_DURATION:
        c.problems.append(f"{pod_annotations.FAIL_OPEN_AFTER}={value!r}: must be greater than zero and at most 2562047h")
        return None
    return seconds


def _check_ttl(c: _Collector, name: str, value: str | None) -> float:
    """KATALOG_CHECK_TTL (value None: read it) or the annotation that stands in for it."""
    if value is None:
        check_ttl = c.duration(name)
        value = c.raw(name)
    else:
        try:
            check_ttl = parse_duration(value)
        except ValueError as exc:
            c.bad(name, value, str(exc))
            return parse_duration(_DEFAULTS["KATALOG_CHECK_TTL"])
    if 0 < check_ttl < 3 or (check_ttl <= 0 and name != "KATALOG_CHECK_TTL"):
        c.bad(name, value, "must be at least 3s (it is refreshed every third of it)")
    elif check_ttl > _MAX_CHECK_TTL:
        c.bad(name, value, "at most 24h (a dead pod's instance stays passing this long)")
    return check_ttl


def status_file_path(environ: Mapping[str, str]) -> Path:
    """The status file path alone, so even an invalid config can report itself there."""
    return Path(environ.get("KATALOG_STATUS_FILE", "").strip() or _DEFAULTS["KATALOG_STATUS_FILE"])


def reference_table() -> str:
    """The README's configuration table, generated so it cannot drift from the code."""
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else ""
        lines.append(f"| `{s.env}` | {default} | {s.help} |")
    return "\n".join(lines)


def annotation_reference() -> str:
    """The README's pod annotation tables, generated so they cannot drift from the code."""
    lines: list[str] = []
    for title, table in (("katalog-sidecar's own (`katalog-sidecar.io/`)", pod_annotations.OUR_ANNOTATIONS),
                         ("katalog-sync's (`katalog-sync.wish.com/`), with katalog-sync's meaning",
                          pod_annotations.KATALOG_SYNC_ANNOTATIONS)):
        lines += ["", f"**{title}**", "", "| Annotation | Meaning | Environment equivalent |", "|---|---|---|"]
        lines += [f"| `{a.key}` | {a.meaning} | {a.environment} |" for a in table]
    return "\n".join(lines).strip("\n")
