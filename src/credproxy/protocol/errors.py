"""Error codes of the credential proxy protocol and the one exception that carries them.

Messages attached to a ``ProxyError`` cross the socket, so they are written for
the party we protect against: they name what was wrong, never a secret value.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_REQUEST = "INVALID_REQUEST"
    UNKNOWN_VERSION = "UNKNOWN_VERSION"
    UNAUTHORIZED = "UNAUTHORIZED"
    NOT_FOUND = "NOT_FOUND"
    RATE_LIMITED = "RATE_LIMITED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    PROVIDER_NOT_FOUND = "PROVIDER_NOT_FOUND"
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    SESSION_EXPIRED = "SESSION_EXPIRED"
    SESSION_ALREADY_USED = "SESSION_ALREADY_USED"
    EXCHANGE_FAILED = "EXCHANGE_FAILED"
    REAUTH_REQUIRED = "REAUTH_REQUIRED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    CANCELLED = "CANCELLED"


class ProxyError(Exception):
    """A failure with a protocol error code; ``str(err)`` is safe to show the peer."""

    def __init__(self, code: ErrorCode | str, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.code: str = str(code)
        self.message = message
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"ProxyError({self.code!s}, {self.message!r})"
