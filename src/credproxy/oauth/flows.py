"""The three login flows, run entirely on the host.

- Code paste (``pkce_redirect``): authorization code with PKCE S256
  (RFC 6749 section 4.1, RFC 7636); the provider's redirect lands on its own
  "copy this code" page and the user pastes the code.
- Device code (``device_code``): RFC 8628 sections 3.1 to 3.5, with PKCE when
  the provider takes it (``device_pkce``).
- Loopback redirect (``browser_redirect``): RFC 8252 section 7.3, a one-shot
  listener on 127.0.0.1.

Each flow's ``start()`` returns only what the user must see (the URL carries
the ``state``; nothing else secret). The verifier, the device code and the
provider's answers stay in the flow object on the host.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import json
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

from aiohttp import web

from credproxy.oauth.adapters import adapter_of
from credproxy.oauth.config import (
    DEFAULT_TOKEN_LIFETIME_S,
    Endpoints,
    ProviderConfig,
    check_endpoint_url,
)
from credproxy.oauth.errors import OAuthFlowError
from credproxy.oauth.http import OAuthHttp, basic_credentials
from credproxy.oauth.pkce import CHALLENGE_METHOD, PkcePair, new_state
from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.protocol.messages import FlowType
from credproxy.tokens import NO_EXPIRY, Token, validate_token

Clock = Callable[[], float]

DEVICE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"
SLOW_DOWN_STEP_S: Final = 5.0
DEFAULT_DEVICE_EXPIRES_S: Final = 600
MAX_LIFETIME_S: Final = 10**10
"""Longest lifetime or interval taken from a provider (about 317 years): now plus this is
still an exact integer in a float and in JavaScript, which reads ``expiry`` on the other
side of the socket."""
MAX_TRANSIENT_POLL_FAILURES: Final = 3
LOOPBACK_HOST: Final = "127.0.0.1"
LOOPBACK_REPLY_WAIT_S: Final = 20.0
LOOPBACK_CLIENT_POLL_S: Final = 1.0
MAX_PASTED_CODE: Final = 4096
MIN_ECHO_LENGTH: Final = 8


def token_from_response(
    provider: str,
    body: Mapping[str, Any],
    now: float,
    *,
    sent: Collection[str] = (),
    default_expires_in: float | None = DEFAULT_TOKEN_LIFETIME_S,
) -> Token:
    """A successful token response (RFC 6749 section 5.1) in the credproxy token model.

    ``sent`` are the secrets of the request (code, verifier, device code, refresh
    token, client secret). A field other than ``refresh_token`` that repeats one
    is dropped: every such field reaches the sandbox, and a provider that echoes
    its request must not carry the host's secrets across the socket.

    Without ``expires_in`` the token lives ``default_expires_in`` seconds; None
    means it does not expire (GitHub OAuth Apps): its ``expiry`` is the
    ``NO_EXPIRY`` sentinel, which every client reads as "far from expiry".
    """
    # A secret shorter than this is too short to tell an echo from a coincidence
    # (and could otherwise drop the access token itself).
    echoes = [secret for secret in sent if len(secret) >= MIN_ECHO_LENGTH]
    token: Token = {
        key: value
        for key, value in body.items()
        if key != "expires_in" and (key == "refresh_token" or not _repeats(key, value, echoes))
    }
    if "expires_in" not in body and default_expires_in is None:
        token["expiry"] = NO_EXPIRY
        return _validated(provider, token)
    raw = body.get("expires_in", default_expires_in)
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 12:
        raw = int(raw)
    expires_in = seconds_from_provider(raw)
    if expires_in is None:
        raise OAuthFlowError(
            ErrorCode.EXCHANGE_FAILED, f"{provider}: the token response has an invalid expires_in"
        )
    token["expiry"] = int(now + expires_in)
    return _validated(provider, token)


def _validated(provider: str, token: Token) -> Token:
    if "token_type" not in token:
        token["token_type"] = "Bearer"
    try:
        return validate_token(token)
    except ProxyError as exc:
        raise OAuthFlowError(
            ErrorCode.EXCHANGE_FAILED, f"{provider}: unusable token response: {exc.message}"
        ) from None


def _repeats(key: str, value: object, secrets: Collection[str]) -> bool:
    text = key + (value if isinstance(value, str) else json.dumps(value, default=str))
    return any(secret in text for secret in secrets)


_SECRET_FORM_FIELDS: Final = ("code", "code_verifier", "device_code", "refresh_token")


async def request_token(
    provider: ProviderConfig,
    endpoints: Endpoints,
    http: OAuthHttp,
    form: Mapping[str, str],
    *,
    step: str,
    clock: Clock = time.time,
) -> Token:
    """POST a grant to the token endpoint (form, or JSON where the provider wants it);
    any refusal, in an error status or inside a 200, is reduced to safe fields."""
    client_form, basic = provider.client_auth()
    post = http.post_json if provider.token_encoding == "json" else http.post_form
    response = await post(
        provider.name,
        step,
        endpoints.token,
        {**form, **client_form},
        auth=basic,
        timeout_s=provider.timeout_s,
    )
    if response.status != 200 or "access_token" not in response.body:
        raise OAuthFlowError.from_provider(
            provider.name,
            response.body,
            status=response.status,
            retry_after=response.retry_after,
            aliases=adapter_of(provider).error_aliases,
        )
    sent = [form[name] for name in _SECRET_FORM_FIELDS if name in form]
    if provider.client_secret is not None:
        sent.append(provider.client_secret)
    if basic is not None:
        sent.append(basic_credentials(*basic).removeprefix("Basic "))
    return token_from_response(
        provider.name,
        response.body,
        clock(),
        sent=sent,
        default_expires_in=provider.default_expires_in,
    )


def split_pasted_code(pasted: str) -> tuple[str, str | None]:
    """The code and the state from what the user pasted.

    Accepted forms: ``code``, ``code#state`` (pages that show both), or the
    whole redirect URL with ``code`` and ``state`` in its query.
    """
    text = pasted.strip()
    if text.startswith(("https://", "http://")):
        query = parse_qs(urlsplit(text).query)
        codes = query.get("code", [])
        states = query.get("state", [])
        return (codes[0] if len(codes) == 1 else ""), (states[0] if len(states) == 1 else None)
    code, sep, state = text.partition("#")
    return code, (state if sep else None)


def _pasted_refusal(pasted: str) -> tuple[str, str | None] | None:
    """The ``error`` and ``state`` of a pasted redirect URL that carries a refusal
    (RFC 6749 section 4.1.2.1), e.g. the user declined on the provider's page."""
    text = pasted.strip()
    if not text.startswith(("https://", "http://")):
        return None
    query = parse_qs(urlsplit(text).query)
    errors = query.get("error", [])
    if len(errors) != 1:
        return None
    states = query.get("state", [])
    return errors[0], (states[0] if len(states) == 1 else None)


class _FlowBase:
    """What every flow holds: the provider, its endpoints, the HTTP client and the clock."""

    def __init__(
        self,
        provider: ProviderConfig,
        endpoints: Endpoints,
        http: OAuthHttp,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.provider = provider
        self._endpoints = endpoints
        self._http = http
        self._clock = clock

    def __repr__(self) -> str:
        # The provider's name only: the flow's other fields are secrets.
        return f"{type(self).__name__}(provider={self.provider.name!r})"

    async def _request_token(self, form: Mapping[str, str], step: str) -> Token:
        return await request_token(
            self.provider, self._endpoints, self._http, form, step=step, clock=self._clock
        )

    async def aclose(self) -> None:
        return None


class _RedirectFlow(_FlowBase):
    """Authorization code with PKCE: the two flows that send the user to a URL."""

    def __init__(
        self,
        provider: ProviderConfig,
        endpoints: Endpoints,
        http: OAuthHttp,
        *,
        clock: Clock = time.time,
    ) -> None:
        super().__init__(provider, endpoints, http, clock=clock)
        self._pkce = PkcePair.generate()
        self._state = new_state()
        self._redirect_uri = provider.redirect_uri or ""

    def _auth_url(self) -> str:
        if not self._redirect_uri:
            raise OAuthFlowError(
                ErrorCode.EXCHANGE_FAILED, f"{self.provider.name}: no redirect_uri is configured"
            )
        authorization = self._endpoints.authorization
        if authorization is None:
            raise OAuthFlowError(
                ErrorCode.EXCHANGE_FAILED,
                f"{self.provider.name}: no authorization endpoint is known",
            )
        query: dict[str, str] = {
            "response_type": "code",
            "client_id": self.provider.client_id,
            "redirect_uri": self._redirect_uri,
            "state": self._state,
            "code_challenge": self._pkce.challenge,
            "code_challenge_method": CHALLENGE_METHOD,
        }
        if self.provider.scopes:
            query["scope"] = self.provider.scope
        query.update(self.provider.auth_params)
        separator = "&" if urlsplit(authorization).query else "?"
        return authorization + separator + urlencode(query)

    def _state_matches(self, state: str) -> bool:
        return hmac.compare_digest(state.encode("utf-8", "surrogatepass"), self._state.encode())

    async def _exchange(self, code: str) -> Token:
        """The code and the verifier for a token (RFC 7636 section 4.5)."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self._redirect_uri,
            "code_verifier": self._pkce.verifier,
        }
        if adapter_of(self.provider).exchange_sends_state:
            form["state"] = self._state
        return await self._request_token(form, "code exchange")


class CodePasteFlow(_RedirectFlow):
    """``pkce_redirect``: the user copies the code from the provider's page."""

    flow_type: Final[FlowType] = "pkce_redirect"

    def start(self) -> dict[str, Any]:
        return {"auth_url": self._auth_url()}

    async def finish(self, pasted: str) -> Token:
        """Exchange the pasted code; a state that belongs to another login is refused
        before the provider is called."""
        name = self.provider.name
        refusal = _pasted_refusal(pasted)
        if refusal is not None:
            error, state = refusal
            if state is None or not self._state_matches(state):
                raise OAuthFlowError(
                    ErrorCode.EXCHANGE_FAILED,
                    f"{name}: the pasted page belongs to another login (state mismatch)",
                )
            raise OAuthFlowError.from_provider(name, {"error": error})
        code, state = split_pasted_code(pasted)
        if not code or len(code) > MAX_PASTED_CODE or not code.isprintable() or " " in code:
            raise OAuthFlowError(ErrorCode.EXCHANGE_FAILED, f"{name}: the pasted code is malformed")
        if state is not None and not self._state_matches(state):
            raise OAuthFlowError(
                ErrorCode.EXCHANGE_FAILED,
                f"{name}: the pasted code belongs to another login (state mismatch)",
            )
        return await self._exchange(code)


def next_poll_interval(current_s: float, error: str) -> float | None:
    """RFC 8628 section 3.5: the wait before the next poll, or None when polling ends."""
    if error == "authorization_pending":
        return current_s
    if error == "slow_down":
        return current_s + SLOW_DOWN_STEP_S
    return None


class DeviceCodeFlow(_FlowBase):
    """``device_code``: the user enters a short code elsewhere; the host polls."""

    flow_type: Final[FlowType] = "device_code"

    def __init__(
        self,
        provider: ProviderConfig,
        endpoints: Endpoints,
        http: OAuthHttp,
        *,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
    ) -> None:
        if endpoints.device_authorization is None:
            raise OAuthFlowError(
                ErrorCode.EXCHANGE_FAILED,
                f"{provider.name}: no device authorization endpoint is known",
            )
        super().__init__(provider, endpoints, http, clock=clock)
        self._endpoint = endpoints.device_authorization
        self._monotonic = monotonic
        self._pkce = PkcePair.generate() if provider.device_pkce else None
        self._device_code: str | None = None
        self._deadline = 0.0
        self.interval_s = provider.poll_interval_s
        self.failure: OAuthFlowError | None = None
        """How the login ended when it failed; ``oauth_poll`` reports its safe fields."""

    @property
    def poll_interval_ms(self) -> int:
        return max(1, round(self.interval_s * 1000))

    async def start(self) -> dict[str, Any]:
        """Device authorization request (section 3.1) and what to show (section 3.3)."""
        name = self.provider.name
        form, basic = self.provider.client_auth()
        if self.provider.scopes:
            form["scope"] = self.provider.scope
        if self._pkce is not None:
            form["code_challenge"] = self._pkce.challenge
            form["code_challenge_method"] = CHALLENGE_METHOD
        response = await self._http.post_form(
            name,
            "device authorization request",
            self._endpoint,
            form,
            auth=basic,
            timeout_s=self.provider.timeout_s,
        )
        body = response.body
        if response.status != 200 or "device_code" not in body:
            raise OAuthFlowError.from_provider(name, body)
        device_code = body.get("device_code")
        user_code = body.get("user_code")
        verification = body.get("verification_uri", body.get("verification_url"))
        complete = body.get("verification_uri_complete")
        expires_in = body.get("expires_in", DEFAULT_DEVICE_EXPIRES_S)
        interval = body.get("interval")
        if not isinstance(device_code, str) or not device_code:
            raise _bad_device_field(name, "device_code")
        if (
            not isinstance(user_code, str)
            or not user_code
            or len(user_code) > 64
            or not user_code.isprintable()
        ):
            raise _bad_device_field(name, "user_code")
        if check_endpoint_url(verification) is not None:
            raise _bad_device_field(name, "verification_uri")
        if complete is not None and check_endpoint_url(complete) is not None:
            raise _bad_device_field(name, "verification_uri_complete")
        if not _positive_number(expires_in):
            raise _bad_device_field(name, "expires_in")
        if interval is not None:
            if not _positive_number(interval):
                raise _bad_device_field(name, "interval")
            self.interval_s = float(interval)
        self._device_code = device_code
        self._deadline = self._monotonic() + float(expires_in)
        shown: dict[str, Any] = {
            "verification_url": verification,
            "user_code": user_code,
            "pollIntervalMs": self.poll_interval_ms,
        }
        if complete is not None:
            shown["verification_url_complete"] = complete
        return shown

    async def wait(self) -> Token:
        """Poll the token endpoint (section 3.4) until the login ends either way."""
        name = self.provider.name
        if self._device_code is None:
            raise OAuthFlowError(ErrorCode.EXCHANGE_FAILED, f"{name}: the flow was not started")
        form = {"grant_type": DEVICE_GRANT, "device_code": self._device_code}
        if self._pkce is not None:
            form["code_verifier"] = self._pkce.verifier
        transient = 0
        while True:
            await asyncio.sleep(self.interval_s)
            if self._monotonic() >= self._deadline:
                raise OAuthFlowError.from_provider(name, {"error": "expired_token"})
            try:
                return await self._request_token(form, "device token request")
            except OAuthFlowError as exc:
                if exc.oauth_error is None or exc.oauth_error == "unknown_error":
                    transient += 1
                    if transient >= MAX_TRANSIENT_POLL_FAILURES:
                        raise
                    continue
                following = next_poll_interval(self.interval_s, exc.oauth_error)
                if following is None:
                    raise
                transient = 0
                # A slow_down that names its interval (GitHub's does) is taken at its word
                # when it asks for more than the RFC's +5 s.
                self.interval_s = max(following, exc.interval_s or 0.0)


def seconds_from_provider(value: object) -> float | None:
    """A JSON number of seconds from 0 to ``MAX_LIFETIME_S``, else None.

    Compared before any float conversion: a provider's integer can be too large
    for a float, where ``math.isfinite`` would raise instead of answering.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 <= value <= MAX_LIFETIME_S:  # False for NaN and the infinities too
        return None
    return float(value)


def _positive_number(value: object) -> bool:
    seconds = seconds_from_provider(value)
    return seconds is not None and seconds > 0


def _bad_device_field(provider: str, name: str) -> OAuthFlowError:
    return OAuthFlowError(
        ErrorCode.EXCHANGE_FAILED,
        f"{provider}: the device authorization response has a missing or invalid {name}",
    )


_PAGE: Final = (
    "<!doctype html><html><head><meta charset='utf-8'><title>credproxy</title></head>"
    "<body style='font-family:sans-serif;margin:3em'><h1>{title}</h1><p>{text}</p></body></html>"
)


def _page(status: int, title: str, text: str) -> web.Response:
    body = _PAGE.format(title=html.escape(title), text=html.escape(text))
    return web.Response(
        status=status,
        text=body,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


class LoopbackFlow(_RedirectFlow):
    """``browser_redirect``: the browser brings the code to a one-shot listener.

    A request with a missing or wrong ``state`` gets 400 and the listener keeps
    waiting: any local process can reach 127.0.0.1, and a forged request must
    not be able to end someone else's login. The session timeout bounds the wait.
    """

    flow_type: Final[FlowType] = "browser_redirect"
    # Set by start(); None until then (class defaults, so no constructor of its own).
    _runner: web.AppRunner | None = None
    _code: asyncio.Future[str] | None = None
    _outcome: asyncio.Future[Literal["ok", "failed"]] | None = None
    failure: OAuthFlowError | None = None
    """How the login ended when it failed; ``oauth_poll`` reports its safe fields."""

    @property
    def poll_interval_ms(self) -> int:
        return max(1, round(min(self.provider.poll_interval_s, LOOPBACK_CLIENT_POLL_S) * 1000))

    async def start(self) -> dict[str, Any]:
        """Bind the listener, then build the URL; raises OSError when it cannot bind."""
        loop = asyncio.get_running_loop()
        self._code = loop.create_future()
        self._outcome = loop.create_future()
        app = web.Application(client_max_size=16 * 1024)
        app.router.add_get(self.provider.redirect_path, self._callback)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, LOOPBACK_HOST, self.provider.redirect_port or 0)
        try:
            await site.start()
        except BaseException:  # OSError (port taken) or a cancelled request
            await runner.cleanup()
            raise
        self._runner = runner
        port = _bound_port(runner)
        # The listener is on 127.0.0.1 either way; some providers register the
        # redirect as "localhost" (Entra ID, OpenAI) and compare it as a string.
        host = self.provider.redirect_host
        self._redirect_uri = f"http://{host}:{port}{self.provider.redirect_path}"
        return {"auth_url": self._auth_url(), "pollIntervalMs": self.poll_interval_ms}

    async def _callback(self, request: web.Request) -> web.Response:
        code_future, outcome = self._code, self._outcome
        if code_future is None or outcome is None:
            return _page(404, "Not found", "No login is waiting here.")
        if not self._state_matches(request.query.get("state", "")):
            return _page(400, "Unknown login", "This link does not belong to a login in progress.")
        if code_future.done():
            return _page(409, "Already used", "This login has already been completed.")
        issuer = self._endpoints.issuer
        iss = request.query.get("iss")
        if iss is not None and issuer is not None and iss != issuer:
            return _page(
                400, "Wrong issuer", "This answer did not come from the expected provider."
            )
        if "error" in request.query:
            code_future.set_exception(
                OAuthFlowError.from_provider(self.provider.name, {"error": request.query["error"]})
            )
            return _page(
                200, "Login failed", "The login was not completed. You can close this tab."
            )
        code = request.query.get("code", "")
        if not code or len(code) > MAX_PASTED_CODE:
            return _page(400, "No code", "The provider's answer carries no authorization code.")
        code_future.set_result(code)
        try:
            async with asyncio.timeout(LOOPBACK_REPLY_WAIT_S):
                result = await asyncio.shield(outcome)
        except TimeoutError:
            result = "failed"
        if result == "ok":
            return _page(200, "Login complete", "You are logged in. You can close this tab.")
        return _page(
            200, "Login failed", "The login could not be completed. You can close this tab."
        )

    async def wait(self) -> Token:
        """Wait for the browser, exchange the code, then close the listener."""
        if self._code is None or self._outcome is None:
            raise OAuthFlowError(
                ErrorCode.EXCHANGE_FAILED, f"{self.provider.name}: the flow was not started"
            )
        outcome = self._outcome
        try:
            token = await self._exchange(await self._code)
        except BaseException:
            if not outcome.done():
                outcome.set_result("failed")
            raise
        if not outcome.done():
            outcome.set_result("ok")
        await self.aclose()
        return token

    async def aclose(self) -> None:
        """Stop the listener; idempotent, and safe while a browser request is waiting."""
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_result("failed")
        if self._code is not None and not self._code.done():
            self._code.cancel()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise OSError("the loopback listener has no bound address")


Flow = CodePasteFlow | DeviceCodeFlow | LoopbackFlow
BackgroundFlow = DeviceCodeFlow | LoopbackFlow


async def start_flow(
    provider: ProviderConfig,
    endpoints: Endpoints,
    http: OAuthHttp,
    *,
    clock: Clock = time.time,
) -> tuple[Flow, dict[str, Any]]:
    """Begin the provider's configured flow; return it and what the user must see.

    A loopback login whose listener cannot bind falls back to the device flow
    when the provider has a device authorization endpoint.
    """
    if provider.flow == "pkce_redirect":
        paste = CodePasteFlow(provider, endpoints, http, clock=clock)
        return paste, paste.start()
    if provider.flow == "device_code":
        device = _device_flow(provider, endpoints, http, clock)
        return device, await device.start()
    loopback = LoopbackFlow(provider, endpoints, http, clock=clock)
    try:
        return loopback, await loopback.start()
    except OSError:
        if endpoints.device_authorization is None:
            raise OAuthFlowError(
                ErrorCode.EXCHANGE_FAILED,
                f"{provider.name}: the loopback listener could not start and the provider "
                "offers no device flow",
            ) from None
    device = _device_flow(provider, endpoints, http, clock)
    return device, await device.start()


def _device_flow(
    provider: ProviderConfig, endpoints: Endpoints, http: OAuthHttp, clock: Clock
) -> DeviceCodeFlow:
    if provider.adapter == "codex":
        from credproxy.oauth.codex_device import CodexDeviceFlow  # it builds on this module

        return CodexDeviceFlow(provider, endpoints, http, clock=clock)
    return DeviceCodeFlow(provider, endpoints, http, clock=clock)
