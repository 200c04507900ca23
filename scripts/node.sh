#!/usr/bin/env bash
# Real Kubernetes nodes on this machine until Ctrl-C (scripts/node.py says what runs):
#
#   scripts/node.sh [--nodes N] [--apply deployment-classic-sidecar.yaml ...]
#
# Installs what it needs (the runtime, see scripts/provide-runtime.sh; Consul; the control
# plane with kubelet and kube-scheduler, built once and cached), then starts the nodes. Needs
# root. Everything it starts is stopped and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh >/dev/null
bash scripts/provide-runtime.sh
CONSUL_BIN="$(bash scripts/provide-consul.sh)"
export CONSUL_BIN
eval "$(bash scripts/provide-kube.sh)"
exec python scripts/node.py "$@"
