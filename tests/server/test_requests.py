"""Request envelopes and per-connection limits over a real socket.

Tests that need requests genuinely in flight start the daemon with the hidden,
test-only ``--testing-hold-store``: every store call waits until the daemon
gets SIGUSR1, which removes the timing race from "16 in flight", cancel, the
call timeout and graceful shutdown.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon import DaemonFactory, DaemonHandle, RawClient


def _held(credproxy_daemon: DaemonFactory, *args: str) -> DaemonHandle:
    return credproxy_daemon("--testing-hold-store", *args, store="memory")


def _sync_point(client: RawClient) -> None:
    """An answer that needs no store: once it arrives, every earlier frame was dispatched."""
    reply = client.request("no_such_op")
    assert reply["code"] == "INVALID_REQUEST"


def test_unknown_op_is_invalid_and_the_connection_stays_open(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon(store="memory")
    with daemon.client() as client:
        reply = client.request("steal_everything", {})
        assert reply["ok"] is False and reply["code"] == "INVALID_REQUEST"
        assert "steal_everything" in reply["error"]
        assert client.request("list_providers")["ok"] is True


async def test_declared_op_without_a_handler_is_not_available(tmp_path: Path) -> None:
    """An embedded ``Daemon`` given only the core table (as before OAuth is wired in)."""
    from credproxy.audit import AuditLog
    from credproxy.protocol.framing import FrameDecoder, encode_frame
    from credproxy.server.app import Daemon
    from credproxy.server.context import ServerState
    from credproxy.server.handlers import HANDLERS
    from credproxy.store.memory import MemoryStore

    audit_path = tmp_path / "audit.log"
    audit = AuditLog.to_file(audit_path)
    socket_dir = Path(tempfile.mkdtemp(prefix="cpe-", dir="/tmp"))
    daemon = Daemon(
        ServerState(MemoryStore()),
        capabilities=None,
        socket_path=socket_dir / "e.sock",
        audit=audit,
        handlers=HANDLERS.without("oauth_initiate"),
    )
    try:
        path = await daemon.start()
        assert daemon.socket_path == path
        reader, writer = await asyncio.open_unix_connection(path)
        decoder = FrameDecoder()

        async def roundtrip(message: dict[str, Any]) -> dict[str, Any]:
            writer.write(encode_frame(message))
            while True:
                frames = decoder.feed(await reader.read(65_536))
                if frames:
                    return frames[0]

        hello = await roundtrip({"v": 2, "op": "handshake", "payload": {}})
        assert hello["ok"] is True
        reply = await roundtrip(
            {"v": 2, "id": "r", "op": "oauth_initiate", "payload": {"provider": "p"}}
        )
        assert reply["code"] == "INVALID_REQUEST"
        assert reply["error"] == "operation oauth_initiate is not available on this daemon"
        writer.close()
    finally:
        await daemon.stop()
        audit.close()
        shutil.rmtree(socket_dir, ignore_errors=True)
    assert not (socket_dir / "e.sock").exists()
    assert '"op":"oauth_initiate","outcome":"INVALID_REQUEST"' in audit_path.read_text()


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"v": 2, "op": "get_token", "payload": {"provider": "p"}}, "id"),
        ({"v": 2, "id": 7, "op": "get_token", "payload": {"provider": "p"}}, "id"),
        ({"v": 2, "id": "", "op": "get_token", "payload": {"provider": "p"}}, "id"),
        ({"v": 2, "id": "r", "payload": {"provider": "p"}}, "op"),
        ({"v": 2, "id": "r", "op": ["get_token"], "payload": {}}, "op"),
        ({"v": 2, "id": "r", "op": "get_token", "payload": "p"}, "payload"),
        ({"v": 2, "id": "r", "op": "get_token", "payload": {"provider": 5}}, "provider"),
        ({"v": 2, "id": "r", "op": "get_token", "payload": {}}, "provider"),
        ({"v": 2, "id": "r", "op": "get_token", "payload": {"provider": "a/b"}}, "provider"),
        (
            {"v": 2, "id": "r", "op": "get_token", "payload": {"provider": "p", "bucket": 1}},
            "bucket",
        ),
        (
            {"v": 2, "id": "r", "op": "save_token", "payload": {"provider": "p", "token": []}},
            "token",
        ),
        ({"v": 2, "id": "r", "op": "get_api_key", "payload": {"name": "x" * 65}}, "name"),
        ({"v": 2, "id": "r", "op": "cancel", "payload": {"targetId": 3}}, "targetId"),
    ],
)
def test_bad_envelope_or_payload_is_invalid_request_naming_the_field(
    credproxy_daemon: DaemonFactory, message: dict[str, Any], field: str
) -> None:
    daemon = credproxy_daemon(store="memory")
    with daemon.client() as client:
        client.send(message)
        reply = client.recv()
        assert reply["ok"] is False and reply["code"] == "INVALID_REQUEST"
        assert field in reply["error"]
        if isinstance(message.get("id"), str) and message["id"]:
            assert reply["id"] == message["id"]
        assert client.request("list_api_keys")["ok"] is True


def test_token_fields_are_validated_by_name(credproxy_daemon: DaemonFactory) -> None:
    daemon = credproxy_daemon(store="memory")
    with daemon.client() as client:
        secret = "access-value-that-must-not-echo"
        reply = client.request(
            "save_token",
            {
                "provider": "p",
                "token": {"access_token": secret, "expiry": "soon", "token_type": "B"},
            },
        )
        assert reply["code"] == "INVALID_REQUEST" and "expiry" in reply["error"]
        assert secret not in reply["error"]


def test_duplicate_in_flight_id_is_invalid(credproxy_daemon: DaemonFactory) -> None:
    daemon = _held(credproxy_daemon)
    with daemon.client() as client:
        client.send_request("has_api_key", {"name": "k"}, request_id="same")
        client.send_request("has_api_key", {"name": "k"}, request_id="same")
        duplicate = client.recv()
        assert duplicate["code"] == "INVALID_REQUEST" and "id" in duplicate["error"]
        daemon.send_signal(signal.SIGUSR1)
        assert client.recv_id("same") == {
            "v": 2,
            "id": "same",
            "ok": True,
            "data": {"exists": False},
        }
        assert client.request("list_api_keys", request_id="same")["ok"] is True


def test_seventeenth_request_in_flight_is_resource_exhausted(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = _held(credproxy_daemon)
    with daemon.client() as client:
        held = [client.send_request("get_api_key", {"name": f"k{i}"}) for i in range(16)]
        reply = client.request("get_api_key", {"name": "k16"})
        assert reply["code"] == "RESOURCE_EXHAUSTED"
        daemon.send_signal(signal.SIGUSR1)
        for rid in held:
            assert client.recv_id(rid)["code"] == "NOT_FOUND"
        assert client.request("get_api_key", {"name": "k16"})["code"] == "NOT_FOUND"


def test_in_flight_limit_is_per_connection(credproxy_daemon: DaemonFactory) -> None:
    daemon = _held(credproxy_daemon)
    with daemon.client() as first, daemon.client() as second:
        held = [first.send_request("list_api_keys") for _ in range(16)]
        _sync_point(first)
        other = second.send_request("list_api_keys")
        _sync_point(second)
        daemon.send_signal(signal.SIGUSR1)
        assert second.recv_id(other)["ok"] is True
        assert all(first.recv_id(rid)["ok"] for rid in held)


def test_burst_over_sixty_per_second_is_rate_limited_with_retry_after(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon(store="memory")
    with daemon.client() as client:
        limited: list[dict[str, Any]] = []
        answered = 0
        while not limited and answered < 600:
            ids = [client.send_request("list_api_keys") for _ in range(16)]
            for rid in ids:
                reply = client.recv_id(rid)
                answered += 1
                if reply["ok"] is False:
                    assert reply["code"] == "RATE_LIMITED"
                    limited.append(reply)
        assert limited, "600 requests in a burst were never rate limited"
        audited = [e for e in daemon.audit_events() if e["outcome"] == "RATE_LIMITED"]
        assert 1 <= len(audited) < len(limited) or len(limited) == 1
        first = limited[0]
        assert isinstance(first["retryAfter"], int | float)
        assert 0 < first["retryAfter"] <= 1.0
        assert answered > 60


def test_cancel_ends_the_target_with_cancelled(credproxy_daemon: DaemonFactory) -> None:
    daemon = _held(credproxy_daemon)
    with daemon.client() as client:
        target = client.send_request("get_token", {"provider": "p"})
        reply = client.request("cancel", {"targetId": target})
        assert reply == {"v": 2, "id": reply["id"], "ok": True, "data": {"cancelled": True}}
        cancelled = client.recv_id(target)
        assert cancelled["ok"] is False and cancelled["code"] == "CANCELLED"
        again = client.request("cancel", {"targetId": target})
        assert again["data"] == {"cancelled": False}
        assert client.request("cancel", {"targetId": "never-sent"})["data"] == {"cancelled": False}
        daemon.send_signal(signal.SIGUSR1)
        assert client.request("get_token", {"provider": "p"})["code"] == "NOT_FOUND"


def test_handler_past_the_call_timeout_is_internal_error_without_details(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = _held(credproxy_daemon, "--testing-call-timeout", "0.3")
    with daemon.client() as client:
        reply = client.request("get_api_key", {"name": "k"})
        assert reply["ok"] is False and reply["code"] == "INTERNAL_ERROR"
        assert reply["error"] == "the operation timed out on the host"
        assert client.request("no_such_op")["code"] == "INVALID_REQUEST"


def test_responses_are_matched_by_id_not_order(credproxy_daemon: DaemonFactory) -> None:
    daemon = _held(credproxy_daemon)
    with daemon.client() as client:
        slow = client.send_request("list_providers")
        fast = client.request("no_such_op")
        assert fast["code"] == "INVALID_REQUEST"
        daemon.send_signal(signal.SIGUSR1)
        assert client.recv_id(slow)["data"] == {"providers": []}


def test_requests_in_flight_are_answered_after_the_peer_closes_its_side(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = _held(credproxy_daemon)
    with daemon.client() as client:
        client.send_request("has_api_key", {"name": "k"}, request_id="pending")
        _sync_point(client)
        client.sock.shutdown(socket.SHUT_WR)
        daemon.send_signal(signal.SIGUSR1)
        frames = client.wait_closed()
        assert [frame["id"] for frame in frames] == ["pending"]
        assert frames[0]["data"] == {"exists": False}
