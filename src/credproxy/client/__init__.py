"""Client library for the credential proxy, as used inside a sandbox.

``ProxyClient`` (blocking) and ``AsyncProxyClient`` (asyncio) share one
sans-IO protocol core; ``from_env()`` finds the socket and capability token
the sandbox launcher passed. Nothing here imports the host side, and asyncio
loads only when ``AsyncProxyClient`` is first used, so a one-shot
``credproxy token get`` starts quickly.
"""

from typing import TYPE_CHECKING

from credproxy.client._exceptions import (
    ClientClosedError,
    ConnectFailedError,
    ConnectionLostError,
    ExchangeFailedError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    ProtocolViolationError,
    ProviderNotFoundError,
    ProxyClientError,
    ProxyConfigError,
    ProxyConnectionError,
    RateLimitedError,
    ReauthRequiredError,
    RequestCancelledError,
    RequestTimeoutError,
    ResourceExhaustedError,
    SessionAlreadyUsedError,
    SessionError,
    SessionExpiredError,
    SessionNotFoundError,
    UnauthorizedError,
    UnknownVersionError,
)
from credproxy.client._sync import ProxyClient
from credproxy.client.env import ProxyEnvironment, discover, in_sandbox

if TYPE_CHECKING:
    from credproxy.client._async import AsyncProxyClient

__all__ = [
    "AsyncProxyClient",
    "ClientClosedError",
    "ConnectFailedError",
    "ConnectionLostError",
    "ExchangeFailedError",
    "InternalServerError",
    "InvalidRequestError",
    "NotFoundError",
    "ProtocolViolationError",
    "ProviderNotFoundError",
    "ProxyClient",
    "ProxyClientError",
    "ProxyConfigError",
    "ProxyConnectionError",
    "ProxyEnvironment",
    "RateLimitedError",
    "ReauthRequiredError",
    "RequestCancelledError",
    "RequestTimeoutError",
    "ResourceExhaustedError",
    "SessionAlreadyUsedError",
    "SessionError",
    "SessionExpiredError",
    "SessionNotFoundError",
    "UnauthorizedError",
    "UnknownVersionError",
    "discover",
    "in_sandbox",
]


def __getattr__(name: str) -> object:
    if name == "AsyncProxyClient":
        from credproxy.client._async import AsyncProxyClient

        return AsyncProxyClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
