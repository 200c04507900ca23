#!/usr/bin/env bash
# Prints the path of a working `helm` (v3) binary, building one if needed.
#
# Same contract as provide-consul.sh: $HELM_BIN, then `helm` on PATH (if it is v3), then a
# cached build, then a build from the Go module proxy. Helm is only a *test* dependency: CI
# lints the chart (charts/katalog-sidecar), renders it for the apiserver's server-side dry run,
# and installs, upgrades and uninstalls it on the test control plane
# (tests/test_kube_real_helm.py).
#
# Why `go install`: helm.sh/helm/v3's go.mod has no replace or exclude directives.
set -euo pipefail

HELM_VERSION="${KATALOG_HELM_VERSION:-3.19.0}"
CACHE_DIR="${KATALOG_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/katalog-sidecar}"
TARGET="$CACHE_DIR/helm-$HELM_VERSION/helm"
GO_JOBS="${KATALOG_GO_JOBS:-2}"

log() { echo "provide-helm: $*" >&2; }

works() { [ -x "$1" ] && "$1" version --short 2>/dev/null | grep -q '^v3\.'; }

if [ -n "${HELM_BIN:-}" ]; then
  works "$HELM_BIN" || { log "HELM_BIN=$HELM_BIN is not a working helm v3 binary"; exit 1; }
  echo "$HELM_BIN"; exit 0
fi
if command -v helm >/dev/null 2>&1 && works "$(command -v helm)"; then
  command -v helm; exit 0
fi
if works "$TARGET"; then
  echo "$TARGET"; exit 0
fi

[ -x /usr/local/go/bin/go ] && PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null 2>&1 || { log "no helm binary and no Go toolchain to build one"; exit 1; }

log "building helm v$HELM_VERSION from the Go module proxy (a few minutes on 2 cores)"
t0=$SECONDS
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$(dirname "$TARGET")"
# The checksum database is not reachable from these machines (as for Consul and Kubernetes).
export GOTOOLCHAIN=local CGO_ENABLED=0 GOSUMDB=off GOFLAGS= GOBIN="$work/bin"
go install -p "$GO_JOBS" -trimpath -ldflags="-s -w" "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION" >&2
mv "$work/bin/helm" "$TARGET.tmp"
mv "$TARGET.tmp" "$TARGET"
works "$TARGET" || { log "built binary does not run"; exit 1; }
log "built helm v$HELM_VERSION in $((SECONDS - t0)) s at $TARGET"
echo "$TARGET"
