"""Stage stamps inside one sidecar process, for bench/flip_stages.py. Not product code.

`install(path)` wraps, in this process only, the functions a readiness flip passes through on
its way from the pod watch to the agent, and appends `(stage, ns, thread, detail)` to a list
written as JSON lines to `path` when the process exits. The clock is time.perf_counter_ns,
CLOCK_MONOTONIC on Linux: the same clock as the benchmark's time.monotonic() in another process,
so the sidecar's stamps and the benchmark's (the fake API writing the watch event, the catalog
query's answer arriving) are on one time line. Each wrapper costs about a microsecond; the
product runs none of this (the benchmark starts the sidecar through bench/flip_stages.py's
launcher only when asked for stages).

Stages, in the order a flip meets them:
  parse-begin / parse-end   the watch line handed to json.loads (kube.client) and parsed
  sink                      the source's observation reaches the sink chain (ReadinessTap)
  queued                    Syncer.observe put the PodObserved event on the loop's queue
  dequeued                  the loop (main thread) took the PodObserved event
  core-done                 Core.handle returned the actions for it
  call-begin                the loop starts the agent call (Caller.perform, UpdateCheck)
  sent                      requests finished writing the request (http.client getresponse called)
  answered                  the agent's response line and headers read
  call-end                  Caller.perform returned
plus `status-write` (a status file write) and `wake` (any thread's HTTP answer, with its
name: the confirmer's or the agent watch's long-poll coming back during a flip).
"""

from __future__ import annotations

import atexit
import http.client
import json
import threading
import time
from typing import Any

_stamps: list[tuple[str, int, str, str]] = []
_now = time.perf_counter_ns


def _stamp(stage: str, detail: str = "") -> None:
    _stamps.append((stage, _now(), threading.current_thread().name, detail))  # list.append: atomic


def _dump(path: str) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for stage, ns, thread, detail in _stamps:
            out.write(json.dumps({"stage": stage, "ns": ns, "thread": thread, "detail": detail}) + "\n")


def install(path: str) -> None:
    from sidecar.consul.calls import Caller
    from sidecar.core import actions as a
    from sidecar.core import events as e
    from sidecar.core.machine import Core
    from sidecar.gate_metrics import ReadinessTap
    from sidecar.kube.client import KubeClient
    from sidecar.syncer import Syncer

    atexit.register(_dump, path)
    in_call = threading.local()

    parse = KubeClient._parse

    def traced_parse(self: Any, line: bytes) -> Any:
        _stamp("parse-begin")
        event = parse(self, line)
        _stamp("parse-end", str(event.get("type")) if isinstance(event, dict) else "")
        return event

    tap = ReadinessTap.observe

    def traced_tap(self: Any, observation: Any) -> None:
        _stamp("sink", "ready" if observation.ready else "not-ready")
        tap(self, observation)

    observe = Syncer.observe

    def traced_observe(self: Any, observation: Any) -> None:
        observe(self, observation)
        _stamp("queued")

    handle = Syncer._handle

    def traced_handle(self: Any, event: Any) -> None:
        if isinstance(event, e.PodObserved):
            _stamp("dequeued")
        handle(self, event)

    core_handle = Core.handle

    def traced_core(self: Any, event: Any, now: float) -> Any:
        actions = core_handle(self, event, now)
        if isinstance(event, e.PodObserved):
            _stamp("core-done", ",".join(type(x).__name__ for x in actions))
        return actions

    perform = Caller.perform

    def traced_perform(self: Any, call: Any) -> Any:
        if not isinstance(call, a.UpdateCheck):
            return perform(self, call)
        _stamp("call-begin", f"{call.check_id}={call.status}")
        in_call.on = True
        try:
            return perform(self, call)
        finally:
            in_call.on = False
            _stamp("call-end")

    getresponse = http.client.HTTPConnection.getresponse

    def traced_getresponse(self: Any) -> Any:
        mine = getattr(in_call, "on", False)
        if mine:
            _stamp("sent")
        response = getresponse(self)
        _stamp("answered" if mine else "wake")
        return response

    write_status = Syncer._write

    def traced_write(self: Any, fields: Any) -> None:
        write_status(self, fields)
        _stamp("status-write")

    KubeClient._parse = traced_parse  # type: ignore[method-assign]
    ReadinessTap.observe = traced_tap  # type: ignore[method-assign]
    Syncer.observe = traced_observe  # type: ignore[method-assign]
    Syncer._handle = traced_handle  # type: ignore[method-assign]
    Core.handle = traced_core  # type: ignore[method-assign]
    Caller.perform = traced_perform  # type: ignore[method-assign]
    http.client.HTTPConnection.getresponse = traced_getresponse  # type: ignore[method-assign]
    Syncer._write = traced_write  # type: ignore[method-assign]
