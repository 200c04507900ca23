"""Why the gate is closed: a bounded code, decided with the gate's verdict (sidecar.core.report).

The code travels with every verdict (`sidecar.core.actions.GateVerdict.reason`) and is what the
`katalog_gate_closed_reason{reason}` label, the fail-open decision, `explain` and `status` use;
nothing derives it from the gate's line, whose words are for people and may change.

The values are the metric's label values (alert rules match on them: examples/monitoring), so
they never change; a new reason is a new value, added to `GateReason` and `CLOSED_REASONS`.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

GateReason = Literal[
    "", "starting", "kubernetes_unavailable", "kubernetes_forbidden", "config_error", "app_not_ready",
    "agent_unreachable", "consul_refused", "servers_unreachable", "not_confirmed", "draining", "superseded",
    "worker_down", "other",
]

OPEN: Final = ""  # the gate passes (confirmed, latched, or failed open)
STARTING: Final = "starting"  # no readiness observation yet, nothing wrong seen
KUBERNETES_UNAVAILABLE: Final = "kubernetes_unavailable"  # cannot see the pod yet (API down, 401)
KUBERNETES_FORBIDDEN: Final = "kubernetes_forbidden"  # cannot see the pod yet: RBAC
CONFIG_ERROR: Final = "config_error"  # settings, annotations or a named port: nothing registered
APP_NOT_READY: Final = "app_not_ready"
AGENT_UNREACHABLE: Final = "agent_unreachable"  # the node's agent does not answer (or times out)
CONSUL_REFUSED: Final = "consul_refused"  # 400/403 from the agent: ACL token or invalid registration
SERVERS_UNREACHABLE: Final = "servers_unreachable"  # the agent accepted; the catalog cannot be read
NOT_CONFIRMED: Final = "not_confirmed"  # the catalog answers but does not show the instance as pushed yet
DRAINING: Final = "draining"  # the pod is terminating (or the sidecar stopped)
SUPERSEDED: Final = "superseded"  # a newer pod (another UID) holds this pod's service ID on the node
WORKER_DOWN: Final = "worker_down"  # the readiness worker is crash-looping: the app's readiness is not followed
# A verdict the sidecar could not classify. The core never gives it (every closed branch of the
# verdict names its reason); `explain` says it when Consul could not be asked. Kept as a label
# value so the exported series stay the same set.
OTHER: Final = "other"

# Every closed reason, in the order the metric exports them ("" is open, not a label value).
CLOSED_REASONS: tuple[GateReason, ...] = tuple(r for r in get_args(GateReason) if r != OPEN)

# The gate is held only because Consul cannot confirm: the reasons fail-open may act on
# (KATALOG_FAIL_OPEN_AFTER). Never the pod's own reasons (the app, terminating, configuration,
# a 400/403 that needs a fix, another pod on our ID, a worker down).
CONSUL_CANNOT_CONFIRM: frozenset[GateReason] = frozenset({AGENT_UNREACHABLE, SERVERS_UNREACHABLE, NOT_CONFIRMED})
