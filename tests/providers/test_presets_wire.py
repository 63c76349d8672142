"""What each adapter puts on the wire, in process against the same local servers."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import Iterator

import pytest

from credproxy.oauth.errors import OAuthFlowError
from credproxy.oauth.flows import CodePasteFlow, DeviceCodeFlow, request_token
from credproxy.oauth.http import OAuthHttp
from credproxy.tokens import NO_EXPIRY
from tests.fixtures.settings import provider_config
from tests.providers import fakes
from tests.providers.conftest import overrides


@pytest.fixture(scope="module")
def github() -> Iterator[fakes.GitHubOAuthApp]:
    server = fakes.GitHubOAuthApp().start()
    yield server
    server.stop()


async def test_github_calls_all_ask_for_json_and_a_non_expiring_token_gets_the_sentinel(
    github: fakes.GitHubOAuthApp, http: OAuthHttp
) -> None:
    config = provider_config("github", overrides("github", github))
    endpoints = config.static_endpoints()
    assert endpoints is not None
    flow = DeviceCodeFlow(config, endpoints, http)
    shown = await flow.start()
    github.approve(shown["user_code"])
    token = await flow.wait()
    assert token["expiry"] == NO_EXPIRY
    assert "refresh_token" not in token
    calls = [s for s in github.seen if s.path.startswith("/login/")]
    assert len(calls) >= 2
    assert all("application/json" in s.headers.get("Accept", "") for s in calls)


def test_a_slow_down_that_names_its_interval_is_read_even_from_a_form_body() -> None:
    error = OAuthFlowError.from_provider("github", {"error": "slow_down", "interval": "10"})
    assert error.oauth_error == "slow_down" and error.interval_s == 10.0
    pending = OAuthFlowError.from_provider(
        "github", {"error": "authorization_pending", "interval": 9}
    )
    assert pending.interval_s is None


def test_github_error_codes_inside_http_200_map_to_the_rfc_codes() -> None:
    from credproxy.oauth.adapters import ADAPTERS

    aliases = ADAPTERS["github"].error_aliases
    error = OAuthFlowError.from_provider(
        "github", {"error": "incorrect_device_code"}, aliases=aliases
    )
    assert error.oauth_error == "invalid_grant"


async def test_anthropic_exchanges_the_pasted_code_as_json_carrying_the_state(
    http: OAuthHttp,
) -> None:
    server = fakes.Anthropic().start()
    try:
        config = provider_config("anthropic", overrides("anthropic", server))
        endpoints = config.static_endpoints()
        assert endpoints is not None
        flow = CodePasteFlow(config, endpoints, http)
        url = flow.start()["auth_url"]
        page = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=10).read().decode()
        )
        pasted = re.search(r"(\S+#\S+)$", page.strip())
        assert pasted is not None
        token = await flow.finish(pasted[1])
        assert token["access_token"].startswith("sk-ant-oat01-")
        exchange = server.token_requests("authorization_code")[-1]
        assert exchange.encoding == "json"
        assert exchange.body["state"] == pasted[1].split("#")[1]
    finally:
        server.stop()


async def test_a_reused_codex_refresh_token_means_the_grant_is_gone(http: OAuthHttp) -> None:
    server = fakes.Codex().start()
    try:
        config = provider_config("codex", overrides("codex", server))
        endpoints = config.static_endpoints()
        assert endpoints is not None
        old = server.token_body("")["refresh_token"]
        form = {"grant_type": "refresh_token", "refresh_token": old}
        fresh = await request_token(config, endpoints, http, form, step="refresh request")
        assert fresh["refresh_token"] != old
        with pytest.raises(OAuthFlowError) as caught:
            await request_token(config, endpoints, http, form, step="refresh request")
        assert caught.value.oauth_error == "invalid_grant"  # refresh_token_reused
    finally:
        server.stop()
