"""Typed errors raised by :class:`pulse_client.PulseClient`."""

from __future__ import annotations

from typing import Any, Dict, List, Optional


class PulseError(Exception):
    """Base class of every error the client raises."""

    def __init__(self, message: str, status: Optional[int] = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class TransportError(PulseError):
    """The server could not be reached, or the connection failed or timed out."""


class ValidationError(PulseError):
    """The request was rejected as invalid (HTTP 400, 413, 415).

    ``details`` carries the server's per-event, per-field reasons, e.g.
    ``[{"index": 2, "field": "city", "reason": "missing required field"}]``.
    """

    def __init__(self, message: str, status: int, body: Any, details: List[Dict[str, Any]]) -> None:
        super().__init__(message, status, body)
        self.details = details


class AuthError(PulseError):
    """Missing or invalid API key (HTTP 401 or 403)."""


class NotFoundError(PulseError):
    """The domain, metric, event or route does not exist (HTTP 404)."""


class MethodNotAllowedError(PulseError):
    """The operation is not allowed here, e.g. updating an immutable domain (HTTP 405)."""


class OverloadError(PulseError):
    """The server is overloaded or a dependency is down (HTTP 429, 503) and the
    retries were exhausted. ``retry_after`` is the last Retry-After (seconds)."""

    def __init__(self, message: str, status: int, body: Any, retry_after: Optional[float]) -> None:
        super().__init__(message, status, body)
        self.retry_after = retry_after


class ServerError(PulseError):
    """Any other non-success answer (HTTP 5xx)."""
