"""One sandbox tries to take every connection place so other sandboxes cannot get in.

The daemon serves a bounded number of connections. Before these caps a peer
could fill them all, either with connections that never handshake (each held
its place for the 30 s handshake timeout, and it could reconnect) or with
handshaken connections it keeps open, and every other sandbox was refused.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from credproxy.audit import AuditLog
from credproxy.grants import CapabilityTable, Grant
from credproxy.protocol.framing import FrameDecoder, encode_frame
from credproxy.server.app import Daemon
from credproxy.server.context import ServerState
from credproxy.store.memory import MemoryStore

BOUND_S = 10.0


@dataclass
class _Setup:
    daemon: Daemon
    token_a: str
    token_b: str


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[_Setup]:
    table = CapabilityTable()
    token_a = table.issue(Grant(grant_id="a", providers=frozenset({"pa"})))
    token_b = table.issue(Grant(grant_id="b", providers=frozenset({"pb"})))
    audit = AuditLog.to_file(tmp_path / "audit.log")
    socket_dir = Path(tempfile.mkdtemp(prefix="cph-", dir="/tmp"))
    daemon = Daemon(
        ServerState(MemoryStore()),
        capabilities=table,
        socket_path=socket_dir / "h.sock",
        audit=audit,
        max_connections=4,
        max_unauthenticated=2,
        max_connections_per_grant=2,
    )
    try:
        await daemon.start()
        yield _Setup(daemon, token_a, token_b)
    finally:
        await daemon.stop(grace_s=0.1)
        audit.close()
        shutil.rmtree(socket_dir, ignore_errors=True)


async def _handshake(path: Path, token: str) -> tuple[dict[str, Any], asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(path)
    payload = {"minVersion": 1, "maxVersion": 2, "capabilityToken": token}
    writer.write(encode_frame({"v": 2, "op": "handshake", "payload": payload}))
    decoder = FrameDecoder()
    async with asyncio.timeout(BOUND_S):
        while True:
            data = await reader.read(65_536)
            assert data, "the daemon closed the connection without answering"
            frames = decoder.feed(data)
            if frames:
                return frames[0], writer


async def test_connections_that_never_handshake_cannot_keep_a_sandbox_out(
    setup: _Setup,
) -> None:
    path = setup.daemon.socket_path
    silent = [await asyncio.open_unix_connection(path) for _ in range(4)]
    # Each new silent connection past two closed the oldest one still waiting.
    for reader, _ in silent[:2]:
        async with asyncio.timeout(BOUND_S):
            assert await reader.read() == b""
    reply, writer = await _handshake(path, setup.token_b)
    assert reply["ok"] is True
    writer.close()
    for _, silent_writer in silent:
        silent_writer.close()


async def test_one_sandbox_cannot_hold_every_connection(setup: _Setup) -> None:
    path = setup.daemon.socket_path
    held = []
    for _ in range(2):
        reply, writer = await _handshake(path, setup.token_a)
        assert reply["ok"] is True
        held.append(writer)
    refused, writer = await _handshake(path, setup.token_a)
    assert refused["ok"] is False
    assert refused["code"] == "RESOURCE_EXHAUSTED"
    writer.close()
    other, other_writer = await _handshake(path, setup.token_b)
    assert other["ok"] is True
    other_writer.close()
    for writer in held:
        writer.close()


async def _answer_or_closed(sock: socket.socket) -> dict[str, Any] | None:
    """The first frame the daemon sends on ``sock``, or None when it closes it."""
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    decoder = FrameDecoder()
    try:
        async with asyncio.timeout(BOUND_S):
            while True:
                try:
                    data = await reader.read(65_536)
                except ConnectionResetError:
                    return None
                if not data:
                    return None
                frames = decoder.feed(data)
                if frames:
                    return frames[0]
    finally:
        writer.close()


async def test_a_queued_handshake_is_answered_when_the_waiting_cap_makes_room(
    setup: _Setup,
) -> None:
    """Four peers connect and write before the daemon's loop runs, as a burst of
    sandboxes does, so the daemon accepts all four in one turn with two places
    for connections before their handshake. Both peers whose whole handshake
    already waits are served; room is made by closing the oldest that sent only
    part of one."""

    def handshake(token: str) -> bytes:
        payload = {"minVersion": 1, "maxVersion": 2, "capabilityToken": token}
        return encode_frame({"v": 2, "op": "handshake", "payload": payload})

    partial = handshake(setup.token_a)[:10]
    sent = [handshake(setup.token_a), partial, partial, handshake(setup.token_b)]
    socks = []
    for data in sent:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(setup.daemon.socket_path))  # queued: the daemon's loop is this one
        sock.sendall(data)
        socks.append(sock)
    first, older_partial, newer_partial, last = socks
    assert (await _answer_or_closed(first) or {}).get("ok") is True
    assert await _answer_or_closed(older_partial) is None
    assert (await _answer_or_closed(last) or {}).get("ok") is True
    newer_partial.close()
