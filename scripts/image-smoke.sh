#!/usr/bin/env bash
# Builds the container image from the project's Dockerfile with podman and runs it as the
# examples do, against a real Consul agent on loopback. CI runs it after the test suite.
#
#   scripts/image-smoke.sh            # build + smoke test (about a minute once the base is cached)
#   scripts/image-smoke.sh --measure  # also measure size, RSS and the gate's cost (bench/image.py)
#   scripts/image-smoke.sh --e2e      # also the example on a real control plane, its sidecar
#                                     # container from this image (tests/image_e2e.py)
#   scripts/image-smoke.sh --save FILE  # only build, and `podman save` the image to FILE (a
#                                     # docker archive; the real node imports it into containerd)
#
# The smoke test, with the examples' security settings (read-only root, uid 65532, every
# capability dropped, no new privileges):
#   1. `katalog-sidecar --help` works, and the webhook starts and serves one review (its extra is in);
#   2. `readiness-gate` with no sidecar fails cleanly (exit 1, a message, no traceback);
#   3. the sidecar (readiness source `fixed`, no Kubernetes API needed) registers against a
#      Consul dev agent until `podman exec ... readiness-gate` prints ok and the catalog lists
#      the instance passing;
#   4. SIGTERM: it drains, the container exits 0 and the catalog no longer lists the instance.
# Any failure exits non-zero. Everything it creates (containers, volume, images, the whole
# image store, its Consul agent) is removed on exit, also on failure.
#
# No image registry is reachable here, so the base image is built from Debian packages with
# mmdebstrap and `podman import`ed, and passed to the Dockerfile as `--build-arg BASE_IMAGE`.
# Why a build argument and not the local base re-tagged as `python:3.12-slim`: a Debian
# Python 3.11 under the name of the upstream image would be a lie that `podman images` shows
# and a forgotten store could leak; the build argument says what was built from what, and
# lets users pick their own base (a mirror, a pinned digest) the same way. The default stays
# `python:3.12-slim`, so a plain `docker build .` is unchanged.
#
# Machine settings (all in a scratch containers.conf / storage.conf, never the machine's
# global configuration): runc (crun fails on this cgroup layout), cgroupfs, file events
# logger, explicit ulimits, host network only (a bridge network would change the machine's
# firewall), overlay storage in the scratch directory. pip in the build trusts the host's CA
# bundle, bind-mounted into the build only (not into the image).
#
# Environment: CONSUL_BIN (else scripts/provide-consul.sh), KATALOG_CACHE_DIR (the base
# rootfs tarball is cached there, keyed by how it is built; KATALOG_IMAGE_REBUILD_BASE=1
# rebuilds it), TMPDIR (scratch).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

MEASURE=0
E2E=0
SAVE=""
while [ $# -gt 0 ]; do
  arg=$1; shift
  case "$arg" in
    --measure) MEASURE=1 ;;
    --e2e) E2E=1 ;;
    --save) SAVE=${1:?--save needs a file name}; shift ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "image-smoke: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

STARTED=$(date +%s%N)
log() {
  local tenths=$((($(date +%s%N) - STARTED) / 100000000))
  printf 'image-smoke: [%4d.%ds] %s\n' $((tenths / 10)) $((tenths % 10)) "$*" >&2
}
fail() { log "FAIL: $*"; exit 1; }

# -- what it needs ----------------------------------------------------------------------------
missing=()
for tool in podman runc mmdebstrap eatmydata curl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq -o DPkg::Lock::Timeout=600 podman runc mmdebstrap eatmydata curl >/dev/null
fi
[ -n "$SAVE" ] || CONSUL_BIN="$(bash scripts/provide-consul.sh)"

# -- scratch: the image store and podman's configuration, removed on exit -----------------------
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/katalog-image.XXXXXX")
# Every podman call below uses only this configuration, never the machine's (set before anything
# can fail, so the cleanup's `podman rm --all` can only ever see this store).
export CONTAINERS_CONF="$SCRATCH/containers.conf" CONTAINERS_STORAGE_CONF="$SCRATCH/storage.conf" \
  CONTAINERS_REGISTRIES_CONF="$SCRATCH/registries.conf" TMPDIR="$SCRATCH/tmp"
# The one path podman 4.3 writes outside its configured store as root, with no setting to move
# it: the blob-info cache of image copies. Removed at the end if this run created it.
BLOB_CACHE=/var/lib/containers
[ -e "$BLOB_CACHE" ] && BLOB_CACHE_WAS_THERE=1 || BLOB_CACHE_WAS_THERE=0
CONSUL_PID=""
CONTAINER=""
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  log "cleaning up"
  if [ -n "$CONTAINER" ] && [ "$rc" -ne 0 ]; then
    echo "---- container log (last 40 lines)" >&2
    podman logs "$CONTAINER" 2>&1 | tail -40 >&2
  fi
  # Containers (and their conmon and runc) stop; the images and the volume go with the whole
  # store below (`podman rmi` would take seconds to delete layer by layer what rm -rf drops).
  [ -f "$SCRATCH/containers.conf" ] && podman rm --all --force --time 0 >/dev/null 2>&1
  if [ -n "$CONSUL_PID" ]; then
    if [ "$rc" -ne 0 ]; then
      echo "---- consul log (warnings and errors, last 20)" >&2
      grep -E '\[(WARN|ERROR)\]' "$SCRATCH/consul.log" | tail -20 >&2
    fi
    kill -TERM "$CONSUL_PID" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$CONSUL_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$CONSUL_PID" 2>/dev/null && kill -KILL "$CONSUL_PID"
    wait "$CONSUL_PID" 2>/dev/null
  fi
  # Whatever the overlay driver left mounted in the store, deepest first.
  findmnt -rn -o TARGET | grep -F "$SCRATCH/" | sort -r | while read -r mnt; do umount "$mnt"; done
  rm -rf "$SCRATCH"
  [ "$BLOB_CACHE_WAS_THERE" = 1 ] || rm -rf "$BLOB_CACHE"
  if [ "$rc" -eq 0 ]; then log "passed"; else log "FAILED (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$SCRATCH"/{storage,run,tmp,networks,bin}
# runc keeps container state in /run/runc unless told otherwise; podman 4.3 passes no --root
# on every call, so a wrapper does.
printf '#!/bin/sh\nexec %s --root "%s/runc" "$@"\n' "$(command -v runc)" "$SCRATCH" >"$SCRATCH/bin/runc"
chmod +x "$SCRATCH/bin/runc"
# The CNI backend keeps its lock in network_config_dir; netavark (as root) would use
# /run/containers/networks. With host networking neither ever runs a plugin.
cat >"$SCRATCH/containers.conf" <<CONF
[containers]
netns = "host"
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$SCRATCH/events.log"
tmp_dir = "$SCRATCH/tmp"
image_copy_tmp_dir = "$SCRATCH/tmp"

[engine.runtimes]
runc = ["$SCRATCH/bin/runc"]

[network]
network_backend = "cni"
network_config_dir = "$SCRATCH/networks"
CONF
cat >"$SCRATCH/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$SCRATCH/storage"
runroot = "$SCRATCH/run"
CONF
# No registry to search: a name that is not local fails instead of trying to pull.
printf 'unqualified-search-registries = []\n' >"$SCRATCH/registries.conf"

# -- the base: a Debian rootfs with Python and pip, cached as a tarball ---------------------------
BASE=localhost/katalog-smoke-base:bookworm
IMAGE=localhost/katalog-sidecar:smoke
# eatmydata: dpkg without an fsync per file, much of mmdebstrap's time on this machine; the
# rootfs it makes is the same.
MMDEBSTRAP=(mmdebstrap --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata
  --include=python3,python3-venv,python3-pip,python-is-python3
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*'
  --aptopt='Acquire::Retries "3"'
  # Debian marks its Python externally managed; an image's only Python is ours to install into.
  --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED'
  bookworm)
CACHE_DIR="${KATALOG_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/katalog-sidecar}/image-base"
BASE_TAR="$CACHE_DIR/bookworm-$(printf '%s\n' "${MMDEBSTRAP[@]}" | sha256sum | cut -c1-12).tar"
if [ ! -s "$BASE_TAR" ] || [ "${KATALOG_IMAGE_REBUILD_BASE:-}" = 1 ]; then
  log "building the base rootfs with mmdebstrap (Debian packages; cached in $CACHE_DIR)"
  mkdir -p "$CACHE_DIR"
  timeout 900 "${MMDEBSTRAP[@]}" "$SCRATCH/base.tar" http://deb.debian.org/debian >"$SCRATCH/mmdebstrap.log" 2>&1 \
    || { tail -30 "$SCRATCH/mmdebstrap.log" >&2; fail "mmdebstrap failed"; }
  mv "$SCRATCH/base.tar" "$BASE_TAR"
  log "base rootfs built: $BASE_TAR"
else
  log "base rootfs from the cache: $BASE_TAR"
fi
timeout 300 podman import --quiet \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  "$BASE_TAR" "$BASE" >/dev/null || fail "podman import of the base failed"
log "base imported: $BASE"

# -- the image: the project's Dockerfile, unchanged ----------------------------------------------
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$SCRATCH/pip.conf"
log "building $IMAGE from ./Dockerfile"
timeout 900 podman build --network host --pull=never --layers \
  --build-arg BASE_IMAGE="$BASE" \
  --volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
  --volume "$SCRATCH/pip.conf:/etc/pip.conf:ro" \
  --file Dockerfile --tag "$IMAGE" . >"$SCRATCH/build.log" 2>&1 \
  || { tail -40 "$SCRATCH/build.log" >&2; fail "podman build failed"; }
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
[ "$user" = 65532:65532 ] || fail "the image's USER is '$user' (want 65532:65532, numeric for runAsNonRoot)"
log "built $IMAGE (USER $user)"
if [ -n "$SAVE" ]; then
  mkdir -p "$(dirname "$SAVE")"
  timeout 300 podman save --quiet --format docker-archive -o "$SAVE.tmp" "$IMAGE" || fail "podman save failed"
  mv "$SAVE.tmp" "$SAVE"
  log "saved $IMAGE to $SAVE"
  exit 0
fi

# The examples' securityContext: runAsUser/Group 65532, readOnlyRootFilesystem (and nothing
# mounted but the status volume: no tmpfs), capabilities drop ALL, allowPrivilegeEscalation false.
SECURITY=(--network host --user 65532:65532 --read-only --read-only-tmpfs=false --cap-drop ALL
  --security-opt no-new-privileges)

# -- 1. the entrypoint answers --help ----------------------------------------------------------
help=$(timeout 120 podman run --rm "${SECURITY[@]}" "$IMAGE" --help 2>&1) \
  || { echo "$help" >&2; fail "katalog-sidecar --help exited non-zero"; }
grep -Eq '^\s+run\s' <<<"$help" || { echo "$help" >&2; fail "--help does not list the run command"; }
log "ok: katalog-sidecar --help"

# -- 1b. the webhook runs from the same image (the Helm chart's default) ------------------------
# `webhook --help` imports only click, so the real check is a start: a CA and a serving
# certificate made in the image (the `webhook` extra, cryptography), one AdmissionReview served
# over HTTPS on loopback, exit 0 on SIGTERM (scripts/image_webhook_check.py, run by the image's
# Python). As the chart's Deployment, with a writable /tmp (the chart's emptyDir: the webhook
# loads each certificate through a private scratch directory there) on the read-only root.
help=$(timeout 120 podman run --rm "${SECURITY[@]}" "$IMAGE" webhook --help 2>&1) \
  || { echo "$help" >&2; fail "katalog-sidecar webhook --help exited non-zero"; }
podman volume create katalog-webhook >/dev/null
hook_out=$(timeout 180 podman run --rm -i "${SECURITY[@]}" -v katalog-webhook:/tmp --entrypoint python \
  "$IMAGE" - /tmp/certs <scripts/image_webhook_check.py 2>&1) \
  || { echo "$hook_out" >&2; fail "the webhook did not start and serve from the image"; }
log "ok: $hook_out"

# -- 2. the gate fails cleanly without a sidecar ------------------------------------------------
# /run/katalog: a named volume (podman copies the image's 65532-owned directory into it, as an
# emptyDir with fsGroup gives the pod); a --tmpfs would stay root-owned under podman 4.3.
podman volume create katalog-run >/dev/null
set +e
gate_out=$(timeout 120 podman run --rm "${SECURITY[@]}" -v katalog-run:/run/katalog --entrypoint readiness-gate \
  "$IMAGE" 2>"$SCRATCH/gate.err")
gate_rc=$?
set -e
[ "$gate_rc" -eq 1 ] || fail "readiness-gate without a sidecar exited $gate_rc (want 1): $gate_out $(cat "$SCRATCH/gate.err")"
[[ "$gate_out" == "no status file at /run/katalog/status.json"* ]] || fail "readiness-gate said: $gate_out"
[ ! -s "$SCRATCH/gate.err" ] || fail "readiness-gate wrote to stderr: $(cat "$SCRATCH/gate.err")"
log "ok: readiness-gate without a sidecar: exit 1, \"$gate_out\""

# -- a Consul dev agent on loopback, on free ports ------------------------------------------------
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(free_port); SERF_PORT=$(free_port); SERVER_PORT=$(free_port)
CONSUL="http://127.0.0.1:$HTTP_PORT"
"$CONSUL_BIN" agent -dev -node=image-smoke -bind=127.0.0.1 -client=127.0.0.1 \
  -hcl "ports { http = $HTTP_PORT, dns = -1, grpc = -1, grpc_tls = -1, serf_lan = $SERF_PORT, serf_wan = -1, server = $SERVER_PORT }" \
  -hcl 'disable_update_check = true' >"$SCRATCH/consul.log" 2>&1 &
CONSUL_PID=$!
consul_get() { curl -fsS --max-time 5 "$CONSUL$1"; }
for i in $(seq 300); do
  kill -0 "$CONSUL_PID" 2>/dev/null || fail "consul exited"
  leader=$(consul_get /v1/status/leader 2>/dev/null || true)
  [ -n "$leader" ] && [ "$leader" != '""' ] && consul_get /v1/catalog/nodes 2>/dev/null | grep -q image-smoke && break
  [ "$i" -eq 300 ] && fail "consul not ready after 30 s"
  sleep 0.1
done
log "consul $("$CONSUL_BIN" version | head -1 | cut -d' ' -f2) at $CONSUL"

# The instances of service web in the catalog (the servers' view), as "ID status,status" lines.
catalog() {
  consul_get /v1/health/service/web | python3 -c '
import json, sys
for entry in json.load(sys.stdin):
    print(entry["Service"]["ID"], ",".join(sorted({c["Status"] for c in entry["Checks"]})))'
}

# -- 3. the sidecar registers, confirms, and the gate opens ----------------------------------------
CONTAINER=katalog-smoke
INSTANCE=smoke:web-0:web
podman run -d --name "$CONTAINER" "${SECURITY[@]}" -v katalog-run:/run/katalog \
  -e POD_NAME=web-0 -e POD_NAMESPACE=smoke -e POD_IP=127.0.0.1 -e HOST_IP=127.0.0.1 \
  -e CONSUL_HTTP_ADDR="127.0.0.1:$HTTP_PORT" -e KATALOG_SERVICES=web:8080 \
  -e KATALOG_READINESS_SOURCE=fixed -e KATALOG_METRICS_ADDR=off -e KATALOG_HEARTBEAT_INTERVAL=1s \
  "$IMAGE" >/dev/null
# As kubelet's exec probe: in the running container, with its environment and user.
for i in $(seq 60); do
  set +e; gate_out=$(timeout 10 podman exec "$CONTAINER" readiness-gate 2>&1); gate_rc=$?; set -e
  [ "$gate_rc" -eq 0 ] && break
  [ "$(podman inspect --format '{{.State.Running}}' "$CONTAINER")" = true ] || fail "the sidecar container exited"
  [ "$i" -eq 60 ] && fail "readiness-gate still failing after 60 tries: $gate_out"
  sleep 0.5
done
[[ "$gate_out" == ok* ]] || fail "readiness-gate exit 0 but said: $gate_out"
listed=$(catalog)
[ "$listed" = "$INSTANCE passing" ] || fail "catalog lists: ${listed:-nothing} (want $INSTANCE passing)"
log "ok: readiness-gate in the container: \"$gate_out\"; the catalog lists $INSTANCE passing"
# The image carries cryptography for the webhook; the running sidecar must not have loaded it
# (its compiled module would be mapped into PID 1: memory every pod would pay).
mapped=$(podman exec "$CONTAINER" python -c '
import sys
print(sum("/cryptography/" in line for line in open("/proc/1/maps")))') || fail "cannot read the sidecar's /proc/1/maps"
[ "$mapped" = 0 ] || fail "the running sidecar has cryptography loaded ($mapped mappings): run must not import it"
log "ok: the running sidecar has not loaded cryptography (none of it mapped into PID 1)"

if [ "$MEASURE" = 1 ]; then
  log "measuring (bench/image.py)"
  python3 bench/image.py --container "$CONTAINER" --image "$IMAGE" --base "$BASE" \
    --scratch "$SCRATCH" --out "$REPO/bench/out" || fail "measurement failed"
fi

# -- 4. SIGTERM drains; the container exits 0 and the catalog is empty ------------------------------
podman kill --signal TERM "$CONTAINER" >/dev/null
exit_code=$(timeout 60 podman wait "$CONTAINER") || fail "the container did not exit within 60 s of SIGTERM"
[ "$exit_code" = 0 ] || fail "the container exited $exit_code after SIGTERM (want 0)"
listed=$(catalog)
[ -z "$listed" ] || fail "after the drain the catalog still lists: $listed"
sidecar_log=$(podman logs "$CONTAINER" 2>&1)
grep -q "removed from the catalog" <<<"$sidecar_log" || fail "the sidecar's log does not show the drain"
grep -q "exiting with code 0" <<<"$sidecar_log" || fail "the sidecar's log does not say it exited 0"
log "ok: SIGTERM: drained, exit 0, the catalog lists no instance"

# -- 5. (--e2e) the example on a real control plane, its sidecar container from this image ------
if [ "$E2E" = 1 ]; then
  log "end to end: tests/image_e2e.py (the pod runner runs the sidecar container from $IMAGE)"
  source scripts/venv.sh >/dev/null
  KATALOG_TEST_IMAGE="$IMAGE" CONSUL_BIN="$CONSUL_BIN" timeout 900 python -m pytest -q -p no:cacheprovider \
    tests/image_e2e.py || fail "the end-to-end test from the image failed"
  log "ok: end to end from the image"
fi
