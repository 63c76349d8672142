"""The OAuth provider down, too slow, or answering garbage while a sandbox asks for a refresh.

Each: a clear error code (never INTERNAL_ERROR) and a message without any
token, the stored token untouched, and the daemon still serving. A sandbox
that vanishes while its refresh runs loses nothing either: the refresh
finishes and its (rotated) token is saved for the next caller.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.faults.conftest import (
    FRESH_ACCESS,
    FRESH_REFRESH,
    PROVIDER,
    STORED_ACCESS,
    STORED_REFRESH,
    TokenEndpoint,
    daemon_with_provider,
)
from tests.fixtures.daemon import DaemonFactory, DaemonHandle

SECRETS = (STORED_REFRESH, FRESH_REFRESH, FRESH_ACCESS)
REFRESH = {"provider": PROVIDER, "bucket": "default"}


def _closed_port() -> int:
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


def _assert_nothing_lost_and_still_serving(daemon: DaemonHandle) -> None:
    with daemon.client() as client:
        token = client.request("get_token", REFRESH)
        assert token["ok"] is True and token["data"]["access_token"] == STORED_ACCESS
        key = client.request("get_api_key", {"name": "still-here"})
        assert key["ok"] is True


def _refresh_fails_cleanly(daemon: DaemonHandle) -> dict[str, object]:
    with daemon.client() as client:
        answer = client.request("refresh_token", REFRESH)
        received = bytes(client.received)
    assert answer["ok"] is False
    assert answer["code"] not in ("INTERNAL_ERROR", None)
    assert all(secret.encode() not in received for secret in SECRETS)
    return answer


def test_provider_down_is_a_clear_refresh_error(credproxy_daemon: DaemonFactory) -> None:
    daemon = daemon_with_provider(credproxy_daemon, f"http://127.0.0.1:{_closed_port()}/token")
    answer = _refresh_fails_cleanly(daemon)
    assert answer["code"] == "EXCHANGE_FAILED"
    _assert_nothing_lost_and_still_serving(daemon)


@pytest.mark.parametrize("mode", ["html", "not_json", "not_a_token", "huge"])
def test_provider_answering_garbage_is_a_clear_refresh_error(
    credproxy_daemon: DaemonFactory, token_endpoint: TokenEndpoint, mode: str
) -> None:
    token_endpoint.mode = mode
    daemon = daemon_with_provider(credproxy_daemon, token_endpoint.url)
    answer = _refresh_fails_cleanly(daemon)
    assert answer["code"] == "EXCHANGE_FAILED"
    assert 1 <= token_endpoint.calls <= 5  # a 5xx is retried, a bounded number of times
    _assert_nothing_lost_and_still_serving(daemon)


def test_provider_slower_than_its_time_limit_is_abandoned(
    credproxy_daemon: DaemonFactory, token_endpoint: TokenEndpoint
) -> None:
    token_endpoint.mode = "slow"
    daemon = daemon_with_provider(credproxy_daemon, token_endpoint.url)
    answer = _refresh_fails_cleanly(daemon)
    assert answer["code"] == "EXCHANGE_FAILED"
    assert "did not answer" in str(answer["error"])
    # The host dropped its request rather than leaving it running.
    assert token_endpoint.disconnected.wait(10)
    _assert_nothing_lost_and_still_serving(daemon)


def test_a_sandbox_vanishing_mid_refresh_loses_nothing(
    credproxy_daemon: DaemonFactory, token_endpoint: TokenEndpoint
) -> None:
    token_endpoint.mode = "slow_then_ok"
    daemon = daemon_with_provider(credproxy_daemon, token_endpoint.url)
    client = daemon.client()
    client.send_request("refresh_token", REFRESH)
    client.close()
    assert token_endpoint.answered.wait(10)
    deadline = time.monotonic() + 10
    with daemon.client() as other:
        while True:
            token = other.request("get_token", REFRESH)
            if token["data"]["access_token"] == FRESH_ACCESS or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert token["data"]["access_token"] == FRESH_ACCESS
        assert "refresh_token" not in token["data"]
        assert other.request("get_api_key", {"name": "still-here"})["ok"] is True
