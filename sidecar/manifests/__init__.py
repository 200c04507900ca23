"""The manifest tools: `inject` and `lint` on YAML documents, and the admission `webhook`.

All three share `templates` (where pod specs live, the sidecar container inject writes), so
what one writes the others read, and the webhook injects exactly what `inject` writes.
Nothing here is imported by `run` or the gate. CONDITION_TYPE is re-exported for the sidecar,
which sets that condition.
"""

from sidecar.manifests.templates import CONDITION_TYPE

__all__ = ["CONDITION_TYPE"]
