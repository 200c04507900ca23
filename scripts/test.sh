#!/usr/bin/env bash
# Runs every check on a fresh machine: installs what it needs, provides a real Consul and a real
# Kubernetes control plane, then lint, type check and the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh

CONSUL_BIN="$(bash scripts/provide-consul.sh)"
export CONSUL_BIN
echo "consul: $CONSUL_BIN ($("$CONSUL_BIN" version | head -1))"
# The real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kubectl) and
# the real node's kubelet and kube-scheduler: built once (~10-20 min on 2 cores), then cached.
# The node's runtime (containerd, runc) from Debian, as root. With CI set, their tests fail when
# something is missing.
eval "$(bash scripts/provide-kube.sh)"
echo "kube-apiserver: $KUBE_APISERVER_BIN ($("$KUBE_APISERVER_BIN" --version)); etcd: $("$ETCD_BIN" --version | head -1)"
if [ "$(id -u)" = 0 ]; then
  bash scripts/provide-runtime.sh
  echo "node: $("$KUBELET_BIN" --version | sed 's/Kubernetes/kubelet/'), $(containerd --version | cut -d' ' -f1,3), $(runc --version | head -1)"
fi
# Toxiproxy, the fault proxy of the regression tests (latency, hangs, cut connections): built from
# the Go module proxy once (~2 min), then cached. With CI set, its tests fail when it is missing.
TOXIPROXY_BIN="$(bash scripts/provide-toxiproxy.sh)"
export TOXIPROXY_BIN
echo "toxiproxy: $TOXIPROXY_BIN ($("$TOXIPROXY_BIN" --version))"

# promtool checks and unit-tests the alert rules in examples/monitoring: built once (about 7 min of
# CPU, 19 min wall on a loaded 2-core machine), then cached.
PROMTOOL_BIN="$(bash scripts/provide-promtool.sh)"
export PROMTOOL_BIN
echo "promtool: $PROMTOOL_BIN ($("$PROMTOOL_BIN" --version 2>&1 | head -1))"

# Helm lints, renders and installs charts/katalog-sidecar (built once, ~11 min cold on 2 loaded cores).
HELM_BIN="$(bash scripts/provide-helm.sh)"
export HELM_BIN
echo "helm: $HELM_BIN ($("$HELM_BIN" version --short))"

echo "== ruff"; ruff check sidecar readiness_gate tests bench scripts
echo "== mypy"; mypy
# Two workers: most tests wait on real processes (TTLs, rollouts, a server outage), not on the
# CPU, so two of them share 2 cores well (34 -> ~18 min here). Modules stay whole on one worker
# (--dist loadscope) so a module's shared cluster starts once. KATALOG_TEST_WORKERS=0 runs serially.
WORKERS="${KATALOG_TEST_WORKERS:-2}"
echo "== pytest ($WORKERS workers)"
python -m pytest -ra -n "$WORKERS" --dist loadscope --durations=30 "$@"
