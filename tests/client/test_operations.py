"""Every operation, through both clients, against a real daemon with a narrow grant."""

from __future__ import annotations

import pytest

from credproxy.client import (
    InvalidRequestError,
    NotFoundError,
    ProxyClientError,
    SessionNotFoundError,
    UnauthorizedError,
)
from tests.client.conftest import ALPHA, ALPHA_WORK, BETA, KEYS, SECRETS, ClientFactory, eventually
from tests.fixtures.daemon import DaemonHandle

SESSION_ID = "0" * 32


async def test_get_token_returns_the_token_without_its_refresh_token(
    daemon: DaemonHandle, make_client: ClientFactory
) -> None:
    client = make_client(daemon.socket_path, daemon.capability_token)
    token = await client.get_token("alpha")
    expected = {k: v for k, v in ALPHA.items() if k != "refresh_token"}
    assert token == expected
    assert await client.get_token("alpha", "work") == {
        k: v for k, v in ALPHA_WORK.items() if k != "refresh_token"
    }


async def test_lists_show_only_what_the_grant_allows_sorted(
    daemon: DaemonHandle, make_client: ClientFactory
) -> None:
    client = make_client(daemon.socket_path, daemon.capability_token)
    assert await client.list_providers() == ["alpha", "beta"]
    assert await client.list_buckets("alpha") == ["default", "work"]
    assert await client.list_buckets("beta") == ["default"]
    assert await client.list_api_keys() == ["anthropic", "openai"]


async def test_api_key_reads_and_existence(
    daemon: DaemonHandle, make_client: ClientFactory
) -> None:
    client = make_client(daemon.socket_path, daemon.capability_token)
    assert await client.get_api_key("openai") == KEYS["openai"]
    assert await client.has_api_key("anthropic") is True
    assert await client.has_api_key("absent") is False


async def test_save_merges_and_never_sends_a_refresh_token(
    daemon: DaemonHandle, make_client: ClientFactory
) -> None:
    client = make_client(daemon.socket_path, daemon.capability_token)
    await client.save_token(
        "beta",
        {
            "access_token": "beta-new-access",
            "expiry": BETA["expiry"] + 10,
            "token_type": "Bearer",
            "refresh_token": "sandbox-made-up-refresh",
        },
    )
    stored = await client.get_token("beta")
    assert stored["access_token"] == "beta-new-access"
    assert "refresh_token" not in stored
    assert b"sandbox-made-up-refresh" not in daemon.audit_text().encode()


async def test_remove_token_logs_out_and_later_reads_are_not_found(
    daemon: DaemonHandle, make_client: ClientFactory
) -> None:
    client = make_client(daemon.socket_path, daemon.capability_token)
    await client.remove_token("alpha", "work")
    with pytest.raises(NotFoundError) as caught:
        await client.get_token("alpha", "work")
    assert caught.value.code == "NOT_FOUND"
    assert await client.list_buckets("alpha") == ["default"]


async def test_missing_key_inside_the_grant_is_not_found(
    daemon: DaemonHandle, make_client: ClientFactory
) -> None:
    client = make_client(daemon.socket_path, daemon.capability_token)
    with pytest.raises(NotFoundError):
        await client.get_api_key("absent")


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("get_token", ("hidden",)),
        ("get_token", ("beta", "other")),
        ("get_api_key", ("hiddenkey",)),
        ("has_api_key", ("hiddenkey",)),
        ("list_buckets", ("hidden",)),
        ("refresh_token", ("hidden",)),
    ],
)
async def test_requests_outside_the_grant_are_unauthorized_and_reveal_nothing(
    daemon: DaemonHandle, make_client: ClientFactory, op: str, args: tuple[str, ...]
) -> None:
    client = make_client(daemon.socket_path, daemon.capability_token)
    with pytest.raises(UnauthorizedError) as caught:
        await getattr(client, op)(*args)
    assert caught.value.code == "UNAUTHORIZED"
    assert not any(secret in caught.value.message for secret in SECRETS)


async def test_refresh_and_login_without_a_configured_provider_are_typed_errors(
    daemon: DaemonHandle, make_client: ClientFactory
) -> None:
    client = make_client(daemon.socket_path, daemon.capability_token)
    for call in (client.refresh_token("alpha"), client.oauth_initiate("alpha")):
        with pytest.raises(ProxyClientError) as caught:
            await call
        assert caught.value.code == "PROVIDER_NOT_FOUND"


async def test_login_session_operations_on_an_unknown_session(
    daemon: DaemonHandle, make_client: ClientFactory
) -> None:
    client = make_client(daemon.socket_path, daemon.capability_token)
    with pytest.raises(SessionNotFoundError):
        await client.oauth_exchange(SESSION_ID, "some-code")
    with pytest.raises(SessionNotFoundError):
        await client.oauth_poll(SESSION_ID)
    assert await client.oauth_cancel(SESSION_ID) is None


async def test_generic_request_reaches_the_daemon_and_unknown_ops_are_invalid(
    daemon: DaemonHandle, make_client: ClientFactory
) -> None:
    client = make_client(daemon.socket_path, daemon.capability_token)
    assert await client.request("list_api_keys") == {"keys": ["anthropic", "openai"]}
    with pytest.raises(InvalidRequestError) as caught:
        await client.request("no_such_op", {})
    assert caught.value.code == "INVALID_REQUEST"


async def test_bad_names_are_refused_before_anything_is_sent(
    daemon: DaemonHandle, make_client: ClientFactory
) -> None:
    client = make_client(daemon.socket_path, daemon.capability_token)
    with pytest.raises(InvalidRequestError):
        await client.get_token("../etc/passwd")
    await client.list_providers()

    def ops() -> list[str]:
        return [event["op"] for event in daemon.audit_events()]

    await eventually(lambda: "list_providers" in ops())
    assert ops() == ["handshake", "list_providers"]


async def test_one_connection_serves_every_call(
    daemon: DaemonHandle, make_client: ClientFactory
) -> None:
    client = make_client(daemon.socket_path, daemon.capability_token)
    for _ in range(5):
        await client.list_providers()
    assert client.handshakes == 1
    assert client.protocol_version == 2


async def test_wrong_capability_token_is_refused_at_the_handshake(
    daemon: DaemonHandle, make_client: ClientFactory
) -> None:
    wrong = "f" * 64 if daemon.capability_token != "f" * 64 else "e" * 64
    client = make_client(daemon.socket_path, wrong)
    with pytest.raises(UnauthorizedError) as caught:
        await client.list_providers()
    assert wrong not in caught.value.message
    assert client.handshakes == 0
    assert not client.is_connected


async def test_missing_capability_token_is_refused_at_the_handshake(
    daemon: DaemonHandle, make_client: ClientFactory
) -> None:
    client = make_client(daemon.socket_path, None)
    with pytest.raises(UnauthorizedError):
        await client.get_api_key("openai")
