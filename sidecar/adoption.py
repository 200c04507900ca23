"""What a restarted sidecar takes over from the previous process of the same pod.

A sidecar process may restart (crash, OOM kill, container restart) while its pod lives on.
The agent still holds the instance the previous process registered, and the pod's emptyDir
still holds the previous status file. Two things are adopted, and only from this pod's own
incarnation (the instance's `k8s-pod-uid` meta must be this pod's UID):

- **Statuses, until the first readiness observation.** With the Kubernetes API unavailable
  at start, the new process cannot know the app's readiness; the previous process's last
  pushed statuses are the best knowledge there is (a running sidecar keeps them through the
  same outage). Their TTLs are refreshed with the same status and output, so nothing is
  written to the catalog, and the instance is not reaped while we wait.
- **The latch.** A gate that latched stays open through Consul outages; a restart must not
  undo that, or a server outage plus a sidecar restart makes the pod NotReady. The latch is
  adopted when the previous status file says the pod was confirmed *and* the agent still
  holds every instance with this pod's UID and every check passing *and* the app is ready
  now. Without the file's word the instance might never have reached the catalog.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar.registration import PASSING, CheckState

UID_META = "k8s-pod-uid"


def is_this_pod(service: Mapping[str, Any] | None, uid: str | None) -> bool:
    """True when the agent's instance carries this pod's UID (never when the UID is unknown)."""
    if not uid or not isinstance(service, Mapping):
        return False
    meta = service.get("Meta")
    return isinstance(meta, Mapping) and meta.get(UID_META) == uid


def found_statuses(checks: Mapping[str, Mapping[str, Any]], check_ids: tuple[str, ...]) -> dict[str, CheckState]:
    """Our checks as the agent holds them: status and output, to be refreshed unchanged."""
    found = {}
    for check_id in check_ids:
        check = checks.get(check_id)
        if isinstance(check, Mapping) and isinstance(check.get("Status"), str):
            found[check_id] = CheckState(str(check["Status"]), str(check.get("Output") or ""))
    return found


def all_passing(found: Mapping[str, CheckState], check_ids: tuple[str, ...]) -> bool:
    return all(check_id in found and found[check_id].status == PASSING for check_id in check_ids)
