"""What the fault tests share: a stand-in OAuth token endpoint that misbehaves on cue,
and a daemon configured to refresh through it.

The real test OAuth server (oidc-provider, tests/fixtures/oidc.py) answers
correctly or with proper OAuth errors; it cannot be made to hang past a
deadline, answer with an HTML page or with JSON that is not a token. This
aiohttp server stands in for a provider doing exactly that, and only that.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.fixtures.daemon import DaemonFactory, DaemonHandle

PROVIDER = "standin"
STORED_ACCESS = "standin-access-decoy-0001"
STORED_REFRESH = "standin-refresh-decoy-0001"
FRESH_ACCESS = "standin-access-decoy-0002"
FRESH_REFRESH = "standin-refresh-decoy-0002"
PROVIDER_TIMEOUT_S = 2
"""The provider's ``timeout_s`` in these tests. The host caps it at 15 s (the
default); the same code enforces any smaller value, so the tests need not wait 15 s."""


@dataclass
class TokenEndpoint:
    """``mode``: ``ok`` (a rotated token), ``slow`` (never answers in time),
    ``html`` (a 502 page), ``not_json``, ``not_a_token`` (JSON without
    ``access_token``), ``huge`` (an endless body)."""

    port: int = 0
    mode: str = "ok"
    calls: int = 0
    disconnected: threading.Event = field(default_factory=threading.Event)
    answered: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        await request.post()
        if self.mode == "slow":
            try:
                while request.transport is not None and not request.transport.is_closing():
                    await asyncio.sleep(0.05)
            finally:  # the server cancels this handler when the peer goes
                self.disconnected.set()
            return web.Response(status=504)
        if self.mode == "slow_then_ok":
            await asyncio.sleep(PROVIDER_TIMEOUT_S / 2)
        if self.mode == "html":
            return web.Response(
                status=502, text="<html><body>Bad gateway</body></html>", content_type="text/html"
            )
        if self.mode == "not_json":
            return web.Response(
                status=200, text="access_token=" + FRESH_ACCESS, content_type="application/json"
            )
        if self.mode == "not_a_token":
            return web.json_response({"token": FRESH_ACCESS, "refresh_token": FRESH_REFRESH})
        if self.mode == "huge":
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            await response.prepare(request)
            chunk = b'{"access_token":"' + b"a" * 65_536
            try:
                while True:
                    await response.write(chunk)
            except (ConnectionError, RuntimeError):
                self.disconnected.set()
            return response
        body: dict[str, Any] = {
            "access_token": FRESH_ACCESS,
            "refresh_token": FRESH_REFRESH,
            "token_type": "Bearer",
            "expires_in": 3600,
        }
        self.answered.set()
        return web.Response(text=json.dumps(body), content_type="application/json")


@pytest.fixture
def token_endpoint() -> Iterator[TokenEndpoint]:
    endpoint = TokenEndpoint()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner_box: list[web.AppRunner] = []

    async def start() -> None:
        app = web.Application()
        app.router.add_post("/token", endpoint.handle)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        endpoint.port = listener.getsockname()[1]
        site = web.SockSite(runner, listener)
        await site.start()
        runner_box.append(runner)

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield endpoint
    finally:
        asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def provider_config(workdir: Path, token_url: str) -> Path:
    """The daemon's config: the factory's seeded file store and one provider."""
    config = workdir / "faults.toml"
    config.write_text(
        f'[store]\nbackend = "file"\npath = "{workdir / "store"}"\nkey_source = "keyfile"\n\n'
        f"[providers.{PROVIDER}]\n"
        'client_id = "credproxy-fault-tests"\n'
        'flow = "device_code"\n'
        f'token_endpoint = "{token_url}"\n'
        f'device_authorization_endpoint = "{token_url.rsplit("/", 1)[0]}/device"\n'
        f"timeout_s = {PROVIDER_TIMEOUT_S}\n"
    )
    return config


def stored_token() -> dict[str, Any]:
    return {
        "access_token": STORED_ACCESS,
        "refresh_token": STORED_REFRESH,
        "token_type": "Bearer",
        "expiry": 4_000_000_000,
    }


def daemon_with_provider(
    credproxy_daemon: DaemonFactory, token_url: str, *args: str
) -> DaemonHandle:
    workdir = credproxy_daemon.workdir()
    config = provider_config(workdir, token_url)
    return credproxy_daemon(
        "--config",
        str(config),
        *args,
        workdir=workdir,
        tokens={(PROVIDER, "default"): stored_token()},
        keys={"still-here": "sk-still-here-decoy"},
    )
