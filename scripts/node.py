"""Real Kubernetes nodes on this machine, for a person to use: the control plane, kube-scheduler,
a Consul server and N nodes (containerd + kubelet, each with its Consul client agent), until
Ctrl-C; then everything is stopped and removed. Run it through scripts/node.sh.

    scripts/node.sh [--nodes N] [--apply EXAMPLE.yaml ...]

It prints the kubeconfig to use (`kubectl --kubeconfig ...`) and the nodes' addresses. Examples
given with --apply go through tests/node_overlay.py, as the tests apply them.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.harness import provide_consul, provide_kube  # noqa: E402


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=2, help="how many nodes (default 2)")
    parser.add_argument("--apply", nargs="*", default=[], help="files of examples/ to apply (through the overlay)")
    args = parser.parse_args(argv)
    if not 1 <= args.nodes <= 20:
        parser.error(f"--nodes must be 1..20, not {args.nodes}")

    from katalog_nodes import NodeCluster
    from kube_node import NodeUnavailable, find_node_binaries

    try:
        node_binaries = find_node_binaries()
    except NodeUnavailable as exc:
        print(f"node: cannot run a real node here: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="katalog-node-") as tmp:
        t0 = time.monotonic()
        cluster = NodeCluster(provide_kube(), node_binaries, provide_consul(), Path(tmp), nodes=args.nodes)
        try:
            cluster.start(log=lambda text: print(f"node: {text}", flush=True))
            v = cluster.versions()
            print(f"node: {args.nodes} node(s) Ready in {time.monotonic() - t0:.1f} s: kubelet {v['kubelet']}, "
                  f"{v['runtime']}, runc {v['runc']}")
            for node in cluster.nodes:
                print(f"node:   {node.name}  (Consul client agent {cluster.agents[node.ip].http}; "
                      f"logs in {node.scratch})")
            print(f"node: Consul server {cluster.server.http}")
            if args.apply:
                cluster.apply_example(*args.apply)
                print(f"node: applied {', '.join(args.apply)}")
            print(f"\n    kubectl --kubeconfig {cluster.control_plane.kubeconfig} get pods -o wide\n")
            print("node: Ctrl-C stops and removes everything", flush=True)
            while not stop.wait(1):
                if not all(n.running() for n in cluster.nodes):
                    print("node: a node exited:\n" + cluster.logs(), file=sys.stderr)
                    return 1
        except KeyboardInterrupt:
            pass
        finally:
            cluster.stop()
            print("node: stopped; nothing is left running")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
