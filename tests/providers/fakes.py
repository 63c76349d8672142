"""Local OAuth servers that behave on the wire like the providers behind the presets.

The real providers cannot be reached from the test machines, so each class
below reproduces, from the provider's documentation (sources in its
docstring), what a client meets: request encodings, answer encodings, error
conventions, device-flow pacing and refresh-token rotation. ``FakeProvider``
is a plain RFC 6749 / 7636 / 8628 server; each subclass changes only what its
provider does differently. The server runs in its own thread and event loop,
records every request, and plays the user through ``approve``/``deny`` (device
codes) and ``decision`` (the authorization page).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self
from urllib.parse import urlencode

from aiohttp import web

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass
class DeviceGrant:
    user_code: str
    client_id: str
    scope: str
    expires_at: float
    status: Literal["pending", "approved", "denied"] = "pending"
    polls: int = 0


@dataclass
class CodeGrant:
    client_id: str
    redirect_uri: str
    challenge: str | None
    state: str
    scope: str
    expires_at: float
    used: bool = False


@dataclass
class Seen:
    path: str
    headers: Mapping[str, str]
    body: dict[str, Any]
    encoding: Literal["form", "json", "none"]


@dataclass
class FakeProvider:
    """A plain RFC 6749 (code), RFC 7636 (PKCE S256), RFC 8628 (device) server.

    Device codes live ``device_lifetime_s``; codes ``code_lifetime_s``; access
    tokens ``access_lifetime_s`` (short, so a ``token get`` right after login
    asks for a refresh). Errors are HTTP 400 JSON ``{"error": ...}``.
    """

    client_id: str = "test-client"
    client_secret: str | None = None
    device_lifetime_s: float = 60.0
    code_lifetime_s: float = 60.0
    decision: Literal["approve", "deny"] = "approve"
    slow_downs: int = 0
    """Answer this many polls with slow_down before the usual answers."""

    token_path: ClassVar[str] = "/token"
    authorize_path: ClassVar[str] = "/authorize"
    device_path: ClassVar[str] = "/device"
    token_encoding: ClassVar[Literal["form", "json"]] = "form"
    device_interval: ClassVar[int | None] = 1
    rotates: ClassVar[bool] = True
    issues_refresh: ClassVar[bool] = True
    refresh_prefix: ClassVar[str] = "rt-"
    access_prefix: ClassVar[str] = "at-"
    access_lifetime_s: ClassVar[int | None] = 20

    seen: list[Seen] = field(default_factory=list)
    devices: dict[str, DeviceGrant] = field(default_factory=dict)
    codes: dict[str, CodeGrant] = field(default_factory=dict)
    refresh_tokens: dict[str, bool] = field(default_factory=dict)
    """Every refresh token issued, and whether it is still good."""
    secrets_issued: list[str] = field(default_factory=list)
    _port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    # --- lifecycle -------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_post(self.token_path, self._token)
        app.router.add_get(self.authorize_path, self._authorize)
        app.router.add_post(self.device_path, self._device)

    def start(self) -> Self:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            self.routes(app)
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self._runner = runner
            self._port = runner.addresses[0][1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        assert ready.wait(10), "the fake provider did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def reset(self) -> None:
        self.decision = "approve"
        self.slow_downs = 0
        self.device_lifetime_s = 60.0
        self.code_lifetime_s = 60.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # --- what the user does ------------------------------------------------------------

    def approve(self, user_code: str) -> None:
        self._device_by_user_code(user_code).status = "approved"

    def deny(self, user_code: str) -> None:
        self._device_by_user_code(user_code).status = "denied"

    def _device_by_user_code(self, user_code: str) -> DeviceGrant:
        for grant in self.devices.values():
            if grant.user_code == user_code:
                return grant
        raise AssertionError(f"no device login shows the code {user_code!r}")

    def token_requests(self, grant_type: str) -> list[Seen]:
        return [
            s
            for s in self.seen
            if s.path == self.token_path and s.body.get("grant_type") == grant_type
        ]

    # --- HTTP ----------------------------------------------------------------------------

    async def _read(self, request: web.Request) -> Seen:
        if request.content_type == "application/json":
            body = await request.json()
            encoding: Literal["form", "json", "none"] = "json"
        elif request.content_type == "application/x-www-form-urlencoded":
            body = dict(await request.post())
            encoding = "form"
        else:
            body, encoding = dict(request.query), "none"
        seen = Seen(
            request.path, dict(request.headers), {k: str(v) for k, v in body.items()}, encoding
        )
        self.seen.append(seen)
        return seen

    def answer(self, request: web.Request, status: int, body: dict[str, Any]) -> web.Response:
        return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})

    def error(self, request: web.Request, code: str, status: int = 400) -> web.Response:
        return self.answer(request, status, {"error": code, "error_description": f"{code} (fake)"})

    def new_secret(self, prefix: str) -> str:
        value = prefix + secrets.token_urlsafe(24)
        self.secrets_issued.append(value)
        return value

    async def _authorize(self, request: web.Request) -> web.Response:
        seen = await self._read(request)
        query = seen.body
        self.check_authorize(query)
        redirect = query["redirect_uri"]
        if self.decision == "deny":
            raise web.HTTPFound(
                redirect + "?" + urlencode({"error": "access_denied", "state": query["state"]})
            )
        code = self.new_secret("code-")
        self.codes[code] = CodeGrant(
            client_id=query["client_id"],
            redirect_uri=redirect,
            challenge=query.get("code_challenge"),
            state=query["state"],
            scope=query.get("scope", ""),
            expires_at=time.monotonic() + self.code_lifetime_s,
        )
        return self.deliver_code(redirect, code, query["state"])

    def check_authorize(self, query: Mapping[str, str]) -> None:
        """What the provider insists on in the authorization request."""
        if query.get("client_id") != self.client_id or query.get("response_type") != "code":
            raise web.HTTPBadRequest(text="unknown client or response type")
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            raise web.HTTPBadRequest(text="PKCE S256 is required")

    def deliver_code(self, redirect: str, code: str, state: str) -> web.Response:
        raise web.HTTPFound(redirect + "?" + urlencode({"code": code, "state": state}))

    async def _device(self, request: web.Request) -> web.Response:
        seen = await self._read(request)
        if seen.body.get("client_id") != self.client_id:
            return self.error(request, "invalid_client", 401)
        device_code = self.new_secret("dc-")
        user_code = f"{secrets.randbelow(10**4):04d}-{secrets.randbelow(10**4):04d}"
        self.devices[device_code] = DeviceGrant(
            user_code,
            self.client_id,
            seen.body.get("scope", ""),
            time.monotonic() + self.device_lifetime_s,
        )
        body: dict[str, Any] = {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": self.base_url + "/activate",
            "expires_in": int(self.device_lifetime_s),
        }
        if self.device_interval is not None:
            body["interval"] = self.device_interval
        return self.answer(request, 200, body)

    async def _token(self, request: web.Request) -> web.Response:
        seen = await self._read(request)
        if seen.encoding != self.token_encoding:
            return self.error(request, "invalid_request")
        body = seen.body
        if not self.client_ok(request, body):
            return self.error(request, "invalid_client", 401)
        grant = body.get("grant_type")
        if grant == DEVICE_GRANT:
            return self.device_token(request, body)
        if grant == "authorization_code":
            return self.code_token(request, body)
        if grant == "refresh_token":
            return self.refresh(request, body)
        return self.error(request, "unsupported_grant_type")

    def client_ok(self, request: web.Request, body: Mapping[str, str]) -> bool:
        if body.get("client_id") != self.client_id:
            return False
        return self.client_secret is None or body.get("client_secret") == self.client_secret

    def device_token(self, request: web.Request, body: Mapping[str, str]) -> web.Response:
        grant = self.devices.get(body.get("device_code", ""))
        if grant is None:
            return self.error(request, self.bad_device_code_error)
        grant.polls += 1
        if time.monotonic() >= grant.expires_at:
            return self.error(request, "expired_token")
        if self.slow_downs > 0:
            self.slow_downs -= 1
            return self.slow_down(request)
        if grant.status == "denied":
            return self.error(request, self.denied_error)
        if grant.status == "pending":
            return self.error(request, "authorization_pending")
        del self.devices[body["device_code"]]
        return self.tokens(request, grant.scope)

    bad_device_code_error: ClassVar[str] = "invalid_grant"
    denied_error: ClassVar[str] = "access_denied"

    def slow_down(self, request: web.Request) -> web.Response:
        return self.error(request, "slow_down")

    def code_token(self, request: web.Request, body: Mapping[str, str]) -> web.Response:
        grant = self.codes.get(body.get("code", ""))
        if grant is None or grant.used or grant.redirect_uri != body.get("redirect_uri"):
            return self.error(request, "invalid_grant")
        grant.used = True
        if time.monotonic() >= grant.expires_at:
            return self.error(request, "invalid_grant")
        if grant.challenge is not None and s256(body.get("code_verifier", "")) != grant.challenge:
            return self.error(request, "invalid_grant")
        return self.tokens(request, grant.scope)

    def refresh(self, request: web.Request, body: Mapping[str, str]) -> web.Response:
        token = body.get("refresh_token", "")
        if not self.refresh_tokens.get(token, False):
            return self.refused_refresh(request, token)
        if self.rotates:
            self.refresh_tokens[token] = False
        return self.tokens(request, "", refresh=self.rotates)

    def refused_refresh(self, request: web.Request, token: str) -> web.Response:
        return self.error(request, "invalid_grant")

    def tokens(self, request: web.Request, scope: str, *, refresh: bool = True) -> web.Response:
        return self.answer(request, 200, self.token_body(scope, refresh=refresh))

    def token_body(self, scope: str, *, refresh: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": self.new_secret(self.access_prefix),
            "token_type": "Bearer",
            "scope": scope,
        }
        if self.access_lifetime_s is not None:
            body["expires_in"] = self.access_lifetime_s
        if self.issues_refresh and refresh:
            refresh_token = self.new_secret(self.refresh_prefix)
            self.refresh_tokens[refresh_token] = True
            body["refresh_token"] = refresh_token
        return body


class GitHubOAuthApp(FakeProvider):
    """GitHub's device flow for an OAuth App, as docs.github.com describes it
    ("Authorizing OAuth apps", github/docs @029b09ac, and "Token expiration and
    revocation", @02ac71cd; provider-facts.md section 5):

    - device code at ``/login/device/code``, tokens at ``/login/oauth/access_token``;
    - answers are form-encoded unless the request says ``Accept: application/json``;
    - poll errors come inside HTTP 200 in ``error``: ``authorization_pending``,
      ``slow_down`` (with the new ``interval``), ``expired_token``,
      ``access_denied``, ``incorrect_device_code``;
    - an OAuth App token has no ``expires_in`` and no refresh token, and
      ``scope`` is comma-separated.
    """

    token_path = "/login/oauth/access_token"
    authorize_path = "/login/oauth/authorize"
    device_path = "/login/device/code"
    device_interval = 1
    issues_refresh = False
    access_prefix = "gho_"
    bad_device_code_error = "incorrect_device_code"
    access_lifetime_s: ClassVar[int | None] = None

    def answer(self, request: web.Request, status: int, body: dict[str, Any]) -> web.Response:
        if "application/json" in request.headers.get("Accept", ""):
            return web.json_response(body, status=status)
        return web.Response(
            status=status,
            text=urlencode({k: str(v) for k, v in body.items()}),
            content_type="application/x-www-form-urlencoded",
        )

    def error(self, request: web.Request, code: str, status: int = 400) -> web.Response:
        # GitHub reports OAuth errors with HTTP 200.
        return self.answer(request, 200, {"error": code, "error_description": f"{code} (fake)"})

    def slow_down(self, request: web.Request) -> web.Response:
        return self.answer(request, 200, {"error": "slow_down", "interval": 2})

    def token_body(self, scope: str, *, refresh: bool = True) -> dict[str, Any]:
        body = super().token_body(scope.replace(" ", ","), refresh=refresh)
        body["token_type"] = "bearer"
        return body


class GitHubApp(GitHubOAuthApp):
    """A GitHub App's user tokens ("Refreshing user access tokens", docs.github.com,
    and "Token expiration and revocation"): they expire after 8 hours
    (``expires_in`` 28800, shortened here so a refresh is due) and come with a
    refresh token (``refresh_token_expires_in`` six months) that is replaced on
    every refresh; the old one stops working."""

    issues_refresh = True
    access_prefix = "ghu_"
    refresh_prefix = "ghr_"
    access_lifetime_s = 20

    def token_body(self, scope: str, *, refresh: bool = True) -> dict[str, Any]:
        body = super().token_body(scope, refresh=refresh)
        if "refresh_token" in body:
            body["refresh_token_expires_in"] = 15_897_600
        return body


class Google(FakeProvider):
    """Google's OAuth 2.0 for installed apps (developers.google.com/identity/protocols/
    oauth2/native-app; google-auth-library-nodejs @a95b8272 oauth2client.ts;
    provider-facts.md section 2):

    - OpenID discovery at ``/.well-known/openid-configuration`` (issuer
      ``https://accounts.google.com`` in life, this server's URL here);
    - loopback redirect with PKCE; a refresh token only with
      ``access_type=offline`` (and again on a repeat login only with
      ``prompt=consent``);
    - the token request is a form carrying the Desktop client's
      ``client_secret`` (client_secret_post);
    - tokens carry ``expires_in`` (3599 in life), ``scope``, ``token_type``,
      ``id_token``; a refresh answers without a new refresh token (no rotation).
    """

    token_path = "/token"
    authorize_path = "/o/oauth2/v2/auth"
    rotates = False

    def routes(self, app: web.Application) -> None:
        super().routes(app)
        app.router.add_get("/.well-known/openid-configuration", self._discovery)

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.base_url,
                "authorization_endpoint": self.base_url + self.authorize_path,
                "token_endpoint": self.base_url + self.token_path,
                "revocation_endpoint": self.base_url + "/revoke",
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["plain", "S256"],
            }
        )

    offline_asked: bool = False

    def check_authorize(self, query: Mapping[str, str]) -> None:
        super().check_authorize(query)
        self.offline_asked = (
            query.get("access_type") == "offline" and query.get("prompt") == "consent"
        )

    def token_body(self, scope: str, *, refresh: bool = True) -> dict[str, Any]:
        body = super().token_body(scope, refresh=refresh and self.offline_asked)
        body["id_token"] = "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0."
        return body


class Microsoft(FakeProvider):
    """Microsoft Entra ID v2.0 endpoints (learn.microsoft.com/entra/identity-platform/
    v2-oauth2-device-code, v2-oauth2-auth-code-flow, refresh-tokens):

    - ``/{tenant}/oauth2/v2.0/devicecode`` answers ``device_code``, ``user_code``,
      ``verification_uri``, ``expires_in``, ``interval`` and a ``message``;
    - polls get HTTP 400 with ``authorization_pending``, ``authorization_declined``
      (the user said no), ``expired_token``, or ``bad_verification_code`` for a
      device code it never issued;
    - a refresh token only with the ``offline_access`` scope; each refresh
      returns a new refresh token (rotation).
    """

    token_path = "/organizations/oauth2/v2.0/token"
    authorize_path = "/organizations/oauth2/v2.0/authorize"
    device_path = "/organizations/oauth2/v2.0/devicecode"
    bad_device_code_error = "bad_verification_code"
    denied_error = "authorization_declined"

    async def _device(self, request: web.Request) -> web.Response:
        response = await super()._device(request)
        if response.status == 200:
            body = json.loads(response.text or "{}")
            body["message"] = (
                f"To sign in, open {body['verification_uri']} and enter {body['user_code']}."
            )
            return web.json_response(body)
        return response


class GitLab(FakeProvider):
    """GitLab's OAuth 2.0 provider (docs.gitlab.com/api/oauth2/, Doorkeeper):

    - device authorization grant at ``/oauth/authorize_device`` (GitLab 17.1+),
      tokens at ``/oauth/token``, authorization code with PKCE at ``/oauth/authorize``;
    - access tokens expire after two hours (``expires_in`` 7200) and carry
      ``created_at``; every refresh returns a new refresh token and revokes the
      previous one.
    """

    token_path = "/oauth/token"
    authorize_path = "/oauth/authorize"
    device_path = "/oauth/authorize_device"

    def token_body(self, scope: str, *, refresh: bool = True) -> dict[str, Any]:
        body = super().token_body(scope, refresh=refresh)
        body["created_at"] = int(time.time())
        return body


class Anthropic(FakeProvider):
    """Anthropic's subscription login as third-party clients observe it (provider-facts.md
    section 1: LLxprt anthropic-device-flow.ts, opencode-anthropic-auth, pi):

    - ``code=true`` on the authorization URL makes the hosted callback page
      show ``CODE#STATE`` for the user to copy (no redirect to the client); a
      refusal goes to the callback page as ``?error=access_denied&state=...``
      (RFC 6749 section 4.1.2.1), which the user can paste as well;
    - the token request is JSON (``Content-Type: application/json``) and
      carries ``state`` next to ``code``, ``code_verifier`` and ``redirect_uri``;
    - tokens: ``sk-ant-oat01-`` access tokens with ``expires_in``, refresh
      tokens replaced on every refresh.
    """

    token_path = "/v1/oauth/token"
    authorize_path = "/oauth/authorize"
    token_encoding = "json"
    access_prefix = "sk-ant-oat01-"
    refresh_prefix = "sk-ant-ort01-"

    def check_authorize(self, query: Mapping[str, str]) -> None:
        super().check_authorize(query)
        if query.get("code") != "true":
            raise web.HTTPBadRequest(text="code=true is required")

    def deliver_code(self, redirect: str, code: str, state: str) -> web.Response:
        return web.Response(text=f"Paste this code into your terminal: {code}#{state}")

    def code_token(self, request: web.Request, body: Mapping[str, str]) -> web.Response:
        grant = self.codes.get(body.get("code", ""))
        if grant is not None and body.get("state") != grant.state:
            return self.error(request, "invalid_grant")
        return super().code_token(request, body)


class Codex(FakeProvider):
    """OpenAI's ChatGPT login as Codex CLI runs it (openai/codex codex-rs/login
    @0483fd17 server.rs, device_code_auth.rs, auth/manager.rs; provider-facts.md
    section 4):

    - browser login: authorize at ``/oauth/authorize`` with PKCE, a redirect
      registered as ``http://localhost:1455/auth/callback``; form exchange at
      ``/oauth/token`` answering ``id_token``, ``access_token``, ``refresh_token``;
    - device login (not RFC 8628): JSON ``{client_id}`` to
      ``/api/accounts/deviceauth/usercode`` answers ``device_auth_id``,
      ``user_code`` and ``interval`` as a string (or nothing); JSON polls to
      ``/api/accounts/deviceauth/token`` get HTTP 403 while pending, then
      ``{authorization_code, code_challenge, code_verifier}``: the server
      issued the PKCE pair, and the code is exchanged with that verifier and
      ``redirect_uri`` ``{issuer}/deviceauth/callback``;
    - refresh tokens rotate, and reusing an old one fails with HTTP 401 and
      ``{"error": {"code": "refresh_token_reused"}}``.
    """

    token_path = "/oauth/token"
    authorize_path = "/oauth/authorize"
    device_path = "/api/accounts/deviceauth/usercode"
    registered_redirect: ClassVar[str] = "http://localhost:1455/auth/callback"
    device_interval = None

    def routes(self, app: web.Application) -> None:
        app.router.add_post(self.token_path, self._token)
        app.router.add_get(self.authorize_path, self._authorize)
        app.router.add_post(self.device_path, self._usercode)
        app.router.add_post("/api/accounts/deviceauth/token", self._device_poll)

    def check_authorize(self, query: Mapping[str, str]) -> None:
        super().check_authorize(query)
        if query.get("redirect_uri") != self.registered_redirect:
            raise web.HTTPBadRequest(text="redirect_uri is not registered")

    async def _usercode(self, request: web.Request) -> web.Response:
        seen = await self._read(request)
        if seen.encoding != "json" or seen.body.get("client_id") != self.client_id:
            return web.json_response({"error": "bad request"}, status=400)
        device_auth_id = self.new_secret("deviceauth-")
        user_code = f"{secrets.randbelow(10**4):04d}-{secrets.randbelow(10**5):05d}"
        self.devices[device_auth_id] = DeviceGrant(
            user_code, self.client_id, "", time.monotonic() + self.device_lifetime_s
        )
        return web.json_response({"device_auth_id": device_auth_id, "user_code": user_code})

    async def _device_poll(self, request: web.Request) -> web.Response:
        seen = await self._read(request)
        grant = self.devices.get(seen.body.get("device_auth_id", ""))
        if (
            seen.encoding != "json"
            or grant is None
            or grant.user_code != seen.body.get("user_code")
        ):
            return web.json_response({"error": "unknown device login"}, status=400)
        grant.polls += 1
        if time.monotonic() >= grant.expires_at:
            return web.json_response({"error": "expired_token"}, status=400)
        if grant.status == "denied":
            return web.json_response({"error": "access_denied"}, status=400)
        if grant.status == "pending":
            return web.json_response({"error": "pending"}, status=403)
        verifier = self.new_secret("server-verifier-")
        code = self.new_secret("code-")
        self.codes[code] = CodeGrant(
            self.client_id,
            self.base_url + "/deviceauth/callback",
            s256(verifier),
            "",
            "",
            time.monotonic() + self.code_lifetime_s,
        )
        del self.devices[seen.body["device_auth_id"]]
        return web.json_response(
            {
                "authorization_code": code,
                "code_challenge": s256(verifier),
                "code_verifier": verifier,
            }
        )

    def refused_refresh(self, request: web.Request, token: str) -> web.Response:
        if token in self.refresh_tokens:
            return web.json_response(
                {"error": {"code": "refresh_token_reused", "message": "already used"}}, status=401
            )
        return self.error(request, "invalid_grant")

    def token_body(self, scope: str, *, refresh: bool = True) -> dict[str, Any]:
        body = super().token_body(scope, refresh=refresh)
        body["id_token"] = "eyJhbGciOiJub25lIn0.eyJodHRwczovL2FwaS5vcGVuYWkuY29tL2F1dGgiOnt9fQ."
        return body
