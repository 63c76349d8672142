"""The asyncio client: many requests in flight on one connection, answers matched by id.

One reader task per connection feeds received bytes to the shared sans-IO
core and hands each response to the future waiting for its id, so callers
may issue requests concurrently. A request that times out or is cancelled is
abandoned and, on protocol version 2, the daemon is told with ``cancel``
(best effort). After ``idle_timeout`` seconds without requests the client
closes the connection itself and opens a new one, with a new handshake, on
the next use; a connection that broke on its own is an error for every later
call, never a silent reconnect (``protocol.md``, "Limits and timeouts").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, TypeVar

from credproxy.client import _core
from credproxy.client._base import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    READ_BYTES,
    BaseClient,
    Clock,
)
from credproxy.client._core import ClientCore, ResponseReceived
from credproxy.client._exceptions import (
    ConnectFailedError,
    ProxyClientError,
    ResourceExhaustedError,
    client_closed,
    connection_lost,
    request_timeout,
)
from credproxy.protocol.ops import DEFAULT_BUCKET

DEFAULT_MAX_IN_FLIGHT: Final = 16

T = TypeVar("T")


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    core: ClientCore
    waiters: dict[str, asyncio.Future[ResponseReceived]] = field(default_factory=dict)
    reader_task: asyncio.Task[None] | None = None
    closing: bool = False


class AsyncProxyClient(BaseClient):
    """asyncio client for the credential proxy.

    ``max_in_flight`` matches the daemon's per-connection limit, so a burst of
    concurrent calls queues here instead of failing with RESOURCE_EXHAUSTED.
    ``clock`` (monotonic seconds) decides when the connection counts as idle.
    """

    def __init__(
        self,
        socket_path: str,
        capability_token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(
            socket_path, capability_token, timeout=timeout, idle_timeout=idle_timeout, clock=clock
        )
        self._slots = asyncio.Semaphore(max_in_flight)
        self._connect_lock = asyncio.Lock()
        self._conn: _Connection | None = None
        self._retry: _core.ConnectRetry | None = None
        """The open in progress (or cut off by the request's time)."""
        self._idle_handle: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"AsyncProxyClient({self._path!r}, version={self.protocol_version})"

    async def __aenter__(self) -> AsyncProxyClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def protocol_version(self) -> int | None:
        return self._conn.core.version if self._conn is not None else None

    @property
    def is_connected(self) -> bool:
        return self._conn is not None

    @property
    def in_flight(self) -> int:
        """Requests sent on the open connection and not yet answered."""
        return len(self._conn.waiters) if self._conn is not None else 0

    async def aclose(self) -> None:
        self._closed = True
        self._cancel_idle_timer()
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._shutdown(conn, client_closed())

    async def request(self, op: str, payload: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send one operation and return its ``data``, or raise its typed error."""
        try:
            async with asyncio.timeout(self._timeout):
                async with self._slots:
                    event = await self._exchange(op, payload)
        except TimeoutError:
            retry = self._retry if self._conn is None else None
            busy = retry.timed_out() if retry is not None else None
            if busy is not None:
                raise busy from None
            raise request_timeout(op, self._timeout) from None
        return event.unwrap()

    async def _call(self, call: _core.Call[T]) -> T:
        return call.result(await self.request(call.op, call.payload))

    async def get_token(self, provider: str, bucket: str = DEFAULT_BUCKET) -> dict[str, Any]:
        return await self._call(_core.get_token(provider, bucket))

    async def save_token(
        self, provider: str, token: Mapping[str, Any], bucket: str = DEFAULT_BUCKET
    ) -> None:
        await self._call(_core.save_token(provider, token, bucket))

    async def remove_token(self, provider: str, bucket: str = DEFAULT_BUCKET) -> None:
        await self._call(_core.remove_token(provider, bucket))

    async def list_providers(self) -> list[str]:
        return await self._call(_core.list_providers())

    async def list_buckets(self, provider: str) -> list[str]:
        return await self._call(_core.list_buckets(provider))

    async def get_api_key(self, name: str) -> str:
        return await self._call(_core.get_api_key(name))

    async def list_api_keys(self) -> list[str]:
        return await self._call(_core.list_api_keys())

    async def has_api_key(self, name: str) -> bool:
        return await self._call(_core.has_api_key(name))

    async def get_bucket_stats(self, provider: str, bucket: str = DEFAULT_BUCKET) -> dict[str, Any]:
        return await self._call(_core.get_bucket_stats(provider, bucket))

    async def refresh_token(self, provider: str, bucket: str = DEFAULT_BUCKET) -> dict[str, Any]:
        return await self._call(_core.refresh_token(provider, bucket))

    async def oauth_initiate(self, provider: str, bucket: str = DEFAULT_BUCKET) -> dict[str, Any]:
        return await self._call(_core.oauth_initiate(provider, bucket))

    async def oauth_exchange(self, session_id: str, code: str) -> dict[str, Any]:
        return await self._call(_core.oauth_exchange(session_id, code))

    async def oauth_poll(self, session_id: str) -> dict[str, Any]:
        return await self._call(_core.oauth_poll(session_id))

    async def oauth_cancel(self, session_id: str) -> None:
        await self._call(_core.oauth_cancel(session_id))

    async def _exchange(self, op: str, payload: Mapping[str, Any] | None) -> ResponseReceived:
        conn = await self._ensure_connected()
        request_id, frame = conn.core.send_request(op, payload)
        future: asyncio.Future[ResponseReceived] = asyncio.get_running_loop().create_future()
        conn.waiters[request_id] = future
        self._cancel_idle_timer()
        try:
            conn.writer.write(frame)
            await conn.writer.drain()
            return await future
        except (ConnectionError, OSError):
            self._connection_broke(conn, connection_lost())
            return await future
        except BaseException:
            # Cancelling the caller also cancels ``future``, so ask the core
            # whether the answer is still outstanding.
            if conn.core.is_pending(request_id):
                self._abandon(conn, request_id)
            raise
        finally:
            conn.waiters.pop(request_id, None)
            self._touch(conn)

    def _abandon(self, conn: _Connection, request_id: str) -> None:
        """Best effort: tell a version 2 daemon to stop working on a request we gave up on."""
        frame = conn.core.send_cancel(request_id)
        if frame is None or conn.closing or conn.writer.is_closing():
            return
        with contextlib.suppress(ConnectionError, OSError):
            conn.writer.write(frame)

    async def _ensure_connected(self) -> _Connection:
        conn = self._usable_connection()
        if conn is not None:
            return conn
        async with self._connect_lock:
            conn = self._usable_connection()
            if conn is not None:
                return conn
            if self._conn is not None:
                idle, self._conn = self._conn, None
                await self._shutdown(idle, connection_lost())
            return await self._open()

    def _usable_connection(self) -> _Connection | None:
        if self._closed:
            raise client_closed()
        if self._broken:
            raise connection_lost()
        conn = self._conn
        if conn is None or self._is_idle(conn):
            return None
        return conn

    def _is_idle(self, conn: _Connection) -> bool:
        return not conn.waiters and self._clock() - self._last_used >= self._idle_timeout

    async def _open(self) -> _Connection:
        """Open and handshake, trying again while the daemon is merely busy
        (see ``ConnectRetry``); the caller's timeout bounds the whole."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        retry = self._retry = _core.ConnectRetry(self._timeout)
        while True:
            try:
                conn = await self._open_once()
            except (ConnectFailedError, ResourceExhaustedError, OSError) as exc:
                delay = retry.after_failure(exc, self._path, loop.time() - started)
            else:
                self._retry = None
                return conn
            await asyncio.sleep(delay)

    async def _open_once(self) -> _Connection:
        reader, writer = await asyncio.open_unix_connection(self._path, limit=READ_BYTES)
        core = ClientCore(self._token)
        try:
            try:
                writer.write(core.initiate_handshake())
                await writer.drain()
            except (ConnectionError, OSError):
                raise _core.closed_during_handshake() from None
            while True:
                try:
                    data = await reader.read(READ_BYTES)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    raise _core.closed_during_handshake()
                if _core.handshake_complete(core.receive_data(data)):
                    break
        except BaseException:
            writer.close()
            raise
        conn = _Connection(reader, writer, core)
        conn.reader_task = asyncio.create_task(self._read_loop(conn), name="credproxy-reader")
        self._conn = conn
        self._handshakes += 1
        self._touch(conn)
        return conn

    async def _read_loop(self, conn: _Connection) -> None:
        error: ProxyClientError = connection_lost()
        try:
            while True:
                data = await conn.reader.read(READ_BYTES)
                if not data:
                    break
                for event in conn.core.receive_data(data):
                    if isinstance(event, ResponseReceived):
                        future = conn.waiters.get(event.request_id)
                        if future is not None and not future.done():
                            future.set_result(event)
        except ProxyClientError as exc:
            error = exc
        except (ConnectionError, OSError):
            pass
        if not conn.closing:
            self._connection_broke(conn, error)

    def _connection_broke(self, conn: _Connection, error: ProxyClientError) -> None:
        if conn.closing:
            return
        self._broken = True
        if self._conn is conn:
            self._conn = None
        self._cancel_idle_timer()
        conn.closing = True
        self._fail_waiters(conn, error)
        conn.writer.close()

    @staticmethod
    def _fail_waiters(conn: _Connection, error: ProxyClientError) -> None:
        conn.core.connection_closed()
        for future in conn.waiters.values():
            if not future.done():
                future.set_exception(error)

    async def _shutdown(self, conn: _Connection, error: ProxyClientError) -> None:
        """Close a connection on purpose (idle or ``aclose``); its reader ends quietly."""
        conn.closing = True
        self._fail_waiters(conn, error)
        task = conn.reader_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await conn.writer.wait_closed()

    def _touch(self, conn: _Connection) -> None:
        self._last_used = self._clock()
        if conn.waiters or conn.closing or self._closed:
            return
        self._schedule_idle_timer(conn, self._idle_timeout)

    def _schedule_idle_timer(self, conn: _Connection, delay: float) -> None:
        self._cancel_idle_timer()
        loop = asyncio.get_running_loop()
        self._idle_handle = loop.call_later(delay, self._idle_timer_fired, conn)

    def _cancel_idle_timer(self) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None

    def _idle_timer_fired(self, conn: _Connection) -> None:
        self._idle_handle = None
        if self._conn is not conn or conn.closing or conn.waiters:
            return
        elapsed = self._clock() - self._last_used
        if elapsed < self._idle_timeout:
            self._schedule_idle_timer(conn, self._idle_timeout - elapsed)
            return
        self._conn = None
        conn.closing = True
        conn.core.connection_closed()
        if conn.reader_task is not None:
            conn.reader_task.cancel()
        conn.writer.close()
