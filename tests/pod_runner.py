"""A stand-in for the scheduler and the kubelet, for tests against a real kube-apiserver.

    runner = PodRunner(cp.api, tmp_path, nodes={"node-a": "127.8.0.1"})
    with runner:                                   # creates the Node objects, starts its loop
        cp.kubectl("apply", "-f", "examples/deployment-classic-sidecar.yaml")
        pods = runner.wait_for_pods("default", count=3, ready=True)
        pods[0].set_app_ready("web", False)        # the stand-in app's readiness, test-controlled
        pods[0].exec("katalog-sidecar", ["readiness-gate"])   # as `kubectl exec` would

What it does with every pod the API server holds (it polls the pod list, 4 times a second):

- **Schedules** a pending pod (no `spec.nodeName`) to its next node, round robin, through the
  `pods/binding` subresource, as the scheduler does.
- **Starts** a pod bound to one of its nodes: gives it a loopback pod IP (`status.podIP`), the
  node's IP as `status.hostIP`, and prepares its volumes in a scratch directory (emptyDir;
  secret and configMap contents read from the API; projected service-account token, requested
  through TokenRequest with the pod as bound object, plus `ca.crt` and `namespace`).
  Native sidecars (`initContainers` with `restartPolicy: Always`) start first, in order; classic
  init containers run to completion; then the app containers start.
- **Runs a container** through its image: `images` maps an image name (without tag) to an
  `ImageFn`, which turns a `ContainerContext` into a running `Container`. `process_image(argv)`
  runs the image's entrypoint as a local process (the manifest's `command`, else the
  entrypoint, then `args`); `stand_in_app` is an HTTP server on the pod IP's container ports
  answering 200 while the test says the app is ready, else 503. Replace an entry to run the
  real image some other way: `tests/podman_image.py` runs it with podman (tests/image_e2e.py).
- **Environment** is what the kubelet gives: `env` literal values and downward-API `fieldRef`s
  (`metadata.name/namespace/uid`, labels and annotations, `spec.nodeName`,
  `spec.serviceAccountName`, `status.podIP`, `status.hostIP`), `KUBERNETES_SERVICE_HOST/PORT`
  (the real API server on loopback), plus the host's PATH. Processes share the host's file
  system and network, so what a container runtime does with namespaces is emulated: an env
  value naming a path under a volume mount is rewritten to that volume's scratch directory,
  and `overlay(ctx)` (optional) adds variables that stand for paths or addresses the program
  uses without being told (a default token path, a 0.0.0.0 listener).
- **Probes** every container's `readinessProbe` exactly as written: `exec` (run with the
  container's environment, killed at `timeoutSeconds`), `httpGet` and `tcpSocket` against the
  pod IP; `initialDelaySeconds`, `periodSeconds`, `successThreshold`, `failureThreshold` with
  the kubelet's defaults. A container without a readiness probe is ready once started.
- **Reports** `containerStatuses`/`initContainerStatuses`, `phase`, and the `Initialized`,
  `ContainersReady` and `Ready` conditions (plus `PodScheduled`) through `pods/status` after
  every change. Pod `readinessGates` are honoured: Ready needs every gate condition True.
- **Terminates** like the kubelet when it sees `deletionTimestamp`: the pod turns unready;
  each app container (a classic sidecar is one) runs its `preStop` hook, then gets SIGTERM, all
  in parallel; native sidecars get SIGTERM only after every app container has exited, in reverse
  order; anything alive at the end of `deletionGracePeriodSeconds` gets SIGKILL; then the pod is
  deleted for good (`gracePeriodSeconds=0`, UID precondition).

Not emulated: container restarts (an exited container stays terminated), startup and liveness
probes, postStart hooks, resource limits, users and file modes.
"""

from __future__ import annotations

import base64
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import requests
from kube_control_plane import ApiError, KubeApi

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
POLL_INTERVAL = 0.25
# The kubelet's probe defaults (k8s docs: configure-liveness-readiness-startup-probes).
PROBE_DEFAULTS = {"initialDelaySeconds": 0, "periodSeconds": 10, "timeoutSeconds": 1,
                  "successThreshold": 1, "failureThreshold": 3}

Pod = dict[str, Any]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_name(image: str) -> str:
    """`ghcr.io/a/b:1.0` -> `ghcr.io/a/b` (a digest or tag is not part of the name)."""
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    return image[: len(image) - len(last)] + last.split(":", 1)[0]


class Container(Protocol):
    """A started container, whatever runs it."""

    def alive(self) -> bool: ...

    def signal(self, sig: int) -> None: ...

    def exit_code(self) -> int | None: ...


@dataclass
class ContainerContext:
    """Everything an `ImageFn` needs to start one container of one pod."""

    pod: RunningPod
    spec: dict[str, Any]
    argv: list[str]  # the manifest's command/args resolved against the image's entrypoint
    env: dict[str, str]  # complete environment, paths already rewritten to the volumes
    mounts: dict[str, Path]  # container path -> host directory
    log_path: Path

    @property
    def name(self) -> str:
        return str(self.spec["name"])


ImageFn = Callable[[ContainerContext], Container]


class ProcessContainer:
    """A container as a local process (in its own process group, so signals reach its children)."""

    def __init__(self, ctx: ContainerContext) -> None:
        with ctx.log_path.open("ab") as log:
            self.proc = subprocess.Popen(ctx.argv, env=ctx.env, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=ctx.pod.workdir, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def exit_code(self) -> int | None:
        code = self.proc.poll()
        return 128 - code if code is not None and code < 0 else code  # killed by signal N: 128+N, as a runtime reports


def process_image(entrypoint: Iterable[str]) -> ImageFn:
    """An image whose entrypoint is `entrypoint`, run as a local process. The manifest's
    `command` replaces the entrypoint; `args` follow it (as in a container runtime)."""
    base = list(entrypoint)

    def start(ctx: ContainerContext) -> Container:
        if not ctx.argv:
            ctx.argv = base
        return ProcessContainer(ctx)

    start.entrypoint = base  # type: ignore[attr-defined]
    return start


class StandInApp:
    """An app container that serves HTTP on the pod IP at each of its container ports: 200 while
    `ready` (set by the test through `RunningPod.set_app_ready`), 503 otherwise. SIGTERM and
    SIGKILL stop it at once (exit codes 0 and 137)."""

    def __init__(self, ctx: ContainerContext) -> None:
        self.ready = ctx.pod.runner.app_ready_default
        self._code: int | None = None
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self.send_response(200 if app.ready else 503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        ports = [p["containerPort"] for p in ctx.spec.get("ports") or []]
        self.servers = []
        for port in ports:
            server = ThreadingHTTPServer((ctx.pod.ip, port), Handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self.servers.append(server)
        # Not a process: the app waits until it is signalled.
        self._stopped = threading.Event()

    def alive(self) -> bool:
        return self._code is None

    def signal(self, sig: int) -> None:
        if self._code is not None:
            return
        self._code = 137 if sig == signal.SIGKILL else 0
        for server in self.servers:
            server.shutdown()
            server.server_close()

    def exit_code(self) -> int | None:
        return self._code


def stand_in_app(ctx: ContainerContext) -> Container:
    return StandInApp(ctx)


@dataclass
class _Probe:
    """One container's readiness probe state (the kubelet's prober worker)."""

    spec: dict[str, Any]
    ready: bool = False
    successes: int = 0
    failures: int = 0
    runs: int = 0

    def setting(self, name: str) -> int:
        return int(self.spec.get(name, PROBE_DEFAULTS[name]))

    def record(self, ok: bool) -> bool:
        """Counts one result; True when readiness changed."""
        self.runs += 1
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            new = self.ready or self.successes >= self.setting("successThreshold")
        else:
            self.successes, self.failures = 0, self.failures + 1
            new = self.ready and self.failures < self.setting("failureThreshold")
        changed, self.ready = new != self.ready, new
        return changed


@dataclass
class _ContainerState:
    spec: dict[str, Any]
    kind: str  # "app", "sidecar" (native) or "init"
    ctx: ContainerContext | None = None
    handle: Container | None = None
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    probe: _Probe | None = None

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def ready(self) -> bool:
        if self.handle is None or self.finished_at is not None or not self.handle.alive():
            return False
        return self.probe.ready if self.probe is not None else True

    def status(self) -> dict[str, Any]:
        image = str(self.spec.get("image", ""))
        status: dict[str, Any] = {"name": self.name, "image": image, "imageID": "", "restartCount": 0,
                                  "ready": self.ready(), "started": self.handle is not None and self.finished_at is None}
        if self.handle is None:
            status["state"] = {"waiting": {"reason": "PodInitializing"}}
        elif self.finished_at is None and self.handle.alive():
            status["containerID"] = f"runner://{self.name}"
            status["state"] = {"running": {"startedAt": self.started_at}}
        else:
            code = self.exit_code if self.exit_code is not None else (self.handle.exit_code() or 0)
            status["containerID"] = f"runner://{self.name}"
            status["state"] = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                              "startedAt": self.started_at, "finishedAt": self.finished_at or _now()}}
        return status


class RunningPod:
    """One pod on one of the runner's nodes. Test-facing: `name`, `namespace`, `ip`, `uid`,
    `set_app_ready`, `exec`, `env`, `log`, `probe_runs`, `terminated` (an Event)."""

    def __init__(self, runner: PodRunner, pod: Pod, node: str, ip: str) -> None:
        self.runner = runner
        self.pod = pod
        self.name, self.namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
        self.uid = pod["metadata"]["uid"]
        self.node, self.host_ip, self.ip = node, runner.nodes[node], ip
        self.workdir = runner.workdir / f"{self.namespace}_{self.name}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        spec = pod["spec"]
        self.containers: list[_ContainerState] = [
            _ContainerState(c, "sidecar" if c.get("restartPolicy") == "Always" else "init")
            for c in spec.get("initContainers") or []]
        self.containers += [_ContainerState(c, "app") for c in spec.get("containers") or []]
        self.mounts_by_volume: dict[str, Path] = {}
        self.started_at = _now()
        self.terminating = False
        self.terminated = threading.Event()
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._hooks: list[subprocess.Popen[bytes]] = []  # preStop processes, killed on teardown
        self._last_status: Any = None

    # -- test-facing -------------------------------------------------------------------------

    def container(self, name: str) -> _ContainerState:
        return next(c for c in self.containers if c.name == name)

    def set_app_ready(self, container: str, ready: bool) -> None:
        handle = self.container(container).handle
        assert isinstance(handle, StandInApp), f"{container} is not a stand-in app"
        handle.ready = ready

    def env(self, container: str) -> dict[str, str]:
        ctx = self.container(container).ctx
        assert ctx is not None, f"{container} has not started"
        return dict(ctx.env)

    def exec(self, container: str, argv: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        """Runs a command "in" the container: with its environment (as `kubectl exec`)."""
        argv, env = _in_container(self.container(container).handle, argv, self.env(container))
        return subprocess.run(argv, env=env, cwd=self.workdir, capture_output=True, text=True, timeout=timeout)

    def log(self, container: str) -> str:
        path = self.workdir / f"{container}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def probe_runs(self, container: str) -> int:
        probe = self.container(container).probe
        return probe.runs if probe is not None else 0

    def ready(self) -> bool:
        return self._conditions()["Ready"] == "True"

    # -- start-up ----------------------------------------------------------------------------

    def start(self) -> None:
        thread = threading.Thread(target=self._run, name=f"pod-{self.name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _run(self) -> None:
        try:
            self._prepare_volumes()
            self.report()
            for state in self.containers:
                if self.terminating or self.stopping.is_set():
                    return
                self._start_container(state)
                if state.kind == "init":  # runs to completion before the next one starts
                    assert isinstance(state.handle, ProcessContainer)
                    state.handle.proc.wait()
                    code = state.handle.exit_code() or 0
                    self._finished(state, code)
                    if code != 0:
                        return
                self.report()
        except Exception as exc:  # noqa: BLE001 - a test sees it in the pod's log, not a dead thread
            (self.workdir / "runner-error.log").write_text(f"{type(exc).__name__}: {exc}\n")
            raise

    def _prepare_volumes(self) -> None:
        api, ns = self.runner.api, self.namespace
        for volume in self.pod["spec"].get("volumes") or []:
            target = self.workdir / "volumes" / volume["name"]
            target.mkdir(parents=True, exist_ok=True)
            self.mounts_by_volume[volume["name"]] = target
            if "secret" in volume:
                secret = api.get(f"/api/v1/namespaces/{ns}/secrets/{volume['secret']['secretName']}")
                for key, value in (secret.get("data") or {}).items():
                    (target / key).write_bytes(base64.b64decode(value))
            elif "configMap" in volume:
                config_map = api.get(f"/api/v1/namespaces/{ns}/configmaps/{volume['configMap']['name']}")
                for key, value in (config_map.get("data") or {}).items():
                    (target / key).write_text(value)
            elif "projected" in volume:
                for source in volume["projected"]["sources"]:
                    self._project(source, target)

    def _project(self, source: dict[str, Any], target: Path) -> None:
        api, ns = self.runner.api, self.namespace
        if "serviceAccountToken" in source:
            spec = source["serviceAccountToken"]
            account = self.pod["spec"].get("serviceAccountName", "default")
            request: dict[str, Any] = {
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": spec.get("expirationSeconds", 3607),
                         "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": self.name, "uid": self.uid}}}
            if spec.get("audience"):
                request["spec"]["audiences"] = [spec["audience"]]
            answer = api.post(f"/api/v1/namespaces/{ns}/serviceaccounts/{account}/token", request)
            (target / spec["path"]).write_text(answer["status"]["token"])
        elif "configMap" in source:
            data = api.get(f"/api/v1/namespaces/{ns}/configmaps/{source['configMap']['name']}").get("data") or {}
            for item in source["configMap"].get("items") or [{"key": k, "path": k} for k in data]:
                (target / item["path"]).write_text(data[item["key"]])
        elif "downwardAPI" in source:
            for item in source["downwardAPI"]["items"]:
                (target / item["path"]).write_text(self.field(item["fieldRef"]["fieldPath"]))
        elif "secret" in source:
            data = api.get(f"/api/v1/namespaces/{ns}/secrets/{source['secret']['name']}").get("data") or {}
            for key, value in data.items():
                (target / key).write_bytes(base64.b64decode(value))

    def field(self, path: str) -> str:
        """A downward-API field of this pod."""
        meta, spec = self.pod["metadata"], self.pod["spec"]
        simple = {"metadata.name": self.name, "metadata.namespace": self.namespace, "metadata.uid": self.uid,
                  "spec.nodeName": self.node, "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
                  "status.podIP": self.ip, "status.hostIP": self.host_ip, "status.podIPs": self.ip,
                  "status.hostIPs": self.host_ip}
        if path in simple:
            return simple[path]
        for prefix, source in (("metadata.labels", meta.get("labels") or {}),
                               ("metadata.annotations", meta.get("annotations") or {})):
            if path.startswith(prefix + "['") and path.endswith("']"):
                return str(source.get(path[len(prefix) + 2:-2], ""))
        raise ValueError(f"downward API field {path!r} is not emulated")

    def _container_env(self, spec: dict[str, Any], mounts: dict[str, Path]) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir),
               "HOSTNAME": self.name, "LANG": "C.UTF-8",
               "KUBERNETES_SERVICE_HOST": self.runner.service_host,
               "KUBERNETES_SERVICE_PORT": self.runner.service_port,
               "KUBERNETES_SERVICE_PORT_HTTPS": self.runner.service_port}
        for entry in spec.get("env") or []:
            if "value" in entry:
                env[entry["name"]] = _rewrite_path(str(entry["value"]), mounts)
            elif "fieldRef" in (entry.get("valueFrom") or {}):
                env[entry["name"]] = self.field(entry["valueFrom"]["fieldRef"]["fieldPath"])
            else:
                raise ValueError(f"env {entry['name']}: only values and fieldRefs are emulated")
        return env

    def _start_container(self, state: _ContainerState) -> None:
        mounts = {m["mountPath"]: self.mounts_by_volume[m["name"]] for m in state.spec.get("volumeMounts") or []}
        env = self._container_env(state.spec, mounts)
        argv = list(state.spec.get("command") or [])
        image = image_name(str(state.spec.get("image", "")))
        image_fn = self.runner.images.get(image)
        if image_fn is None:
            raise ValueError(f"no image function for {image!r} (container {state.name})")
        entrypoint = getattr(image_fn, "entrypoint", None)
        if not argv and entrypoint is not None:
            argv = list(entrypoint)
        argv += list(state.spec.get("args") or [])
        ctx = ContainerContext(self, state.spec, argv, env, mounts, self.workdir / f"{state.name}.log")
        if self.runner.overlay is not None:
            ctx.env.update(self.runner.overlay(ctx))
        state.ctx = ctx
        state.handle = image_fn(ctx)
        state.started_at = _now()
        if "readinessProbe" in state.spec:
            state.probe = _Probe(state.spec["readinessProbe"])
            self._spawn(self._probe_loop, state)
        self._spawn(self._watch_exit, state)

    def _spawn(self, target: Callable[[_ContainerState], None], state: _ContainerState) -> None:
        thread = threading.Thread(target=target, args=(state,), name=f"{self.name}/{state.name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    # -- probes and status --------------------------------------------------------------------

    def _probe_loop(self, state: _ContainerState) -> None:
        assert state.probe is not None
        probe = state.probe
        if self.stopping.wait(probe.setting("initialDelaySeconds")):
            return
        while state.handle is not None and state.handle.alive() and state.finished_at is None:
            started = time.monotonic()
            if probe.record(self._probe_once(state, probe)):
                self.report()
            elapsed = time.monotonic() - started
            if self.stopping.wait(max(0.0, probe.setting("periodSeconds") - elapsed)):
                return

    def _probe_once(self, state: _ContainerState, probe: _Probe) -> bool:
        spec, timeout = probe.spec, probe.setting("timeoutSeconds")
        assert state.ctx is not None
        if "exec" in spec:
            try:
                argv, env = _in_container(state.handle, spec["exec"]["command"], state.ctx.env)
                proc = subprocess.Popen(argv, env=env, cwd=self.workdir,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            except OSError:
                return False
            try:
                return proc.wait(timeout=timeout) == 0
            except subprocess.TimeoutExpired:  # a slow command fails the probe; we kill it
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return False
        port = self._port(state.spec, (spec.get("httpGet") or spec.get("tcpSocket") or {}).get("port"))
        if "httpGet" in spec:
            http = spec["httpGet"]
            scheme = str(http.get("scheme", "HTTP")).lower()
            try:
                response = requests.get(f"{scheme}://{self.ip}:{port}{http.get('path', '/')}", timeout=timeout,
                                        verify=False, allow_redirects=False)  # noqa: S501 - the kubelet does not verify
            except requests.RequestException:
                return False
            return 200 <= response.status_code < 400
        if "tcpSocket" in spec:
            try:
                socket.create_connection((self.ip, port), timeout=timeout).close()
            except OSError:
                return False
            return True
        raise ValueError(f"probe {spec} is not emulated")

    @staticmethod
    def _port(spec: dict[str, Any], port: Any) -> int:
        if isinstance(port, int):
            return port
        for entry in spec.get("ports") or []:
            if entry.get("name") == port:
                return int(entry["containerPort"])
        raise ValueError(f"no container port named {port!r}")

    def _watch_exit(self, state: _ContainerState) -> None:
        while state.handle is not None and state.finished_at is None:
            code = state.handle.exit_code()
            if code is not None:
                if state.kind != "init":
                    self._finished(state, code)
                    self.report()
                return
            if self.stopping.wait(0.1):
                return

    def _finished(self, state: _ContainerState, code: int) -> None:
        with self.lock:
            if state.finished_at is None:
                state.exit_code, state.finished_at = code, _now()

    def _conditions(self) -> dict[str, str]:
        with self.lock:
            init_done = all(c.finished_at is not None and c.exit_code == 0 for c in self.containers if c.kind == "init")
            sidecars_started = all(c.handle is not None for c in self.containers if c.kind == "sidecar")
            counted = [c for c in self.containers if c.kind != "init"]
            containers_ready = all(c.ready() for c in counted) and not self.terminating
            gates = [g["conditionType"] for g in self.pod["spec"].get("readinessGates") or []]
            current = {c["type"]: c["status"] for c in (self.pod.get("status") or {}).get("conditions") or []}
            gates_ok = all(current.get(g) == "True" for g in gates)
            return {"PodScheduled": "True", "Initialized": str(init_done and sidecars_started),
                    "ContainersReady": str(containers_ready), "Ready": str(containers_ready and gates_ok)}

    def report(self) -> None:
        """Writes the pod's status through `pods/status` when it changed (a merge patch: the
        lists it sets are replaced whole; conditions others own, e.g. readiness gates, stay)."""
        with self.lock:
            conditions = self._conditions()
            phase = "Running"
            apps = [c for c in self.containers if c.kind == "app"]
            if apps and all(c.finished_at is not None for c in apps) and self.terminated.is_set():
                phase = "Succeeded" if all(c.exit_code == 0 for c in apps) else "Failed"
            existing = [c for c in (self.pod.get("status") or {}).get("conditions") or []
                        if c["type"] not in conditions]
            own = [{"type": kind, "status": value, "lastProbeTime": None,
                    "lastTransitionTime": self._transition(kind, value)} for kind, value in conditions.items()]
            status = {"phase": phase, "hostIP": self.host_ip, "hostIPs": [{"ip": self.host_ip}],
                      "podIP": self.ip, "podIPs": [{"ip": self.ip}], "startTime": self.started_at,
                      "conditions": existing + own,
                      "initContainerStatuses": [c.status() for c in self.containers if c.kind != "app"],
                      "containerStatuses": [c.status() for c in self.containers if c.kind == "app"]}
            comparable = (phase, conditions, [(s["name"], s["ready"], next(iter(s["state"])))
                                              for s in status["initContainerStatuses"] + status["containerStatuses"]])
            if comparable == self._last_status:
                return
            try:
                self.pod = self.runner.api.merge_patch(
                    f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status", {"status": status})
                self._last_status = comparable
            except (ApiError, requests.RequestException):
                pass  # the API is down or the pod is gone: the next change or the resync writes it

    _transitions: dict[str, tuple[str, str]]

    def _transition(self, kind: str, value: str) -> str:
        if not hasattr(self, "_transitions"):
            self._transitions = {}
        previous = self._transitions.get(kind)
        if previous is None or previous[0] != value:
            self._transitions[kind] = (value, _now())
        return self._transitions[kind][1]

    def observe(self, pod: Pod) -> None:
        """Called by the runner with the API's current copy of the pod."""
        with self.lock:
            self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and not self.terminating:
            self.terminating = True
            grace = int(pod["metadata"].get("deletionGracePeriodSeconds") or 30)
            thread = threading.Thread(target=self._terminate, args=(grace,), name=f"term-{self.name}", daemon=True)
            self._threads.append(thread)
            thread.start()
        elif self._last_status is None or self._conditions()["Ready"] != self._reported_ready():
            # A readiness gate's condition changed, the last write failed, or the API server
            # lost it (restored from older state): write it again.
            self._last_status = None
            self.report()

    def _reported_ready(self) -> str:
        for condition in (self.pod.get("status") or {}).get("conditions") or []:
            if condition["type"] == "Ready":
                return str(condition["status"])
        return ""

    # -- termination ---------------------------------------------------------------------------

    def _terminate(self, grace: int) -> None:
        deadline = time.monotonic() + grace
        self.report()  # unready at once
        apps = [c for c in self.containers if c.kind == "app" and c.handle is not None]
        stoppers = [threading.Thread(target=self._stop_container, args=(c, deadline), daemon=True) for c in apps]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
        for state in reversed([c for c in self.containers if c.kind == "sidecar" and c.handle is not None]):
            self._stop_container(state, max(deadline, time.monotonic() + 2))  # the kubelet's 2 s minimum
        self.terminated.set()
        self.report()
        try:
            self.runner.api.delete(f"/api/v1/namespaces/{self.namespace}/pods/{self.name}",
                                   {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                                    "preconditions": {"uid": self.uid}}, ok=(200, 202, 404, 409))
        except requests.RequestException:
            pass
        self.runner.forget(self)

    def _stop_container(self, state: _ContainerState, deadline: float) -> None:
        assert state.handle is not None and state.ctx is not None
        pre_stop = ((state.spec.get("lifecycle") or {}).get("preStop") or {}).get("exec")
        if pre_stop and state.handle.alive():
            try:
                hook = subprocess.Popen(pre_stop["command"], env=state.ctx.env, cwd=self.workdir,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            except OSError:
                hook = None
            if hook is not None:
                self._hooks.append(hook)
                try:  # the hook may use the whole grace period; the countdown started before it
                    hook.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(hook.pid, signal.SIGKILL)
                    hook.wait()
        state.handle.signal(signal.SIGTERM)
        while state.handle.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if state.handle.alive():
            state.handle.signal(signal.SIGKILL)
            while state.handle.alive():
                time.sleep(0.05)
        self._finished(state, state.handle.exit_code() or 0)
        self.report()

    def kill(self) -> None:
        """Test teardown: SIGKILL to everything at once, no status writes."""
        self.stopping.set()
        for hook in self._hooks:
            if hook.poll() is None:
                os.killpg(hook.pid, signal.SIGKILL)
                hook.wait()
        for state in self.containers:
            if state.handle is not None and state.handle.alive():
                state.handle.signal(signal.SIGKILL)
        for state in self.containers:
            proc = getattr(state.handle, "proc", None)  # a process-backed container (podman's too)
            if isinstance(proc, subprocess.Popen):
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass


def _in_container(handle: Container | None, argv: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """A command "in" a container: a container with its own runtime (podman) says how to exec
    in it; a process container shares the host, so the command runs here with its env."""
    exec_command = getattr(handle, "exec_command", None)
    return exec_command(list(argv)) if exec_command is not None else (list(argv), env)


def _rewrite_path(value: str, mounts: Mapping[str, Path]) -> str:
    for mount_path, host_dir in sorted(mounts.items(), key=lambda item: -len(item[0])):
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return str(host_dir) + value[len(mount_path.rstrip("/")):]
    return value


@dataclass
class PodRunner:
    """The scheduler and kubelet of `nodes` (name -> node IP on loopback). See the module doc."""

    api: KubeApi
    workdir: Path
    nodes: dict[str, str]
    images: dict[str, ImageFn] = field(default_factory=dict)
    overlay: Callable[[ContainerContext], dict[str, str]] | None = None
    app_ready_default: bool = True
    pod_ips: Iterable[str] | None = None

    def __post_init__(self) -> None:
        self.workdir = self.workdir / "pods"
        self.workdir.mkdir(parents=True, exist_ok=True)
        host, port = self.api.url.removeprefix("https://").rsplit(":", 1)
        self.service_host, self.service_port = host, port
        # Pod IPs from a random /16 of 127.0.0.0/8, so runners of concurrent test runs on one
        # machine do not collide on a pod IP's ports.
        a = random.randint(64, 191)
        self._ips = iter(self.pod_ips) if self.pod_ips is not None else (
            f"127.{a}.{b}.{c}" for b in range(1, 255) for c in range(2, 255))
        self._next_node = itertools.cycle(sorted(self.nodes))
        self.pods: dict[str, RunningPod] = {}  # by UID, running or terminating
        self.finished: list[RunningPod] = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.loop_errors = 0

    def start(self) -> PodRunner:
        for name, ip in self.nodes.items():
            node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                    "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}
            try:
                self.api.post("/api/v1/nodes", node)
            except ApiError as exc:
                if exc.code != 409:
                    raise
            self.api.merge_patch(f"/api/v1/nodes/{name}/status", {"status": {
                "addresses": [{"type": "InternalIP", "address": ip}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "lastHeartbeatTime": _now(), "lastTransitionTime": _now()}]}})
        self.thread = threading.Thread(target=self._loop, name="pod-runner", daemon=True)
        self.thread.start()
        return self

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.sync(self.api.get("/api/v1/pods")["items"])
            except (ApiError, requests.RequestException):
                self.loop_errors += 1  # the API server is down: try again next round
            self.stop_event.wait(POLL_INTERVAL)

    def sync(self, items: list[Pod]) -> None:
        for pod in items:
            meta, spec = pod["metadata"], pod["spec"]
            node = spec.get("nodeName")
            if not node:
                if not meta.get("deletionTimestamp"):
                    self._bind(pod)
                continue
            if node not in self.nodes:
                continue
            with self.lock:
                known = meta["uid"] in self.pods or meta["uid"] in {p.uid for p in self.finished}
            if meta.get("deletionTimestamp") and not known:  # deleted before it started here
                self.api.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                                {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0})
                continue
            with self.lock:
                running = self.pods.get(meta["uid"])
                if running is None and not meta.get("deletionTimestamp") and \
                        meta["uid"] not in {p.uid for p in self.finished}:
                    running = RunningPod(self, pod, node, next(self._ips))
                    self.pods[meta["uid"]] = running
                    running.start()
                    continue
            if running is not None:
                running.observe(pod)

    def _bind(self, pod: Pod) -> None:
        meta = pod["metadata"]
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": meta["name"]},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": next(self._next_node)}}
        try:
            self.api.post(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding", binding)
        except ApiError as exc:
            if exc.code not in (404, 409):
                raise

    def forget(self, pod: RunningPod) -> None:
        with self.lock:
            self.pods.pop(pod.uid, None)
            self.finished.append(pod)

    # -- test-facing ---------------------------------------------------------------------------

    def running(self, namespace: str | None = None) -> list[RunningPod]:
        with self.lock:
            return [p for p in self.pods.values() if namespace is None or p.namespace == namespace]

    def pod(self, namespace: str, name: str) -> RunningPod:
        with self.lock:
            for p in list(self.pods.values()) + self.finished:
                if p.namespace == namespace and p.name == name:
                    return p
        raise KeyError(f"{namespace}/{name} is not on the runner's nodes")

    def wait_for_pods(self, namespace: str, count: int, *, ready: bool = True, timeout: float = 90.0,
                      where: Callable[[RunningPod], bool] = lambda _pod: True) -> list[RunningPod]:
        """Waits until exactly `count` non-terminating pods of `namespace` match (and are Ready)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [p for p in self.running(namespace) if not p.terminating and where(p)
                     and (not ready or p.ready())]
            if len(found) == count:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(found)} of {count} pods in {namespace} "
                                   f"{'ready' if ready else 'running'} after {timeout}s: "
                                   f"{[(p.name, p._conditions()) for p in self.running(namespace)]}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stops the loop and SIGKILLs every container it started (no status writes)."""
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
        with self.lock:
            pods = list(self.pods.values()) + self.finished
        for pod in pods:
            pod.kill()

    def __enter__(self) -> PodRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def remove_scratch(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
