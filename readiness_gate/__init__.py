"""readiness-gate: the sidecar container's exec readinessProbe.

Imports nothing outside the standard library: kubelet starts it as a new process every
probe period in every pod, so it must cost about what a bare interpreter start costs.
"""
