"""An HTTP proxy in front of a Consul agent that records every request the sidecar makes.

It counts on the server side of the sidecar's connection, so a request counts whether the
sidecar's own metrics saw it or not. `down()` makes it what a stopped agent is to the sidecar:
every request is answered by closing the connection (the sidecar sees a reset), and still
counted; `up()` forwards again. Loopback only; stopped by whoever started it.

Faults a real agent cannot produce on demand, per request (issue 18's regression tests):
`refuse(status, when)` answers the matching requests with that status itself (a 500 on writes
while reads work, a 403 on writes); `delay(seconds, when)` holds the matching requests before
forwarding them (an agent taking 3 s a write, under the sidecar's timeout);
`cut_long_polls(after)` resets every blocking query (`index=` or `hash=`) that is still
waiting after that many seconds (a mesh proxy or load balancer cutting idle streams).
"""

from __future__ import annotations

import http.client
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
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


Match = Callable[[Seen], bool]


def writes(seen: Seen) -> bool:
    """PUT/POST/DELETE: registrations, TTL updates, deregistrations."""
    return seen.method in ("PUT", "POST", "DELETE")


def long_poll(seen: Seen) -> bool:
    """A blocking query: a non-zero `index` (server reads) or a `hash` (the agent's own views)."""
    query = seen.path.partition("?")[2].split("&")
    return any((part.startswith("index=") and part != "index=0") or part.startswith("hash=") for part in query)


@dataclass(frozen=True)
class _Rule:
    when: Match
    status: int = 0  # answer with this status instead of forwarding (0: forward)
    body: bytes = b""
    delay: float = 0.0  # seconds to hold the request before forwarding


class CountingProxy:
    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._down = False
        self._rules: list[_Rule] = []
        self._cut_after: float | None = None
        self.cuts = 0  # blocking queries reset by cut_long_polls
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

    def refuse(self, status: int, when: Match = writes, body: str = "") -> None:
        """Answers the requests `when` matches with `status` (and `body`), not forwarding them."""
        with self._lock:
            self._rules.append(_Rule(when, status=status, body=body.encode()))

    def delay(self, seconds: float, when: Match = writes) -> None:
        """Holds the requests `when` matches for `seconds` before forwarding them."""
        with self._lock:
            self._rules.append(_Rule(when, delay=seconds))

    def cut_long_polls(self, after: float | None) -> None:
        """Resets every blocking query still unanswered after `after` seconds (None: never)."""
        self._cut_after = after

    def heal(self) -> None:
        """Forgets every refusal, delay and cut: forwards everything as it is again."""
        with self._lock:
            self._rules.clear()
        self._cut_after = None
        self._down = False

    def _rules_for(self, seen: Seen) -> list[_Rule]:
        with self._lock:
            return [rule for rule in self._rules if rule.when(seen)]

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
            seen = Seen(time.monotonic(), self.command, self.path)
            proxy.record(seen)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if proxy._down:
                self._reset()  # to the sidecar, the agent is gone
                return
            rules = proxy._rules_for(seen)
            for rule in rules:
                if rule.delay:
                    time.sleep(rule.delay)
            refusal = next((rule for rule in rules if rule.status), None)
            if refusal is not None:
                self._answer(refusal.status, "Refused by the test", [("Content-Type", "text/plain")], refusal.body)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP | {"host"}}
            upstream = http.client.HTTPConnection(*proxy.upstream, timeout=600)  # blocking queries wait minutes
            try:
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                if long_poll(seen) and not self._await_answer(upstream, seen.time):
                    with proxy._lock:
                        proxy.cuts += 1
                    self._reset()
                    return
                response = upstream.getresponse()
                data = response.read()
            except OSError:
                self._reset()
                return
            finally:
                upstream.close()
            self._answer(response.status, response.reason, response.getheaders(), data)

        def _answer(self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes) -> None:
            try:
                self.send_response(status, reason)
                for key, value in headers:
                    if key.lower() not in _HOP_BY_HOP | {"content-length"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                self.close_connection = True  # the client went away (a sidecar killed mid-request)

        def _await_answer(self, upstream: http.client.HTTPConnection, arrived: float) -> bool:
            """Waits for the upstream's answer to start; False when cut_long_polls says to cut this
            query first (also a query that was already waiting when the cut was switched on)."""
            while True:
                assert upstream.sock is not None
                readable, _, _ = select.select([upstream.sock], [], [], 0.1)
                if readable:
                    return True
                cut_after = proxy._cut_after
                if cut_after is not None and time.monotonic() - arrived >= cut_after:
                    return False

        def _reset(self) -> None:
            """RST instead of an answer."""
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True

        do_GET = do_PUT = do_POST = do_DELETE = _forward  # noqa: N815 - http.server's naming

    return Handler
