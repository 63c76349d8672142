"""Client library for the credential proxy, as used inside a sandbox.

``ProxyClient`` (blocking) and ``AsyncProxyClient`` (asyncio) share one
sans-IO protocol core; ``from_env()`` finds the socket and capability token
the sandbox launcher passed. Nothing here imports the host side.
"""

from credproxy.client._async import AsyncProxyClient
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
