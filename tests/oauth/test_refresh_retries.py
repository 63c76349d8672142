"""Which refresh failures are retried, how often and after how long.

The real oidc-provider cannot be made to answer 503 or 429, nor to vanish
mid-test, so these tests use a local aiohttp stand-in that answers the token
endpoint from a script of responses and counts the requests it got. Sleeps are
injected and recorded, so no test waits the real 1 s and 3 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from credproxy.oauth.config import ProviderRegistry
from credproxy.oauth.http import OAuthHttp
from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.refresh import RefreshCoordinator
from credproxy.store.memory import MemoryStore
from credproxy.store.writepath import WritePath, host_metadata
from tests.fixtures.hanging_store import HangingStore
from tests.fixtures.settings import provider_config

Answer = tuple[int, dict[str, Any], dict[str, str]]
Script = list[Answer]

STORED = {
    "access_token": "old-access",
    "expiry": 1,
    "token_type": "Bearer",
    "refresh_token": "rt-1",
}
GOOD: Answer = (200, {"access_token": "new-access", "token_type": "Bearer", "expires_in": 3600,
              "refresh_token": "rt-2"}, {})  # fmt: skip
STORE_BOUND_S = 0.5
"""How soon a hung store call fails here; real stores get 15 s."""
UNAVAILABLE: Answer = (503, {"error": "temporarily_unavailable"}, {})


@contextlib.asynccontextmanager
async def scripted_provider(script: Script) -> AsyncIterator[tuple[str, list[str]]]:
    """Answers token requests from ``script`` in order; yields the base URL and the
    refresh tokens received (one entry per request)."""
    received: list[str] = []

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        received.append(str(form.get("refresh_token")))
        status, body, headers = script[min(len(received), len(script)) - 1]
        return web.json_response(body, status=status, headers=headers)

    app = web.Application()
    app.router.add_post("/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", received
    finally:
        await runner.cleanup()


class Refresher:
    def __init__(self, base: str, store: MemoryStore | None = None) -> None:
        config = provider_config(
            "stand",
            {
                "client_id": "c",
                "flow": "device_code",
                "token_endpoint": f"{base}/token",
                "device_authorization_endpoint": f"{base}/device",
            },
        )
        self.store = store if store is not None else MemoryStore()
        self.http = OAuthHttp()
        self.sleeps: list[float] = []
        self.providers = ProviderRegistry({"stand": config})
        self.coordinator = RefreshCoordinator(
            self.providers,
            self.http,
            WritePath(self.store, store_timeout_s=STORE_BOUND_S),
            sleep=self._sleep,
        )

    async def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    async def __aenter__(self) -> Refresher:
        await self.store.save_token("stand", "default", dict(STORED))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()

    async def refresh(self) -> dict[str, Any]:
        return await self.coordinator.refresh("stand", "default")

    async def stored(self) -> dict[str, Any]:
        token = await self.store.get_token("stand", "default")
        assert token is not None
        return token


async def test_a_provider_answering_503_is_tried_three_times_then_fails_keeping_the_token() -> None:
    async with scripted_provider([UNAVAILABLE]) as (base, received), Refresher(base) as r:
        with pytest.raises(ProxyError) as caught:
            await r.refresh()
        stored = await r.stored()
    assert received == ["rt-1"] * 3
    assert r.sleeps == [1.0, 3.0]
    assert caught.value.code == ErrorCode.EXCHANGE_FAILED
    assert "temporarily unavailable" in caught.value.message
    assert "tried 3 times" in caught.value.message
    assert "the stored token is unchanged" in caught.value.message
    assert {k: v for k, v in stored.items() if k in STORED} == STORED
    outcome = host_metadata(stored)["last_refresh"]
    assert outcome["outcome"] == "failed"
    assert outcome["code"] == ErrorCode.EXCHANGE_FAILED


async def test_a_provider_recovering_on_the_third_try_gives_the_new_token() -> None:
    script: Script = [(502, {}, {}), UNAVAILABLE, GOOD]
    async with scripted_provider(script) as (base, received), Refresher(base) as r:
        token = await r.refresh()
        stored = await r.stored()
    assert received == ["rt-1"] * 3
    assert r.sleeps == [1.0, 3.0]
    assert token["access_token"] == "new-access"
    assert stored["refresh_token"] == "rt-2"
    assert host_metadata(stored)["last_refresh"]["outcome"] == "ok"


async def test_a_429_with_retry_after_waits_as_told() -> None:
    script: Script = [(429, {}, {"Retry-After": "2"}), GOOD]
    async with scripted_provider(script) as (base, received), Refresher(base) as r:
        token = await r.refresh()
    assert len(received) == 2
    assert r.sleeps == [2.0]
    assert token["access_token"] == "new-access"


async def test_a_retry_after_beyond_the_host_limit_is_not_waited_for() -> None:
    script: Script = [(429, {}, {"Retry-After": "60"})]
    async with scripted_provider(script) as (base, received), Refresher(base) as r:
        with pytest.raises(ProxyError) as caught:
            await r.refresh()
    assert len(received) == 1
    assert r.sleeps == []
    assert "asked to wait 60 s" in caught.value.message


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        (400, {"error": "invalid_grant"}, {}),
        (401, {"error": "invalid_client"}, {}),
        (429, {"error": "slow_down"}, {}),
        (503, {"error": "invalid_grant"}, {}),
    ],
    ids=["invalid_grant", "401", "429-without-retry-after", "invalid_grant-even-on-503"],
)
async def test_refusals_are_never_retried(
    status: int, body: dict[str, Any], headers: dict[str, str]
) -> None:
    script: Script = [(status, body, headers)]
    async with scripted_provider(script) as (base, received), Refresher(base) as r:
        with pytest.raises(ProxyError) as caught:
            await r.refresh()
        stored = await r.stored()
    assert len(received) == 1
    assert r.sleeps == []
    if body.get("error") == "invalid_grant":
        assert caught.value.code == ErrorCode.REAUTH_REQUIRED
    assert stored["refresh_token"] == "rt-1"


async def test_an_unreachable_provider_is_tried_three_times() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    async with Refresher(f"http://127.0.0.1:{port}") as r:
        with pytest.raises(ProxyError) as caught:
            await r.refresh()
        stored = await r.stored()
    assert r.sleeps == [1.0, 3.0]
    assert "could not be reached" in caught.value.message
    assert "tried 3 times" in caught.value.message
    assert {k: v for k, v in stored.items() if k in STORED} == STORED


async def test_a_renewal_whose_save_hangs_fails_in_time_and_its_rotated_token_survives() -> None:
    """A scheduler-driven refresh has no request timeout around it. The hung save
    of the rotated refresh token fails the caller with a clear error, still lands
    once the store answers, and the next refresh uses it without a provider call."""
    store = HangingStore()
    async with scripted_provider([GOOD]) as (base, received), Refresher(base, store) as refresher:
        store.hang.add("save_token")
        async with asyncio.timeout(30.0):
            with pytest.raises(ProxyError) as caught:
                await refresher.refresh()
            assert caught.value.code == ErrorCode.INTERNAL_ERROR
            assert caught.value.message == "the host's credential store did not answer in time"
            store.hang.clear()
            store.answer.set()
            refresher.coordinator = RefreshCoordinator(  # past the cooldown: a new daemon
                refresher.providers, refresher.http, WritePath(store)
            )
            again = await refresher.refresh()
        assert again["refresh_token"] == "rt-2"
        assert received == ["rt-1"]
        assert (await refresher.stored())["refresh_token"] == "rt-2"
