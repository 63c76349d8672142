"""The reverse proxy against a real HTTPS upstream: injection, scrubbing, refusals, streaming."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import unquote_plus

import aiohttp
from yarl import URL

from tests.inject.conftest import ProxyFactory
from tests.inject.upstream import API_HOST, CANARY, EVIL_HOST, Upstream, echo_payload, forms


async def test_the_upstream_gets_the_real_secret_and_the_client_only_ever_sees_the_stand_in(
    start_proxy: ProxyFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    running = await start_proxy()
    stand_in = running.stand_ins["api"]
    async with client.post(
        running.url("api", "/v1/echo?q=1"),
        headers={"x-api-key": stand_in, "anthropic-version": "2023-06-01"},
        data=b"hello",
    ) as response:
        raw = await response.read()
        headers = dict(response.headers)
    assert response.status == 200
    assert upstream.seen[-1].headers["x-api-key"] == CANARY
    assert upstream.seen[-1].headers["anthropic-version"] == "2023-06-01"
    assert CANARY.encode() not in raw
    assert CANARY not in json.dumps(headers)
    _, echoed = echo_payload(raw)
    assert echoed == forms(stand_in) | {"embedded_b64": echoed["embedded_b64"]}
    for form in forms(CANARY).values():
        assert form.encode() not in raw
    assert headers["X-Echo"] == stand_in


async def test_a_secret_split_across_two_upstream_chunks_is_still_replaced(
    start_proxy: ProxyFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    running = await start_proxy()
    stand_in = running.stand_ins["api"]
    for split in (1, 7, len(CANARY) // 2, len(CANARY) - 1):
        async with client.get(
            running.url("api", f"/v1/echo?split={split}"), headers={"x-api-key": stand_in}
        ) as response:
            raw = await response.read()
        assert CANARY.encode() not in raw
        assert stand_in.encode() in raw


async def test_a_value_other_than_the_stand_in_is_dropped_and_nothing_is_injected(
    start_proxy: ProxyFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    running = await start_proxy()
    async with client.get(
        running.url("api", "/v1/echo"), headers={"x-api-key": "sk-my-own-key"}
    ) as response:
        await response.read()
    assert "x-api-key" not in {k.lower() for k in upstream.seen[-1].headers}
    assert not upstream.secret_seen(CANARY)


async def test_the_stand_in_outside_the_routes_slot_or_paths_is_never_replaced(
    start_proxy: ProxyFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    running = await start_proxy()
    stand_in = running.stand_ins["api"]
    async with client.post(
        running.url("api", "/v1/echo"),
        params={"key": stand_in},
        headers={"x-other": stand_in, "authorization": f"Bearer {stand_in}"},
        data=stand_in.encode(),
    ) as response:
        await response.read()
    seen = upstream.seen[-1]
    assert seen.headers["x-other"] == stand_in
    assert seen.headers["authorization"] == f"Bearer {stand_in}"
    assert stand_in in unquote_plus(seen.query)
    assert seen.body == stand_in.encode()
    assert not upstream.secret_seen(CANARY)
    count = len(upstream.seen)
    async with client.get(
        running.url("api", "/v2/echo"), headers={"x-api-key": stand_in}
    ) as response:
        text = await response.text()
    assert response.status == 403
    assert "does not allow this path" in text
    assert len(upstream.seen) == count


async def test_a_redirect_to_another_host_is_handed_back_and_never_followed(
    start_proxy: ProxyFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    running = await start_proxy()
    async with client.get(
        running.url("api", "/v1/redirect"),
        headers={"x-api-key": running.stand_ins["api"]},
        allow_redirects=False,
    ) as response:
        await response.read()
    assert response.status == 302
    assert response.headers["Location"].startswith(f"https://{EVIL_HOST}:")
    assert [s.host for s in upstream.seen] == [API_HOST]


async def test_trace_upgrades_dot_segments_and_encoded_slashes_are_refused(
    start_proxy: ProxyFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    running = await start_proxy()
    stand_in = running.stand_ins["api"]
    cases = [
        ("TRACE", "/v1/echo", {}),
        ("GET", "/v1/../v2/echo", {}),
        ("GET", "/v1/%2e%2e/admin", {}),
        ("GET", "/v1/a%2fb", {}),
        ("GET", "/v1/echo", {"Connection": "Upgrade", "Upgrade": "h2c"}),
        ("GET", "/v1/echo", {"Connection": "Upgrade", "Upgrade": "websocket"}),
    ]
    for method, path, extra in cases:
        url = running.base + "/api" + path
        async with client.request(
            method,
            URL(url, encoded=True),
            headers={"x-api-key": stand_in, **extra},
        ) as response:
            await response.read()
        assert response.status in (403, 405), (method, path, extra)
        assert response.headers.get("X-Credproxy-Refused") == "1"
    assert upstream.seen == []


async def test_upstreams_resolving_to_metadata_or_loopback_addresses_are_refused(
    start_proxy: ProxyFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    common = {"key": "api", "header": "x-api-key"}
    running = await start_proxy(
        {
            "meta": {"upstream": f"https://metadata.test:{upstream.port}", **common},
            "loop": {"upstream": upstream.url("loopback.test"), **common},
            "literal": {"upstream": "https://169.254.169.254", **common},
        }
    )
    for name, expected in (
        ("meta", "metadata"),
        ("loop", "loopback or private"),
        ("literal", "metadata"),
    ):
        async with client.get(
            running.url(name, "/v1/echo"), headers={"x-api-key": running.stand_ins[name]}
        ) as response:
            text = await response.text()
        assert response.status == 502, name
        assert expected in text, (name, text)
        assert CANARY not in text
    assert upstream.seen == []


async def test_server_sent_events_reach_the_client_one_by_one_as_the_upstream_sends_them(
    start_proxy: ProxyFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    running = await start_proxy()
    upstream.gates = [asyncio.Event() for _ in range(3)]
    async with client.get(
        running.url("api", "/v1/sse"), headers={"x-api-key": running.stand_ins["api"]}
    ) as response:
        for index, gate in enumerate(upstream.gates):
            # The upstream sends the next event only after this gate opens, so
            # reading this one first proves the proxy passed it on unbuffered.
            event = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 30)
            assert event == f"event: step\ndata: {index}\n\n".encode()
            gate.set()
        assert await response.content.readuntil(b"\n\n") == b"event: done\ndata: end\n\n"


async def test_a_large_upload_streams_through_without_a_content_length(
    start_proxy: ProxyFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    running = await start_proxy()
    chunk = b"x" * 65536

    async def body() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield chunk

    async with client.post(
        running.url("api", "/v1/upload"),
        headers={"x-api-key": running.stand_ins["api"]},
        data=body(),
    ) as response:
        result = await response.json()
    assert result == {"received": 64 * 65536, "chunked": True}


async def test_a_websocket_route_injects_on_the_handshake_and_scrubs_messages(
    start_proxy: ProxyFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    running = await start_proxy(
        {
            "ws": {
                "upstream": upstream.url(API_HOST),
                "key": "api",
                "header": "x-api-key",
                "websocket": True,
                "allow_private": True,
            }
        }
    )
    stand_in = running.stand_ins["ws"]
    async with client.ws_connect(
        running.base.replace("http", "ws") + "/ws/v1/ws", headers={"x-api-key": stand_in}
    ) as ws:
        await ws.send_str("hi")
        message = await asyncio.wait_for(ws.receive_str(), 30)
    assert message == f"hi key={stand_in}"
    assert upstream.seen[-1].headers["x-api-key"] == CANARY


async def test_every_request_leaves_one_audit_line_without_secrets_or_query_values(
    start_proxy: ProxyFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    running = await start_proxy()
    stand_in = running.stand_ins["api"]
    async with client.get(
        running.url("api", f"/v1/echo?token={stand_in}&plain=visible-value"),
        headers={"x-api-key": stand_in},
    ) as response:
        await response.read()
    async with client.request("TRACE", running.url("api", "/v1/echo")) as response:
        await response.read()
    assert len(running.lines) == 2
    first = json.loads(running.lines[0].removeprefix("audit "))
    assert first["route"] == "api"
    assert first["method"] == "GET"
    assert first["path"] == "/v1/echo"
    assert first["status"] == 200
    assert first["query_names"] == ["token", "plain"]
    assert first["bytes_out"] > 0
    assert "duration_ms" in first
    assert first["peer"].startswith("127.0.0.1:")
    text = "".join(running.lines)
    assert CANARY not in text
    assert stand_in not in text
    assert "visible-value" not in text
    assert json.loads(running.lines[1].removeprefix("audit "))["status"] == 405


async def test_proxy_authorization_and_hop_by_hop_headers_never_reach_the_upstream(
    start_proxy: ProxyFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    running = await start_proxy()
    async with client.get(
        running.url("api", "/v1/echo"),
        headers={
            "x-api-key": running.stand_ins["api"],
            "Proxy-Authorization": "Basic c2VjcmV0",
            "Connection": "keep-alive, X-Private-Hop",
            "X-Private-Hop": "drop me",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "anthropic-beta": "oauth-2025-04-20",
        },
    ) as response:
        await response.read()
    seen = upstream.seen[-1].headers
    for name in ("proxy-authorization", "x-private-hop", "keep-alive", "te"):
        assert name not in seen
    assert seen["anthropic-beta"] == "oauth-2025-04-20"


async def test_a_stand_in_for_one_route_is_not_replaced_on_another(
    start_proxy: ProxyFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    common = {"header": "x-api-key", "allow_private": True, "upstream": upstream.url(API_HOST)}
    running = await start_proxy({"one": {"key": "api", **common}, "two": {"key": "api", **common}})
    async with client.get(
        running.url("two", "/v1/echo"), headers={"x-api-key": running.stand_ins["one"]}
    ) as response:
        await response.read()
    assert "x-api-key" not in upstream.seen[-1].headers
    assert not upstream.secret_seen(CANARY)


async def test_an_answer_quoting_the_secret_is_scrubbed_even_when_the_request_carried_none(
    start_proxy: ProxyFactory, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    running = await start_proxy()
    async with client.get(running.url("api", "/v1/leak")) as response:
        raw = await response.read()
        header = response.headers["X-Key"]
    assert "x-api-key" not in upstream.seen[-1].headers
    assert CANARY.encode() not in raw
    assert running.stand_ins["api"].encode() in raw
    assert header == running.stand_ins["api"]


async def test_connections_past_the_cap_are_closed_and_a_freed_place_is_reused() -> None:
    from aiohttp import web

    from credproxy.inject.proxy import ConnectionCap, serve

    async def ok(request: web.BaseRequest) -> web.Response:
        return web.Response(text="ok")

    cap = ConnectionCap(2)
    server, listener = await serve(ok, host="127.0.0.1", cap=cap)
    port = listener.sockets[0].getsockname()[1]
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for reader, writer in held:
            writer.write(request)
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 30) == b""
        writer.close()
        held[0][1].close()
        await held[0][1].wait_closed()
        async with asyncio.timeout(30):
            while cap.open >= 2:  # the server sees the close on its next loop turn
                await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()
        held[1][1].close()
    finally:
        listener.close()
        await server.shutdown(1.0)
