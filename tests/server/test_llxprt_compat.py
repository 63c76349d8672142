"""Compatibility with LLxprt Code's shipped sandbox client, over a real socket.

The client LLxprt ships speaks protocol version 1 only: its handshake offers
``minVersion: 1, maxVersion: 1`` and carries no capability token (its launcher
predates the token hardening), its envelopes say ``"v": 1``, it omits
``bucket`` for the default bucket, maps ``NOT_FOUND`` to "no credential", and
asks for ``get_bucket_stats``, an operation its own host server answers though
protocol.md does not list it. These tests send exactly those frames.
"""

from __future__ import annotations

import uuid
from typing import Any

from tests.fixtures.daemon import DaemonFactory, RawClient

TOKENS = {
    ("anthropic", "default"): {
        "access_token": "at-llxprt-compat-default",
        "refresh_token": "rt-llxprt-compat-never-leaves",
        "expiry": 1_900_000_000,
        "token_type": "Bearer",
    },
    ("anthropic", "work"): {
        "access_token": "at-llxprt-compat-work",
        "expiry": 1_900_000_000,
        "token_type": "Bearer",
    },
}


def _llxprt_request(client: RawClient, op: str, payload: dict[str, Any]) -> dict[str, Any]:
    rid = str(uuid.uuid4())
    client.send({"v": 1, "id": rid, "op": op, "payload": payload})
    return client.recv_id(rid)


def _llxprt_handshake(client: RawClient) -> dict[str, Any]:
    client.send({"v": 1, "op": "handshake", "payload": {"minVersion": 1, "maxVersion": 1}})
    return client.recv()


def test_llxprt_v1_client_without_token_reads_tokens_from_a_no_capability_daemon(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon("--no-capability", tokens=TOKENS, keys={"openai": "sk-compat"})
    with RawClient(daemon.socket_path) as client:
        reply = _llxprt_handshake(client)
        assert reply == {"v": 1, "op": "handshake", "ok": True, "data": {"version": 1}}

        token = _llxprt_request(client, "get_token", {"provider": "anthropic"})
        assert token["ok"] is True and token["v"] == 1
        assert token["data"]["access_token"] == "at-llxprt-compat-default"
        assert "refresh_token" not in token["data"]

        missing = _llxprt_request(client, "get_token", {"provider": "qwen"})
        assert missing["ok"] is False and missing["code"] == "NOT_FOUND"

        listed = _llxprt_request(client, "list_providers", {})
        assert listed["data"] == {"providers": ["anthropic"]}
        buckets = _llxprt_request(client, "list_buckets", {"provider": "anthropic"})
        assert buckets["data"] == {"buckets": ["default", "work"]}
        key = _llxprt_request(client, "get_api_key", {"name": "openai"})
        assert key["data"] == {"key": "sk-compat"}
        assert _llxprt_request(client, "has_api_key", {"name": "gemini"})["data"] == {
            "exists": False
        }
        assert b"rt-llxprt-compat-never-leaves" not in bytes(client.received)


def test_llxprt_v1_client_without_token_is_refused_by_a_daemon_that_issues_tokens(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon(tokens=TOKENS)
    with RawClient(daemon.socket_path) as client:
        reply = _llxprt_handshake(client)
        assert reply["ok"] is False and reply["code"] == "UNAUTHORIZED"
        assert client.wait_closed() == []


def test_get_bucket_stats_counts_served_tokens_in_llxprt_shape(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon("--no-capability", tokens=TOKENS)
    with RawClient(daemon.socket_path) as client:
        _llxprt_handshake(client)
        unused = _llxprt_request(
            client, "get_bucket_stats", {"provider": "anthropic", "bucket": "work"}
        )
        assert unused["data"] == {"bucket": "work", "requestCount": 0, "percentage": 0.0}

        for _ in range(3):
            _llxprt_request(client, "get_token", {"provider": "anthropic"})
        _llxprt_request(client, "get_token", {"provider": "anthropic", "bucket": "work"})

        stats = _llxprt_request(
            client, "get_bucket_stats", {"provider": "anthropic", "bucket": "default"}
        )["data"]
        assert stats["bucket"] == "default"
        assert stats["requestCount"] == 3
        assert stats["percentage"] == 75.0
        assert isinstance(stats["lastUsed"], int) and stats["lastUsed"] > 1_700_000_000_000

        absent = _llxprt_request(
            client, "get_bucket_stats", {"provider": "anthropic", "bucket": "nobody"}
        )
        assert absent["ok"] is False and absent["code"] == "NOT_FOUND"


def test_get_bucket_stats_outside_the_grant_is_unauthorized(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon("--allow", "anthropic:work", tokens=TOKENS)
    with daemon.client() as client:
        outside = client.request("get_bucket_stats", {"provider": "anthropic", "bucket": "default"})
        assert outside["ok"] is False and outside["code"] == "UNAUTHORIZED"
        inside = client.request("get_bucket_stats", {"provider": "anthropic", "bucket": "work"})
        assert inside["ok"] is True
