"""Fixtures: a real HTTPS upstream and an in-process injection proxy in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import trustme

from credproxy.inject.proxy import InjectProxy, serve
from credproxy.inject.routes import Route, parse_routes
from credproxy.inject.secrets import StoreSecrets
from credproxy.inject.standin import make_stand_in
from credproxy.settings import parse_settings
from credproxy.store.memory import MemoryStore
from tests.inject.upstream import API_HOST, CANARY, NAMES, Upstream

LOOPBACK_MAP = dict.fromkeys(NAMES, "127.0.0.1") | {"metadata.test": "169.254.169.254"}


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def upstream(ca: trustme.CA) -> AsyncIterator[Upstream]:
    server = Upstream(ca)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@dataclass
class Running:
    proxy: InjectProxy
    base: str
    stand_ins: dict[str, str]
    routes: dict[str, Route]
    store: MemoryStore
    lines: list[str]

    def url(self, route: str, path: str) -> str:
        return f"{self.base}/{route}{path}"


class _Lines:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def write(self, text: str) -> int:
        self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        return None


ProxyFactory = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_proxy(upstream: Upstream) -> AsyncIterator[ProxyFactory]:
    from credproxy.audit import AuditLog

    opened: list[tuple[InjectProxy, Any]] = []

    async def start(
        routes: dict[str, dict[str, Any]] | None = None,
        *,
        secrets: Any = None,
        store: MemoryStore | None = None,
    ) -> Running:
        store = store or MemoryStore()
        if not await store.list_keys():
            await store.set_key("api", CANARY)
        tables = routes or {
            "api": {
                "upstream": upstream.url(API_HOST),
                "key": "api",
                "header": "x-api-key",
                "paths": ["/v1/**"],
                "allow_private": True,
            }
        }
        parsed = parse_routes(parse_settings({"routes": tables}).routes)
        chosen = {name: parsed[name] for name in tables}
        source = secrets or StoreSecrets(store, None)
        stand_ins = {}
        secrets_now = {}
        for name, route in chosen.items():
            real = (
                await source.api_key(route.credential)
                if route.credential_kind == "key"
                else await source.access_token(route.credential, route.bucket)
            )
            stand_ins[name] = make_stand_in(real, route.stand_in_prefix)
            secrets_now[name] = real
        lines: list[str] = []
        proxy = InjectProxy(
            chosen,
            stand_ins,
            source,
            audit=AuditLog(_Lines(lines)),  # type: ignore[arg-type]
            hosts=LOOPBACK_MAP,
            upstream_ssl=upstream.client_ssl,
        )
        await proxy.start()
        for name, real in secrets_now.items():
            proxy.prime(name, real)
        server, listener = await serve(proxy.handle_reverse, host="127.0.0.1")
        opened.append((proxy, (server, listener)))
        port = listener.sockets[0].getsockname()[1]
        return Running(proxy, f"http://127.0.0.1:{port}", stand_ins, chosen, store, lines)

    yield start
    for proxy, (server, listener) in opened:
        listener.close()
        await server.shutdown(1.0)
        await proxy.aclose()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session
