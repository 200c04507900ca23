"""The image's install, without a container engine: the Dockerfile's own pip commands, run here.

The Dockerfile is parsed, not paraphrased. Its build stage's COPY lines fill a scratch source
tree (so a file the build needs but the Dockerfile forgets fails here), its `python -m pip`
commands build the wheels and install them into a fresh virtualenv (standing in for the
runtime stage's Python) with the runtime stage's ENV, and the installed console scripts run as
the kubelet would run them: `katalog-sidecar` (the ENTRYPOINT) and `readiness-gate` (the
probe). Only the steps a virtualenv cannot do (the user, the directories) are checked by
reading the Dockerfile.

Needs the network: pip fetches the build backend and the dependencies from PyPI (CI has it).
Offline and outside CI, those tests skip; in CI they fail. CI also builds the real image with
podman and runs it (scripts/image-smoke.sh); this module is the fast check of the same steps.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
from test_examples import (
    DEPLOYMENT_FILES,
    console_scripts,
    find_sidecar,
    load_docs,
    package_version,
    pod_spec,
    sidecar_environ,
)

from readiness_gate import state
from sidecar.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
BASE_IMAGE = "python:3.12-slim"
NETWORK_ERRORS = re.compile(
    r"NewConnectionError|Network is unreachable|Temporary failure in name resolution|Name or service not known|"
    r"Max retries exceeded|No matching distribution found|Could not find a version that satisfies",
)

# Needs PyPI (see the module docstring); the first test also pays for building the venv.
network = pytest.mark.network
slow_install = pytest.mark.timeout(600)


# -- reading the Dockerfile ------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for rest in self.all("ENV"):
            for item in shlex.split(rest):
                key, sep, value = item.partition("=")
                assert sep, f"ENV {rest!r}: use the KEY=value form"
                values[key] = value
        return values


def logical_lines(path: Path = DOCKERFILE) -> list[str]:
    """The instructions: comments dropped, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.strip().startswith("#"):
            continue  # Docker drops comment lines, also inside a continuation
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        if pending.strip():
            logical.append(pending.strip())
        pending = ""
    return logical


def global_args(path: Path = DOCKERFILE) -> dict[str, str]:
    """`ARG NAME=default` before the first FROM: the build arguments FROM lines may use."""
    found: dict[str, str] = {}
    for line in logical_lines(path):
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            break
        assert keyword.upper() == "ARG", f"{line!r} before the first FROM"
        key, sep, default = rest.strip().partition("=")
        assert sep, f"ARG {rest!r}: give it a default, so a build without --build-arg works"
        found[key] = default
    return found


def expand_args(word: str, args: dict[str, str]) -> str:
    """`${NAME}` and `$NAME` replaced by the ARG's default, as a build without --build-arg does."""
    def value(match: re.Match[str]) -> str:
        key = match.group(1) or match.group(2)
        assert key in args, f"FROM uses ${key}, which no ARG before the first FROM declares"
        return args[key]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, word)


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    """Stages with their instructions, each FROM with the build arguments' defaults."""
    args = global_args(path)
    stages: list[Stage] = []
    for line in logical_lines(path):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            stages.append(Stage(expand_args(words[0], args), name))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return stages


def run_commands(rest: str) -> list[str]:
    """The shell commands of a RUN (flags such as --mount removed), split at `&&`."""
    words = rest.split(" ")
    while words and (words[0].startswith("--") or not words[0]):
        words.pop(0)
    return [part.strip() for part in " ".join(words).split("&&") if part.strip()]


def pip_commands(stage: Stage) -> list[str]:
    return [cmd for rest in stage.all("RUN") for cmd in run_commands(rest) if cmd.startswith("python -m pip ")]


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)  # the JSON (exec) form: no shell between the kubelet and the process
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


# -- the Dockerfile says what the test does ---------------------------------------------------------


def test_base_image_is_a_build_argument_defaulting_to_python_slim() -> None:
    """Both stages share one base, `python:3.12-slim` unless `--build-arg BASE_IMAGE=...` says
    otherwise (CI passes a local Debian base: no image registry is reachable there)."""
    assert global_args() == {"BASE_IMAGE": BASE_IMAGE}
    froms = [line.split()[1] for line in logical_lines() if line.upper().startswith("FROM ")]
    assert froms == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    assert [stage.base for stage in parse_dockerfile()] == [BASE_IMAGE, BASE_IMAGE]


def test_dockerfile_builds_wheels_then_installs_them_as_non_root() -> None:
    build, runtime = parse_dockerfile()
    assert (build.base, build.name) == (BASE_IMAGE, "build")
    assert (runtime.base, runtime.name) == (BASE_IMAGE, None)
    assert pip_commands(build)[0] == "python -m pip wheel --no-cache-dir --no-deps -w /wheels ."
    # The dependencies' wheels, the `webhook` extra's (cryptography) included, resolved against
    # the wheel just built (named by its path: never a katalog-sidecar from an index).
    assert pip_commands(build)[1] == ("python -m pip wheel --no-cache-dir -w /wheels --find-links=/wheels "
                                      "/wheels/katalog_sidecar-*.whl 'katalog-sidecar[webhook]'")
    (install,) = pip_commands(runtime)
    # With the extra: the chart's default image runs the webhook too.
    assert install == "python -m pip install --no-cache-dir --no-index --find-links=/wheels 'katalog-sidecar[webhook]'"
    assert "from=build" in runtime.all("RUN")[0] and "/wheels" in runtime.all("RUN")[0]
    assert runtime.all("COPY") == [], "the runtime stage takes only the wheels (through a bind mount)"

    env = runtime.env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    user = runtime.last("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: numeric and non-root, so runAsNonRoot can check it"
    setup = " && ".join(cmd for rest in runtime.all("RUN") for cmd in run_commands(rest))
    assert f"--uid {uid}" in setup and f"chown {uid}:{gid or uid} /run/katalog" in setup

    scripts = console_scripts()
    assert exec_form(runtime.last("ENTRYPOINT")) == ["katalog-sidecar"]
    assert "katalog-sidecar" in scripts and "readiness-gate" in scripts
    (command,) = exec_form(runtime.last("CMD"))
    assert command in cli_main.commands
    # The status file's default directory exists and belongs to the user (the examples mount
    # an emptyDir over it); the examples run the sidecar as this user.
    for path in DEPLOYMENT_FILES:
        spec = next(s for s in (pod_spec(d) for d in load_docs(path)) if s is not None)
        security = find_sidecar(spec)["securityContext"]
        assert str(security["runAsUser"]) == uid, path.name
        assert str(spec["securityContext"]["fsGroup"]) == (gid or uid), path.name


def test_dockerignore_keeps_what_the_build_copies() -> None:
    (build, _) = parse_dockerfile()
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "an allow-list: nothing enters the context by accident"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for rest in build.all("COPY"):
        for source in [w for w in shlex.split(rest) if not w.startswith("--")][:-1]:
            assert source.rstrip("/") in allowed, f"COPY {source}, but .dockerignore leaves it out"


# -- the install, as the Dockerfile does it ----------------------------------------------------------


@dataclass
class Installed:
    bin: Path
    wheels: Path
    env: dict[str, str]  # the runtime stage's ENV on a clean environment
    cwd: Path  # away from the repository, whose packages `python -c` would import instead

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bin / args[0]), *args[1:]], env={**self.env, **(env or {})}, cwd=self.cwd,
                              capture_output=True, text=True, timeout=timeout, check=False)


def _copy_sources(build: Stage, src: Path) -> None:
    """The build stage's COPY lines, from the repository into `src` (its WORKDIR)."""
    workdir = PurePosixPath(build.last("WORKDIR"))
    for rest in build.all("COPY"):
        words = [w for w in shlex.split(rest) if not w.startswith("--")]
        sources, dest = words[:-1], PurePosixPath(workdir, words[-1])
        target = src / dest.relative_to(workdir)
        for source in sources:
            origin = ROOT / source
            into = target / origin.name if (len(sources) > 1 or words[-1].endswith("/")) else target
            into.parent.mkdir(parents=True, exist_ok=True)
            if origin.is_dir():
                shutil.copytree(origin, into, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(origin, into)


def _run_pip(command: str, *, stage: str, python: Path, wheels: Path, cwd: Path, env: dict[str, str], tmp: Path) -> None:
    """A Dockerfile pip command, `python` being the given interpreter and /wheels a temp dir."""
    shim = tmp / f"bin-{stage}"
    shim.mkdir(exist_ok=True)
    (shim / "python").write_text(f'#!/bin/sh\nexec "{python}" "$@"\n')
    (shim / "python").chmod(0o755)
    line = command.replace("/wheels", str(wheels))
    full_env = {**os.environ, **env, "PATH": f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["/bin/sh", "-c", line], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=540, check=False)
    if done.returncode != 0:
        output = done.stdout[-3000:] + done.stderr[-3000:]
        if NETWORK_ERRORS.search(output) and not os.environ.get("CI"):
            pytest.skip(f"PyPI not reachable (needed for `{command}`); CI has it")
        pytest.fail(f"`{line}` failed ({done.returncode}):\n{output}")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    tmp = tmp_path_factory.mktemp("image")
    build, runtime = parse_dockerfile()
    src, wheels = tmp / "src", tmp / "wheels"
    src.mkdir()
    _copy_sources(build, src)
    for command in pip_commands(build):
        _run_pip(command, stage="build", python=Path(sys.executable), wheels=wheels, cwd=src, env=build.env(), tmp=tmp)
    target = tmp / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(target)
    for command in pip_commands(runtime):
        _run_pip(command, stage="runtime", python=target / "bin" / "python", wheels=wheels, cwd=tmp, env=runtime.env(), tmp=tmp)
    clean = {"PATH": f"{target / 'bin'}{os.pathsep}/usr/bin:/bin", "HOME": str(tmp), "LANG": "C.UTF-8"}
    yield Installed(target / "bin", wheels, {**clean, **runtime.env()}, tmp)


@network
@slow_install
def test_wheel_holds_the_two_packages_and_both_scripts(installed: Installed) -> None:
    (wheel,) = installed.wheels.glob("katalog_sidecar-*.whl")
    assert wheel.name.startswith(f"katalog_sidecar-{package_version()}-")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top = {name.split("/")[0] for name in names}
        info = next(t for t in top if t.endswith(".dist-info"))
        data = f"{info.removesuffix('.dist-info')}.data"  # holds the plain readiness-gate script
        assert top == {"sidecar", "readiness_gate", info, data}, "no tests, bench or dev scripts in the image"
        assert {n for n in names if n.startswith(data)} == {f"{data}/scripts/readiness-gate"}
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        data_scripts = {Path(n).name for n in names if "/scripts/" in n}
    for name, target in console_scripts().items():
        assert f"{name} = {target}" in entry_points or name in data_scripts, name
    for name in console_scripts():
        assert (installed.bin / name).is_file(), f"{name} not on PATH after the install"


@network
@slow_install
def test_installed_modules_are_precompiled(installed: Installed) -> None:
    """With PYTHONDONTWRITEBYTECODE and a read-only root nothing is compiled at run time, so
    the install must have done it: otherwise every probe compiles readiness_gate again."""
    where = installed.run("python", "-c", "import readiness_gate, sys; print(readiness_gate.__path__[0], sys.implementation.cache_tag)")
    assert where.returncode == 0, where.stderr
    package_dir, tag = Path(where.stdout.split()[0]), where.stdout.split()[1]
    assert package_dir.is_relative_to(installed.bin.parent), f"imported {package_dir}, not the installed package"
    for package in (package_dir, package_dir.parent / "sidecar"):
        for module in package.glob("*.py"):
            assert (package / "__pycache__" / f"{module.stem}.{tag}.pyc").is_file(), module


@network
@slow_install
def test_entrypoint_help_and_version(installed: Installed) -> None:
    done = installed.run("katalog-sidecar", "--help")
    assert done.returncode == 0, done.stderr
    for command in ("run", "check-config", "status", "config-reference"):
        assert re.search(rf"^\s+{command}\s", done.stdout, re.M), done.stdout
    version = installed.run("katalog-sidecar", "--version")
    assert version.returncode == 0 and package_version() in version.stdout


@network
@slow_install
@pytest.mark.parametrize("path", DEPLOYMENT_FILES, ids=lambda p: p.name)
def test_check_config_accepts_each_examples_environment(installed: Installed, path: Path, tmp_path: Path) -> None:
    spec = next(s for s in (pod_spec(d) for d in load_docs(path)) if s is not None)
    done = installed.run("katalog-sidecar", "check-config", env=sidecar_environ(spec, tmp_path))
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "ok: 1 service(s): web", "")


@network
@slow_install
def test_check_config_lists_every_problem_and_exits_2(installed: Installed) -> None:
    env = {"POD_NAME": "web-0", "POD_NAMESPACE": "shop", "POD_IP": "not-an-ip", "HOST_IP": "10.0.0.1",
           "KATALOG_READINESS_SOURCE": "fixed", "KATALOG_GATE_MODE": "sometimes"}
    done = installed.run("katalog-sidecar", "check-config", env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert "config error: POD_IP='not-an-ip': not an IP address" in lines
    assert "config error: KATALOG_GATE_MODE='sometimes': expected one of latch, continuous" in lines
    assert any(line.startswith("config error: KATALOG_SERVICES is not set") for line in lines)
    assert "Traceback" not in done.stderr and done.stdout == ""


def _status(path: Path, **fields: object) -> None:
    now = time.time()
    document = {"schema": state.SCHEMA, "phase": state.SYNCING, "message": "waiting for the catalog",
                "pid": os.getpid(), "updated_at": now, "since": now, "stale_after": 15.0,
                "gate_mode": "latch", "ever_confirmed": False, "services": []}
    document.update(fields)
    state.write_atomically(str(path), document)


@network
@slow_install
def test_readiness_gate_from_the_install(installed: Installed, tmp_path: Path) -> None:
    status_file = tmp_path / "katalog" / "status.json"
    as_in_the_pod = {"KATALOG_STATUS_FILE": str(status_file)}  # the probe inherits the container's env

    missing = installed.run("readiness-gate", env=as_in_the_pod)
    assert missing.returncode == 1
    assert missing.stdout.startswith(f"no status file at {status_file}")

    _status(status_file, message="catalog does not list shop:web-0:web yet")
    waiting = installed.run("readiness-gate", env=as_in_the_pod)
    assert (waiting.returncode, waiting.stdout.strip()) == (1, "catalog does not list shop:web-0:web yet")

    _status(status_file, phase=state.CONFIRMED, ever_confirmed=True, message="web passing in the catalog")
    confirmed = installed.run("readiness-gate", env=as_in_the_pod)
    assert (confirmed.returncode, confirmed.stdout.strip()) == (0, "ok (latched): web passing in the catalog")

    _status(status_file, phase=state.CONFIRMED, ever_confirmed=True, updated_at=time.time() - 60)
    stale = installed.run("readiness-gate", env=as_in_the_pod)
    assert stale.returncode == 1 and stale.stdout.startswith("heartbeat stale")


@network
@slow_install
def test_the_webhook_starts_and_serves_a_review_from_the_install(installed: Installed, tmp_path: Path) -> None:
    """The `webhook` extra is installed: the image's own check (scripts/image_webhook_check.py,
    which image-smoke.sh runs in the built image) passes here too: a CA and a serving
    certificate made, one AdmissionReview answered with the sidecar's patch over HTTPS, exit 0."""
    done = installed.run("python", str(ROOT / "scripts" / "image_webhook_check.py"), str(tmp_path / "certs"),
                         env={"TMPDIR": str(tmp_path)}, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "served one AdmissionReview" in done.stdout


# The one module that imports the `webhook` extra: the webhook's certificates (the webhook's
# server imports it only when it makes or reads one).
WEBHOOK_ONLY = {"sidecar.manifests.certs"}


def test_nothing_but_the_webhook_imports_cryptography() -> None:
    """The image carries cryptography for the webhook; the sidecar's memory must not pay for it.
    Every other module of both packages (a superset of what `run` and the probe can import,
    lazy imports included) is imported in a fresh interpreter: cryptography stays out. Then the
    certificates' module is imported in the same one, and cryptography is in (so the check can fail)."""
    code = """
import importlib, pkgutil, sys
import readiness_gate, sidecar
skip = set(sys.argv[1:])
names = [m.name for p in (sidecar, readiness_gate) for m in pkgutil.walk_packages(p.__path__, p.__name__ + ".")]
for name in names:
    if name not in skip:
        importlib.import_module(name)
print(len(names) - len(skip), "cryptography" in sys.modules)
importlib.import_module("sidecar.manifests.certs")
print("cryptography" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code, *sorted(WEBHOOK_ONLY)], capture_output=True, text=True,
                          timeout=60, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    (imported, before), (after,) = (line.split() for line in done.stdout.splitlines())
    assert int(imported) > 40 and before == "False", done.stdout
    assert after == "True", "sidecar.manifests.certs should need cryptography: is the extra installed?"
