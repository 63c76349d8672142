"""A real HTTPS upstream for the injection proxy's tests: aiohttp with ``trustme`` certificates.

It answers for several names (``api.upstream.test``, ``evil.test``); the
proxy reaches it through its test-only resolver map, which points every name
at 127.0.0.1. Every request it receives is recorded, so a test can check
what the upstream saw (the real secret) and what another host saw (nothing).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trustme
from aiohttp import WSMsgType, web

API_HOST = "api.upstream.test"
EVIL_HOST = "evil.test"
NAMES = (API_HOST, EVIL_HOST, "metadata.test", "loopback.test", "git.upstream.test")
CANARY = "sk-canary-" + "Q7x/Zr+Pk2Lm9Wt4Yb1Nc6Hd8Jf3Gs5Ve0Ua7Ti2Ro4Ep9Kw1Xz6Cy8Bv3Mn5/+AB"


def forms(value: str) -> dict[str, str]:
    """The encodings the scrubber must cover, as an upstream would echo them."""
    return {
        "raw": value,
        "percent": quote(value, safe=""),
        "json": json.dumps(value)[1:-1].replace("/", "\\/"),
        "base64": base64.b64encode(value.encode()).decode(),
        "base64url": base64.urlsafe_b64encode(value.encode()).decode(),
        "embedded_b64": base64.b64encode(b"xy" + value.encode() + b"z").decode(),
    }


@dataclass
class Seen:
    host: str
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    ca: trustme.CA
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    gates: list[asyncio.Event] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)
    git_root: Path | None = None
    git_password: str = ""
    runner: web.AppRunner | None = None

    @property
    def client_ssl(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def url(self, host: str = API_HOST) -> str:
        return f"https://{host}:{self.port}"

    def secret_seen(self, secret: str) -> bool:
        return any(
            secret in json.dumps(s.headers) + s.query + s.body.decode("latin-1") for s in self.seen
        )

    async def start(self) -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*NAMES).configure_cert(context)
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read() if request.path != "/v1/upload" else b""
        host = request.host.split(":")[0]
        self.seen.append(
            Seen(
                host,
                request.method,
                request.path,
                request.query_string,
                {k.lower(): v for k, v in request.headers.items()},
                body,
            )
        )
        if request.path.startswith("/repo.git/"):
            return self._git_file(request)
        handler = getattr(self, "_" + request.path.strip("/").replace("/", "_"), None)
        if handler is None:
            return web.json_response({"path": request.path, "host": host})
        response: web.StreamResponse = await handler(request, body)
        return response

    def _git_file(self, request: web.Request) -> web.StreamResponse:
        """Git's dumb HTTP protocol: static files of a bare repository, behind Basic auth."""
        expected = (
            "Basic " + base64.b64encode(f"x-access-token:{self.git_password}".encode()).decode()
        )
        if request.headers.get("authorization") != expected:
            return web.Response(
                status=401, headers={"WWW-Authenticate": 'Basic realm="git"'}, text="auth needed"
            )
        assert self.git_root is not None
        relative = request.path.removeprefix("/repo.git/")
        target = (self.git_root / relative).resolve()
        if not target.is_relative_to(self.git_root) or not target.is_file():
            return web.Response(status=404)
        return web.Response(body=target.read_bytes())

    async def _v1_echo(self, request: web.Request, body: bytes) -> web.StreamResponse:
        header = request.headers.get("x-api-key") or request.headers.get("authorization") or ""
        credential = header.removeprefix("Bearer ")
        credential = credential or request.query.get("key", "")
        payload = {
            "headers": dict(request.headers),
            "query": request.query_string,
            "body": body.decode("utf-8", "replace"),
            "forms": forms(credential),
        }
        text = (
            json.dumps(payload) + "\n" + "\n".join(f"{k}={v}" for k, v in forms(credential).items())
        )
        split = request.query.get("split")
        response = web.StreamResponse(
            headers={"Content-Type": "application/json", "X-Echo": credential}
        )
        await response.prepare(request)
        if split and credential and credential in text:
            cut = text.index(credential) + int(split)
            await response.write(text[:cut].encode())
            await asyncio.sleep(0.05)
            await response.write(text[cut:].encode())
        else:
            await response.write(text.encode())
        await response.write_eof()
        return response

    async def _v1_sse(self, request: web.Request, body: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index, gate in enumerate(self.gates):
            await response.write(f"event: step\ndata: {index}\n\n".encode())
            await gate.wait()
        await response.write(b"event: done\ndata: end\n\n")
        await response.write_eof()
        return response

    async def _v1_leak(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """An answer that quotes the key without having been sent it (a key listing)."""
        return web.json_response({"keys": [CANARY]}, headers={"X-Key": CANARY})

    async def _v1_redirect(self, request: web.Request, body: bytes) -> web.StreamResponse:
        raise web.HTTPFound(f"https://{EVIL_HOST}:{self.port}/steal")

    async def _v1_private(self, request: web.Request, body: bytes) -> web.StreamResponse:
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if not bearer or bearer in self.revoked:
            return web.Response(status=401, text="stale token")
        return web.json_response({"ok": True, "body": body.decode()})

    async def _v1_upload(self, request: web.Request, body: bytes) -> web.StreamResponse:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.json_response(
            {
                "received": total,
                "chunked": "chunked" in request.headers.get("Transfer-Encoding", ""),
            }
        )

    async def _v1_messages(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """Anthropic's Messages API, as much of it as the SDK needs; echoes the key it got."""
        text = f"key={credential_of(request)}"
        message: dict[str, Any] = {
            "id": "msg_test",
            "type": "message",
            "role": "assistant",
            "model": "claude-test",
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1},
        }
        if not json.loads(body).get("stream"):
            return web.json_response(message)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        start = {**message, "content": [], "stop_reason": None}
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": start}),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            *[
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": part},
                    },
                )
                for part in (text[:4], text[4:])
            ],
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 2},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        for name, data in events:
            await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        await response.write_eof()
        return response

    async def _v1_chat_completions(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """OpenAI's chat completions, as much as the SDK needs; echoes the bearer it got."""
        text = f"key={request.headers.get('authorization', '').removeprefix('Bearer ')}"
        base = {"id": "chatcmpl-test", "created": 0, "model": "gpt-test"}
        if not json.loads(body).get("stream"):
            return web.json_response(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for part in (text[:4], text[4:]):
            chunk = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": part}, "finish_reason": None}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _v1_ws(self, request: web.Request, body: bytes) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        credential = request.headers.get("x-api-key", "")
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str(f"{message.data} key={credential}")
        return ws


def credential_of(request: web.Request) -> str:
    """The API key as Anthropic's API takes it: ``x-api-key`` or ``Authorization: Bearer``."""
    bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
    return request.headers.get("x-api-key") or bearer


def echo_payload(data: bytes) -> tuple[dict[str, Any], dict[str, str]]:
    """The echoed request, and the credential's forms (one ``name=value`` line each)."""
    first, *lines = data.decode().split("\n")
    result: dict[str, Any] = json.loads(first)
    return result, dict(line.split("=", 1) for line in lines)
