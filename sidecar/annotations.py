"""Pod annotations as a configuration source: katalog-sync's and katalog-sidecar's own.

Pure syntax, no I/O and no value checks: this module decides which annotation says what about
which service (and which of two namespaces applies), and hands `sidecar.config` raw texts
together with the annotation they came from. `load_config` validates them with the same rules
as the environment, so a problem names the annotation and its value, and builds the Config.

Two namespaces:
- `katalog-sync.wish.com/`: katalog-sync's annotations with katalog-sync's meaning, so a pod
  annotated for katalog-sync works unchanged with this sidecar added.
- `katalog-sidecar.io/`: the environment variables' meaning, for users who keep configuration
  on the workload.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

KATALOG_SYNC = "katalog-sync.wish.com/"
OURS = "katalog-sidecar.io/"
PREFIXES = (KATALOG_SYNC, OURS)

HEALTH_STATUSES = ("passing", "warning", "critical")


@dataclass(frozen=True)
class Annotation:
    key: str
    meaning: str
    environment: str  # the environment variable with the same effect, or why there is none


# The README's annotation tables are generated from these (`katalog-sidecar config-reference`).
OUR_ANNOTATIONS: tuple[Annotation, ...] = (
    Annotation(OURS + "services", "Services of this pod, comma-separated `name:port` (port: a number or a named container port). Read only when `KATALOG_SERVICES` is unset.", "`KATALOG_SERVICES`"),
    Annotation(OURS + "tags", "Tags for every service, comma-separated.", "`KATALOG_TAGS`"),
    Annotation(OURS + "meta", "Meta for every service, comma-separated `key=value`.", "`KATALOG_META`"),
    Annotation(OURS + "tags-<service>", "Tags for one service, replacing `…/tags`.", "`KATALOG_SERVICE_<NAME>_TAGS`"),
    Annotation(OURS + "meta-<service>", "Meta for one service, merged over `…/meta` key by key.", "`KATALOG_SERVICE_<NAME>_META`"),
    Annotation(OURS + "health-<service>", "Fixed health of one service: `passing`, `warning` or `critical`, whatever the app's readiness.", "`KATALOG_SERVICE_<NAME>_HEALTH`"),
    Annotation(OURS + "exclude-containers", "Containers to leave out of the pod's readiness, comma-separated; added to the environment's list.", "`KATALOG_EXCLUDE_CONTAINERS`"),
    Annotation(OURS + "check-ttl", "TTL of the liveness check (`15s`, `1m`); `KATALOG_CHECK_TTL` wins when set.", "`KATALOG_CHECK_TTL`"),
    Annotation(OURS + "fail-open-after", "Open the gate after this long (`10m`) if Consul cannot confirm (see Fail-open); `KATALOG_FAIL_OPEN_AFTER` wins when set.", "`KATALOG_FAIL_OPEN_AFTER`"),
)

KATALOG_SYNC_ANNOTATIONS: tuple[Annotation, ...] = (
    Annotation(KATALOG_SYNC + "service-names", "Services of this pod, comma-separated names. Read only when `KATALOG_SERVICES` is unset and no `katalog-sidecar.io/services` annotation exists.", "`KATALOG_SERVICES` (names)"),
    Annotation(KATALOG_SYNC + "service-port", "Port of every service (a number). Unset: the first `containerPort` of the pod spec, leaving out this sidecar's own container.", "`KATALOG_SERVICES` (ports)"),
    Annotation(KATALOG_SYNC + "service-port-<service>", "Port of one service, replacing `service-port`.", "`KATALOG_SERVICES` (ports)"),
    Annotation(KATALOG_SYNC + "service-tags", "Tags for every service, comma-separated.", "`KATALOG_TAGS`"),
    Annotation(KATALOG_SYNC + "service-tags-<service>", "Tags for one service, replacing `service-tags`.", "`KATALOG_SERVICE_<NAME>_TAGS`"),
    Annotation(KATALOG_SYNC + "service-meta", "Meta for every service, comma-separated `key:value`.", "`KATALOG_META`"),
    Annotation(KATALOG_SYNC + "service-meta-<service>", "Meta for one service, **replacing** `service-meta` (not merged, unlike `KATALOG_SERVICE_<NAME>_META`).", "`KATALOG_SERVICE_<NAME>_META`"),
    Annotation(KATALOG_SYNC + "service-health", "Fixed health of every service: `passing`, `warning` or `critical`, whatever the app's readiness.", "`KATALOG_SERVICE_<NAME>_HEALTH`"),
    Annotation(KATALOG_SYNC + "service-health-<service>", "Fixed health of one service, replacing `service-health`.", "`KATALOG_SERVICE_<NAME>_HEALTH`"),
    Annotation(KATALOG_SYNC + "container-exclude", "Containers to leave out of the pod's readiness, comma-separated; added to the environment's list.", "`KATALOG_EXCLUDE_CONTAINERS`"),
    Annotation(KATALOG_SYNC + "sidecar", "katalog-sync's sidecar container: left out of the pod's readiness, like `container-exclude`. Not needed with katalog-sidecar (its own container is always left out).", "`KATALOG_EXCLUDE_CONTAINERS`"),
    Annotation(KATALOG_SYNC + "service-check-ttl", "TTL of the liveness check; `KATALOG_CHECK_TTL` wins when set.", "`KATALOG_CHECK_TTL`"),
    Annotation(KATALOG_SYNC + "sync-interval", "Accepted and ignored (said once in the log): the sidecar watches the pod and applies every change at once; there is no sync interval.", "none needed"),
)

_KS_LIST_KEYS = frozenset(KATALOG_SYNC + k for k in (
    "service-names", "service-port", "service-tags", "service-meta", "service-health",
    "container-exclude", "sidecar", "service-check-ttl", "sync-interval"))
_KS_PER_SERVICE = tuple(KATALOG_SYNC + k for k in ("service-port-", "service-tags-", "service-meta-", "service-health-"))
_OUR_POD_KEYS = frozenset(OURS + k for k in ("services", "tags", "meta", "exclude-containers", "check-ttl",
                                              "fail-open-after"))
FAIL_OPEN_AFTER = OURS + "fail-open-after"
_OUR_PER_SERVICE = tuple(OURS + k for k in ("tags-", "meta-", "health-"))


@dataclass(frozen=True)
class Raw:
    """An annotation's value, kept with its key so a problem can name both."""

    key: str
    value: str


@dataclass(frozen=True)
class AnnotatedService:
    name: str
    port: Raw | None  # where the port text came from; None: the first containerPort of the pod spec
    port_text: str | None  # the port part of `port.value` (the whole value for katalog-sync)
    tags: Raw | None  # None: no tags
    meta: tuple[Raw, ...]  # applied in order, later keys winning
    health: Raw | None  # None: follows the app's readiness


@dataclass(frozen=True)
class PodAnnotations:
    """What the pod's annotations say, before any value is checked."""

    namespace: str  # KATALOG_SYNC or OURS
    services: Raw  # the annotation listing the services
    entries: tuple[AnnotatedService, ...]
    meta_separator: str  # katalog-sync writes `k:v`, the environment and our annotations `k=v`
    check_ttl: Raw | None
    exclude: tuple[str, ...]
    notices: tuple[str, ...]  # said once in the log
    problems: tuple[str, ...]  # syntax problems, each naming the annotation and its value


def relevant(annotations: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """Only the annotations of our two namespaces, sorted: edits to any other annotation
    must not cost a configuration reload."""
    if not annotations:
        return ()
    return tuple(sorted((k, v) for k, v in annotations.items()
                        if isinstance(k, str) and isinstance(v, str) and k.startswith(PREFIXES)))


def has_services(annotations: Mapping[str, str]) -> bool:
    return OURS + "services" in annotations or KATALOG_SYNC + "service-names" in annotations


def split_list(value: str) -> list[str]:
    # katalog-sync splits on "," without trimming; we trim and drop empty items (see the guide).
    return [item.strip() for item in value.split(",") if item.strip()]


def _problem(key: str, value: str, why: str) -> str:
    # One line, whatever the key holds; the value is cut short like the environment's.
    shown = key if key.isprintable() else repr(key)
    text = repr(value) if len(value) <= 1024 else f"{value[:1024]!r}... ({len(value)} characters)"
    return f"{shown}={text}: {why}"


def excluded_containers(annotations: Mapping[str, str]) -> tuple[str, ...]:
    """Containers the annotations leave out of readiness (only from the namespace in use)."""
    if OURS + "services" in annotations:
        return tuple(split_list(annotations.get(OURS + "exclude-containers", "")))
    if KATALOG_SYNC + "service-names" in annotations:
        names = split_list(annotations.get(KATALOG_SYNC + "container-exclude", ""))
        sidecar = annotations.get(KATALOG_SYNC + "sidecar", "").strip()
        return tuple(dict.fromkeys(names + ([sidecar] if sidecar else [])))
    return ()


def read(annotations: Mapping[str, str]) -> PodAnnotations | None:
    """The configuration the annotations carry; None when they name no services."""
    if OURS + "services" in annotations:
        pod = _read_ours(annotations)
        if any(k.startswith(KATALOG_SYNC) for k in annotations):
            notice = (f"the pod has both {OURS}services and {KATALOG_SYNC} annotations: "
                      f"using {OURS}, ignoring {KATALOG_SYNC}")
            pod = replace(pod, notices=(*pod.notices, notice))
        return pod
    if KATALOG_SYNC + "service-names" in annotations:
        return _read_katalog_sync(annotations)
    return None


def _unknown_keys(annotations: Mapping[str, str], prefix: str, known: frozenset[str],
                  per_service: tuple[str, ...], names: set[str]) -> tuple[list[str], list[str]]:
    """(problems, notices): a per-service annotation for a service that is not listed is a
    typo (a problem); an unknown key is one in our namespace, and only a notice in
    katalog-sync's, whose later versions may know annotations this sidecar does not."""
    problems, notices = [], []
    listing = OURS + "services" if prefix == OURS else KATALOG_SYNC + "service-names"
    for key, value in sorted(annotations.items()):
        if not key.startswith(prefix) or key in known:
            continue
        start = next((s for s in per_service if key.startswith(s)), None)
        if start is not None and key[len(start):] not in names:
            problems.append(_problem(key, value, f"names no service listed in {listing}"))
        elif start is None and prefix == OURS:
            problems.append(_problem(key, value, f"not an annotation katalog-sidecar knows (see the README's {prefix} table)"))
        elif start is None:
            notices.append(f"{key}={value!r} ignored: not an annotation katalog-sidecar knows")
    return problems, notices


def _read_ours(annotations: Mapping[str, str]) -> PodAnnotations:
    listing = Raw(OURS + "services", annotations[OURS + "services"])
    problems: list[str] = []
    entries: list[AnnotatedService] = []
    pod_tags = Raw(OURS + "tags", annotations[OURS + "tags"]) if OURS + "tags" in annotations else None
    pod_meta = (Raw(OURS + "meta", annotations[OURS + "meta"]),) if OURS + "meta" in annotations else ()
    for item in listing.value.split(","):
        if not item.strip():
            continue  # `web:80,` : empty items are dropped, as in every other list
        name, sep, port = (part.strip() for part in item.strip().partition(":"))
        if not name:
            problems.append(_problem(listing.key, listing.value, "empty service name"))
            continue
        if not sep or not port:
            shown = name if name.isprintable() else "NAME"
            problems.append(_problem(listing.key, listing.value, f"service {name!r} has no port (write {shown}:PORT)"))
            continue

        def per(kind: str, service: str = name) -> Raw | None:
            key = f"{OURS}{kind}-{service}"
            # An empty health override means "not set", as katalog-sync reads it.
            return Raw(key, annotations[key]) if key in annotations and (kind != "health" or annotations[key].strip()) else None

        own_meta = per("meta")
        entries.append(AnnotatedService(
            name=name, port=listing, port_text=port, tags=per("tags") or pod_tags,
            meta=pod_meta + ((own_meta,) if own_meta else ()), health=per("health"),
        ))
    if not listing.value.strip(", \t"):
        problems.append(_problem(listing.key, listing.value, "lists no service"))
    ttl = Raw(OURS + "check-ttl", annotations[OURS + "check-ttl"]) if OURS + "check-ttl" in annotations else None
    unknown, notices = _unknown_keys(annotations, OURS, _OUR_POD_KEYS, _OUR_PER_SERVICE, {e.name for e in entries})
    return PodAnnotations(OURS, listing, tuple(entries), "=", ttl, excluded_containers(annotations),
                          tuple(notices), tuple(problems + unknown))


def _read_katalog_sync(annotations: Mapping[str, str]) -> PodAnnotations:
    listing = Raw(KATALOG_SYNC + "service-names", annotations[KATALOG_SYNC + "service-names"])
    problems: list[str] = []
    notices: list[str] = []

    def raw(key: str) -> Raw | None:
        full = KATALOG_SYNC + key
        return Raw(full, annotations[full]) if full in annotations else None

    def health(key: str) -> Raw | None:
        # katalog-sync treats an empty health annotation as unset: the next rule applies.
        found = raw(key)
        return found if found is not None and found.value.strip() else None

    entries: list[AnnotatedService] = []
    for item in listing.value.split(","):
        name = item.strip()
        if not name:
            continue  # `web,` : empty items are dropped, as in every other list
        # katalog-sync's rule for every per-service annotation: it replaces the pod-wide one.
        port = raw(f"service-port-{name}") or raw("service-port")
        meta = raw(f"service-meta-{name}") or raw("service-meta")
        entries.append(AnnotatedService(
            name=name, port=port, port_text=port.value.strip() if port else None,
            tags=raw(f"service-tags-{name}") or raw("service-tags"),
            meta=(meta,) if meta else (), health=health(f"service-health-{name}") or health("service-health"),
        ))
    if not entries:
        problems.append(_problem(listing.key, listing.value, "lists no service"))
    interval = raw("sync-interval")
    if interval is not None:
        notices.append(f"{interval.key}={interval.value!r} ignored: katalog-sidecar watches the pod and "
                       "applies every change at once, so there is no sync interval")
    unknown, ignored = _unknown_keys(annotations, KATALOG_SYNC, _KS_LIST_KEYS, _KS_PER_SERVICE, {e.name for e in entries})
    problems += unknown
    notices += ignored
    return PodAnnotations(KATALOG_SYNC, listing, tuple(entries), ":", raw("service-check-ttl"),
                          excluded_containers(annotations), tuple(notices), tuple(problems))
