"""The handshake over a real socket: version first, then the capability token."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest

from tests.fixtures.daemon import DaemonFactory, RawClient
from tests.server.material import KEY_SECRETS, SEEDED_TOKENS, run_wire_client


def _rejected(client: RawClient, reply: dict[str, Any], code: str) -> None:
    assert reply["ok"] is False and reply["code"] == code and reply["op"] == "handshake"
    assert client.wait_closed() == []


def test_request_before_handshake_is_invalid_and_closes(credproxy_daemon: DaemonFactory) -> None:
    daemon = credproxy_daemon(store="memory")
    with RawClient(daemon.socket_path) as client:
        client.send({"v": 2, "id": "1", "op": "list_providers", "payload": {}})
        reply = client.recv()
        assert reply["ok"] is False and reply["code"] == "INVALID_REQUEST"
        assert "handshake" in reply["error"]
        assert client.wait_closed() == []


@pytest.mark.parametrize(
    ("low", "high"),
    [(3, 9), (0, 0), (2, 1), ("1", "2"), (1.0, 2.0), (True, True), (None, 2), ([1], 2)],
    ids=[
        "no-overlap",
        "below",
        "min-above-max",
        "strings",
        "floats",
        "bools",
        "one-missing",
        "list",
    ],
)
def test_bad_version_bounds_are_unknown_version_and_close(
    credproxy_daemon: DaemonFactory, low: Any, high: Any
) -> None:
    daemon = credproxy_daemon(store="memory")
    with RawClient(daemon.socket_path) as client:
        reply = client.handshake(daemon.capability_token, min_version=low, max_version=high)
        _rejected(client, reply, "UNKNOWN_VERSION")


def test_version_is_checked_before_the_capability_token(credproxy_daemon: DaemonFactory) -> None:
    daemon = credproxy_daemon(store="memory")
    with RawClient(daemon.socket_path) as client:
        reply = client.handshake("0" * 64, min_version=5, max_version=6)
        _rejected(client, reply, "UNKNOWN_VERSION")


def test_client_without_bounds_gets_the_envelope_version(credproxy_daemon: DaemonFactory) -> None:
    daemon = credproxy_daemon(store="memory")
    with RawClient(daemon.socket_path) as client:
        client.send(
            {"v": 1, "op": "handshake", "payload": {"capabilityToken": daemon.capability_token}}
        )
        assert client.recv() == {"v": 1, "op": "handshake", "ok": True, "data": {"version": 1}}
        reply = client.request("cancel", {"targetId": "x"})
        assert reply["code"] == "INVALID_REQUEST"


@pytest.mark.parametrize("case", ["wrong", "missing", "uppercased", "not-a-string", "truncated"])
def test_bad_capability_token_is_unauthorized_and_closes(
    credproxy_daemon: DaemonFactory, case: str
) -> None:
    daemon = credproxy_daemon(store="memory")
    token = daemon.capability_token
    assert token is not None and re.fullmatch("[0-9a-f]{64}", token)
    presented: Any = {
        "wrong": "0123456789abcdef" * 4,
        "missing": None,
        "uppercased": token.upper(),
        "not-a-string": 12345,
        "truncated": token[:-1],
    }[case]
    with RawClient(daemon.socket_path) as client:
        payload: dict[str, Any] = {"minVersion": 1, "maxVersion": 2}
        if presented is not None:
            payload["capabilityToken"] = presented
        client.send({"v": 2, "op": "handshake", "payload": payload})
        reply = client.recv()
        _rejected(client, reply, "UNAUTHORIZED")
        assert token not in reply["error"]


def test_failed_handshakes_of_one_uid_do_not_block_a_good_one(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon(store="memory")
    failing = [RawClient(daemon.socket_path) for _ in range(4)]
    try:
        for client in failing:
            client.send({"v": 2, "op": "handshake", "payload": {"capabilityToken": "f" * 64}})
        with daemon.client() as good:
            assert good.request("list_providers")["ok"] is True
        for client in failing:
            assert client.recv()["code"] == "UNAUTHORIZED"
            assert client.wait_closed() == []
    finally:
        for client in failing:
            client.close()


def test_no_capability_daemon_ignores_any_presented_token(credproxy_daemon: DaemonFactory) -> None:
    daemon = credproxy_daemon(store="memory", capability=False)
    assert daemon.capability_token is None and daemon.capability_file is None
    for presented in (None, "garbage", "0" * 64):
        with daemon.client(token=presented) if presented else daemon.client() as client:
            assert client.request("list_providers")["ok"] is True


def test_protocol_md_client_with_token_on_fd_3_works(credproxy_daemon: DaemonFactory) -> None:
    """A client built from protocol.md alone (no credproxy imports) against a daemon
    that handed its token out through ``--capability-fd``."""
    read_end, write_end = os.pipe()
    try:
        daemon = credproxy_daemon(
            "--capability-fd",
            str(write_end),
            "--allow",
            "anthropic",
            "--allow-key",
            "openai",
            tokens=SEEDED_TOKENS,
            keys=KEY_SECRETS,
            pass_fds=(write_end,),
        )
        os.close(write_end)
        write_end = -1
        handed = os.read(read_end, 200)
        assert os.read(read_end, 10) == b""
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    assert re.fullmatch(rb"[0-9a-f]{64}\n", handed)
    assert daemon.ready["capability_file"] is None
    result = run_wire_client(
        daemon.socket_path,
        handed.decode().strip(),
        'get_token {"provider":"anthropic","bucket":"work"}',
        "list_providers",
        'get_api_key {"name":"openai"}',
        'get_api_key {"name":"other"}',
        workdir=daemon.workdir,
    )
    assert result.returncode == 0, result.stderr
    hello, token, providers, key, denied = (json.loads(x) for x in result.stdout.splitlines())
    assert hello == {"v": 2, "op": "handshake", "ok": True, "data": {"version": 2}}
    assert (
        token["ok"] is True
        and token["data"]["access_token"] == SEEDED_TOKENS[("anthropic", "work")]["access_token"]
    )
    assert "refresh_token" not in token["data"]
    assert providers["data"] == {"providers": ["anthropic"]}
    assert key["data"] == {"key": KEY_SECRETS["openai"]}
    assert denied["code"] == "UNAUTHORIZED"
    assert "refresh" not in result.stdout
