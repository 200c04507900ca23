#!/usr/bin/env bash
# The benchmark: installs what it needs (virtualenv with matplotlib for the charts, a Consul
# binary), then measures every performance target. Arguments go to bench/run.py (--quick);
# `--all [--quick|--preset P]` runs every figure group in one invocation instead (bench/all.py:
# bench/out/all.json + all.md, which `python bench/publish.py bench/out/all.json` publishes).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
python -c "import matplotlib" 2>/dev/null || python -m pip install --quiet -e '.[test,bench]'
CONSUL_BIN="$(bash scripts/provide-consul.sh)"
export CONSUL_BIN
if [ "${1:-}" = "--all" ]; then
  shift
  exec python bench/all.py "$@"
fi
exec python bench/run.py "$@"
