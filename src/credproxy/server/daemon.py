"""The composition root: one place that wires a daemon from what its caller decided.

``credproxy serve``, ``credproxy run`` and the tests all build their daemon
here, so a daemon is assembled the same way everywhere: the store (wrapped if
the caller asks), the OAuth runtime from the config, the capability table
with its one grant, the limits table and the audit log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from credproxy.audit import AuditLog
from credproxy.grants import CapabilityTable, Grant
from credproxy.protocol.limits import DEFAULT_LIMITS, Limits
from credproxy.server.app import EXTENSION_CLOSE_TIMEOUT_S, ConnectionCaps, Daemon
from credproxy.server.context import ServerState
from credproxy.server.listener import DEFAULT_LISTEN_BACKLOG
from credproxy.settings import Settings
from credproxy.store.base import CredentialStore


@dataclass(frozen=True)
class DaemonSettings:
    """What a caller decides about one daemon."""

    store: CredentialStore
    audit: AuditLog
    config: Settings = field(default_factory=Settings)
    """The typed config file; its ``[providers]`` and ``[oauth]`` set up logins."""
    grant: Grant | None = field(default_factory=Grant.full)
    """The grant of the one capability token issued; ``None`` for no tokens at all."""
    socket_path: Path | None = None
    allowed_uids: frozenset[int] = frozenset()
    limits: Limits = DEFAULT_LIMITS
    wrap_store: Callable[[CredentialStore], CredentialStore] | None = None
    """Wraps the store the handlers see (an embedder's instrumentation)."""
    close_timeout_s: float = EXTENSION_CLOSE_TIMEOUT_S
    listen_backlog: int = DEFAULT_LISTEN_BACKLOG
    """Connections the kernel queues before the daemon accepts them (capped by somaxconn)."""
    caps: ConnectionCaps = field(default_factory=ConnectionCaps)


@dataclass(frozen=True)
class BuiltDaemon:
    daemon: Daemon
    capability_token: str | None
    """The token to hand to the sandbox; ``None`` without capability tokens."""


def build_daemon(settings: DaemonSettings) -> BuiltDaemon:
    from credproxy.oauth.runtime import install as install_oauth

    store = settings.store
    if settings.wrap_store is not None:
        store = settings.wrap_store(store)
    state = ServerState(store=store, call_timeout_s=settings.limits.call_s)
    install_oauth(state, settings.config)
    table: CapabilityTable | None = None
    token: str | None = None
    if settings.grant is not None:
        table = CapabilityTable()
        token = table.issue(settings.grant)
    daemon = Daemon(
        state,
        capabilities=table,
        socket_path=settings.socket_path,
        allowed_uids=settings.allowed_uids,
        audit=settings.audit,
        limits=settings.limits,
        extension_close_timeout_s=settings.close_timeout_s,
        listen_backlog=settings.listen_backlog,
        max_connections=settings.caps.total,
        max_unauthenticated=settings.caps.before_handshake,
        max_connections_per_grant=settings.caps.per_grant,
    )
    return BuiltDaemon(daemon, token)
