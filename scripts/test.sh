#!/usr/bin/env bash
# Runs every check on a fresh machine: installs what it needs, provides a real Consul, then
# lint, type check and the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh

CONSUL_BIN="$(bash scripts/provide-consul.sh)"
export CONSUL_BIN
echo "consul: $CONSUL_BIN ($("$CONSUL_BIN" version | head -1))"

echo "== ruff"; ruff check sidecar readiness_gate tests bench scripts
echo "== mypy"; mypy
echo "== pytest"; python -m pytest -ra "$@"
