"""The three flows and refresh against the real oidc-provider, without the daemon."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web

from credproxy.oauth.config import ProviderConfig, ProviderRegistry
from credproxy.oauth.errors import OAuthFlowError
from credproxy.oauth.flows import (
    CodePasteFlow,
    DeviceCodeFlow,
    LoopbackFlow,
    request_token,
    start_flow,
)
from credproxy.oauth.http import OAuthHttp, basic_credentials
from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.refresh import REFRESH_COOLDOWN_S, RefreshCoordinator
from credproxy.store.memory import MemoryStore
from credproxy.store.writepath import WritePath
from credproxy.tokens import sanitize
from tests.fixtures.oidc import OidcServer
from tests.fixtures.settings import provider_config
from tests.oauth.browser import HeadlessUser


def provider(server: OidcServer, flow: str, **extra: Any) -> ProviderConfig:
    return provider_config("test", server.provider_table(flow, **extra))


async def endpoints_of(config: ProviderConfig, http: OAuthHttp) -> Any:
    return await ProviderRegistry({config.name: config}).endpoints(config, http)


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


FlowClass = TypeVar("FlowClass", CodePasteFlow, DeviceCodeFlow, LoopbackFlow)


async def new_flow(
    cls: type[FlowClass], server: OidcServer, http: OAuthHttp, **extra: Any
) -> FlowClass:
    """A flow of ``cls`` for the test server, endpoints found by discovery."""
    config = provider(server, cls.flow_type, **extra)
    return cls(config, await endpoints_of(config, http), http)


async def pasted_login(
    server: OidcServer, http: OAuthHttp
) -> tuple[ProviderRegistry, CodePasteFlow, str]:
    """A code-paste login the user has approved, and the text they copied from the page."""
    config = provider(server, "pkce_redirect")
    registry = ProviderRegistry({"test": config})
    flow = CodePasteFlow(config, await registry.endpoints(config, http), http)
    with HeadlessUser() as user:
        pasted = user.copy_code(flow.start()["auth_url"], server.oob_uri)
    return registry, flow, pasted


async def enter_device_code(shown: dict[str, Any], **user: Any) -> None:
    """The user types the shown code at the verification page (and approves or denies)."""
    with HeadlessUser(**user) as agent:
        await asyncio.to_thread(
            agent.enter_device_code, shown["verification_url"], shown["user_code"]
        )


async def test_discovery_resolves_endpoints_from_the_issuer(
    oidc_server: OidcServer, http: OAuthHttp
) -> None:
    config = provider(oidc_server, "pkce_redirect")
    endpoints = await endpoints_of(config, http)
    assert endpoints.token == oidc_server.url("/token")
    assert endpoints.authorization == oidc_server.url("/auth")
    assert endpoints.device_authorization == oidc_server.url("/device/auth")
    assert endpoints.issuer == oidc_server.issuer


async def test_discovery_refuses_a_document_naming_another_issuer(
    oidc_server: OidcServer, http: OAuthHttp
) -> None:
    """The configured issuer has a trailing path the document does not name."""
    config = provider_config(
        "test",
        {
            "client_id": "credproxy-cli",
            "issuer": oidc_server.issuer + "/",
            "flow": "device_code",
        },
    )
    with pytest.raises(OAuthFlowError) as caught:
        await endpoints_of(config, http)
    assert caught.value.code == ErrorCode.EXCHANGE_FAILED
    assert "another issuer" in caught.value.message


async def test_an_issuer_without_a_discovery_document_says_what_to_check(
    oidc_server: OidcServer, http: OAuthHttp
) -> None:
    config = provider_config(
        "test",
        {"client_id": "c", "issuer": oidc_server.url("/nowhere"), "flow": "device_code"},
    )
    with pytest.raises(OAuthFlowError) as caught:
        await endpoints_of(config, http)
    assert caught.value.code == ErrorCode.EXCHANGE_FAILED
    assert "check issuer in [providers.test]" in caught.value.message


async def test_code_paste_login_returns_a_token_with_refresh_token_and_expiry(
    oidc_server: OidcServer, http: OAuthHttp
) -> None:
    flow = await new_flow(CodePasteFlow, oidc_server, http)
    shown = flow.start()
    assert set(shown) == {"auth_url"}
    query = query_of(shown["auth_url"])
    assert query["code_challenge_method"] == "S256"
    assert query["redirect_uri"] == oidc_server.oob_uri
    assert "code_verifier" not in query
    with HeadlessUser() as user:
        pasted = user.copy_code(shown["auth_url"], oidc_server.oob_uri)
    assert "#" in pasted  # the test server's page shows code#state
    before = time.time()
    token = await flow.finish(pasted)
    assert token["access_token"]
    assert token["refresh_token"]
    assert token["token_type"] == "Bearer"
    assert before + 3000 < token["expiry"] <= time.time() + 3600
    assert "expires_in" not in token
    assert "openid" in token["scope"]


async def test_code_paste_refuses_a_code_whose_state_belongs_to_another_login(
    oidc_server: OidcServer, http: OAuthHttp
) -> None:
    config = provider(oidc_server, "pkce_redirect")
    endpoints = await endpoints_of(config, http)
    first, second = (CodePasteFlow(config, endpoints, http) for _ in range(2))
    with HeadlessUser() as user:
        pasted = user.copy_code(first.start()["auth_url"], oidc_server.oob_uri)
    second.start()
    before = oidc_server.token_requests().get("authorization_code", 0)
    with pytest.raises(OAuthFlowError, match="state mismatch"):
        await second.finish(pasted)
    assert oidc_server.token_requests().get("authorization_code", 0) == before


async def test_code_paste_accepts_the_bare_code_without_state(
    oidc_server: OidcServer, http: OAuthHttp
) -> None:
    _, flow, pasted = await pasted_login(oidc_server, http)
    token = await flow.finish(pasted.split("#")[0])
    assert token["refresh_token"]


async def test_a_wrong_code_is_refused_with_invalid_grant_and_no_echo(
    oidc_server: OidcServer, http: OAuthHttp
) -> None:
    flow = await new_flow(CodePasteFlow, oidc_server, http)
    flow.start()
    with pytest.raises(OAuthFlowError) as caught:
        await flow.finish("not-a-real-code-123")
    assert caught.value.code == ErrorCode.EXCHANGE_FAILED
    assert caught.value.oauth_error == "invalid_grant"
    assert "not-a-real-code-123" not in caught.value.message


async def test_device_flow_polls_until_the_user_approves(
    oidc_server: OidcServer, http: OAuthHttp
) -> None:
    flow = await new_flow(DeviceCodeFlow, oidc_server, http)
    shown = await flow.start()
    assert set(shown) >= {"verification_url", "user_code", "pollIntervalMs"}
    assert "device_code" not in shown
    assert shown["pollIntervalMs"] == 50
    waiting = asyncio.create_task(flow.wait())
    await enter_device_code(shown, login="bob")
    token = await asyncio.wait_for(waiting, 10)
    assert token["refresh_token"]
    assert token["access_token"]


async def test_device_flow_ends_with_access_denied_when_the_user_aborts(
    oidc_server: OidcServer, http: OAuthHttp
) -> None:
    flow = await new_flow(DeviceCodeFlow, oidc_server, http)
    shown = await flow.start()
    waiting = asyncio.create_task(flow.wait())
    await enter_device_code(shown, deny=True)
    with pytest.raises(OAuthFlowError) as caught:
        await asyncio.wait_for(waiting, 10)
    assert caught.value.oauth_error == "access_denied"


async def test_device_flow_reports_an_expired_device_code(
    oidc_server_short_device: OidcServer, http: OAuthHttp
) -> None:
    """The server's device codes live 1 s; nobody approves."""
    flow = await new_flow(DeviceCodeFlow, oidc_server_short_device, http, poll_interval_s=0.25)
    await flow.start()
    with pytest.raises(OAuthFlowError) as caught:
        await asyncio.wait_for(flow.wait(), 15)
    assert caught.value.oauth_error == "expired_token"
    assert "expired" in caught.value.message


async def test_loopback_login_exchanges_the_code_and_shows_a_closing_page(
    oidc_server: OidcServer, http: OAuthHttp
) -> None:
    flow = await new_flow(LoopbackFlow, oidc_server, http)
    shown = await flow.start()
    redirect = query_of(shown["auth_url"])["redirect_uri"]
    assert redirect.startswith("http://127.0.0.1:")
    waiting = asyncio.create_task(flow.wait())
    with HeadlessUser() as user:
        page = await asyncio.to_thread(user.deliver_to_loopback, shown["auth_url"])
    token = await asyncio.wait_for(waiting, 10)
    assert page.status_code == 200
    assert "close this tab" in page.text
    assert token["refresh_token"]
    port = int(urlsplit(redirect).port or 0)
    with socket.socket() as probe:  # the one-shot listener is gone
        assert probe.connect_ex(("127.0.0.1", port)) != 0


async def test_loopback_answers_400_to_a_wrong_state_and_keeps_waiting(
    oidc_server: OidcServer, http: OAuthHttp
) -> None:
    flow = await new_flow(LoopbackFlow, oidc_server, http)
    shown = await flow.start()
    redirect = query_of(shown["auth_url"])["redirect_uri"]
    waiting = asyncio.create_task(flow.wait())
    with HeadlessUser() as user:
        forged = await asyncio.to_thread(
            user.client.get, redirect, params={"code": "x", "state": "forged"}
        )
        assert forged.status_code == 400
        assert not waiting.done()
        page = await asyncio.to_thread(user.deliver_to_loopback, shown["auth_url"])
    assert page.status_code == 200
    assert (await asyncio.wait_for(waiting, 10))["refresh_token"]


async def test_loopback_reports_a_denied_login(oidc_server: OidcServer, http: OAuthHttp) -> None:
    flow = await new_flow(LoopbackFlow, oidc_server, http)
    shown = await flow.start()
    waiting = asyncio.create_task(flow.wait())
    with HeadlessUser(deny=True) as user:
        await asyncio.to_thread(user.deliver_to_loopback, shown["auth_url"])
    with pytest.raises(OAuthFlowError) as caught:
        await asyncio.wait_for(waiting, 10)
    assert caught.value.oauth_error == "access_denied"
    await flow.aclose()


async def test_loopback_falls_back_to_the_device_flow_when_its_port_is_taken(
    oidc_server: OidcServer, http: OAuthHttp
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = provider(oidc_server, "browser_redirect", redirect_port=taken.getsockname()[1])
        flow, shown = await start_flow(config, await endpoints_of(config, http), http)
    assert isinstance(flow, DeviceCodeFlow)
    assert flow.flow_type == "device_code"
    assert "user_code" in shown


async def test_refresh_shares_one_provider_call_until_the_cooldown_ends_and_rotates(
    oidc_server: OidcServer, http: OAuthHttp
) -> None:
    registry, flow, pasted = await pasted_login(oidc_server, http)
    store = MemoryStore()
    writes = WritePath(store)
    first = await writes.save_login("test", "default", await flow.finish(pasted))
    now = [1000.0]
    wall = [time.time()]
    coordinator = RefreshCoordinator(
        registry, http, writes, monotonic=lambda: now[0], clock=lambda: wall[0]
    )
    results = await asyncio.gather(*(coordinator.refresh("test", "default") for _ in range(10)))
    assert coordinator.provider_calls == 1
    assert {r["access_token"] for r in results} == {results[0]["access_token"]}
    assert results[0]["refresh_token"] != first["refresh_token"]
    stored = await store.get_token("test", "default")
    assert stored is not None and stored["refresh_token"] == results[0]["refresh_token"]
    now[0] += REFRESH_COOLDOWN_S - 1
    wall[0] += REFRESH_COOLDOWN_S - 1
    again = await coordinator.refresh("test", "default")  # inside the cooldown
    assert coordinator.provider_calls == 1
    assert again["access_token"] == results[0]["access_token"]
    now[0] += 1
    wall[0] += 1
    after = await coordinator.refresh("test", "default")  # the cooldown is over
    assert coordinator.provider_calls == 2
    assert after["access_token"] != results[0]["access_token"]
    assert after["refresh_token"] != results[0]["refresh_token"]


async def test_refresh_with_a_dead_grant_requires_a_new_login(
    oidc_server: OidcServer, http: OAuthHttp
) -> None:
    config = provider(oidc_server, "pkce_redirect")
    registry = ProviderRegistry({"test": config})
    store = MemoryStore()
    await store.save_token(
        "test",
        "default",
        {
            "access_token": "a",
            "expiry": 1,
            "token_type": "Bearer",
            "refresh_token": "garbage-refresh",
        },
    )
    coordinator = RefreshCoordinator(registry, http, WritePath(store))
    with pytest.raises(ProxyError) as caught:
        await coordinator.refresh("test", "default")
    assert caught.value.code == ErrorCode.REAUTH_REQUIRED
    assert "garbage-refresh" not in caught.value.message


async def test_a_refresh_that_never_reached_the_provider_sets_no_cooldown(
    oidc_server: OidcServer, http: OAuthHttp
) -> None:
    """NOT_FOUND first; once a token is stored, the next refresh calls the provider."""
    registry, flow, pasted = await pasted_login(oidc_server, http)
    store = MemoryStore()
    writes = WritePath(store)
    coordinator = RefreshCoordinator(registry, http, writes)
    with pytest.raises(ProxyError) as caught:
        await coordinator.refresh("test", "default")
    assert caught.value.code == ErrorCode.NOT_FOUND
    await writes.save_login("test", "default", await flow.finish(pasted))
    refreshed = await coordinator.refresh("test", "default")
    assert coordinator.provider_calls == 1
    assert refreshed["refresh_token"]


@contextlib.asynccontextmanager
async def hostile_provider(path: str, answer: dict[str, Any]) -> AsyncIterator[str]:
    """A local HTTP server that answers POSTs to ``path`` with ``answer`` (plus, under
    "echo", the form it received), and yields its base URL. oidc-provider never misbehaves
    like this, so the tests that need a hostile provider use this stand-in."""

    async def respond(request: web.Request) -> web.Response:
        form = dict(await request.post())
        return web.json_response(
            {**answer, "echo": {"form": form, "auth": request.headers.get("Authorization")}}
        )

    app = web.Application()
    app.router.add_post(path, respond)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("user_code", "WDJB\x1b]0;owned\x07-MJHT"),
        ("verification_uri", "https://idp.example/device\x1b[2J"),
        ("verification_uri_complete", "https://idp.example/device?c=1\n\x1b[1A"),
    ],
)
async def test_a_device_answer_with_terminal_escapes_is_refused_naming_the_field(
    http: OAuthHttp, field: str, value: str
) -> None:
    """The user's terminal shows these fields."""
    answer = {
        "device_code": "dc",
        "user_code": "WDJB-MJHT",
        "verification_uri": "https://idp.example/device",
        "expires_in": 600,
        field: value,
    }
    async with hostile_provider("/device", answer) as base:
        config = provider_config(
            "hostile",
            {
                "client_id": "c",
                "flow": "device_code",
                "token_endpoint": f"{base}/token",
                "device_authorization_endpoint": f"{base}/device",
            },
        )
        flow = DeviceCodeFlow(config, await endpoints_of(config, http), http)
        with pytest.raises(OAuthFlowError) as caught:
            await flow.start()
    assert caught.value.message.endswith(f"invalid {field}")
    assert "\x1b" not in caught.value.message


@pytest.mark.parametrize("method", ["client_secret_post", "client_secret_basic"])
async def test_a_token_response_echoing_the_request_keeps_no_secret_outside_refresh_token(
    http: OAuthHttp, method: str
) -> None:
    """Every field but refresh_token reaches the sandbox: an echo of the refresh token
    sent (live when the provider does not rotate it) or of the client secret is dropped."""
    answer = {"access_token": "at-1", "token_type": "Bearer", "expires_in": 60, "scope": "s"}
    async with hostile_provider("/token", answer) as base:
        config = provider_config(
            "hostile",
            {
                "client_id": "c",
                "client_secret": "client-secret-9f8e",
                "token_auth_method": method,
                "flow": "device_code",
                "token_endpoint": f"{base}/token",
                "device_authorization_endpoint": f"{base}/device",
            },
        )
        token = await request_token(
            config,
            await endpoints_of(config, http),
            http,
            {"grant_type": "refresh_token", "refresh_token": "live-refresh-7c6d"},
            step="refresh request",
        )
    assert token["access_token"] == "at-1"
    assert token["scope"] == "s"
    assert "echo" not in token
    text = json.dumps(sanitize(token))
    assert "live-refresh-7c6d" not in text
    assert "client-secret-9f8e" not in text
    assert basic_credentials("c", "client-secret-9f8e").split()[1] not in text


def test_basic_client_credentials_are_form_encoded_before_base64() -> None:
    """RFC 6749 section 2.3.1, so a secret with ':' or '%' reaches the provider intact."""
    expected = base64.b64encode(b"my+client:p%3Aw%2B%25").decode()
    assert basic_credentials("my client", "p:w+%") == f"Basic {expected}"
