"""OAuth routes: the proxy takes the access token through the daemon's refresh machinery.

The refresh token comes from a real login at the test OAuth server
(oidc-provider), and every refresh is a real call to it; its own counter of
``refresh_token`` grants is what the tests assert on.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from credproxy.client import ProxyClient
from credproxy.inject.secrets import StoreSecrets
from credproxy.oauth.config import ProviderRegistry
from credproxy.oauth.runtime import OAuthRuntime
from credproxy.settings import parse_settings
from credproxy.store.memory import MemoryStore
from tests.fixtures.daemon import DaemonFactory
from tests.fixtures.oidc import OidcServer
from tests.inject.conftest import ProxyFactory
from tests.inject.upstream import API_HOST, Upstream
from tests.oauth.browser import HeadlessUser
from tests.oauth.harness import start_oauth_daemon

REFRESH_GRANT = "refresh_token"


def _logged_in_token(factory: DaemonFactory, oidc: OidcServer) -> dict[str, Any]:
    daemon = start_oauth_daemon(factory, {"paste": oidc.provider_table("pkce_redirect")})
    with ProxyClient(str(daemon.socket_path), daemon.token) as client:
        started = client.oauth_initiate("paste")
        with HeadlessUser() as user:
            code = user.copy_code(started["auth_url"], oidc.oob_uri)
        client.oauth_exchange(started["session_id"], code)
    token = daemon.stored_token("paste")
    assert token is not None and token.get("refresh_token")
    return token


async def _oauth_secrets(
    token: dict[str, Any], oidc: OidcServer
) -> tuple[StoreSecrets, OAuthRuntime, MemoryStore]:
    store = MemoryStore()
    await store.save_token("paste", "default", token)
    settings = parse_settings({"providers": {"paste": oidc.provider_table("pkce_redirect")}})
    registry = ProviderRegistry.from_settings(settings)
    runtime = OAuthRuntime(registry, store)
    return StoreSecrets(store, runtime), runtime, store


def _route(upstream: Upstream) -> dict[str, dict[str, Any]]:
    return {
        "oauth": {
            "upstream": upstream.url(API_HOST),
            "token": "paste",
            "header": "authorization",
            "format": "Bearer {}",
            "allow_private": True,
        }
    }


async def test_a_hundred_concurrent_requests_on_an_expired_token_cause_exactly_one_refresh(
    start_proxy: ProxyFactory,
    upstream: Upstream,
    client: aiohttp.ClientSession,
    credproxy_daemon: DaemonFactory,
    oidc_server: OidcServer,
) -> None:
    token = await asyncio.to_thread(_logged_in_token, credproxy_daemon, oidc_server)
    stale = token["access_token"]
    secrets, runtime, store = await _oauth_secrets(token, oidc_server)
    running = await start_proxy(_route(upstream), secrets=secrets, store=store)
    await store.save_token("paste", "default", {**token, "expiry": 1})
    upstream.revoked = {stale}
    before = oidc_server.token_requests().get(REFRESH_GRANT, 0)
    header = {"authorization": f"Bearer {running.stand_ins['oauth']}"}

    async def one() -> int:
        async with client.get(running.url("oauth", "/v1/private"), headers=header) as response:
            await response.read()
            return response.status

    try:
        statuses = await asyncio.gather(*(one() for _ in range(100)))
    finally:
        await runtime.aclose()
    assert statuses == [200] * 100
    assert oidc_server.token_requests().get(REFRESH_GRANT, 0) == before + 1
    fresh = await store.get_token("paste", "default")
    assert fresh is not None and fresh["access_token"] != stale
    assert {s.headers["authorization"] for s in upstream.seen} == {
        f"Bearer {fresh['access_token']}"
    }


async def test_an_upstream_401_refreshes_once_and_retries_the_request_once(
    start_proxy: ProxyFactory,
    upstream: Upstream,
    client: aiohttp.ClientSession,
    credproxy_daemon: DaemonFactory,
    oidc_server: OidcServer,
) -> None:
    token = await asyncio.to_thread(_logged_in_token, credproxy_daemon, oidc_server)
    secrets, runtime, store = await _oauth_secrets(token, oidc_server)
    running = await start_proxy(_route(upstream), secrets=secrets, store=store)
    upstream.revoked = {token["access_token"]}
    before = oidc_server.token_requests().get(REFRESH_GRANT, 0)
    try:
        async with client.post(
            running.url("oauth", "/v1/private"),
            headers={"authorization": f"Bearer {running.stand_ins['oauth']}"},
            data=b"replayed body",
        ) as response:
            answer = await response.json()
    finally:
        await runtime.aclose()
    assert response.status == 200
    assert answer == {"ok": True, "body": "replayed body"}
    assert oidc_server.token_requests().get(REFRESH_GRANT, 0) == before + 1
    first, retried = (s.headers["authorization"] for s in upstream.seen)
    assert first == f"Bearer {token['access_token']}"
    assert retried != first
