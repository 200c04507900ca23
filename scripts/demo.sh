#!/usr/bin/env bash
# The local demo: installs what it needs (virtualenv, a Consul binary, the Kubernetes control
# plane), then plays a pod's life on a real kube-apiserver with real Consul agents and prints a
# timeline with measured latencies. The first run builds the control plane (about 5-10 minutes
# on 2 cores); later runs start in seconds. `--fake-kube` skips it (fake API, Consul dev agent).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
CONSUL_BIN="$(bash scripts/provide-consul.sh)"
export CONSUL_BIN
if [[ " $* " != *" --fake-kube "* ]]; then
  eval "$(bash scripts/provide-kube.sh)"
fi
exec python scripts/demo.py "$@"
