"""OpenAI's device login as Codex CLI runs it: not RFC 8628.

codex-rs ``login/src/device_code_auth.rs`` (openai/codex @0483fd17):
- POST JSON ``{client_id}`` to ``{base}/api/accounts/deviceauth/usercode``;
  the answer has ``device_auth_id``, ``user_code`` (or ``usercode``) and
  ``interval`` as a string of seconds; the user opens ``{base}/codex/device``.
- POST JSON ``{device_auth_id, user_code}`` to
  ``{base}/api/accounts/deviceauth/token``: HTTP 403 or 404 means "not yet";
  success is ``{authorization_code, code_challenge, code_verifier}``, the PKCE
  pair issued by the server; codex gives up after 15 minutes.
- The code and that verifier are exchanged at the token endpoint (form) with
  ``redirect_uri = {base}/deviceauth/callback``.

The device auth id and the verifier stay here, on the host, like every
device code.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from credproxy.oauth.errors import OAuthFlowError
from credproxy.oauth.flows import MAX_TRANSIENT_POLL_FAILURES, DeviceCodeFlow
from credproxy.protocol.errors import ErrorCode
from credproxy.tokens import Token

LIFETIME_S: Final = 15 * 60
PENDING_STATUSES: Final = frozenset({403, 404})
DEFAULT_INTERVAL_S: Final = 5.0
MAX_FIELD: Final = 512


def _interval(value: object, fallback: float) -> float:
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 3:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 600:
        return fallback
    return float(value)


def _field(body: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = body.get(name)
        if isinstance(value, str) and 0 < len(value) <= MAX_FIELD and value.isprintable():
            return value
    return None


class CodexDeviceFlow(DeviceCodeFlow):
    """``flow = "device_code"`` with ``adapter = "codex"``."""

    _device_auth_id: str | None = None
    _user_code: str | None = None

    def _base(self) -> str:
        base = (self.provider.base_url or "").rstrip("/")
        if not base:
            raise OAuthFlowError(
                ErrorCode.EXCHANGE_FAILED, f"{self.provider.name}: the device login needs base_url"
            )
        return base

    async def start(self) -> dict[str, Any]:
        name = self.provider.name
        response = await self._http.post_json(
            name,
            "device authorization request",
            self._endpoint,
            {"client_id": self.provider.client_id},
            timeout_s=self.provider.timeout_s,
        )
        body = response.body
        device_auth_id = _field(body, "device_auth_id")
        user_code = _field(body, "user_code", "usercode")
        if response.status != 200 or device_auth_id is None or user_code is None:
            if response.status == 200:
                raise OAuthFlowError(
                    ErrorCode.EXCHANGE_FAILED,
                    f"{name}: the device authorization response lacks its id or user code",
                )
            raise OAuthFlowError.from_provider(name, body)
        self._device_auth_id = device_auth_id
        self._user_code = user_code
        self._device_code = device_auth_id
        self.interval_s = _interval(body.get("interval"), self.provider.poll_interval_s)
        self._deadline = self._monotonic() + LIFETIME_S
        return {
            "verification_url": f"{self._base()}/codex/device",
            "user_code": user_code,
            "pollIntervalMs": self.poll_interval_ms,
        }

    async def wait(self) -> Token:
        name = self.provider.name
        if self._device_auth_id is None or self._user_code is None:
            raise OAuthFlowError(ErrorCode.EXCHANGE_FAILED, f"{name}: the flow was not started")
        poll = f"{self._base()}/api/accounts/deviceauth/token"
        request = {"device_auth_id": self._device_auth_id, "user_code": self._user_code}
        transient = 0
        while True:
            await asyncio.sleep(self.interval_s)
            if self._monotonic() >= self._deadline:
                raise OAuthFlowError.from_provider(name, {"error": "expired_token"})
            response = await self._http.post_json(
                name, "device token request", poll, request, timeout_s=self.provider.timeout_s
            )
            if response.status in PENDING_STATUSES:
                transient = 0
                continue
            if response.status != 200:
                if response.status < 500:
                    raise OAuthFlowError.from_provider(name, response.body)
                transient += 1
                if transient >= MAX_TRANSIENT_POLL_FAILURES:
                    raise OAuthFlowError.from_provider(name, response.body)
                continue
            code = _field(response.body, "authorization_code")
            verifier = _field(response.body, "code_verifier")
            if code is None or verifier is None:
                raise OAuthFlowError(
                    ErrorCode.EXCHANGE_FAILED,
                    f"{name}: the device login answer lacks its code or verifier",
                )
            form = {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": f"{self._base()}/deviceauth/callback",
                "code_verifier": verifier,
            }
            return await self._request_token(form, "code exchange")
