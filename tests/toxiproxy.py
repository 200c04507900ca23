"""Toxiproxy (github.com/Shopify/toxiproxy, built by scripts/provide-toxiproxy.sh) in front of a real
Consul agent: latency, a connection that stops answering (the `timeout` toxic), and cut connections.

Faults a real agent cannot produce on demand, put on the wire between the sidecar and the agent,
so everything else the sidecar sees is the real agent. Loopback only; every server this starts is
stopped by whoever started it (a context manager).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from consul_agents import free_port

HOST = "127.0.0.1"


def find_toxiproxy() -> str | None:
    """$TOXIPROXY_BIN, `toxiproxy-server` on PATH, or the cached build of scripts/provide-toxiproxy.sh."""
    candidates = [os.environ.get("TOXIPROXY_BIN"), shutil.which("toxiproxy-server")]
    cache = Path(os.environ.get("KATALOG_CACHE_DIR", Path.home() / ".cache" / "katalog-sidecar"))
    candidates += [str(p) for p in sorted(cache.glob("toxiproxy-*/toxiproxy-server"))]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class Toxiproxy:
    """One toxiproxy-server; `proxy()` puts a named proxy in front of an upstream."""

    def __init__(self, binary: str, log_path: Path) -> None:
        self.binary = binary
        self.log_path = log_path
        self.port = free_port(HOST)
        self.api = f"http://{HOST}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> Toxiproxy:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([self.binary, "-host", HOST, "-port", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "LOG_LEVEL": "warn"})
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._call("GET", "/version")
                return self
            except OSError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"toxiproxy-server did not start ({exc}); log: {self.log_path}") from exc
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def __enter__(self) -> Toxiproxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.api + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback http only
                text = response.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"toxiproxy {method} {path}: {exc.code} {exc.read()[:300]!r}") from exc
        return json.loads(text) if text.strip() else None

    def proxy(self, name: str, upstream: str) -> Proxy:
        """A proxy listening on a free loopback port, forwarding to `upstream` ("host:port")."""
        made = self._call("POST", "/proxies", {"name": name, "listen": f"{HOST}:0", "upstream": upstream})
        return Proxy(self, name, made["listen"])


class Proxy:
    def __init__(self, server: Toxiproxy, name: str, listen: str) -> None:
        self.server = server
        self.name = name
        self.addr = listen  # "127.0.0.1:port": give this to the sidecar as CONSUL_HTTP_ADDR

    def add(self, kind: str, stream: str = "downstream", toxicity: float = 1.0, **attributes: int) -> str:
        """Adds a toxic ('latency' latency=ms jitter=ms, 'timeout' timeout=ms (0: never answer),
        'reset_peer' timeout=ms, ...) to the `stream` ('downstream' is the agent's answers)."""
        name = f"{kind}_{stream}_{len(self.toxics())}"
        self.server._call("POST", f"/proxies/{self.name}/toxics",
                          {"name": name, "type": kind, "stream": stream, "toxicity": toxicity, "attributes": attributes})
        return name

    def remove(self, toxic: str) -> None:
        self.server._call("DELETE", f"/proxies/{self.name}/toxics/{toxic}")

    def toxics(self) -> list[dict[str, Any]]:
        return list(self.server._call("GET", f"/proxies/{self.name}/toxics"))

    def clear(self) -> None:
        for toxic in self.toxics():
            self.remove(toxic["name"])

    def cut(self) -> None:
        """Closes every open connection and refuses new ones (the agent's port, gone)."""
        self.server._call("POST", f"/proxies/{self.name}", {"enabled": False})

    def restore(self) -> None:
        self.server._call("POST", f"/proxies/{self.name}", {"enabled": True})
