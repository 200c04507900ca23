"""A quiet watch is normal (bookmarks come about once a minute): only real silence restarts it."""

from __future__ import annotations

import threading
from pathlib import Path

from fakekube import FakeKube, make_pod
from test_kube_source import RecordingSink

from sidecar.kube.client import KubeClient
from sidecar.kube.source import KubernetesSource


class CountingMetrics:
    def __init__(self) -> None:
        self.restarts: list[str] = []

    def request_error(self, kind: str) -> None:
        pass

    def watch_restart(self, reason: str) -> None:
        self.restarts.append(reason)


def test_watch_read_timeout_is_the_inactivity_bound_not_the_request_timeout(tmp_path: Path) -> None:
    with FakeKube(tmp_path / "token") as kube:
        kube.create_pod(make_pod("web-0", "shop"))
        # Requests time out after 0.2s, but a watch may be silent for 1.5s.
        client = KubeClient(kube.url, kube.token_file, tmp_path / "no-ca", 0.2, watch_inactivity=1.5)
        metrics = CountingMetrics()
        source = KubernetesSource(client, "shop", "web-0", "katalog-sidecar", (), 1.5, metrics=metrics)
        sink, stop = RecordingSink(), threading.Event()
        thread = threading.Thread(target=source.run, args=(stop, sink), daemon=True)
        thread.start()
        try:
            sink.wait(lambda s: len(s.observations) == 1)
            kube.wait_for_request(lambda r: r.is_watch)
            stop.wait(0.8)  # silent for four request timeouts
            assert metrics.restarts == []
            assert sum(r.is_watch for r in kube.requests) == 1
            kube.wait_for_request(lambda r: r.is_watch, timeout=5.0, after=len(kube.requests))
            assert metrics.restarts == ["inactivity"]
        finally:
            stop.set()
            thread.join(timeout=5)
