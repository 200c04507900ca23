#!/usr/bin/env bash
# Prints the path of a working `consul` binary, building one if needed.
#
# Order: $CONSUL_BIN, then `consul` on PATH, then a cached build, then a build from the Go
# module proxy. Consul is only a *test* dependency; the product is pure Python.
#
# Why v1.16.1: it was tagged (2023-08-05) before HashiCorp moved Consul to the BUSL, so it is
# under the MPL-2.0; later releases are under the BUSL, which this project does not take on,
# even for tests.
# Why a wrapper module: `go install github.com/hashicorp/consul@v` is refused because Consul's
# go.mod has replace directives; in a dependency those are ignored, so the published
# submodule versions are used. The excludes are copied from Consul's own go.mod.
set -euo pipefail

CONSUL_VERSION="${KATALOG_CONSUL_VERSION:-1.16.1}"
CACHE_DIR="${KATALOG_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/katalog-sidecar}"
TARGET="$CACHE_DIR/consul-$CONSUL_VERSION/consul"

log() { echo "provide-consul: $*" >&2; }

works() { [ -x "$1" ] && "$1" version >/dev/null 2>&1; }

if [ -n "${CONSUL_BIN:-}" ]; then
  works "$CONSUL_BIN" || { log "CONSUL_BIN=$CONSUL_BIN is not a working consul binary"; exit 1; }
  echo "$CONSUL_BIN"; exit 0
fi
if command -v consul >/dev/null 2>&1 && works "$(command -v consul)"; then
  command -v consul; exit 0
fi
if works "$TARGET"; then
  echo "$TARGET"; exit 0
fi

# The Go toolchain's usual home, in case a non-login shell (CI) lacks it on PATH.
[ -x /usr/local/go/bin/go ] && PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null 2>&1 || { log "no consul binary and no Go toolchain to build one"; exit 1; }

log "building consul v$CONSUL_VERSION from the Go module proxy (several minutes on 2 cores)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$(dirname "$TARGET")"
cd "$work"
# The checksum database is not reachable from these machines for every module Consul 1.16
# pulls in, so checksums are taken from the module proxy's downloads as they are.
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0 GOSUMDB=off
cat > go.mod <<MOD
module katalog-sidecar/consul-build

go 1.20

require github.com/hashicorp/consul v$CONSUL_VERSION

exclude (
	github.com/hashicorp/go-msgpack v1.1.5
	github.com/hashicorp/go-msgpack v1.1.6
)
MOD
cat > tools.go <<'GO'
//go:build tools

package tools

import _ "github.com/hashicorp/consul"
GO
go mod download github.com/hashicorp/consul >&2
go get github.com/hashicorp/consul@v"$CONSUL_VERSION" >&2
# -checklinkname=0: a few of 1.16's older dependencies use go:linkname into the runtime,
# which Go >= 1.23 refuses to link by default.
go build -trimpath -ldflags="-s -w -checklinkname=0" -o "$TARGET.tmp" github.com/hashicorp/consul >&2
mv "$TARGET.tmp" "$TARGET"
works "$TARGET" || { log "built binary does not run"; exit 1; }
log "built $("$TARGET" version | head -1) at $TARGET"
echo "$TARGET"
