"""Client behaviour when the daemon misbehaves in ways the real daemon never does.

Every test here uses ``FakeDaemon``, a scripted asyncio Unix-socket server, because
the failures it produces (garbage frames, answers out of order on demand, a
handshake accepting a version nobody offered, a connection dropped mid-request
while the daemon keeps listening) cannot be provoked from the real daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from credproxy.client import (
    AsyncProxyClient,
    ConnectFailedError,
    ConnectionLostError,
    ProtocolViolationError,
)
from credproxy.protocol.framing import FrameDecoder, encode_frame
from tests.client.conftest import ClientFactory


class FakeConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.frames: list[dict[str, Any]] = []

    async def recv(self) -> dict[str, Any]:
        while not self.frames:
            data = await self.reader.read(65_536)
            if not data:
                raise EOFError
            self.frames.extend(self.decoder.feed(data))
        return self.frames.pop(0)

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_raw(encode_frame(message))

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def accept_handshake(self, version: int = 2) -> dict[str, Any]:
        hello = await self.recv()
        await self.send({"v": version, "op": "handshake", "ok": True, "data": {"version": version}})
        return hello

    async def answer(self, request: dict[str, Any], data: dict[str, Any]) -> None:
        await self.send({"v": 2, "id": request["id"], "ok": True, "data": data})

    def close(self) -> None:
        self.writer.close()


Script = Callable[[FakeConnection], Awaitable[None]]


class FakeDaemon:
    def __init__(self, path: Path, script: Script) -> None:
        self.path = path
        self.script = script
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = FakeConnection(reader, writer)
        with contextlib.suppress(EOFError, ConnectionError):
            await self.script(conn)
        # Keep the connection open until the client goes away, unless the script closed it.
        with contextlib.suppress(ConnectionError):
            while not writer.is_closing() and await reader.read(65_536):
                pass
        writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def fake_daemon(tmp_path: Path) -> AsyncIterator[Callable[[Script], Awaitable[FakeDaemon]]]:
    started: list[FakeDaemon] = []

    async def start(script: Script) -> FakeDaemon:
        daemon = FakeDaemon(tmp_path / f"fake{len(started)}.sock", script)
        await daemon.start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        await daemon.close()


async def test_connection_dropped_mid_request_is_lost_even_though_the_daemon_still_listens(
    fake_daemon: Callable[[Script], Awaitable[FakeDaemon]], make_client: ClientFactory
) -> None:
    async def script(conn: FakeConnection) -> None:
        await conn.accept_handshake()
        await conn.recv()
        conn.close()

    daemon = await fake_daemon(script)
    client = make_client(daemon.path, None)
    with pytest.raises(ConnectionLostError):
        await client.list_providers()
    with pytest.raises(ConnectionLostError):
        await client.list_providers()
    assert daemon.connections == 1


async def test_garbage_frame_is_a_violation_and_ends_the_connection(
    fake_daemon: Callable[[Script], Awaitable[FakeDaemon]], make_client: ClientFactory
) -> None:
    async def script(conn: FakeConnection) -> None:
        await conn.accept_handshake()
        await conn.recv()
        await conn.send_raw(b"\x00\x00\x00\x05nope!")

    daemon = await fake_daemon(script)
    client = make_client(daemon.path, None)
    with pytest.raises(ProtocolViolationError):
        await client.list_providers()
    with pytest.raises(ConnectionLostError):
        await client.list_providers()
    assert daemon.connections == 1


async def test_oversize_frame_header_is_a_violation(
    fake_daemon: Callable[[Script], Awaitable[FakeDaemon]], make_client: ClientFactory
) -> None:
    async def script(conn: FakeConnection) -> None:
        await conn.accept_handshake()
        await conn.recv()
        await conn.send_raw((1 << 30).to_bytes(4, "big"))

    daemon = await fake_daemon(script)
    client = make_client(daemon.path, None)
    with pytest.raises(ProtocolViolationError, match="limit"):
        await client.get_api_key("k")


async def test_handshake_accepting_an_unoffered_version_fails_the_connect(
    fake_daemon: Callable[[Script], Awaitable[FakeDaemon]], make_client: ClientFactory
) -> None:
    async def script(conn: FakeConnection) -> None:
        await conn.accept_handshake(version=7)

    daemon = await fake_daemon(script)
    client = make_client(daemon.path, None)
    with pytest.raises(ProtocolViolationError):
        await client.list_providers()
    assert client.handshakes == 0


async def test_close_during_handshake_is_a_connect_failure_not_a_lost_session(
    fake_daemon: Callable[[Script], Awaitable[FakeDaemon]], make_client: ClientFactory
) -> None:
    async def script(conn: FakeConnection) -> None:
        await conn.recv()
        conn.close()

    daemon = await fake_daemon(script)
    client = make_client(daemon.path, None, timeout=2)
    with pytest.raises(ConnectFailedError, match="during the handshake"):
        await client.list_providers()
    assert daemon.connections > 1, "a connection closed before its handshake is tried again"


async def test_time_running_out_after_the_daemon_was_busy_reports_the_busy_answer(
    fake_daemon: Callable[[Script], Awaitable[FakeDaemon]], make_client: ClientFactory
) -> None:
    """The first connection is closed during its handshake (busy); the next one is
    never answered, so the request's time ends inside an attempt: the error is
    the daemon's busy answer, not a bare timeout (which of the two came first
    used to depend on the machine's load)."""
    daemon: FakeDaemon | None = None

    async def script(conn: FakeConnection) -> None:
        await conn.recv()
        assert daemon is not None
        if daemon.connections == 1:
            conn.close()

    daemon = await fake_daemon(script)
    client = make_client(daemon.path, None, timeout=1.5)
    with pytest.raises(ConnectFailedError, match=r"during the handshake \(tried for 1\.5 s\)"):
        await client.list_providers()
    assert daemon.connections == 2


async def test_answers_for_unknown_ids_are_ignored(
    fake_daemon: Callable[[Script], Awaitable[FakeDaemon]], make_client: ClientFactory
) -> None:
    async def script(conn: FakeConnection) -> None:
        await conn.accept_handshake()
        request = await conn.recv()
        await conn.send({"v": 2, "id": "not-yours", "ok": True, "data": {"keys": ["x"]}})
        await conn.answer(request, {"keys": ["real"]})

    daemon = await fake_daemon(script)
    client = make_client(daemon.path, None)
    assert await client.list_api_keys() == ["real"]


async def test_malformed_result_shape_is_a_violation(
    fake_daemon: Callable[[Script], Awaitable[FakeDaemon]], make_client: ClientFactory
) -> None:
    async def script(conn: FakeConnection) -> None:
        await conn.accept_handshake()
        request = await conn.recv()
        await conn.answer(request, {"providers": "alpha"})

    daemon = await fake_daemon(script)
    client = make_client(daemon.path, None)
    with pytest.raises(ProtocolViolationError, match="providers"):
        await client.list_providers()


async def test_async_answers_in_reverse_order_reach_the_right_callers(
    fake_daemon: Callable[[Script], Awaitable[FakeDaemon]],
) -> None:
    count = 8

    async def script(conn: FakeConnection) -> None:
        await conn.accept_handshake()
        requests = [await conn.recv() for _ in range(count)]
        for request in reversed(requests):
            await conn.answer(request, {"key": "value-of-" + request["payload"]["name"]})

    daemon = await fake_daemon(script)
    async with AsyncProxyClient(str(daemon.path), None) as client:
        names = [f"k{i}" for i in range(count)]
        results = await asyncio.gather(*(client.get_api_key(name) for name in names))
    assert results == [f"value-of-{name}" for name in names]
