#!/usr/bin/env bash
# The local demo: installs what it needs (virtualenv, a Consul binary), then plays a pod's
# life against a real Consul dev agent and prints a timeline with measured latencies.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
CONSUL_BIN="$(bash scripts/provide-consul.sh)"
export CONSUL_BIN
exec python scripts/demo.py "$@"
