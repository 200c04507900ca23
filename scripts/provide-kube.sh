#!/usr/bin/env bash
# Prints shell `export` lines naming working etcd, kube-apiserver, kube-controller-manager,
# kubectl, kube-scheduler and kubelet binaries, building the missing ones from the Go module
# proxy:
#
#     eval "$(scripts/provide-kube.sh)"   # sets ETCD_BIN KUBE_APISERVER_BIN
#                                         #      KUBE_CONTROLLER_MANAGER_BIN KUBECTL_BIN
#                                         #      KUBE_SCHEDULER_BIN KUBELET_BIN
#
# The scheduler and the kubelet are for the real node (tests/kube_node.py, scripts/node.sh);
# they are built in a second step of the same wrapper module, so a cache from before they were
# added is used as it is and only the two are built (~3-6 min on 2 cores).
#
# Same contract as provide-consul.sh, per binary: $ETCD_BIN (etc.), then the binary on PATH if
# it is the wanted minor version, then a cached build, then a build. The control plane is only
# a *test* dependency; the product is pure Python.
#
# Why the version check on PATH: Debian ships kubectl 1.20 (too old for native sidecars) and
# etcd 3.4 (no watch progress notification, so the apiserver's idle watch caches stop
# advancing and bookmarks go quiet).
# Why a wrapper module for Kubernetes: k8s.io/kubernetes replaces its ~31 staging modules
# (k8s.io/api, apimachinery, client-go, ...) with local paths at v0.0.0, so it cannot be built
# or `go install`ed as a dependency. The wrapper requires it and replaces every staging module
# with its published v0.<minor>.<patch>; the list is generated from the downloaded go.mod so a
# new staging module needs no edit here.
# Why a wrapper for etcd: server/v3's go.mod replaces its sibling modules with ../ paths, which
# `go install pkg@version` refuses.
set -euo pipefail

KUBE_VERSION="${KATALOG_KUBE_VERSION:-1.34.4}"
ETCD_VERSION="${KATALOG_ETCD_VERSION:-3.6.16}"
CACHE_DIR="${KATALOG_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/katalog-sidecar}"
KUBE_DIR="$CACHE_DIR/kube-$KUBE_VERSION"
ETCD_DIR="$CACHE_DIR/etcd-$ETCD_VERSION"
KUBE_MINOR="v${KUBE_VERSION%.*}."   # e.g. "v1.34."
ETCD_MINOR="${ETCD_VERSION%.*}."    # e.g. "3.6."
# Parallel compile jobs: the machine is shared; 2 keeps peak memory near 2 GB.
GO_JOBS="${KATALOG_GO_JOBS:-2}"

log() { echo "provide-kube: $*" >&2; }

# Scratch for the wrapper modules, removed on exit however the script ends.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The version a binary reports, or nothing if it does not run.
version_of() {
  local bin=$1 name=$2
  [ -x "$bin" ] || return 0
  case "$name" in
    etcd) "$bin" --version 2>/dev/null | sed -n 's/^etcd Version: //p' ;;
    kubectl) "$bin" version --client 2>/dev/null | sed -n 's/^Client Version: //p' ;;
    *) "$bin" --version 2>/dev/null | sed -n 's/^Kubernetes //p' ;;
  esac
}

# works BIN NAME: the binary runs and is the wanted minor version.
works() {
  local v want
  v=$(version_of "$1" "$2")
  if [ "$2" = etcd ]; then want=$ETCD_MINOR; else want=$KUBE_MINOR; fi
  [ -n "$v" ] && [ "${v#"$want"}" != "$v" ]
}

env_name() {
  case "$1" in
    etcd) echo ETCD_BIN ;;
    kube-apiserver) echo KUBE_APISERVER_BIN ;;
    kube-controller-manager) echo KUBE_CONTROLLER_MANAGER_BIN ;;
    kubectl) echo KUBECTL_BIN ;;
    kube-scheduler) echo KUBE_SCHEDULER_BIN ;;
    kubelet) echo KUBELET_BIN ;;
  esac
}

cached_path() {
  if [ "$1" = etcd ]; then echo "$ETCD_DIR/etcd"; else echo "$KUBE_DIR/$1"; fi
}

# find NAME: prints a working binary's path, or nothing.
find_bin() {
  local name=$1 var val
  var=$(env_name "$name")
  val="${!var:-}"
  if [ -n "$val" ]; then
    local want="${KUBE_MINOR}x"
    [ "$name" = etcd ] && want="${ETCD_MINOR}x"
    works "$val" "$name" || { log "$var=$val is not a working $name $want"; exit 1; }
    echo "$val"; return
  fi
  if command -v "$name" >/dev/null 2>&1 && works "$(command -v "$name")" "$name"; then
    command -v "$name"; return
  fi
  if works "$(cached_path "$name")" "$name"; then cached_path "$name"; fi
}

go_env() {
  [ -x /usr/local/go/bin/go ] && PATH="$PATH:/usr/local/go/bin"
  command -v go >/dev/null 2>&1 || { log "no $1 binary and no Go toolchain to build one"; exit 1; }
  # The checksum database is not reachable from these machines; checksums are taken from the
  # module proxy's downloads as they are (as for Consul).
  export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0 GOSUMDB=off
}

build_etcd() {
  go_env etcd
  log "building etcd v$ETCD_VERSION from the Go module proxy (~1-3 min on 2 cores)"
  local t0=$SECONDS
  local work="$WORK/etcd"
  mkdir -p "$work" "$ETCD_DIR"
  (
    cd "$work"
    cat > go.mod <<MOD
module katalog-sidecar/etcd-build

go 1.26.0

require go.etcd.io/etcd/server/v3 v$ETCD_VERSION
MOD
    printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
    go mod tidy >&2
    go build -p "$GO_JOBS" -trimpath -ldflags="-s -w" -o "$ETCD_DIR/etcd.tmp" go.etcd.io/etcd/server/v3 >&2
  )
  mv "$ETCD_DIR/etcd.tmp" "$ETCD_DIR/etcd"
  log "built etcd in $((SECONDS - t0)) s"
}

# build_kube CMD...: builds the given k8s.io/kubernetes/cmd/* binaries into the cache.
build_kube() {
  go_env kubernetes
  log "building $* v$KUBE_VERSION from the Go module proxy (3-15 min and ~2 GB memory on" \
      "2 cores; cached afterwards)"
  local work="$WORK/kube-$1"
  mkdir -p "$work" "$KUBE_DIR"
  (
    cd "$work"
    local gomod staging minor="${KUBE_VERSION#*.}" major="${KUBE_VERSION%%.*}"
    minor="${minor%%.*}"
    gomod=$(go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
    [ -f "$gomod" ] || { log "could not download k8s.io/kubernetes v$KUBE_VERSION"; exit 1; }
    # Every `k8s.io/x => ./staging/src/k8s.io/x` becomes `k8s.io/x => k8s.io/x v0.<minor>.<patch>`.
    staging=$(sed -n 's#^\s*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/src/.*#\1#p' "$gomod")
    [ -n "$staging" ] || { log "no staging replaces found in $gomod"; exit 1; }
    {
      echo "module katalog-sidecar/kube-build"
      echo
      echo "go 1.24.0"
      echo
      echo "godebug default=go1.24"
      echo
      echo "require k8s.io/kubernetes v$KUBE_VERSION"
      echo
      echo "replace ("
      for m in $staging; do echo "	$m => $m v0.${KUBE_VERSION#*.}"; done
      echo ")"
    } > go.mod
    {
      printf '//go:build tools\n\npackage tools\n\nimport (\n'
      for cmd in "$@"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$cmd"; done
      printf ')\n'
    } > tools.go
    go mod tidy >&2
    # So /version (and `kubectl version`) report the real release, not v0.0.0-master.
    local x="" pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      x="$x -X $pkg.gitVersion=v$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
      x="$x -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    done
    local cmd
    for cmd in "$@"; do
      local t0=$SECONDS
      go build -p "$GO_JOBS" -trimpath -ldflags="-s -w $x" -o "$KUBE_DIR/$cmd.tmp" \
        "k8s.io/kubernetes/cmd/$cmd" >&2
      mv "$KUBE_DIR/$cmd.tmp" "$KUBE_DIR/$cmd"
      log "built $cmd in $((SECONDS - t0)) s"
    done
  )
}

etcd=$(find_bin etcd)
if [ -z "$etcd" ]; then build_etcd; etcd=$(cached_path etcd); works "$etcd" etcd || { log "built etcd does not run"; exit 1; }; fi

# The control plane first, then the node's two: one `go build` per missing binary. Printed at
# the end only, so a failed build prints nothing for `eval` to half-apply.
exports=$(printf 'export ETCD_BIN=%q' "$etcd")
for group in "kube-apiserver kube-controller-manager kubectl" "kube-scheduler kubelet"; do
  missing=()
  for name in $group; do
    path=$(find_bin "$name")  # an assignment, so a bad $KUBELET_BIN (etc.) ends the script
    [ -n "$path" ] || missing+=("$name")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    build_kube "${missing[@]}"
    for name in "${missing[@]}"; do
      works "$(cached_path "$name")" "$name" || { log "built $name does not run"; exit 1; }
    done
  fi
  for name in $group; do
    path=$(find_bin "$name")
    exports+=$'\n'$(printf 'export %s=%q' "$(env_name "$name")" "$path")
  done
done
echo "$exports"
