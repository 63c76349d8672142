"""The daemon's one HTTP client for provider calls.

Every call is bounded in time (protocol.md, "Limits and timeouts": 15 s per
provider call) and in size, and answers only with parsed objects: JSON, or a
form-encoded body (GitHub answers that way to a client that does not ask for
JSON) read into the same shape.
Transport failures become ``OAuthFlowError`` with a message that names the
provider and the step, never the URL's query, the form or a header.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, quote_plus

import aiohttp

from credproxy.oauth.errors import OAuthFlowError
from credproxy.protocol.errors import ErrorCode

MAX_CALL_TIMEOUT_S: Final = 15.0
MAX_RESPONSE_BYTES: Final = 256 * 1024
USER_AGENT: Final = "credproxy"


MAX_RETRY_AFTER_S: Final = 3600.0


class HttpResponse:
    """Status and object of one provider answer (``body`` is ``{}`` when it is neither a
    JSON object nor a form-encoded body); ``retry_after`` is a ``Retry-After`` header
    given in seconds, if any."""

    __slots__ = ("body", "retry_after", "status")

    def __init__(self, status: int, body: dict[str, Any], retry_after: float | None = None) -> None:
        self.status = status
        self.body = body
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"HttpResponse(status={self.status})"


class OAuthHttp:
    """Owns one ``aiohttp.ClientSession``; create it inside the daemon's event loop."""

    def __init__(self, *, timeout_s: float = MAX_CALL_TIMEOUT_S) -> None:
        self._timeout_s = min(timeout_s, MAX_CALL_TIMEOUT_S)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                trust_env=True,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def get_json(self, provider: str, step: str, url: str) -> HttpResponse:
        return await self._call(provider, step, "GET", url)

    async def post_form(
        self,
        provider: str,
        step: str,
        url: str,
        form: Mapping[str, str],
        *,
        auth: tuple[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> HttpResponse:
        return await self._call(
            provider, step, "POST", url, form=dict(form), auth=auth, timeout_s=timeout_s
        )

    async def post_json(
        self,
        provider: str,
        step: str,
        url: str,
        document: Mapping[str, str],
        *,
        auth: tuple[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> HttpResponse:
        """POST a JSON object, for providers whose endpoints take JSON instead of a form."""
        return await self._call(
            provider, step, "POST", url, document=dict(document), auth=auth, timeout_s=timeout_s
        )

    async def _call(
        self,
        provider: str,
        step: str,
        method: str,
        url: str,
        *,
        form: dict[str, str] | None = None,
        document: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> HttpResponse:
        limit = min(timeout_s or self._timeout_s, MAX_CALL_TIMEOUT_S)
        headers = {"Authorization": basic_credentials(*auth)} if auth is not None else None
        try:
            async with asyncio.timeout(limit):
                async with self._client().request(
                    method,
                    url,
                    data=form,
                    json=document,
                    headers=headers,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=limit),
                ) as response:
                    raw = await response.content.read(MAX_RESPONSE_BYTES + 1)
                    status = response.status
                    retry_after = _retry_after(response.headers.get("Retry-After"))
                    form_encoded = response.content_type == "application/x-www-form-urlencoded"
        except TimeoutError:
            raise OAuthFlowError(
                ErrorCode.EXCHANGE_FAILED,
                f"{provider}: the provider did not answer the {step}",
                transient=True,
            ) from None
        except aiohttp.ClientError:
            raise OAuthFlowError(
                ErrorCode.EXCHANGE_FAILED,
                f"{provider}: the provider could not be reached ({step})",
                transient=True,
            ) from None
        if len(raw) > MAX_RESPONSE_BYTES:
            raise OAuthFlowError(
                ErrorCode.EXCHANGE_FAILED, f"{provider}: the provider's {step} answer is too large"
            )
        body = _form_object(raw) if form_encoded else _json_object(raw)
        return HttpResponse(status, body, retry_after)


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in delay-seconds (RFC 9110 section 10.2.3); an HTTP date is ignored."""
    if value is None or not value.strip().isdigit():
        return None
    return min(float(value.strip()), MAX_RETRY_AFTER_S)


def basic_credentials(client_id: str, secret: str) -> str:
    """RFC 6749 section 2.3.1: both parts form-urlencoded, then HTTP Basic (RFC 7617)."""
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def _form_object(raw: bytes) -> dict[str, Any]:
    try:
        return dict(parse_qsl(raw.decode("utf-8"), max_num_fields=64))
    except (UnicodeDecodeError, ValueError):
        return {}


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}
