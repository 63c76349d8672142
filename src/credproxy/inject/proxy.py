"""The reverse proxy: one request from the sandbox, one checked request upstream.

By base URL, a request for ``/NAME/rest`` goes to route NAME's upstream base
URL plus ``rest``; through interception (``intercept.py``) the route is the
one whose upstream host the client connected to. Either way the request is
checked against the route (method, path globs, no dot segments or encoded
slashes, no TRACE, no upgrade unless the route allows WebSocket), the
sandbox's value in the route's slot is dropped (and replaced with the real
secret only when it was this run's stand-in), ``Proxy-Authorization`` and
hop-by-hop headers are dropped, redirects are handed back unfollowed, and
the answer streams back with every form of the secret replaced by the
stand-in (``scrub.py``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote, unquote, unquote_plus

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from credproxy.audit import AuditLog, ProxyRequestEvent
from credproxy.inject.routes import Route
from credproxy.inject.scrub import ScrubRules, StreamScrubber
from credproxy.inject.secrets import SecretSource, SecretUnavailable
from credproxy.inject.standin import SecretFormatError, check_secret
from credproxy.inject.upstream import CheckedResolver, UpstreamRefused, check_literal

log = logging.getLogger("credproxy.inject")

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
REQUEST_DROPPED: Final = HOP_BY_HOP | {"host", "accept-encoding"}
WEBSOCKET_DROPPED: Final = REQUEST_DROPPED | {
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "content-length",
}
RESPONSE_DROPPED: Final = HOP_BY_HOP | {"content-length", "content-encoding"}
DECODED_ENCODINGS: Final = frozenset({"", "identity", "gzip", "deflate", "x-gzip"})
MAX_REPLAY_BYTES: Final = 1 << 20
"""A token route keeps a request body up to this size so a 401 can be retried once."""
UPLOAD_CHUNK: Final = 1 << 16
CONNECT_TIMEOUT_S: Final = 30.0
MAX_CONNECTIONS: Final = 256
"""Connections one listener serves at once (the daemon's socket has the same cap)."""
READ_TIMEOUT_S: Final = 600.0
"""An upstream may think for minutes before the first byte of a long generation."""


class Refusal(Exception):
    """A request the proxy answers itself; ``str`` is shown to the sandbox."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _RouteState:
    route: Route
    stand_in: str
    session: aiohttp.ClientSession
    rules: tuple[str, ScrubRules] | None = None

    def slot_value(self, credential: str, slot_format: str | None = None) -> str:
        """The header value carrying ``credential`` (the primary slot's unless ``slot_format``)."""
        route = self.route
        if slot_format is None and route.basic_user is not None:
            pair = f"{route.basic_user}:{credential}".encode()
            return "Basic " + base64.b64encode(pair).decode()
        return (slot_format or route.format).replace("{}", credential, 1)

    def current_rules(self, secret: str | None) -> ScrubRules | None:
        """The rules for the secret this request carried, else for the last one sent:
        an answer to a request without the secret may still quote it (an API that
        lists credentials, a cached error)."""
        if secret is not None:
            return self.rules_for(secret)
        return self.rules[1] if self.rules is not None else None

    def rules_for(self, secret: str) -> ScrubRules:
        """Built once per secret value (a refreshed token gets new rules)."""
        if self.rules is None or self.rules[0] != secret:
            extra: tuple[tuple[str, str], ...] = ()
            if self.route.basic_user is not None:
                user = self.route.basic_user
                extra = ((f"{user}:{secret}", f"{user}:{self.stand_in}"),)
            self.rules = (secret, ScrubRules(secret, self.stand_in, extra))
        return self.rules[1]


@dataclass
class _Outcome:
    status: int | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    note: str | None = None
    query_names: tuple[str, ...] = field(default=())


@dataclass
class _Call:
    """One request on its way upstream (the secret may change once, on a 401 retry)."""

    request: web.BaseRequest
    state: _RouteState
    rest: str
    raw_query: str
    headers: CIMultiDict[str]
    outcome: _Outcome
    secret: str | None = None
    slot: tuple[str, str | None] | None = None
    """Where the client presented the stand-in: (header, format); ``("", None)`` for the query."""
    body: bytes | AsyncIterator[bytes] | None = None

    def add_secret(self, headers: CIMultiDict[str]) -> None:
        if self.secret is not None and self.slot is not None and self.slot[0]:
            headers[self.slot[0]] = self.state.slot_value(self.secret, self.slot[1])

    async def prepare_body(self) -> bool:
        """Read a small body of a token route (replayable), else stream it; True if replayable."""
        request = self.request
        if not request.body_exists:
            return True
        length = request.content_length
        if (
            self.state.route.credential_kind == "token"
            and length is not None
            and length <= MAX_REPLAY_BYTES
        ):
            self.body = await request.read()
            self.outcome.bytes_in = len(self.body)
            return True
        self.body = _count_upload(request, self.outcome)
        if length is not None:
            self.headers["Content-Length"] = str(length)
        return False

    async def send(self) -> aiohttp.ClientResponse:
        route = self.state.route
        url = _upstream_url(route, self.rest, self.raw_query, self.secret)
        send = CIMultiDict(self.headers)
        self.add_secret(send)
        send["Accept-Encoding"] = "identity"
        try:
            return await self.state.session.request(
                self.request.method, url, headers=send, data=self.body, allow_redirects=False
            )
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error
            if isinstance(reason, UpstreamRefused):
                raise Refusal(502, f"credproxy: {reason}") from None
            raise Refusal(502, f"credproxy: cannot connect to {route.host}") from None
        except aiohttp.ClientSSLError:
            raise Refusal(502, f"credproxy: TLS with {route.host} failed") from None
        except (aiohttp.ClientError, TimeoutError, OSError):
            raise Refusal(502, f"credproxy: the request to {route.host} failed") from None


def _check_request(request: web.BaseRequest, route: Route, rest: str) -> str | None:
    """Refuse what the route does not allow; the upgrade protocol asked for, if any."""
    method = request.method
    if method in ("TRACE", "TRACK", "CONNECT"):
        raise Refusal(405, f"credproxy: {method} is never proxied")
    if method not in route.methods:
        raise Refusal(403, f"credproxy: route {route.name} does not allow {method}")
    path = _checked_path(rest)
    if not route.allows_path(path):
        raise Refusal(403, f"credproxy: route {route.name} does not allow this path")
    upgrade = _wants_upgrade(request)
    if upgrade and not (route.websocket and upgrade == "websocket"):
        raise Refusal(403, f"credproxy: route {route.name} does not allow protocol upgrades")
    try:
        check_literal(route.host, allow_private=route.allow_private)
    except UpstreamRefused as exc:
        raise Refusal(502, f"credproxy: {exc}") from None
    return upgrade


class InjectProxy:
    """Serves the routes of one ``run``.

    ``stand_ins`` maps route name to the stand-in handed to the sandbox.
    ``hosts`` (tests only) maps upstream names to addresses instead of DNS;
    ``upstream_ssl`` replaces the system trust store for upstream TLS (tests).
    """

    def __init__(
        self,
        routes: Mapping[str, Route],
        stand_ins: Mapping[str, str],
        secrets: SecretSource,
        *,
        audit: AuditLog | None = None,
        hosts: Mapping[str, str] | None = None,
        upstream_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self._routes = dict(routes)
        self._stand_ins = dict(stand_ins)
        self._secrets = secrets
        self._audit = audit
        self._hosts = dict(hosts or {})
        self._upstream_ssl = upstream_ssl
        self._states: dict[str, _RouteState] = {}
        self._sessions: list[aiohttp.ClientSession] = []

    async def start(self) -> None:
        sessions: dict[bool, aiohttp.ClientSession] = {}
        for name, route in self._routes.items():
            if route.allow_private not in sessions:
                connector = aiohttp.TCPConnector(
                    resolver=CheckedResolver(allow_private=route.allow_private, hosts=self._hosts),
                    ssl=self._upstream_ssl if self._upstream_ssl is not None else True,
                    ttl_dns_cache=60,
                    limit=256,
                )
                session = aiohttp.ClientSession(
                    connector=connector,
                    auto_decompress=True,
                    timeout=aiohttp.ClientTimeout(
                        total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S
                    ),
                    cookie_jar=aiohttp.DummyCookieJar(),
                    skip_auto_headers=("User-Agent",),
                )
                sessions[route.allow_private] = session
                self._sessions.append(session)
            self._states[name] = _RouteState(
                route, self._stand_ins[name], sessions[route.allow_private]
            )

    def prime(self, route: str, secret: str) -> None:
        """Scrub ``secret`` from route's answers even before a request carried it."""
        self._states[route].rules_for(secret)

    async def aclose(self) -> None:
        for session in self._sessions:
            await session.close()
        self._sessions.clear()

    # -- entry points ---------------------------------------------------------------

    async def handle_reverse(self, request: web.BaseRequest) -> web.StreamResponse:
        """``/NAME/rest?query`` -> route NAME."""
        raw_path, _, raw_query = request.raw_path.partition("?")
        name, _, rest = raw_path.lstrip("/").partition("/")
        state = self._states.get(name)
        if state is None:
            return await self._answer_refusal(
                request, None, Refusal(404, f"credproxy: no route named {name[:64]!r} in this run")
            )
        return await self._serve(request, state, "/" + rest, raw_query)

    async def handle_intercepted(
        self, host: str, port: int, request: web.BaseRequest
    ) -> web.StreamResponse:
        """A request that arrived inside an intercepted CONNECT tunnel to ``host:port``."""
        raw_path, _, raw_query = request.raw_path.partition("?")
        for state in self._states.values():
            route = state.route
            if route.host != host or route.port != port:
                continue
            base = route.base_path
            if raw_path == base or raw_path.startswith(base + "/") or not base:
                rest = raw_path[len(base) :] or "/"
                return await self._serve(request, state, rest, raw_query)
        return await self._answer_refusal(
            request, None, Refusal(403, f"credproxy: no route covers {host} {raw_path[:64]}")
        )

    # -- one request ------------------------------------------------------------------

    async def _serve(
        self, request: web.BaseRequest, state: _RouteState, rest: str, raw_query: str
    ) -> web.StreamResponse:
        started = time.perf_counter()
        outcome = _Outcome(query_names=_query_names(raw_query))
        try:
            response = await self._proxy(request, state, rest, raw_query, outcome)
        except Refusal as refusal:
            response = _refusal_response(refusal)
            outcome.status = refusal.status
            outcome.note = "refused"
        finally:
            self._record(request, state.route.name, rest, outcome, started)
        return response

    async def _answer_refusal(
        self, request: web.BaseRequest, route: str | None, refusal: Refusal
    ) -> web.StreamResponse:
        started = time.perf_counter()
        outcome = _Outcome(status=refusal.status, note="refused")
        self._record(request, route, request.path, outcome, started)
        return _refusal_response(refusal)

    def _record(
        self,
        request: web.BaseRequest,
        route: str | None,
        path: str,
        outcome: _Outcome,
        started: float,
    ) -> None:
        if self._audit is None:
            return
        self._audit.record(
            ProxyRequestEvent.build(
                route=route,
                method=request.method,
                path=path,
                query_names=outcome.query_names,
                status=outcome.status,
                bytes_in=outcome.bytes_in,
                bytes_out=outcome.bytes_out,
                duration_ms=(time.perf_counter() - started) * 1000,
                peer=_peer(request),
                outcome=outcome.note,
            )
        )

    async def _proxy(
        self,
        request: web.BaseRequest,
        state: _RouteState,
        rest: str,
        raw_query: str,
        outcome: _Outcome,
    ) -> web.StreamResponse:
        route = state.route
        upgrade = _check_request(request, route, rest)
        headers = _forward_headers(
            request.headers, WEBSOCKET_DROPPED if upgrade else REQUEST_DROPPED
        )
        call = _Call(request, state, rest, raw_query, headers, outcome)
        call.slot = _take_slot(state, headers, raw_query)
        call.secret = await self._secret(route) if call.slot is not None else None
        if upgrade:
            return await self._websocket(call)
        replayable = await call.prepare_body()
        upstream = await call.send()
        if (
            upstream.status == 401
            and call.secret is not None
            and route.credential_kind == "token"
            and replayable
        ):
            fresh = await self._secret(route, force_refresh=True)
            if fresh != call.secret:
                upstream.release()
                call.secret = fresh
                upstream = await call.send()
        try:
            return await self._relay_response(request, state, call.secret, upstream, outcome)
        finally:
            upstream.release()

    async def _secret(self, route: Route, *, force_refresh: bool = False) -> str:
        try:
            if route.credential_kind == "key":
                secret = await self._secrets.api_key(route.credential)
            else:
                secret = await self._secrets.access_token(
                    route.credential, route.bucket, force_refresh=force_refresh
                )
            check_secret(secret, f"the credential of route {route.name}")
        except (SecretUnavailable, SecretFormatError) as exc:
            raise Refusal(503, f"credproxy: {exc}") from None
        return secret

    async def _relay_response(
        self,
        request: web.BaseRequest,
        state: _RouteState,
        secret: str | None,
        upstream: aiohttp.ClientResponse,
        outcome: _Outcome,
    ) -> web.StreamResponse:
        encoding = upstream.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in DECODED_ENCODINGS:
            raise Refusal(502, f"credproxy: the upstream used content-encoding {encoding[:32]!r}")
        rules = state.current_rules(secret)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        connection_named = _connection_tokens(upstream.headers)
        for name, value in upstream.headers.items():
            lower = name.lower()
            if lower in RESPONSE_DROPPED or lower in connection_named:
                continue
            response.headers.add(name, rules.replace_text(value) if rules else value)
        outcome.status = upstream.status
        await response.prepare(request)
        scrubber = StreamScrubber(rules) if rules is not None else None
        async for chunk in upstream.content.iter_any():
            data = scrubber.feed(chunk) if scrubber is not None else chunk
            if data:
                outcome.bytes_out += len(data)
                await response.write(data)
        if scrubber is not None:
            tail = scrubber.flush()
            if tail:
                outcome.bytes_out += len(tail)
                await response.write(tail)
        await response.write_eof()
        return response

    async def _websocket(self, call: _Call) -> web.StreamResponse:
        request, state, headers, secret, outcome = (
            call.request,
            call.state,
            call.headers,
            call.secret,
            call.outcome,
        )
        route = state.route
        call.add_secret(headers)
        protocols = [
            p.strip()
            for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()
        ]
        url = _upstream_url(route, call.rest, call.raw_query, secret)
        ws_url = url.with_scheme("wss" if url.scheme == "https" else "ws")
        try:
            upstream = await state.session.ws_connect(
                ws_url, headers=headers, protocols=protocols, autoclose=False, autoping=True
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise Refusal(
                502, f"credproxy: the upstream refused the WebSocket ({exc.status})"
            ) from None
        except (aiohttp.ClientError, OSError):
            raise Refusal(502, f"credproxy: cannot open a WebSocket to {route.host}") from None
        rules = state.current_rules(secret)
        client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else ())
        await client.prepare(request)
        outcome.status = 101

        async def downstream() -> None:
            async for message in upstream:
                if message.type == aiohttp.WSMsgType.TEXT:
                    text = rules.replace_text(message.data) if rules else message.data
                    outcome.bytes_out += len(text)
                    await client.send_str(text)
                elif message.type == aiohttp.WSMsgType.BINARY:
                    data = rules.replace_all(message.data) if rules else message.data
                    outcome.bytes_out += len(data)
                    await client.send_bytes(data)
                else:
                    break
            await client.close()

        async def upstream_pump() -> None:
            async for message in client:
                if message.type == aiohttp.WSMsgType.TEXT:
                    outcome.bytes_in += len(message.data)
                    await upstream.send_str(message.data)
                elif message.type == aiohttp.WSMsgType.BINARY:
                    outcome.bytes_in += len(message.data)
                    await upstream.send_bytes(message.data)
                else:
                    break
            await upstream.close()

        tasks = [asyncio.create_task(downstream()), asyncio.create_task(upstream_pump())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await upstream.close()
            await client.close()
        return client


def _refusal_response(refusal: Refusal) -> web.Response:
    return web.Response(
        status=refusal.status,
        text=str(refusal) + "\n",
        headers={"X-Credproxy-Refused": "1"},
    )


def _peer(request: web.BaseRequest) -> str | None:
    transport = request.transport
    if transport is None:
        return None
    credentials = transport.get_extra_info("credproxy_peer")
    if isinstance(credentials, str):
        return credentials
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            from credproxy.server.listener import peer_credentials

            creds = peer_credentials(sock)
            return f"uid={creds.uid},pid={creds.pid}"
    return None


def _query_names(raw_query: str) -> tuple[str, ...]:
    names = []
    for part in raw_query.split("&"):
        if part:
            names.append(unquote_plus(part.partition("=")[0])[:64])
    return tuple(names[:32])


def _checked_path(rest: str) -> str:
    """The decoded path, after refusing what could make it mean another path upstream."""
    lowered = rest.lower()
    if (
        not rest.startswith("/")
        or "\\" in rest
        or "%2f" in lowered
        or "%5c" in lowered
        or "%00" in lowered
        or any(ord(c) < 0x21 or ord(c) == 0x7F for c in rest)
    ):
        raise Refusal(403, "credproxy: the path holds encoded slashes or control characters")
    decoded = unquote(rest)
    if any(segment in (".", "..") for segment in decoded.split("/")):
        raise Refusal(403, "credproxy: the path holds dot segments")
    return decoded


def _wants_upgrade(request: web.BaseRequest) -> str | None:
    if "upgrade" in _connection_tokens(request.headers) or "Upgrade" in request.headers:
        return request.headers.get("Upgrade", "unknown").strip().lower() or "unknown"
    return None


def _connection_tokens(headers: Mapping[str, str]) -> frozenset[str]:
    values = headers.getall("Connection", []) if hasattr(headers, "getall") else []
    return frozenset(t.strip().lower() for v in values for t in v.split(",") if t.strip())


def _forward_headers(incoming: Mapping[str, str], dropped: frozenset[str]) -> CIMultiDict[str]:
    named = _connection_tokens(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower in dropped or lower in named:
            continue
        out.add(name, value)
    return out


def _take_slot(
    state: _RouteState, headers: CIMultiDict[str], raw_query: str
) -> tuple[str, str | None] | None:
    """Remove the route's slots from the request; where this run's stand-in was, if it was.

    A slot holding anything else, or more than one value, is dropped and nothing
    is injected: the sandbox's own credential never reaches the upstream.
    """
    route = state.route
    if route.header is None:
        values = [
            unquote_plus(part.partition("=")[2])
            for part in raw_query.split("&")
            if part and unquote_plus(part.partition("=")[0]) == route.query
        ]
        matched = len(values) == 1 and _same(values[0], state.stand_in)
        return ("", None) if matched else None
    slots: list[tuple[str, str | None]] = [(route.header, None)]
    if route.alt_header is not None:
        slots.append((route.alt_header, route.alt_format))
    found: tuple[str, str | None] | None = None
    for name, slot_format in slots:
        values = headers.getall(name, [])
        headers.popall(name, None)
        expected = state.slot_value(state.stand_in, slot_format)
        if found is None and len(values) == 1 and _same(values[0], expected):
            found = (name, slot_format)
    return found


def _same(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), expected.encode())


def _upstream_url(route: Route, rest: str, raw_query: str, secret: str | None) -> URL:
    query_parts = [p for p in raw_query.split("&") if p]
    if route.query is not None:
        query_parts = [p for p in query_parts if unquote_plus(p.partition("=")[0]) != route.query]
        if secret is not None:
            query_parts.append(f"{quote(route.query, safe='')}={quote(secret, safe='')}")
    query = "?" + "&".join(query_parts) if query_parts else ""
    return URL(route.origin + route.base_path + rest + query, encoded=True)


async def _count_upload(request: web.BaseRequest, outcome: _Outcome) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(UPLOAD_CHUNK):
        outcome.bytes_in += len(chunk)
        yield chunk


class ConnectionCap:
    """Counts a listener's open connections; past ``limit`` a new one is closed at once,
    so a sandbox cannot spend every file descriptor of the ``run`` process."""

    def __init__(self, limit: int = MAX_CONNECTIONS) -> None:
        self.limit = limit
        self.open = 0

    def wrap(self, factory: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.Protocol]:
        def make() -> asyncio.Protocol:
            if self.open >= self.limit:
                return _Refused()
            self.open += 1
            return CountedProtocol(factory(), self)

        return make


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class CountedProtocol(asyncio.Protocol):
    """Another protocol, delegated to, that gives its place back when the connection ends.

    ``closed`` completes then too, for a caller that must outlive the connection.
    """

    def __init__(self, inner: asyncio.BaseProtocol, cap: ConnectionCap | None = None) -> None:
        self._inner = inner
        self._cap = cap
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._early: list[bytes] | None = None

    def hold_data(self) -> None:
        """Keep bytes that arrive before ``connection_made`` and replay them after it."""
        self._early = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)
        early, self._early = self._early or [], None
        for data in early:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self._early is not None:
            self._early.append(data)
        else:
            self._inner.data_received(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        result: bool | None = self._inner.eof_received()  # type: ignore[attr-defined]
        return result

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            if self._cap is not None:
                self._cap.open -= 1
                self._cap = None
            if not self.closed.done():
                self.closed.set_result(None)


async def serve(
    handler: object,
    *,
    unix_path: str | None = None,
    host: str | None = None,
    port: int = 0,
    cap: ConnectionCap | None = None,
) -> tuple[web.Server, asyncio.Server]:
    """Listen with aiohttp's low-level server on a Unix socket or a TCP address."""
    server = web.Server(handler)  # type: ignore[arg-type]
    factory = (cap or ConnectionCap()).wrap(server)
    loop = asyncio.get_running_loop()
    if unix_path is not None:
        listener = await loop.create_unix_server(factory, unix_path)
    else:
        listener = await loop.create_server(factory, host or "127.0.0.1", port)
    return server, listener
