#!/usr/bin/env bash
# The benchmark: installs what it needs (virtualenv with matplotlib for the charts, a Consul
# binary), then measures every performance target. Arguments go to bench/run.py (--quick).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
python -c "import matplotlib" 2>/dev/null || python -m pip install --quiet -e '.[test,bench]'
CONSUL_BIN="$(bash scripts/provide-consul.sh)"
export CONSUL_BIN
exec python bench/run.py "$@"
