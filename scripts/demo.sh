#!/usr/bin/env bash
# The local demo: installs what it needs (virtualenv, a Consul binary, the Kubernetes control
# plane with kubelet and kube-scheduler, and as root containerd + runc), then plays a pod's life
# on a real node (kubelet + containerd running the image built from the Dockerfile) with real
# Consul agents and prints a timeline with measured latencies. The first run builds the control
# plane, the node's binaries and the image (see the README for what it costs); later runs start
# in seconds. Without root (or a runtime) it says so and uses the pod runner as the kubelet;
# `--pod-runner` asks for that; `--fake-kube` skips Kubernetes (fake API, Consul dev agent).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
CONSUL_BIN="$(bash scripts/provide-consul.sh)"
export CONSUL_BIN
if [[ " $* " != *" --fake-kube "* ]]; then
  if [[ " $* " != *" --pod-runner "* ]] && [ "$(id -u)" = 0 ]; then
    bash scripts/provide-runtime.sh || echo "demo: could not install the container runtime" >&2
  fi
  eval "$(bash scripts/provide-kube.sh)"
fi
exec python scripts/demo.py "$@"
