"""An HTTP proxy in front of a Consul agent that records every request the sidecar makes.

It counts on the server side of the sidecar's connection, so a request counts whether the
sidecar's own metrics saw it or not. `down()` makes it what a stopped agent is to the sidecar:
every request is answered by closing the connection (the sidecar sees a reset), and still
counted; `up()` forwards again. Loopback only; stopped by whoever started it.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass(frozen=True)
class Seen:
    time: float  # time.monotonic() at arrival
    method: str
    path: str  # with the query string

    @property
    def target(self) -> str:
        """'agent' (answered by the local agent) or 'servers' (forwarded to the Consul servers)."""
        return "agent" if self.path.startswith("/v1/agent/") else "servers"


class CountingProxy:
    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._down = False
        self._server = ThreadingHTTPServer((host, 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="counting-proxy", daemon=True)

    @property
    def addr(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> CountingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def down(self) -> None:
        self._down = True

    def up(self) -> None:
        self._down = False

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def between(self, start: float, end: float) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if start <= s.time <= end]

    def __enter__(self) -> CountingProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _handler(proxy: CountingProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
            pass

        def _forward(self) -> None:
            # Recorded on arrival, so a request to a hung agent counts too.
            proxy.record(Seen(time.monotonic(), self.command, self.path))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if proxy._down:
                # RST instead of an answer: to the sidecar, the agent is gone.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP | {"host"}}
            upstream = http.client.HTTPConnection(*proxy.upstream, timeout=600)  # blocking queries wait minutes
            try:
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                data = response.read()
            except OSError:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            finally:
                upstream.close()
            try:
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_BY_HOP | {"content-length"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                self.close_connection = True  # the client went away (a sidecar killed mid-request)

        do_GET = do_PUT = do_POST = do_DELETE = _forward  # noqa: N815 - http.server's naming

    return Handler
