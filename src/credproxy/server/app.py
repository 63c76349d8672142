"""The daemon: binds the listener, admits peers, runs connections, shuts down cleanly.

``Daemon`` is meant to be embedded: ``credproxy serve`` runs one on its own
and ``credproxy run`` runs one beside the sandbox it launches. It installs no
signal handlers unless asked, so the embedding program stays in charge.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from credproxy.audit import AuditEvent, AuditLog
from credproxy.grants import CapabilityTable, Grant
from credproxy.protocol.errors import ErrorCode
from credproxy.protocol.framing import FrameBudget
from credproxy.protocol.limits import DEFAULT_LIMITS, LARGE_FRAME_BUDGET_BYTES, Limits
from credproxy.server.admission import choose_victim, oldest_of_largest
from credproxy.server.connection import Connection, ConnectionSettings, HandshakeThrottle
from credproxy.server.context import HandlerTable, PeerCredentials, ServerState
from credproxy.server.listener import (
    DEFAULT_LISTEN_BACKLOG,
    bind_socket,
    default_socket_path,
    effective_backlog,
    peer_allowed,
    peer_credentials,
    unlink_socket,
)

log = logging.getLogger("credproxy.server")

EXTENSION_CLOSE_TIMEOUT_S: Final = 5.0
MAX_CONNECTIONS: Final = 256
MAX_UNAUTHENTICATED: Final = 64
"""Connections still before their handshake; past this the oldest of them is closed
for the new one, so a peer that connects and never handshakes cannot keep every
place taken (each of its connections would otherwise hold one for 30 s)."""
MAX_CONNECTIONS_PER_GRANT: Final = 128
"""With capability tokens, one grant (one sandbox) may hold at most this many
connections, so it cannot take the places every other sandbox needs."""
NO_ROOM_RECHECK_S: Final = 0.05
"""After a full cap had no place for a peer process, its next newcomers at that cap are
refused without looking again for this long: a process reconnecting in a loop would
otherwise make the daemon weigh every connection under the cap for each attempt."""
MAX_NO_ROOM_NOTED: Final = 1024
REFUSAL_NOTE_INTERVAL_S: Final = 60.0
MAX_REFUSALS_NOTED: Final = 1024
"""Each connection holds a file descriptor; past this many, new ones are closed at once so
a peer that opens connections in a loop cannot take the descriptors the store needs."""


@dataclass(frozen=True)
class ConnectionCaps:
    """How many connections one daemon holds; at a cap, ``admission`` decides
    whether a stalled or over-share connection gives its place to the newcomer."""

    total: int = MAX_CONNECTIONS
    before_handshake: int = MAX_UNAUTHENTICATED
    per_grant: int = MAX_CONNECTIONS_PER_GRANT


class Daemon:
    """One listening socket and the connections it accepted.

    ``capabilities=None`` means no capability tokens: processes of our own uid
    get full access after the handshake and any token they send is ignored.
    Other uids (``allowed_uids``) are then refused at construction, because
    without tokens nothing would tell their grants apart.

    At most ``max_connections`` are served at once. A newcomer at a cap takes
    the place of a stalled connection, or of one held by a peer over its fair
    share, where there is one (``admission``); otherwise it is refused, and the
    first refusal of a saturated spell is audited and logged, later ones are
    not, so a peer reconnecting in a loop cannot flood the audit log either.

    Each extension's ``aclose()`` gets ``extension_close_timeout_s``: a
    background task that ignores cancellation must not keep the daemon from
    stopping.
    """

    def __init__(
        self,
        state: ServerState,
        *,
        capabilities: CapabilityTable | None,
        socket_path: Path | None = None,
        allowed_uids: frozenset[int] = frozenset(),
        audit: AuditLog | None = None,
        handlers: HandlerTable | None = None,
        limits: Limits | None = None,
        throttle: HandshakeThrottle | None = None,
        frame_budget_bytes: int = LARGE_FRAME_BUDGET_BYTES,
        extension_close_timeout_s: float = EXTENSION_CLOSE_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
        max_unauthenticated: int = MAX_UNAUTHENTICATED,
        max_connections_per_grant: int = MAX_CONNECTIONS_PER_GRANT,
        listen_backlog: int = DEFAULT_LISTEN_BACKLOG,
    ) -> None:
        if capabilities is None and allowed_uids:
            raise ValueError("other uids can only be admitted with capability tokens")
        self._state = state
        self._capabilities = capabilities
        self._requested_path = socket_path
        self._allowed_uids = allowed_uids
        self._extension_close_timeout_s = extension_close_timeout_s
        self._max_connections = max_connections
        self._max_unauthenticated = max_unauthenticated
        self._max_per_grant = max_connections_per_grant
        self._listen_backlog = listen_backlog
        self._saturated = False
        self._refusals_noted: dict[int | None, float] = {}
        self._no_room_until: dict[tuple[Grant | None, int | None], float] = {}
        self._audit = audit or AuditLog.to_stderr()
        if handlers is None:
            from credproxy.server.oauth_handlers import ALL_HANDLERS

            handlers = ALL_HANDLERS
        limits = limits or DEFAULT_LIMITS
        if limits.call_s != state.call_timeout_s and limits is DEFAULT_LIMITS:
            limits = replace(limits, call_s=state.call_timeout_s)
        self.limits = limits
        self._settings = ConnectionSettings(
            state=state,
            handlers=handlers,
            authenticate=self._authenticate,
            audit=self._audit,
            throttle=throttle or HandshakeThrottle(),
            limits=limits,
            budget=FrameBudget(frame_budget_bytes),
            admit=self._admit_grant,
        )
        self._path: Path | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[Connection] = set()
        self._connection_tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._stopped = asyncio.Event()

    @property
    def audit(self) -> AuditLog:
        return self._audit

    @property
    def state(self) -> ServerState:
        """What every connection shares: the store and the OAuth runtime (``run --inject``
        reads secrets through them)."""
        return self._state

    @property
    def frame_budget(self) -> FrameBudget:
        """Bytes held for large frames, in and out, across all connections."""
        assert self._settings.budget is not None
        return self._settings.budget

    @property
    def buffered_input(self) -> int:
        """Input bytes all connections hold for frames not yet complete."""
        return sum(connection.buffered_input for connection in self._connections)

    @property
    def socket_path(self) -> Path:
        if self._path is None:
            raise RuntimeError("the daemon has not been started")
        return self._path

    def _authenticate(self, presented: object) -> Grant | None:
        if self._capabilities is None:
            return Grant.full()
        return self._capabilities.lookup(presented)

    def _admit_grant(self, grant: Grant, peer: PeerCredentials) -> str | None:
        """Refuse one more connection of a grant at its cap, unless one of the
        grant's connections is stalled or its peer holds more than its share.
        Without capability tokens every peer is the same user with the same
        full grant, so no cap."""
        if self._capabilities is None:
            return None
        same_grant = [c for c in self._connections if c.grant == grant and not c.closing]
        if len(same_grant) < self._max_per_grant:
            return None
        if self._evict_for(peer, lambda: same_grant, self._max_per_grant, grant):
            return None
        return (
            f"this sandbox already has {self._max_per_grant} connections open, all in use; "
            "close one before opening another"
        )

    def _evict_for(
        self,
        peer: PeerCredentials,
        holders: Callable[[], list[Connection]],
        capacity: int,
        grant: Grant | None = None,
    ) -> bool:
        """Free one of ``holders()`` (connections under a full cap of ``capacity``)
        for a newcomer of ``peer``; ``False`` when every one of them has a claim.

        The chosen connection first takes in what its peer already sent: a
        request that was merely queued makes it busy, and the choice is made again.
        ``grant`` names the grant's cap, ``None`` the daemon's."""
        now = asyncio.get_running_loop().time()
        key = (grant, peer.pid)
        if self._no_room_until.get(key, float("-inf")) > now:
            return False
        if self._evict_from(peer, holders(), capacity, now):
            return True
        if len(self._no_room_until) >= MAX_NO_ROOM_NOTED:
            self._no_room_until.clear()
        self._no_room_until[key] = now + NO_ROOM_RECHECK_S
        return False

    def _evict_from(
        self, peer: PeerCredentials, holders: list[Connection], capacity: int, now: float
    ) -> bool:
        candidates = list(holders)
        while candidates:
            victim = choose_victim(
                candidates,
                Connection.admission_view,
                newcomer_pid=peer.pid,
                capacity=capacity,
                now=now,
            )
            if victim is None:
                return False
            before = victim.admission_view()
            victim.read_what_was_sent()
            candidates.remove(victim)
            if victim.closing:
                self._connections.discard(victim)
                return True
            after = victim.admission_view()
            if after.serving or after.last_progress != before.last_progress:
                continue  # what it had sent was a whole frame: it is making progress
            self._connections.discard(victim)
            victim.evict()
            log.debug(
                "gave the place of a connection of pid %s to one of pid %s",
                victim.peer.pid,
                peer.pid,
            )
            return True
        return False

    def _make_room_before_handshake(self) -> None:
        """Close a connection still waiting to handshake when too many wait.

        A burst of honest clients is accepted in one loop turn, before any of
        them is read, so each waiting connection first takes in what its peer
        already sent: one whose handshake was merely queued is served, and only
        a connection with no complete handshake sent is closed: of the peer
        process with the most such connections, the oldest."""
        waiting = self._waiting_for_handshake()
        if len(waiting) < self._max_unauthenticated:
            return
        count = len(waiting)
        for connection in sorted(waiting, key=lambda c: c.opened):
            connection.read_what_was_sent()
            if connection.grant is not None or connection.shutting_down:
                count -= 1
                if count < self._max_unauthenticated:
                    return
        waiting = self._waiting_for_handshake()
        if len(waiting) < self._max_unauthenticated:
            return
        now = asyncio.get_running_loop().time()
        victim = oldest_of_largest(waiting, Connection.admission_view, now=now)
        if victim is not None:
            victim.begin_shutdown(0.0)

    def _open_connections(self) -> list[Connection]:
        return [c for c in self._connections if not c.closing]

    def _waiting_for_handshake(self) -> list[Connection]:
        return [c for c in self._connections if c.grant is None and not c.shutting_down]

    async def start(self) -> Path:
        """Bind and listen; returns the socket path clients must use."""
        path = self._requested_path or default_socket_path()
        if self._allowed_uids and self._requested_path is None:
            log.warning(
                "other uids cannot reach the private socket directory %s; pass --socket "
                "in a directory they can traverse",
                path.parent,
            )
        mode = 0o666 if self._allowed_uids else 0o600
        backlog = effective_backlog(self._listen_backlog)
        sock = bind_socket(path, mode=mode, backlog=backlog)
        self._path = path
        try:
            loop = asyncio.get_running_loop()
            # asyncio calls listen() again when it starts serving, with 100 unless told.
            self._server = await loop.create_unix_server(
                self._new_connection, sock=sock, backlog=backlog
            )
        except BaseException:
            sock.close()
            unlink_socket(path)
            raise
        # serve and run print the path whole themselves; the log scrubber would
        # redact its nonce, so this line stays out of the default output.
        log.debug("listening on %s", path)
        self._start_extensions()
        return path

    def _start_extensions(self) -> None:
        """The OAuth runtime's session sweep starts with the daemon, inside its loop."""
        if self._state.oauth is not None:
            self._state.oauth.start()

    async def _close_extensions(self) -> None:
        """Once connections are done: background logins end, loopback listeners
        close, HTTP sessions close, and queued audit lines are handed over."""
        if self._state.oauth is None:
            return
        try:
            async with asyncio.timeout(self._extension_close_timeout_s):
                await self._state.oauth.aclose()
        except TimeoutError:
            log.error(
                "closing the OAuth runtime did not finish within %.1f s; stopping anyway",
                self._extension_close_timeout_s,
            )
        except Exception as exc:
            log.error("closing the OAuth runtime failed: %s", type(exc).__name__)

    async def serve_forever(self) -> None:
        """Return once ``stop`` has finished."""
        await self._stopped.wait()

    def install_signal_handlers(self, grace_s: float = 5.0) -> None:
        """SIGINT and SIGTERM stop the daemon gracefully (for ``credproxy serve``)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal, grace_s)

    def _on_signal(self, grace_s: float) -> None:
        if not self._stopping:
            task = asyncio.get_running_loop().create_task(self.stop(grace_s))
            self._connection_tasks.add(task)
            task.add_done_callback(self._connection_tasks.discard)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, remove the socket, give in-flight requests ``grace_s``."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        try:
            if self._server is not None:
                self._server.close()
            if self._path is not None:
                unlink_socket(self._path)
            connections = list(self._connections)
            for connection in connections:
                connection.begin_shutdown(grace_s)
            waits = [asyncio.ensure_future(c.closed.wait()) for c in connections]
            if waits:
                _, pending = await asyncio.wait(waits, timeout=grace_s + 1.0)
                for waiter in pending:
                    waiter.cancel()
            for connection in connections:
                if not connection.closed.is_set():
                    connection.abort()
            current = asyncio.current_task()
            leftovers = [t for t in self._connection_tasks if t is not current and not t.done()]
            for task in leftovers:
                task.cancel()
            if leftovers:
                await asyncio.gather(*leftovers, return_exceptions=True)
            await self._close_extensions()
        finally:
            self._stopped.set()
            log.info("stopped")

    def _new_connection(self) -> Connection:
        return Connection(self._settings, self._open, self._connections.discard)

    def _open(self, connection: Connection, transport: asyncio.Transport) -> PeerCredentials | None:
        """Admit a freshly accepted socket, or ``None`` to close it at once."""
        try:
            peer = peer_credentials(transport.get_extra_info("socket"))
        except OSError:
            return None
        if self._stopping:
            return None
        if not peer_allowed(peer, self._allowed_uids):
            if self._first_refusal_in_window(peer.uid):
                self._audit_connect(ErrorCode.UNAUTHORIZED, peer)
                log.warning("refused a connection from uid %s (pid %s)", peer.uid, peer.pid)
            return None
        if len(self._connections) >= self._max_connections and not self._evict_for(
            peer, self._open_connections, self._max_connections
        ):
            if not self._saturated:
                self._saturated = True
                self._audit_connect(ErrorCode.RESOURCE_EXHAUSTED, peer)
                log.warning(
                    "%d connections open; refusing new ones (first from uid %s, pid %s)",
                    len(self._connections),
                    peer.uid,
                    peer.pid,
                )
            return None
        self._saturated = False
        self._make_room_before_handshake()
        self._connections.add(connection)
        return peer

    def _first_refusal_in_window(self, uid: int | None) -> bool:
        """Whether to note a refused peer: once per uid per minute, so another
        local user connecting in a loop cannot flood the audit log."""
        now = time.monotonic()
        last = self._refusals_noted.get(uid)
        if last is not None and now - last < REFUSAL_NOTE_INTERVAL_S:
            return False
        if len(self._refusals_noted) >= MAX_REFUSALS_NOTED:
            self._refusals_noted.clear()
        self._refusals_noted[uid] = now
        return True

    def _audit_connect(self, outcome: ErrorCode, peer: PeerCredentials) -> None:
        self._audit.record(
            AuditEvent.build(
                op="connect", outcome=outcome.value, peer_uid=peer.uid, peer_pid=peer.pid
            )
        )
