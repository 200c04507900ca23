"""`katalog-sidecar status`: the status file in plain words, for `kubectl exec` at 3 a.m."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def render(state: Mapping[str, Any], gate_ok: bool, gate_line: str, now: float) -> str:
    since = float(state.get("since") or state.get("updated_at") or now)
    lines = [
        f"pod:        {state.get('pod', '?')}",
        f"agent:      {state.get('agent', '?')}",
        f"phase:      {state.get('phase')} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(since))} ({_ago(now - since)})",
        f"gate:       {'PASS' if gate_ok else 'FAIL'} ({state.get('gate_mode', '?')} mode): {gate_line}",
        f"heartbeat:  {_ago(now - float(state.get('updated_at', now)))}",
    ]
    if not gate_ok and state.get("reason"):
        # The closed reason the sidecar last decided (sidecar.gate_reasons): the value of the
        # katalog_gate_closed_reason label, what alert rules match. A gate failing for a stale
        # heartbeat or a dead process has its own line above and keeps the last reason said.
        lines.insert(4, f"reason:     {state['reason']}")
    workers = [w for w in state.get("workers") or [] if isinstance(w, Mapping)]
    if workers:
        lines.append("workers:    " + ", ".join(f"{w.get('name')} {w.get('state')}" for w in workers))
    for w in workers:
        if w.get("restarts"):
            lines.append(f"      {w.get('name')}: restarted {w.get('restarts')} time(s) after a failure; "
                         f"last: {w.get('last_error')}")
    if state.get("source_problem"):
        lines.append(f"readiness:  cannot see the app: {state['source_problem']}")
    services = state.get("services") or []
    if services:
        lines.append("services:")
    for svc in services:
        confirmed = "confirmed in the catalog" if svc.get("confirmed") else "NOT confirmed in the catalog"
        registered = "registered" if svc.get("registered") else "not registered"
        lines.append(f"  {svc.get('name')} ({svc.get('id')}) at {svc.get('address')}: {registered}, "
                     f"readiness {svc.get('readiness') or 'not pushed'}, {confirmed}")
        if svc.get("readiness_output"):
            lines.append(f"      check output: {svc['readiness_output']}")
    if state.get("last_error"):
        lines.append(f"last error: {state['last_error']}")
    return "\n".join(lines)
