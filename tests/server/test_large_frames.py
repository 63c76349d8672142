"""Frame limits per protocol version, and memory bounded while large frames arrive.

A version 2 connection takes frames up to 4 MiB, as LLxprt Code's v2 does (its
client sends a 70 KB ``save_token``); before the handshake and on version 1
the limit stays 64 KiB. Large frames in progress share one daemon-wide budget,
so many connections each sending part of a large frame cannot grow the
daemon's memory past it.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from credproxy.audit import AuditLog
from credproxy.protocol.framing import encode_frame
from credproxy.protocol.limits import LARGE_FRAME_BYTES, SMALL_FRAME_BYTES
from credproxy.server.app import Daemon
from credproxy.server.context import ServerState
from credproxy.store.memory import MemoryStore
from tests.fixtures.daemon import DaemonFactory, RawClient

MIB = 1024 * 1024


def test_a_one_mib_token_is_saved_and_read_back_over_version_2(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon(store="memory")
    token = {"access_token": "a" * MIB, "expiry": 1_900_000_000, "token_type": "Bearer"}
    with daemon.client() as client:
        saved = client.request("save_token", {"provider": "big", "token": token})
        assert saved["ok"] is True, saved
        read = client.request("get_token", {"provider": "big"})
        assert read["ok"] is True
        assert read["data"]["access_token"] == token["access_token"]


def test_a_frame_of_64_kib_plus_one_before_the_handshake_closes_the_connection(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon(store="memory")
    with RawClient(daemon.socket_path) as client:
        client.send_raw(struct.pack(">I", SMALL_FRAME_BYTES + 1))
        assert client.wait_closed() == []


def test_a_frame_of_64_kib_plus_one_on_version_1_closes_the_connection(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon(store="memory")
    with daemon.client(handshake=False) as client:
        assert client.handshake(daemon.capability_token, v=1, max_version=1)["ok"] is True
        body = b'{"v":1,"id":"x","op":"list_providers","payload":{"p":"' + b"x" * SMALL_FRAME_BYTES
        body += b'"}}'
        client.send_raw(struct.pack(">I", len(body)) + body)
        assert client.wait_closed() == []


def test_a_frame_of_exactly_64_kib_on_version_1_is_served(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon(store="memory")
    with daemon.client(handshake=False) as client:
        assert client.handshake(daemon.capability_token, v=1, max_version=1)["ok"] is True
        head = b'{"v":1,"id":"x","op":"list_providers","payload":{"p":"'
        body = head + b"x" * (SMALL_FRAME_BYTES - len(head) - 3) + b'"}}'
        assert len(body) == SMALL_FRAME_BYTES
        client.send_raw(struct.pack(">I", len(body)) + body)
        assert client.recv()["ok"] is True


BUDGET = 8 * MIB


@pytest.fixture
async def budgeted() -> AsyncIterator[Daemon]:
    directory = Path(tempfile.mkdtemp(prefix="cpl-", dir="/tmp"))
    audit = AuditLog.to_file(directory / "audit.log")
    daemon = Daemon(
        ServerState(MemoryStore()),
        capabilities=None,
        socket_path=directory / "l.sock",
        audit=audit,
        frame_budget_bytes=BUDGET,
    )
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop(0.1)
        audit.close()
        shutil.rmtree(directory, ignore_errors=True)


async def test_many_large_partial_frames_stay_within_the_daemon_budget(budgeted: Daemon) -> None:
    daemon = budgeted
    hello = encode_frame({"v": 2, "op": "handshake", "payload": {"minVersion": 1, "maxVersion": 2}})
    announced = struct.pack(">I", LARGE_FRAME_BYTES)
    part = b"x" * (2 * MIB)
    peers = []
    for _ in range(12):
        reader, writer = await asyncio.open_unix_connection(daemon.socket_path)
        writer.write(hello)
        await reader.readexactly(
            4 + len(b'{"v":2,"op":"handshake","ok":true,"data":{"version":2}}')
        )
        writer.write(announced)
        writer.write(part)
        peers.append((reader, writer))
    # 12 peers announced 4 MiB each and sent 2 MiB of it (24 MiB on the wire).
    await asyncio.sleep(0.5)
    assert daemon.frame_budget.used <= BUDGET
    # Two frames fit the budget; every other peer is not read past its header.
    bound = BUDGET + 12 * (SMALL_FRAME_BYTES + 4 + 256 * 1024)
    assert daemon.buffered_input <= bound
    for _, writer in peers:
        writer.transport.abort()  # a waiting peer's unsent bytes would hold a close()
    async with asyncio.timeout(10):  # bounds a regression, not a timing assertion
        while daemon.frame_budget.used or daemon.buffered_input:
            await asyncio.sleep(0.05)
