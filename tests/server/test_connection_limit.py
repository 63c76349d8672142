"""A peer that opens connections in a loop cannot take every descriptor the daemon has."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from credproxy.audit import AuditLog
from credproxy.protocol.framing import FrameDecoder, encode_frame
from credproxy.server.app import Daemon
from credproxy.server.context import ServerState
from credproxy.store.memory import MemoryStore


class _Peer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()

    async def roundtrip(self, message: dict[str, Any]) -> dict[str, Any]:
        self.writer.write(encode_frame(message))
        while True:
            data = await self.reader.read(65_536)
            assert data, "the daemon closed the connection"
            frames = self.decoder.feed(data)
            if frames:
                return frames[0]

    async def handshake(self) -> dict[str, Any]:
        return await self.roundtrip({"v": 2, "op": "handshake", "payload": {}})


async def _connect(path: Path) -> _Peer:
    return _Peer(*await asyncio.open_unix_connection(path))


async def _handshake_or_refused(path: Path) -> dict[str, Any] | None:
    """The handshake reply, or None when the daemon refused the connection.

    A refusal closes the socket with our handshake frame unread, which Linux
    reports to us as a reset rather than a clean end of stream, so both mean
    refused."""
    peer = await _connect(path)
    try:
        peer.writer.write(encode_frame({"v": 2, "op": "handshake", "payload": {}}))
        while True:
            data = await peer.reader.read(65_536)
            if not data:
                return None
            frames = peer.decoder.feed(data)
            if frames:
                return frames[0]
    except ConnectionResetError:
        return None
    finally:
        peer.writer.close()


@pytest.fixture
async def small_daemon(tmp_path: Path) -> AsyncIterator[tuple[Daemon, Path]]:
    audit_path = tmp_path / "audit.log"
    audit = AuditLog.to_file(audit_path)
    socket_dir = Path(tempfile.mkdtemp(prefix="cpl-", dir="/tmp"))
    daemon = Daemon(
        ServerState(MemoryStore()),
        capabilities=None,
        socket_path=socket_dir / "l.sock",
        audit=audit,
        max_connections=2,
    )
    try:
        await daemon.start()
        yield daemon, audit_path
    finally:
        await daemon.stop(grace_s=0.1)
        audit.close()
        shutil.rmtree(socket_dir, ignore_errors=True)


async def test_connections_past_the_limit_are_closed_and_audited_once(
    small_daemon: tuple[Daemon, Path],
) -> None:
    daemon, audit_path = small_daemon
    first, second = await _connect(daemon.socket_path), await _connect(daemon.socket_path)
    assert (await first.handshake())["ok"] is True
    assert (await second.handshake())["ok"] is True
    for _ in range(3):
        extra = await _connect(daemon.socket_path)
        # The bound only turns a served connection into a failure instead of a hang.
        async with asyncio.timeout(10):
            assert await extra.reader.read() == b""
        extra.writer.close()
    reply = await first.roundtrip({"v": 2, "id": "a", "op": "list_providers", "payload": {}})
    assert reply["ok"] is True
    daemon.audit.flush()
    assert audit_path.read_text().count('"outcome":"RESOURCE_EXHAUSTED"') == 1

    second.writer.write_eof()
    assert await second.reader.read() == b""
    second.writer.close()
    # The daemon (on this event loop) frees the slot a few loop turns after
    # the close; every attempt gives it several, so this counts turns, not time.
    for _ in range(100):
        answer = await _handshake_or_refused(daemon.socket_path)
        if answer is not None:
            assert answer["ok"] is True
            break
        await asyncio.sleep(0)
    else:
        pytest.fail("the freed slot was never given to a new connection")
    first.writer.close()
