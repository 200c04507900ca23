#!/usr/bin/env bash
# Installs the container runtime the real node uses (tests/kube_node.py), if it is missing:
# Debian's containerd 1.6 and runc, and the CNI plugins (only `loopback` is used). The
# packages' services are not started (nothing runs until a node starts its own containerd,
# with all state in scratch). Needs root; prints nothing when everything is there.
#
# Why Debian's containerd 1.6 and not 2.x from the Go module proxy: 1.6 serves the CRI v1 API
# kubelet 1.34 needs, and does everything the tests ask of it here (exec probes, native
# sidecars, graceful termination are the kubelet's); it installs in seconds, where a build
# would add minutes to a cold CI run.
set -euo pipefail
missing=()
for tool in containerd containerd-shim-runc-v2 runc ctr unshare; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ -x /usr/lib/cni/loopback ] || [ -x /opt/cni/bin/loopback ] || missing+=(cni-loopback)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "provide-runtime: missing ${missing[*]}, and installing needs root" >&2
  exit 1
fi
echo "provide-runtime: installing containerd, runc and the CNI plugins (apt-get; missing: ${missing[*]})" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d: package scripts may not start services (the machine's state stays as it was).
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -qq -o DPkg::Lock::Timeout=600 containerd runc containernetworking-plugins util-linux >/dev/null
