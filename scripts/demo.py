"""The local demo: a pod's whole life against a real Consul agent, with measured latencies.

Starts a Consul dev agent and the fake Kubernetes API, runs the real `katalog-sidecar run`
and `readiness-gate`, plays start -> app ready -> deletion -> SIGTERM, prints a timeline,
and stops everything it started.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import ConsulAgent, FakeKube, PodSidecar, instance_status, provide_consul, wait_catalog  # noqa: E402


def main() -> int:
    started = time.monotonic()
    rows: list[tuple[float, str]] = []

    def say(text: str) -> None:
        rows.append((time.monotonic() - started, text))
        print(f"  +{rows[-1][0] * 1000:8.1f} ms  {text}", flush=True)

    binary = provide_consul()
    with tempfile.TemporaryDirectory(prefix="katalog-demo-") as tmp:
        work = Path(tmp)
        agent = ConsulAgent(binary, work, "demo-node", "127.0.0.1", [], dev=True)
        kube = FakeKube(work / "token")
        pod = None
        try:
            agent.start()
            kube.start()
            print(f"Consul dev agent {agent.get('/v1/agent/self')['Config']['Version']} at {agent.http}; "
                  f"fake Kubernetes API at {kube.url}\n")
            pod = PodSidecar(work, agent, kube, "web-5f7c9-abcde", KATALOG_SERVICES="web:http")
            pod.create_pod(ready=False)
            say("pod created; its app container is not ready yet")
            pod.start()
            say("katalog-sidecar started")
            line = pod.wait_gate(passing=False, contains="app is not ready")
            say(f"readiness-gate fails: {line}")
            wait_catalog(agent, "web", lambda e: instance_status(e, pod.service_id) == "critical")
            say(f"catalog lists {pod.service_id} at 10.42.0.10:8080 (named port 'http'), critical")

            t0 = time.monotonic()
            pod.set_app_ready(True)
            say("kubelet marks the app container ready (watch event)")
            passing_at = wait_catalog(agent, "web", lambda e: instance_status(e, pod.service_id) == "passing")
            say(f"instance passing in the catalog            [{(passing_at - t0) * 1000:.1f} ms after the event]")
            line = pod.wait_gate(passing=True)
            say(f"readiness-gate passes: {line}           [{(time.monotonic() - t0) * 1000:.1f} ms after the event]")

            t0 = time.monotonic()
            kube.set_deletion_timestamp("demo", pod.name, grace_seconds=30)
            say("pod deleted: deletionTimestamp set (grace period 30s)")
            critical_at = wait_catalog(agent, "web", lambda e: instance_status(e, pod.service_id) == "critical")
            say(f"instance critical in the catalog: drains   [{(critical_at - t0) * 1000:.1f} ms after the event]")
            gone_at = wait_catalog(agent, "web", lambda e: instance_status(e, pod.service_id) is None)
            say(f"instance deregistered from the catalog     [{(gone_at - t0) * 1000:.1f} ms after the event]")
            line = pod.wait_gate(passing=False)
            say(f"readiness-gate fails: {line}")
            code = pod.terminate()
            say(f"SIGTERM: katalog-sidecar exited with code {code}")
            leftovers = agent.get("/v1/agent/services")
            say(f"agent holds {len(leftovers)} service(s) now")
            ok = code == 0 and not leftovers
        finally:
            if pod is not None:
                pod.kill()
            kube.stop()
            agent.stop()
            print("\nThe sidecar's log (one line per transition):")
            print("    " + pod.log_path.read_text().rstrip().replace("\n", "\n    "))
        print(f"\ndemo {'completed' if ok else 'FAILED'}; every process it started is stopped.")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
