"""Hostile bytes against a real daemon: each closes only its own connection."""

from __future__ import annotations

import json
import signal
import struct
import time
from typing import Any

import pytest

from tests.fixtures.daemon import DaemonFactory, DaemonHandle, RawClient


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def _assert_daemon_serves(daemon: DaemonHandle) -> None:
    with daemon.client() as client:
        assert client.request("list_providers")["ok"] is True


def test_oversize_length_header_closes_connection_before_body(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon(store="memory")
    with daemon.client() as client:
        client.send_raw(struct.pack(">I", 65_537))
        assert client.wait_closed() == []
    with daemon.client(handshake=False) as client:
        client.send_raw(struct.pack(">I", 0xFFFFFFFF))
        assert client.wait_closed() == []
    _assert_daemon_serves(daemon)


def test_frame_of_exactly_the_limit_is_read_not_refused(credproxy_daemon: DaemonFactory) -> None:
    daemon = credproxy_daemon(store="memory")
    with daemon.client() as client:
        prefix = b'{"v":2,"id":"big","op":"list_api_keys","payload":{},"pad":"'
        body = prefix + b"x" * (65_536 - len(prefix) - 2) + b'"}'
        assert len(body) == 65_536
        client.send_raw(_frame(body))
        assert client.recv_id("big")["ok"] is True


def test_invalid_utf8_closes_the_connection(credproxy_daemon: DaemonFactory) -> None:
    daemon = credproxy_daemon(store="memory")
    with daemon.client() as client:
        client.send_raw(_frame(b'{"v":2,"id":"1","op":"\xff\xfe"}'))
        assert client.wait_closed() == []
    _assert_daemon_serves(daemon)


def test_invalid_json_closes_the_connection(credproxy_daemon: DaemonFactory) -> None:
    daemon = credproxy_daemon(store="memory")
    with daemon.client() as client:
        client.send_raw(_frame(b'{"v":2,"id":'))
        assert client.wait_closed() == []
    with daemon.client(handshake=False) as client:
        client.send_raw(_frame(b"not json at all"))
        assert client.wait_closed() == []
    _assert_daemon_serves(daemon)


def test_non_object_json_closes_the_connection(credproxy_daemon: DaemonFactory) -> None:
    daemon = credproxy_daemon(store="memory")
    for body in (b"[1,2,3]", b'"handshake"', b"42", b"null"):
        with daemon.client() as client:
            client.send_raw(_frame(body))
            assert client.wait_closed() == []
    _assert_daemon_serves(daemon)


def test_deeply_nested_json_closes_the_connection_and_spares_the_daemon(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon(store="memory")
    depth = 8_000
    nested_array = b"[" * depth + b"]" * depth
    nested_object = b'{"a":' * depth + b"1" + b"}" * depth
    for body in (nested_array, nested_object):
        with daemon.client(handshake=False) as client:
            client.send_raw(_frame(body))
            assert client.wait_closed() == []
    with daemon.client() as client:
        payload = b'{"provider":"p","token":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"
        client.send_raw(_frame(b'{"v":2,"id":"deep","op":"save_token","payload":' + payload + b"}"))
        assert client.wait_closed() == []
    _assert_daemon_serves(daemon)


def test_frame_split_byte_by_byte_is_reassembled(credproxy_daemon: DaemonFactory) -> None:
    daemon = credproxy_daemon(store="memory")
    with RawClient(daemon.socket_path) as client:
        hello = {
            "v": 2,
            "op": "handshake",
            "payload": {
                "minVersion": 1,
                "maxVersion": 2,
                "capabilityToken": daemon.capability_token,
            },
        }
        request = {"v": 2, "id": "slow", "op": "has_api_key", "payload": {"name": "k"}}
        for message in (hello, request):
            body = json.dumps(message).encode()
            for byte in _frame(body):
                client.send_raw(bytes([byte]))
        assert client.recv()["ok"] is True
        assert client.recv_id("slow") == {
            "v": 2,
            "id": "slow",
            "ok": True,
            "data": {"exists": False},
        }


def test_stalled_partial_frame_is_closed_after_the_frame_timeout(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon("--testing-frame-timeout", "0.3", store="memory")
    with daemon.client() as client:
        client.send_raw(struct.pack(">I", 100) + b'{"v":2')
        assert client.wait_closed() == []
    with daemon.client() as client:
        client.send_raw(b"\x00\x00")
        assert client.wait_closed() == []
    with daemon.client(handshake=False) as client:
        client.send_raw(b"\x00")
        assert client.wait_closed() == []
    _assert_daemon_serves(daemon)


def test_stalled_partial_frame_is_closed_at_the_real_five_second_default(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon(store="memory")
    with daemon.client() as client:
        started = time.monotonic()
        client.send_raw(struct.pack(">I", 50) + b"{")
        assert client.wait_closed() == []
        assert time.monotonic() - started >= 4.5


def test_idle_connection_between_frames_is_not_timed_out(credproxy_daemon: DaemonFactory) -> None:
    """Only an unfinished frame has a deadline; a quiet, complete stream does not."""
    daemon = credproxy_daemon("--testing-frame-timeout", "0.2", store="memory")
    with daemon.client() as client:
        time.sleep(0.8)
        assert client.request("list_api_keys")["ok"] is True


def test_garbage_on_one_connection_leaves_other_connections_working(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon(store="memory")
    with daemon.client() as good:
        assert good.request("list_providers")["ok"] is True
        for garbage in (b"\xff" * 64, b"GET / HTTP/1.1\r\n\r\n", _frame(b"\x00\x01\x02")):
            with RawClient(daemon.socket_path) as bad:
                bad.send_raw(garbage)
                bad.wait_closed()
        assert good.request("list_providers")["ok"] is True
    assert daemon.process.poll() is None


BROKEN_FRAMES = {
    "length over the limit": struct.pack(">I", 4 * 1024 * 1024 + 1),
    "body not JSON": _frame(b'{"v":2,"id":'),
}


def _request(rid: str, op: str, payload: dict[str, Any]) -> bytes:
    return _frame(json.dumps({"v": 2, "id": rid, "op": op, "payload": payload}).encode())


@pytest.mark.parametrize("broken", list(BROKEN_FRAMES.values()), ids=list(BROKEN_FRAMES))
def test_good_frames_sent_with_a_broken_one_are_answered_before_the_close(
    credproxy_daemon: DaemonFactory, broken: bytes
) -> None:
    """Fuzzing finding: the answers to the good frames of the chunk were lost.
    They come back exactly as when each is sent alone; the frame after the
    broken one is never read."""
    daemon = credproxy_daemon(store="memory")
    good: list[tuple[str, str, dict[str, Any]]] = [
        ("task", "has_api_key", {"name": "k"}),
        ("inline", "list_providers", {}),
        ("unknown", "no_such_op", {}),
        ("invalid", "get_api_key", {"name": 5}),
    ]
    with daemon.client() as client:
        alone = {rid: client.request(op, payload, request_id=rid) for rid, op, payload in good}
    with daemon.client() as client:
        chunk = b"".join(_request(rid, op, payload) for rid, op, payload in good)
        client.send_raw(chunk + broken + _request("after", "list_providers", {}))
        answers = client.wait_closed()
    assert sorted(answers, key=lambda frame: frame["id"]) == sorted(
        alone.values(), key=lambda frame: frame["id"]
    )
    _assert_daemon_serves(daemon)


def test_a_request_still_running_at_a_broken_frame_is_answered_before_the_close(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon("--testing-hold-store", store="memory")
    with daemon.client() as client:
        held = _request("held", "has_api_key", {"name": "k"})
        sync = _request("sync", "no_such_op", {})
        client.send_raw(held + sync + BROKEN_FRAMES["body not JSON"])
        assert client.recv()["id"] == "sync", "the chunk was read, the held request runs"
        daemon.send_signal(signal.SIGUSR1)
        assert client.wait_closed() == [
            {"v": 2, "id": "held", "ok": True, "data": {"exists": False}}
        ]
    _assert_daemon_serves(daemon)
