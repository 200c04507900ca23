"""The sidecar's exception tree.

Callers decide what to do by type: retryable faults (the agent is down, a timeout, a 5xx)
are retried with backoff; faults caused by configuration or permissions (400, 403) are not,
because retrying them only floods the agent and the logs.
"""

from __future__ import annotations


class SidecarError(Exception):
    """Base of every error the sidecar raises on purpose."""


class ConfigError(SidecarError):
    """The configuration is invalid. Carries every problem found, not just the first."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class ConsulError(SidecarError):
    """Any failed call to the Consul agent. `retryable` says whether backoff can help."""

    retryable = True

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class ConsulUnavailable(ConsulError):
    """Connection refused or reset: the agent is not answering."""


class ConsulTimeout(ConsulError):
    """The agent accepted the connection but did not answer in time."""


class ConsulTLSError(ConsulError):
    """The TLS handshake failed (wrong CA, missing client certificate, ...)."""

    retryable = False


class ConsulServerError(ConsulError):
    """HTTP 5xx or 429 from the agent: typically the servers are unreachable."""


class ConsulRejected(ConsulError):
    """HTTP 400: the agent refused what we sent. Fixing it needs a configuration change."""

    retryable = False


class ConsulForbidden(ConsulError):
    """HTTP 401/403: the ACL token lacks a permission or is unknown."""

    retryable = False


class ConsulNotFound(ConsulError):
    """HTTP 404, e.g. the agent does not know the service ID."""

    retryable = False


class KubernetesError(SidecarError):
    """Any failed call to the Kubernetes API."""

    def __init__(self, message: str, *, status: int | None = None, reason: str = "") -> None:
        self.status = status
        self.reason = reason
        super().__init__(message)
