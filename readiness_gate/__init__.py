"""readiness-gate: the sidecar container's exec readinessProbe, and the status file it reads.

Standard library only. The installed probe is a POSIX shell script (bin/readiness-gate): kubelet
starts it as a new process every probe period in every pod. `python -m readiness_gate` is the
same check in Python, for images without a shell.
"""
