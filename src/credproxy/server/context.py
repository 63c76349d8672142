"""What a handler receives: the daemon's shared state and one request's context.

Handlers are plain async functions ``(ctx, payload) -> data`` kept in one
table (``server.handlers.HANDLERS``). They raise ``ProxyError`` for every
failure the peer may see; anything else becomes ``INTERNAL_ERROR`` with a
generic message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from credproxy.grants import Grant
from credproxy.server.usage import BucketUsage
from credproxy.store.base import CredentialStore


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """SO_PEERCRED of the connection, as the host kernel reports it."""

    pid: int | None
    uid: int | None
    gid: int | None


@dataclass
class ServerState:
    """Shared by every connection. ``extensions`` holds optional subsystems
    (OAuth providers, session manager) under well-known names so this module
    need not import them."""

    store: CredentialStore
    call_timeout_s: float = 15.0
    usage: BucketUsage = field(default_factory=BucketUsage)
    extensions: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestContext:
    state: ServerState
    grant: Grant
    peer: PeerCredentials
    version: int
    request_id: str
    op: str
    audit: dict[str, Any] = field(default_factory=dict)
    """Names (provider, bucket, key) the handler touched, for the audit line."""


Handler = Callable[[RequestContext, Any], Awaitable[dict[str, Any]]]
