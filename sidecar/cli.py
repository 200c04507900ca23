"""The `katalog-sidecar` command: only the CLI; the work lives in the modules it calls."""

from __future__ import annotations

import base64
import logging
import os
import select
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from readiness_gate import state as status_state
from sidecar import logs
from sidecar.config import LOG_FORMATS, Config, annotation_reference, load_config, reference_table, status_file_path
from sidecar.entry import early_signal
from sidecar.errors import ConfigError
from sidecar.observers import CONFIG_ERROR, SyncObserver

if TYPE_CHECKING:
    from sidecar.kube.pod_condition import PodConditionWriter
    from sidecar.supervision import Supervisor

log = logging.getLogger("katalog")

EXIT_CONFIG_ERROR = 2
EXIT_STATUS_UNWRITABLE = 3


@click.group()
@click.version_option(package_name="katalog-sidecar")
def main() -> None:
    """Registers this pod's services with the node's Consul agent and gates readiness on it."""


def _on_terminate(callback: Callable[[str, float | None], None]) -> None:
    """`callback(signal name, when)` on SIGTERM/SIGINT; at once for one that came before this
    handler was installed (sidecar.entry records those), with that signal's time."""
    def handler(signum: int, _frame: FrameType | None) -> None:
        callback(signal.Signals(signum).name, None)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    early = early_signal()
    if early is not None:
        callback(*early)


def _secrets() -> list[str | None]:
    secrets: list[str | None] = [os.environ.get("CONSUL_HTTP_TOKEN")]
    auth = os.environ.get("CONSUL_HTTP_AUTH")
    if auth:
        # The whole `user:password`, the password alone, and both as a Basic header carries them.
        secrets += [auth, auth.partition(":")[2], base64.b64encode(auth.encode("latin-1", "replace")).decode()]
    token_file = os.environ.get("CONSUL_HTTP_TOKEN_FILE")
    if token_file:
        try:
            secrets.append(Path(token_file).read_text().strip())
        except OSError:
            pass
    return secrets


def _serve_config_error(error: ConfigError) -> int:
    """Stay up and report: the gate then shows the reason in `kubectl describe pod`.

    Exiting would put the container into CrashLoopBackOff, where no probe runs and the
    reason is only in the previous container's logs. Nothing is registered.
    """
    path = status_file_path(os.environ)
    for problem in error.problems:
        log.error("config error: %s", problem)
    log.error("nothing registered: fix the %d problem(s) above; staying up to report them", len(error.problems))
    message = "; ".join(error.problems)
    events = _config_error_events(os.environ)
    if events is not None:
        events.event(CONFIG_ERROR, message)
    # A signal handler must not call Event.set() (it takes a lock the interrupted main thread
    # may hold): it writes a byte to a pipe, which the wait below watches.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    stopped: list[bool] = []

    def on_signal(_name: str, _at: float | None) -> None:
        stopped.append(True)
        try:
            os.write(wake_w, b"x")
        except OSError:
            pass  # the pipe is full: a byte is already waiting

    _on_terminate(on_signal)
    while not stopped:
        try:
            status_state.write_atomically(str(path), {
                "schema": status_state.SCHEMA, "phase": status_state.CONFIG_ERROR, "message": message,
                "pid": os.getpid(), "updated_at": time.time(), "stale_after": 15.0, "since": time.time(),
                "services": [], "ever_confirmed": False,
            })
        except OSError as exc:
            log.error("cannot write the status file %s: %s", path, exc.strerror or exc)
            return EXIT_STATUS_UNWRITABLE
        select.select([wake_r], [], [], 5.0)
    if events is not None:
        events.close(2.0)
    return EXIT_CONFIG_ERROR



def _config_error_events(environ: Mapping[str, str]) -> SyncObserver | None:
    """Best effort: an Event for the config error, if the pod and the API can still be named."""
    from sidecar.config import SETTINGS

    defaults = {setting.env: setting.default for setting in SETTINGS}

    def value(name: str) -> str:
        return environ.get(name, defaults.get(name, "")).strip()

    if value("KATALOG_EVENTS").lower() in ("0", "false", "no", "off"):
        return None
    pod, namespace = value("POD_NAME"), value("POD_NAMESPACE")
    api = value("KATALOG_KUBE_API_URL")
    if not api and value("KUBERNETES_SERVICE_HOST"):
        host = value("KUBERNETES_SERVICE_HOST")
        api = f"https://{f'[{host}]' if ':' in host else host}:{value('KUBERNETES_SERVICE_PORT') or '443'}"
    if not (pod and namespace and api.startswith(("http://", "https://"))) or "/" in pod + namespace:
        return None
    from sidecar.durations import parse_duration
    from sidecar.kube.client import KubeClient
    from sidecar.kube.pod_events import PodEventRecorder

    try:
        timeout = parse_duration(value("KATALOG_KUBE_TIMEOUT"))
    except ValueError:
        timeout = 10.0
    client = KubeClient(api, Path(value("KATALOG_KUBE_TOKEN_FILE")), Path(value("KATALOG_KUBE_CA_FILE")), timeout)
    return PodEventRecorder(client, namespace, pod, value("POD_UID") or None)


def _without_charset_guessing() -> None:
    """Keep requests from loading a character-set guesser: about 4 MB of RSS in every pod.

    requests imports charset_normalizer (which loads every codec) only to guess the encoding
    of bodies that declare none. Consul and Kubernetes answer JSON (UTF-8 by definition) or
    text/plain (ISO-8859-1 by default), so nothing is ever guessed, and without the module
    requests falls back to UTF-8. Must run before requests is imported.
    """
    if "requests" in sys.modules:
        return
    for name in ("charset_normalizer", "chardet"):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # makes `import name` fail
    warnings.filterwarnings("ignore", message="Unable to find acceptable character detection")


def _previous_ever_confirmed(config: Config) -> bool:
    """Whether the previous sidecar process of this pod had confirmed (and not drained).

    Read before this process overwrites the file: the status file lives on the pod's emptyDir,
    which outlives a container restart. One input of adopting the latch (sidecar.adoption).
    """
    try:
        previous = status_state.read(str(config.status_file))
    except (OSError, ValueError):
        return False
    return (previous.get("ever_confirmed") is True
            and previous.get("pod") == f"{config.pod_namespace}/{config.pod_name}"
            and previous.get("phase") not in (status_state.DRAINING, status_state.STOPPED))


def _run(config: Config) -> int:
    _without_charset_guessing()
    # Imported here so `status`, `check-config` and `--help` stay quick.
    from sidecar.consul.api import ConsulAgent
    from sidecar.live_config import ConfigFollower
    from sidecar.metrics import Metrics
    from sidecar.readiness import ReadinessSink, make_source
    from sidecar.status import StatusWriter
    from sidecar.supervision import Supervisor
    from sidecar.syncer import Syncer

    previous_ever_confirmed = _previous_ever_confirmed(config)
    metrics = Metrics()
    supervisor = Supervisor(on_restart=metrics.worker_restart)  # runs every worker thread
    agent = ConsulAgent(config.consul, on_error=metrics.consul_error, on_request=metrics.consul_request)
    condition: list[Any] = []  # the pod condition writer, once made (condition mode)

    def extra() -> dict[str, Any]:
        fields: dict[str, Any] = dict(supervisor.report())
        if config.gate == "condition":
            # What readiness-gate checks in condition mode: the condition this process last set.
            fields.update(gate="condition", condition=condition[0].written() if condition else None)
        return fields

    status = StatusWriter(config.status_file, gate_mode=config.gate_mode,
                          heartbeat_interval=config.heartbeat_interval, agent=agent.address,
                          pod=f"{config.pod_namespace}/{config.pod_name}", extra=extra)
    try:
        status.write(phase=status_state.STARTING, message="starting", since=time.time(),
                     ever_confirmed=False, services=[])
    except OSError as exc:
        log.error("cannot write the status file %s: %s", config.status_file, exc.strerror or exc)
        return EXIT_STATUS_UNWRITABLE
    from sidecar.gate_metrics import GateMetrics, ReadinessTap
    from sidecar.observers import Observers

    gate_metrics = GateMetrics(metrics)
    kube_observer, writer = _observers(config, supervisor)
    observer = Observers([kube_observer, gate_metrics])
    syncer = Syncer(config, agent, status, metrics=metrics, supervisor=supervisor,
                    previous_ever_confirmed=previous_ever_confirmed, observer=observer)
    if writer is not None:
        condition.append(writer)
        writer.on_written = syncer.rewrite_status  # the probe sees a new condition at once
    if config.metrics_addr is not None:
        metrics.serve(config.metrics_addr, syncer, workers=supervisor.statuses)
    source = make_source(config, metrics)
    sink: ReadinessSink = syncer
    if config.readiness.source == "kubernetes":
        # The pod watch also carries the pod's annotations: configuration that may change.
        sink = ConfigFollower(os.environ, config, syncer)
    sink = ReadinessTap(sink, gate_metrics)
    stop_sources = threading.Event()
    _on_terminate(syncer.on_signal)
    services = ", ".join(s.name for s in config.services) or config.service_source
    log.info("starting: pod %s/%s, services %s, agent %s, readiness from %s, gate mode %s",
             config.pod_namespace, config.pod_name, services,
             agent.address, config.readiness.source, config.gate_mode)
    for notice in config.notices:  # from the environment; the annotations' are said by ConfigFollower
        log.warning("%s", notice)
    supervisor.start("readiness", lambda: source.run(stop_sources, sink), stop_sources)
    code = syncer.run(stop_sources)
    observer.close(2.0)  # the last condition (Draining) and Events, briefly
    log.info("exiting with code %d", code)
    return code


def _observers(config: Config, supervisor: Supervisor) -> tuple[SyncObserver, PodConditionWriter | None]:
    """The pod condition (KATALOG_GATE=condition) and Events (KATALOG_EVENTS), when there is an API;
    and the condition writer alone (its last write goes into the status file)."""
    from sidecar import observers
    from sidecar.kube.client import KubeClient

    k = config.kubernetes
    if not k.api_url or not (config.events or config.gate == "condition"):
        if config.events and not k.api_url:
            log.info("no Kubernetes API configured: no Events")
        return observers.NullObserver(), None

    def client() -> KubeClient:  # one per writer thread: a requests.Session is not shared
        assert k.api_url is not None
        return KubeClient(k.api_url, k.token_file, k.ca_file, k.timeout)

    chosen: list[SyncObserver] = []
    events = None
    writer = None
    if config.events:
        from sidecar.kube.pod_events import PodEventRecorder

        events = PodEventRecorder(client(), config.pod_namespace, config.pod_name, config.pod_uid,
                                  supervisor=supervisor)
        chosen.append(events)
    if config.gate == "condition":
        from sidecar.kube.pod_condition import PodConditionWriter

        on_forbidden = (lambda message: events.event(observers.KUBERNETES_FORBIDDEN, message)) if events else None
        writer = PodConditionWriter(client(), config.pod_namespace, config.pod_name, on_forbidden=on_forbidden,
                                    supervisor=supervisor)
        chosen.append(writer)
    return observers.Observers(chosen), writer


@main.command()
def run() -> None:
    """Run the sidecar (configured by environment variables; see the README)."""
    try:
        config = load_config(os.environ)
    except ConfigError as error:
        # The log format may itself be the invalid setting: fall back to text then.
        fmt = os.environ.get("KATALOG_LOG_FORMAT", "text").strip().lower()
        logs.setup(fmt if fmt in LOG_FORMATS else "text", secrets=_secrets)
        sys.exit(_serve_config_error(error))
    logs.setup(config.log_format, config.log_level, _secrets)
    sys.exit(_run(config))


@main.command("check-config")
def check_config() -> None:
    """Validate the environment as `run` would; exit 2 listing every problem."""
    try:
        config = load_config(os.environ)
    except ConfigError as error:
        for problem in error.problems:
            click.echo(f"config error: {problem}", err=True)
        sys.exit(EXIT_CONFIG_ERROR)
    for notice in config.notices:
        click.echo(f"warning: {notice}", err=True)
    if not config.services:
        click.echo(f"ok: services from the {config.service_source}")
        return
    click.echo(f"ok: {len(config.services)} service(s): " + ", ".join(s.name for s in config.services))


@main.command("config-reference")
def config_reference() -> None:
    """Print the configuration tables the README embeds (variables, then pod annotations)."""
    click.echo(reference_table())
    click.echo()
    click.echo(annotation_reference())


@main.command()
@click.option("--file", "path", type=click.Path(path_type=Path), default=None,
              help="Status file (default: $KATALOG_STATUS_FILE).")
def status(path: Path | None) -> None:
    """Explain in plain words what the sidecar is doing and waiting for."""
    from sidecar.status_report import render

    path = path or status_file_path(os.environ)
    try:
        current = status_state.read(str(path))
    except FileNotFoundError:
        click.echo(f"no status file at {path}: the sidecar has not started, or KATALOG_STATUS_FILE differs")
        sys.exit(1)
    except (OSError, ValueError) as exc:
        click.echo(f"status file {path} unreadable: {exc}")
        sys.exit(1)
    ok, line = status_state.evaluate(current, time.time())
    click.echo(render(current, ok, line, time.time()))
    sys.exit(0 if ok else 1)


# --- explain: why a pod is (not) Ready, from the operator's machine ------------------------------

EXIT_NOT_READY = 1
EXIT_CANNOT_EXPLAIN = 2


@click.command("explain")
@click.argument("pod")
@click.option("-n", "--namespace", default=None, help="The pod's namespace (default: the kubeconfig context's).")
@click.option("--kubeconfig", default=None, help="Default: $KUBECONFIG, else ~/.kube/config.")
@click.option("--context", default=None, help="kubeconfig context (default: the current one).")
@click.option("--consul", "consul_addr", default=None, envvar="CONSUL_HTTP_ADDR",
              help="A Consul agent or server to read the catalog from ($CONSUL_HTTP_ADDR). "
                   "Default: the pod's node agent, where reachable from here.")
@click.option("--consul-token", default=None, envvar="CONSUL_HTTP_TOKEN", help="($CONSUL_HTTP_TOKEN) Needs read access.")
@click.option("--consul-cacert", default=None, envvar="CONSUL_CACERT", help="CA bundle for Consul over HTTPS ($CONSUL_CACERT).")
@click.option("--container", default=None, help="The sidecar container's name, if it cannot be found by itself.")
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(0.1, 120), help="Seconds per request.")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True)
def explain(pod: str, namespace: str | None, kubeconfig: str | None, context: str | None, consul_addr: str | None,
            consul_token: str | None, consul_cacert: str | None, container: str | None, timeout: float,
            output: str) -> None:
    """Why POD is or is not Ready: its services, the node's Consul agent, the catalog and the gate.

    Reads the pod and its Events with your kubeconfig (no exec rights needed) and asks Consul.
    Exit 0: the pod is Ready; 1: it is not; 2: it cannot be explained (no such pod, no access).
    """
    import json

    from sidecar.explain import analyze, render_text
    from sidecar.explain_sources import ConsulAccess, ExplainError, gather, load_kubeconfig

    if consul_addr and "://" not in consul_addr:
        consul_addr = f"http://{consul_addr}"
    try:
        kube = load_kubeconfig(kubeconfig, context, timeout)
        facts = gather(kube, namespace or kube.namespace, pod, consul_addr=consul_addr.rstrip("/") if consul_addr else None,
                       consul=ConsulAccess(consul_token or None, consul_cacert or True, timeout), container=container)
    except ExplainError as exc:
        click.echo(f"explain: {exc}", err=True)
        sys.exit(EXIT_CANNOT_EXPLAIN)
    report = analyze(facts)
    click.echo(json.dumps(report.as_json(), indent=2) if output == "json" else render_text(report))
    sys.exit(0 if report.ready else EXIT_NOT_READY)


main.add_command(explain)


@click.group()
def kubectl_plugin() -> None:
    """kubectl katalog: katalog-sidecar's commands as a kubectl plugin (`kubectl katalog explain POD`)."""


kubectl_plugin.add_command(explain)


# --- manifests: inject and lint (PyYAML is imported here only, never by `run` or the gate) ----

EXIT_LINT_FINDINGS = 1
EXIT_BAD_INPUT = 2
DEFAULT_IMAGE = "ghcr.io/katalog-sidecar/katalog-sidecar"


from sidecar.manifests.webhook_cli import SIDECAR_ENV_HELP, sidecar_env, webhook  # noqa: E402 - imports only click


def _read_documents(paths: tuple[str, ...]) -> list[tuple[str, int, object]]:
    """(source, document number, document) of every YAML document in the files ('-': stdin)."""
    import yaml

    found: list[tuple[str, int, object]] = []
    for path in paths or ("-",):
        name = "<stdin>" if path == "-" else path
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
            docs = list(yaml.safe_load_all(text))
        except OSError as exc:
            raise click.ClickException(f"{name}: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise click.ClickException(f"{name}: not valid YAML: {' '.join(str(exc).split())}") from exc
        found += [(name, number, doc) for number, doc in enumerate(docs, 1) if doc is not None]
    return found


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("katalog-sidecar")
    except PackageNotFoundError:
        return "latest"


@main.command()
@click.argument("files", nargs=-1)
@click.option("--services", default=None, help="KATALOG_SERVICES for every pod (`name:port,...`). "
              "Default: the workload's katalog-sidecar.io/services annotation.")
@click.option("--native", is_flag=True, help="A native sidecar (initContainers, restartPolicy: Always; Kubernetes 1.29+).")
@click.option("--gate", type=click.Choice(["exec", "condition", "both"]), default="exec", show_default=True,
              help="exec: readiness-gate as the sidecar's readinessProbe; condition: a readinessGates entry that "
                   "the sidecar sets (needs patch on pods/status); both.")
@click.option("--image", default=None, help=f"Sidecar image. Default: {DEFAULT_IMAGE}:<this version>.")
@click.option("--token-secret", default=None, help="Secret (key `token`) with the Consul ACL token, mounted and "
              "read through CONSUL_HTTP_TOKEN_FILE.")
@click.option("--drain-timeout", default="20s", show_default=True, help="KATALOG_DRAIN_TIMEOUT; the grace period is raised to cover it.")
@click.option("--sidecar-env", "extra_env", multiple=True, metavar="NAME=VALUE", callback=sidecar_env,
              help=SIDECAR_ENV_HELP)
def inject(files: tuple[str, ...], services: str | None, native: bool, gate: str, image: str | None,
           token_secret: str | None, drain_timeout: str, extra_env: tuple[tuple[str, str], ...]) -> None:
    """Add the sidecar to the workloads in FILES (or stdin, `-`) and write them to stdout.

    kubectl get deploy web -o yaml | katalog-sidecar inject --services web:http - | kubectl apply -f -
    """
    import yaml

    from sidecar.durations import parse_duration
    from sidecar.manifests.inject import InjectError, InjectOptions
    from sidecar.manifests.inject import inject as run_inject

    try:
        drain = parse_duration(drain_timeout)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--drain-timeout") from exc
    options = InjectOptions(image=image or f"{DEFAULT_IMAGE}:{_version()}", services=services, native=native,
                            gate=gate, token_secret=token_secret, drain_timeout=drain, extra_env=extra_env)
    documents = _read_documents(files)
    try:
        result = run_inject([doc for _, _, doc in documents], options)  # type: ignore[misc]
    except InjectError as exc:
        click.echo(f"inject: {exc}", err=True)
        sys.exit(1)
    click.echo(yaml.safe_dump_all(result.documents, sort_keys=False, default_flow_style=False), nl=False)
    for name in result.injected:
        click.echo(f"injected {name}", err=True)
    for name in result.unchanged:
        click.echo(f"unchanged {name}: it already has the sidecar", err=True)


@main.command()
@click.argument("files", nargs=-1)
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def lint(files: tuple[str, ...], output: str) -> None:
    """Check manifests in FILES (or stdin, `-`) for known katalog-sidecar mistakes.

    Exit 0: no errors (warnings may be printed); 1: at least one error; 2: unreadable input.
    """
    import json
    from dataclasses import replace

    from sidecar.manifests.lint import ERROR
    from sidecar.manifests.lint import lint as run_lint

    try:
        documents = _read_documents(files)
    except click.ClickException as exc:
        click.echo(f"lint: {exc.message}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    findings = []
    # Linted together, so RBAC in one file counts for the workloads of another.
    all_findings = run_lint([doc for _, _, doc in documents])  # type: ignore[misc]
    for finding in all_findings:
        source = next((f"{s}#{n}" for s, n, d in documents if _holds(d, finding.object)), "")
        findings.append(replace(finding, source=source))
    if output == "json":
        click.echo(json.dumps([f.as_dict() for f in findings], indent=2))
    else:
        for f in findings:
            click.echo(f"{f.source}: {f.rule} {f.name} ({f.severity}): {f.object} {f.path}: {f.message}")
            click.echo("    fix: " + f.fix.replace("\n", "\n         "))
        errors = sum(f.severity == ERROR for f in findings)
        click.echo(f"{len(documents)} document(s), {errors} error(s), {len(findings) - errors} warning(s)", err=True)
    sys.exit(EXIT_LINT_FINDINGS if any(f.severity == ERROR for f in findings) else 0)


def _holds(doc: object, obj: str) -> bool:
    """Whether a document is (or, as a List, contains) the object named `Kind/name`."""
    if not isinstance(doc, dict):
        return False
    kind, _, name = obj.partition("/")
    meta = doc["metadata"] if isinstance(doc.get("metadata"), dict) else {}
    if doc.get("kind") == kind and str(meta.get("name")) == name:
        return True
    return any(_holds(item, obj) for item in doc.get("items") or []) if str(doc.get("kind", "")).endswith("List") else False


main.add_command(webhook)
