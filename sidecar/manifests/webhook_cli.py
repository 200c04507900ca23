"""The `katalog-sidecar webhook` command (registered in sidecar.cli). Imports only click until run."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import click


def _duration(value: str, flag: str) -> float:
    from sidecar.durations import parse_duration

    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: {exc}", param_hint=flag) from exc
    if seconds <= 0:
        raise click.BadParameter(f"{value!r}: must be greater than zero", param_hint=flag)
    return seconds


def sidecar_env(_ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The --sidecar-env callback of `inject` and `webhook`: (NAME, VALUE) pairs, or a usage error."""
    from sidecar.manifests.inject import InjectError, parse_sidecar_env

    try:
        return parse_sidecar_env(values)
    except InjectError as exc:
        raise click.BadParameter(str(exc).removeprefix("--sidecar-env "), param=param) from exc


SIDECAR_ENV_HELP = ("NAME=VALUE added to the injected sidecar's env; repeat. After inject's own variables, so "
                    "a value may use $(POD_IP), $(HOST_IP) etc. The ones inject writes (POD_UID and the other "
                    "downward-API identity, KATALOG_SERVICES, KATALOG_GATE, ...) are refused: use their flags.")


def _address(value: str, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"{value!r}: expected host:port", param_hint=flag)
    return host.strip("[]") or "0.0.0.0", int(port)


@click.command()
@click.option("--listen", default="0.0.0.0:8443", show_default=True, help="HTTPS address of POST /inject.")
@click.option("--namespace", default=None, help="Its own namespace, never injected. Default: $POD_NAMESPACE.")
@click.option("--image", required=True, help="The sidecar image to inject.")
@click.option("--native", is_flag=True, help="Inject native sidecars (initContainers; Kubernetes 1.29+); "
              "without it, pods that must complete (Jobs) are admitted without the sidecar and reported.")
@click.option("--gate", type=click.Choice(["exec", "condition", "both"]), default="exec", show_default=True)
@click.option("--token-secret", default=None, help="Secret (key `token`) with the Consul ACL token.")
@click.option("--drain-timeout", default="20s", show_default=True)
@click.option("--sidecar-env", "extra_env", multiple=True, metavar="NAME=VALUE", callback=sidecar_env,
              help=SIDECAR_ENV_HELP)
@click.option("--webhook-config", default="katalog-sidecar", show_default=True,
              help="The MutatingWebhookConfiguration whose caBundle it keeps.")
@click.option("--ca-secret", default="katalog-sidecar-webhook-ca", show_default=True,
              help="Secret in its namespace holding the CA every replica issues from.")
@click.option("--host", "hosts", multiple=True, help="Name (or IP) in the serving certificate; repeat. "
              "Default: the Service names <service>.<namespace>.svc.")
@click.option("--service", default="katalog-sidecar-webhook", show_default=True)
@click.option("--cert-dir", type=click.Path(path_type=Path), default=None,
              help="Use tls.crt/tls.key from this directory (e.g. cert-manager's Secret) instead of its own CA.")
@click.option("--cert-lifetime", default="168h", show_default=True)
@click.option("--ca-lifetime", default="8760h", show_default=True)
@click.option("--bundle-propagation", default="5s", show_default=True,
              help="Wait between adding a new CA to the caBundle and serving a certificate it signed.")
@click.option("--check-interval", default="60s", show_default=True,
              help="How often opted-in pods without the sidecar are looked for (0: never).")
@click.option("--metrics-addr", default="0.0.0.0:9465", show_default=True, help="/metrics; `off` disables it.")
@click.option("--kube-api-url", default=None, help="Default: in-cluster.")
@click.option("--kube-token-file", default="/var/run/secrets/kubernetes.io/serviceaccount/token", show_default=True)
@click.option("--kube-ca-file", default="/var/run/secrets/kubernetes.io/serviceaccount/ca.crt", show_default=True)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
def webhook(listen: str, namespace: str | None, image: str, native: bool, gate: str, token_secret: str | None,
            drain_timeout: str, extra_env: tuple[tuple[str, str], ...], webhook_config: str, ca_secret: str, hosts: tuple[str, ...], service: str,
            cert_dir: Path | None, cert_lifetime: str, ca_lifetime: str, bundle_propagation: str, check_interval: str, metrics_addr: str,
            kube_api_url: str | None, kube_token_file: str, kube_ca_file: str, log_level: str) -> None:
    """Serve the mutating admission webhook that injects the sidecar (see the README, Install with Helm)."""
    import logging

    try:
        from sidecar.manifests.webhook import Webhook, WebhookSettings, in_cluster_namespace
    except ImportError as exc:  # cryptography: the `webhook` extra
        raise click.ClickException(f"{exc}: install katalog-sidecar[webhook]") from exc
    from sidecar.manifests.inject import InjectOptions
    from sidecar.manifests.webhook_kube import Kube, KubeAccess

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    own = namespace or in_cluster_namespace()
    if not own:
        raise click.BadParameter("not set and $POD_NAMESPACE is empty", param_hint="--namespace")
    if kube_api_url is None:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST", ""), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise click.BadParameter("not set and KUBERNETES_SERVICE_HOST is empty: not in a cluster?",
                                     param_hint="--kube-api-url")
        kube_api_url = f"https://{'[' + host + ']' if ':' in host else host}:{port}"
    ca_file = Path(kube_ca_file) if kube_api_url.startswith("https://") and Path(kube_ca_file).exists() else None
    check = 0.0 if check_interval.strip() in ("0", "0s") else _duration(check_interval, "--check-interval")
    settings = WebhookSettings(
        options=InjectOptions(image=image, native=native, gate=gate, token_secret=token_secret,
                              drain_timeout=_duration(drain_timeout, "--drain-timeout"), extra_env=extra_env),
        namespace=own, listen=_address(listen, "--listen"),
        kube=Kube(KubeAccess(kube_api_url, Path(kube_token_file), ca_file)),
        webhook_config=webhook_config, ca_secret=ca_secret,
        hosts=list(hosts) or [f"{service}.{own}.svc", f"{service}.{own}.svc.cluster.local", service],
        cert_dir=cert_dir, cert_lifetime=_duration(cert_lifetime, "--cert-lifetime"),
        ca_lifetime=_duration(ca_lifetime, "--ca-lifetime"), check_interval=check,
        bundle_propagation=_duration(bundle_propagation, "--bundle-propagation"),
        metrics_addr=None if metrics_addr.strip().lower() == "off" else _address(metrics_addr, "--metrics-addr"),
    )
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _s, _f: done.set())
    try:
        hook = Webhook(settings).start()
    except Exception as exc:  # noqa: BLE001 - one line, no traceback: the first certificate failed
        click.echo(f"webhook: cannot start: {exc}", err=True)
        sys.exit(1)
    logging.getLogger("katalog.webhook").info("serving on %s:%d for namespace-labelled and labelled pods "
                                              "(its own namespace %s excluded)", settings.listen[0], hook.port, own)
    done.wait()
    hook.close()
