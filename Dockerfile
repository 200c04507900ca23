# syntax=docker/dockerfile:1
# katalog-sidecar image: the daemon (`katalog-sidecar`, the entrypoint) and its exec
# readinessProbe (`readiness-gate`, a POSIX shell script run by the image's /bin/sh: see bin/),
# both on PATH.
#
#   docker build -t <registry>/katalog-sidecar:0.1.0 .
#
# Runs as uid 65532 with a read-only root filesystem: the only path it writes is the status
# file, /run/katalog/status.json, which the examples mount as an emptyDir.
# tests/test_image_install.py runs this file's pip commands outside a container engine;
# scripts/image-smoke.sh builds and runs it for real with podman (in CI).

# The base of both stages. Any image with `python` (3.10+) and pip on PATH works; CI, which
# cannot reach an image registry, passes a Debian rootfs it builds (scripts/image-smoke.sh).
ARG BASE_IMAGE=python:3.12-slim

# -- build: wheels of the package and of every dependency (with the `webhook` extra's) ---------
# The second command names the wheel just built, so `katalog-sidecar[webhook]` resolves to it,
# never to an index.
FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml setup.cfg README.md LICENSE ./
COPY sidecar ./sidecar
COPY readiness_gate ./readiness_gate
COPY bin ./bin
RUN python -m pip wheel --no-cache-dir --no-deps -w /wheels . \
 && python -m pip wheel --no-cache-dir -w /wheels --find-links=/wheels /wheels/katalog_sidecar-*.whl 'katalog-sidecar[webhook]'

# -- runtime --------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Installed from the build stage's wheels only (no index). pip compiles the bytecode now, so
# readiness-gate never compiles at probe time (and could not write it: the root is read-only).
# With the `webhook` extra (cryptography), so the Helm chart's webhook runs from this same image;
# `run` and readiness-gate never import it (tests/test_image_install.py checks that).
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links=/wheels 'katalog-sidecar[webhook]'
RUN groupadd --system --gid 65532 katalog \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin katalog \
 && mkdir -p /run/katalog \
 && chown 65532:65532 /run/katalog
# Numeric, so `runAsNonRoot: true` can verify it without reading /etc/passwd.
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["katalog-sidecar"]
CMD ["run"]
