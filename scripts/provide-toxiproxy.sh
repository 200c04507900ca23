#!/usr/bin/env bash
# Prints the path of a working `toxiproxy-server` binary, building one if needed.
#
# Same contract as provide-consul.sh. Order: $TOXIPROXY_BIN, then `toxiproxy-server` on PATH,
# then a cached build, then a build from the Go module proxy. Toxiproxy is only a *test*
# dependency: the fault proxy the regression tests put in front of a real Consul agent for
# latency, timeouts and cut connections (tests/toxiproxy.py).
#
# Why v2.12.0: the newest v2 release, MIT-licensed; its server is the `cmd/server` package.
set -euo pipefail

TOXIPROXY_VERSION="${KATALOG_TOXIPROXY_VERSION:-2.12.0}"
CACHE_DIR="${KATALOG_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/katalog-sidecar}"
TARGET="$CACHE_DIR/toxiproxy-$TOXIPROXY_VERSION/toxiproxy-server"

log() { echo "provide-toxiproxy: $*" >&2; }

works() { [ -x "$1" ] && "$1" --version >/dev/null 2>&1; }

if [ -n "${TOXIPROXY_BIN:-}" ]; then
  works "$TOXIPROXY_BIN" || { log "TOXIPROXY_BIN=$TOXIPROXY_BIN is not a working toxiproxy-server binary"; exit 1; }
  echo "$TOXIPROXY_BIN"; exit 0
fi
if command -v toxiproxy-server >/dev/null 2>&1 && works "$(command -v toxiproxy-server)"; then
  command -v toxiproxy-server; exit 0
fi
if works "$TARGET"; then
  echo "$TARGET"; exit 0
fi

# The Go toolchain's usual home, in case a non-login shell (CI) lacks it on PATH.
[ -x /usr/local/go/bin/go ] && PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null 2>&1 || { log "no toxiproxy-server binary and no Go toolchain to build one"; exit 1; }

log "building toxiproxy v$TOXIPROXY_VERSION from the Go module proxy (about a minute on 2 cores)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$(dirname "$TARGET")"
cd "$work"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
cat > go.mod <<MOD
module katalog-sidecar/toxiproxy-build

go 1.22

require github.com/Shopify/toxiproxy/v2 v$TOXIPROXY_VERSION
MOD
cat > tools.go <<'GO'
//go:build tools

package tools

import _ "github.com/Shopify/toxiproxy/v2/cmd/server"
GO
go mod download github.com/Shopify/toxiproxy/v2 >&2
go get github.com/Shopify/toxiproxy/v2/cmd/server@v"$TOXIPROXY_VERSION" >&2
go build -trimpath -ldflags="-s -w -X github.com/Shopify/toxiproxy/v2.Version=$TOXIPROXY_VERSION" \
  -o "$TARGET.tmp" github.com/Shopify/toxiproxy/v2/cmd/server >&2
mv "$TARGET.tmp" "$TARGET"
works "$TARGET" || { log "built binary does not run"; exit 1; }
log "built toxiproxy-server $("$TARGET" --version 2>&1 | head -1) at $TARGET"
echo "$TARGET"
