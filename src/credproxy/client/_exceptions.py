"""Typed client errors, one class per protocol error code (``protocol.md``, "Error codes").

Codes the daemon sends map to the classes below; codes the client raises on
its own (a lost connection, a timeout, a broken environment) use names no
daemon sends, so ``err.code`` always tells where a failure came from.
Messages that arrive from the socket are clipped and stripped of control
characters before they are stored, so printing one cannot drive a terminal.
"""

from __future__ import annotations

import math
from typing import Final

from credproxy.protocol.errors import ErrorCode

CONNECTION_LOST_MESSAGE: Final = "Credential proxy connection lost. Restart the session."
MAX_MESSAGE_CHARS: Final = 300


def clean_message(text: object) -> str:
    """A peer-supplied message made safe to print: plain characters, bounded length."""
    if not isinstance(text, str):
        return ""
    clipped = text[:MAX_MESSAGE_CHARS]
    return "".join(ch if ch.isprintable() else "?" for ch in clipped)


class ProxyClientError(Exception):
    """Any failure of a credential proxy request; ``code`` is the protocol code."""

    def __init__(self, code: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class InvalidRequestError(ProxyClientError):
    """The daemon (or the client, before sending) rejected the request's shape."""


class UnknownVersionError(ProxyClientError):
    """Client and daemon share no protocol version."""


class UnauthorizedError(ProxyClientError):
    """Bad capability token, or the request lies outside this sandbox's grant."""


class NotFoundError(ProxyClientError):
    """No such token or key (inside the grant)."""


class RateLimitedError(ProxyClientError):
    """Too many requests; ``retry_after`` says how many seconds to wait, when known."""


class InternalServerError(ProxyClientError):
    """The host failed (store locked or unreachable, host-side timeout)."""


class ProviderNotFoundError(ProxyClientError):
    """No OAuth provider is configured under that name on the host."""


class SessionError(ProxyClientError):
    """A login session lookup failed."""


class SessionNotFoundError(SessionError):
    pass


class SessionExpiredError(SessionError):
    pass


class SessionAlreadyUsedError(SessionError):
    pass


class ExchangeFailedError(ProxyClientError):
    """The provider refused the authorization code or could not be reached."""


class ReauthRequiredError(ProxyClientError):
    """The provider refused the refresh; the user must log in again on the host."""


class ResourceExhaustedError(ProxyClientError):
    """Too many requests in flight, or too many open login sessions."""


class RequestCancelledError(ProxyClientError):
    """The daemon ended the request because it was cancelled."""


class ProxyConnectionError(ProxyClientError):
    """The client could not talk to the daemon at all."""


class ConnectFailedError(ProxyConnectionError):
    """No connection could be opened or no handshake completed."""


class ConnectionLostError(ProxyConnectionError):
    """An established connection broke; the client never reconnects silently."""


class RequestTimeoutError(ProxyConnectionError):
    """No answer within the request timeout."""


class ProtocolViolationError(ProxyConnectionError):
    """The daemon sent bytes that are not the protocol; the connection is dropped."""


class ClientClosedError(ProxyClientError):
    """The client was closed by its owner."""


class ProxyConfigError(ProxyClientError):
    """The environment does not describe a usable proxy (socket or capability token)."""


SERVER_CODES: Final[dict[str, type[ProxyClientError]]] = {
    ErrorCode.INVALID_REQUEST: InvalidRequestError,
    ErrorCode.UNKNOWN_VERSION: UnknownVersionError,
    ErrorCode.UNAUTHORIZED: UnauthorizedError,
    ErrorCode.NOT_FOUND: NotFoundError,
    ErrorCode.RATE_LIMITED: RateLimitedError,
    ErrorCode.INTERNAL_ERROR: InternalServerError,
    ErrorCode.PROVIDER_NOT_FOUND: ProviderNotFoundError,
    ErrorCode.SESSION_NOT_FOUND: SessionNotFoundError,
    ErrorCode.SESSION_EXPIRED: SessionExpiredError,
    ErrorCode.SESSION_ALREADY_USED: SessionAlreadyUsedError,
    ErrorCode.EXCHANGE_FAILED: ExchangeFailedError,
    ErrorCode.REAUTH_REQUIRED: ReauthRequiredError,
    ErrorCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    ErrorCode.CANCELLED: RequestCancelledError,
}


def connect_failed(message: str) -> ConnectFailedError:
    return ConnectFailedError("CONNECT_FAILED", message)


def connection_lost(message: str = CONNECTION_LOST_MESSAGE) -> ConnectionLostError:
    return ConnectionLostError("CONNECTION_LOST", message)


def request_timeout(op: str, seconds: float) -> RequestTimeoutError:
    return RequestTimeoutError(
        "TIMEOUT", f"the credential proxy did not answer {op} within {seconds:g} s"
    )


def protocol_violation(message: str) -> ProtocolViolationError:
    return ProtocolViolationError("PROTOCOL_VIOLATION", message)


def client_closed() -> ClientClosedError:
    return ClientClosedError("CLIENT_CLOSED", "the credential proxy client is closed")


def config_error(message: str) -> ProxyConfigError:
    return ProxyConfigError("CONFIG", message)


def from_wire(code: object, message: object, retry_after: object = None) -> ProxyClientError:
    """The typed error for an ``ok:false`` envelope; unknown codes keep the base class."""
    code_text = clean_message(code)[:64] or "UNKNOWN"
    text = clean_message(message) or f"the credential proxy answered {code_text}"
    cls = SERVER_CODES.get(code_text, ProxyClientError)
    return cls(code_text, text, retry_after=_retry_after(retry_after))


def _retry_after(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds
