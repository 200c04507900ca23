#!/usr/bin/env bash
# Prints the path of a working `promtool` binary, building one if needed.
#
# Same contract as provide-consul.sh: $PROMTOOL_BIN, then `promtool` on PATH, then a cached
# build, then a build from the Go module proxy. promtool is only a *test* dependency: it checks
# and unit-tests the alert rules in examples/ (tests/test_alert_rules.py).
#
# Why `go install` and no wrapper module: Prometheus' go.mod at this version has no replace or
# exclude directives (earlier ones, v0.315.x and before, exclude linodego/grpc-gateway and
# replace cloud.google.com/go, which `go install pkg@version` refuses). Its `go 1.26.7` line
# needs a Go toolchain at least that new (GOTOOLCHAIN=local: no toolchain download).
# Why -tags remove_all_sd: promtool registers every service-discovery plugin (AWS, Azure, GCE,
# ...) for `check config`; rule checks and rule unit tests need none of them, and leaving them
# out roughly halves what is compiled.
# Why -X .../common/version.*: `go install` sets none of the version variables Prometheus' own
# build (promu) sets, so `promtool --version` said "version  (branch: , revision: unknown)". The
# binary is stamped with the Go module version it was built from (the tag `go install` used),
# who built it and when.
set -euo pipefail

PROMETHEUS_VERSION="${KATALOG_PROMETHEUS_VERSION:-0.316.0}"
# The recipe's revision, part of the cache key: bumped when a change to how it is built changes
# the binary, so a cache of the old recipe is rebuilt once (2: stamped with its version). With
# Go's build cache warm only the link step runs again.
RECIPE=2
CACHE_DIR="${KATALOG_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/katalog-sidecar}"
TARGET="$CACHE_DIR/promtool-$PROMETHEUS_VERSION-r$RECIPE/promtool"
GO_JOBS="${KATALOG_GO_JOBS:-2}"

log() { echo "provide-promtool: $*" >&2; }

works() { [ -x "$1" ] && "$1" --version >/dev/null 2>&1; }

if [ -n "${PROMTOOL_BIN:-}" ]; then
  works "$PROMTOOL_BIN" || { log "PROMTOOL_BIN=$PROMTOOL_BIN is not a working promtool binary"; exit 1; }
  echo "$PROMTOOL_BIN"; exit 0
fi
if command -v promtool >/dev/null 2>&1 && works "$(command -v promtool)"; then
  command -v promtool; exit 0
fi
if works "$TARGET"; then
  echo "$TARGET"; exit 0
fi

[ -x /usr/local/go/bin/go ] && PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null 2>&1 || { log "no promtool binary and no Go toolchain to build one"; exit 1; }

log "building promtool (prometheus v$PROMETHEUS_VERSION) from the Go module proxy (about 7 min of CPU and 1 GB of memory; cached afterwards)"
t0=$SECONDS
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$(dirname "$TARGET")"
# The checksum database is not reachable from these machines (as for Consul and Kubernetes).
export GOTOOLCHAIN=local CGO_ENABLED=0 GOSUMDB=off GOFLAGS= GOBIN="$work/bin"
stamp=github.com/prometheus/common/version
go install -p "$GO_JOBS" -trimpath -tags remove_all_sd \
  -ldflags="-s -w -X $stamp.Version=v$PROMETHEUS_VERSION -X $stamp.BuildUser=katalog-sidecar/scripts/provide-promtool.sh -X $stamp.BuildDate=$(date -u +%Y%m%d-%H:%M:%S)" \
  "github.com/prometheus/prometheus/cmd/promtool@v$PROMETHEUS_VERSION" >&2
mv "$work/bin/promtool" "$TARGET.tmp"
mv "$TARGET.tmp" "$TARGET"
works "$TARGET" || { log "built binary does not run"; exit 1; }
log "built promtool v$PROMETHEUS_VERSION in $((SECONDS - t0)) s at $TARGET"
echo "$TARGET"
