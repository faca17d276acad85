"""Zero-dependency Python client for Pulse.

>>> from pulse_client import PulseClient
>>> client = PulseClient("http://localhost:8081", "http://localhost:8080")
"""

from .client import PulseClient
from .errors import (
    AuthError,
    MethodNotAllowedError,
    NotFoundError,
    OverloadError,
    PulseError,
    ServerError,
    TransportError,
    ValidationError,
)

__all__ = [
    "PulseClient",
    "PulseError",
    "TransportError",
    "ValidationError",
    "AuthError",
    "NotFoundError",
    "MethodNotAllowedError",
    "OverloadError",
    "ServerError",
]
__version__ = "0.1.0"
