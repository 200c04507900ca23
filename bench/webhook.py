"""The admission webhook's latency per review and its memory, on loopback.

    python bench/webhook.py [--reviews 3000] [--clients 1,4]

Runs the real `katalog-sidecar webhook` process (certificates from files, as with cert-manager,
so no cluster is needed; the check is off) and sends it AdmissionReviews of the classic
example's pod, as the apiserver does: HTTPS, keep-alive connections, one review at a time per
connection, `clients` connections in parallel. Latency is measured by the client, from sending
the request to having the whole answer (TLS included; handshakes excluded, as the apiserver
reuses its connections). Memory: the process's RSS after the warm-up and its peak (VmHWM).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sidecar.manifests import certs  # noqa: E402


def review_body(index: int) -> dict[str, Any]:
    docs = list(yaml.safe_load_all((REPO / "examples" / "deployment-classic-sidecar.yaml").read_text()))
    deployment = next(d for d in docs if d and d["kind"] == "Deployment")
    template = copy.deepcopy(deployment["spec"]["template"])
    spec = template["spec"]
    spec["containers"] = [c for c in spec["containers"] if c["name"] != "katalog-sidecar"]
    used = {m["name"] for c in spec["containers"] for m in c.get("volumeMounts") or []}
    spec["volumes"] = [v for v in spec.get("volumes") or [] if v["name"] in used]
    template["metadata"].setdefault("annotations", {})["katalog-sidecar.io/services"] = "web:http"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {**template["metadata"], "generateName": "web-5d8f7-",
                                                            "namespace": "shop"}, "spec": spec}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": f"bench-{index}", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "namespace": "shop", "operation": "CREATE", "object": pod}}


def rss_kib(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def run(reviews: int, clients: int, port: int, ca: Path) -> list[float]:
    bodies = [json.dumps(review_body(i)).encode() for i in range(50)]
    latencies: list[float] = []
    lock = threading.Lock()

    def client(count: int) -> None:
        own: list[float] = []
        with requests.Session() as session:
            session.trust_env = False
            session.verify = str(ca)
            session.post(f"https://127.0.0.1:{port}/inject", data=bodies[0], timeout=10).raise_for_status()  # handshake
            for i in range(count):
                start = time.perf_counter()
                answer = session.post(f"https://127.0.0.1:{port}/inject", data=bodies[i % len(bodies)],
                                      headers={"Content-Type": "application/json"}, timeout=10)
                own.append(time.perf_counter() - start)
                assert answer.status_code == 200 and answer.json()["response"]["patchType"] == "JSONPatch"
        with lock:
            latencies.extend(own)

    threads = [threading.Thread(target=client, args=(reviews // clients,)) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reviews", type=int, default=3000)
    parser.add_argument("--clients", default="1,4")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "webhook.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="katalog-bench-webhook-"))
    process = None
    try:
        ca = certs.new_ca("bench", 3600)
        serving = certs.new_serving(ca, ["127.0.0.1"], 3600)
        (work / "ca.crt").write_bytes(ca.cert_pem)
        (work / "tls.crt").write_bytes(serving.cert_pem)
        (work / "tls.key").write_bytes(serving.key_pem)
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        entry = shutil.which("katalog-sidecar") or str(Path(sys.executable).parent / "katalog-sidecar")
        process = subprocess.Popen([entry, "webhook", "--namespace", "katalog-system", "--image", "katalog-sidecar:bench",
                                    "--listen", f"127.0.0.1:{port}", "--cert-dir", str(work), "--check-interval", "0",
                                    "--metrics-addr", "off", "--kube-api-url", "http://127.0.0.1:1",
                                    "--log-level", "warning"])
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"https://127.0.0.1:{port}/healthz", verify=str(work / "ca.crt"), timeout=1)
                break
            except requests.RequestException:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("the webhook did not start") from None
                time.sleep(0.2)
        run(300, 1, port, work / "ca.crt")  # warm-up
        idle = rss_kib(process.pid)
        results: dict[str, Any] = {"reviews": args.reviews, "rss_after_warmup_kib": idle["VmRSS"], "runs": []}
        for clients in (int(c) for c in args.clients.split(",")):
            latencies = sorted(run(args.reviews, clients, port, work / "ca.crt"))
            q = statistics.quantiles(latencies, n=100)
            results["runs"].append({"clients": clients, "count": len(latencies), "p50_ms": q[49] * 1000,
                                    "p99_ms": q[98] * 1000, "max_ms": latencies[-1] * 1000})
        results["rss_peak_kib"] = rss_kib(process.pid)["VmHWM"]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        print("| clients | reviews | p50 | p99 | max |\n|---|---|---|---|---|")
        for r in results["runs"]:
            print(f"| {r['clients']} | {r['count']} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | {r['max_ms']:.1f} ms |")
        print(f"RSS after warm-up {results['rss_after_warmup_kib'] / 1024:.1f} MiB, "
              f"peak {results['rss_peak_kib'] / 1024:.1f} MiB")
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
