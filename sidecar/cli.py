"""The `katalog-sidecar` command: only the CLI; the work lives in the modules it calls."""

from __future__ import annotations

import base64
import logging
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from types import FrameType

import click

from readiness_gate import state as status_state
from sidecar import logs
from sidecar.config import LOG_FORMATS, Config, annotation_reference, load_config, reference_table, status_file_path
from sidecar.errors import ConfigError

log = logging.getLogger("katalog")

EXIT_CONFIG_ERROR = 2
EXIT_STATUS_UNWRITABLE = 3


@click.group()
@click.version_option(package_name="katalog-sidecar")
def main() -> None:
    """Registers this pod's services with the node's Consul agent and gates readiness on it."""


def _on_terminate(callback: object) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        callback(signal.Signals(signum).name)  # type: ignore[operator]

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


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
    stop = threading.Event()
    _on_terminate(lambda _name: stop.set())
    while not stop.is_set():
        try:
            status_state.write_atomically(str(path), {
                "schema": status_state.SCHEMA, "phase": status_state.CONFIG_ERROR, "message": message,
                "pid": os.getpid(), "updated_at": time.time(), "stale_after": 15.0, "since": time.time(),
                "services": [], "ever_confirmed": False,
            })
        except OSError as exc:
            log.error("cannot write the status file %s: %s", path, exc.strerror or exc)
            return EXIT_STATUS_UNWRITABLE
        stop.wait(5.0)
    return EXIT_CONFIG_ERROR


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
    from sidecar.consul_api import ConsulAgent
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
    status = StatusWriter(config.status_file, gate_mode=config.gate_mode,
                          heartbeat_interval=config.heartbeat_interval, agent=agent.address,
                          pod=f"{config.pod_namespace}/{config.pod_name}", extra=supervisor.report)
    try:
        status.write(phase=status_state.STARTING, message="starting", since=time.time(),
                     ever_confirmed=False, services=[])
    except OSError as exc:
        log.error("cannot write the status file %s: %s", config.status_file, exc.strerror or exc)
        return EXIT_STATUS_UNWRITABLE
    syncer = Syncer(config, agent, status, metrics=metrics, supervisor=supervisor,
                    previous_ever_confirmed=previous_ever_confirmed)
    if config.metrics_addr is not None:
        metrics.serve(config.metrics_addr, syncer, workers=supervisor.statuses)
    source = make_source(config, metrics)
    sink: ReadinessSink = syncer
    if config.readiness.source == "kubernetes":
        # The pod watch also carries the pod's annotations: configuration that may change.
        sink = ConfigFollower(os.environ, config, syncer)
    stop_sources = threading.Event()
    _on_terminate(syncer.request_shutdown)
    services = ", ".join(s.name for s in config.services) or config.service_source
    log.info("starting: pod %s/%s, services %s, agent %s, readiness from %s, gate mode %s",
             config.pod_namespace, config.pod_name, services,
             agent.address, config.readiness.source, config.gate_mode)
    supervisor.start("readiness", lambda: source.run(stop_sources, sink), stop_sources)
    code = syncer.run(stop_sources)
    log.info("exiting with code %d", code)
    return code


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
