"""Turning what a provider says into what may cross the socket.

A provider's error body is attacker-reachable text on the way out (some
providers echo the request, code and verifier included, in
``error_description`` or ``error_uri``). Only the ``error`` member survives,
and only when it is one of the registered codes of RFC 6749 section 5.2 and
4.1.2.1, RFC 8628 section 3.5 and OpenID Connect Core section 3.1.2.6; the
human message is ours, chosen by that code. The provider's description is
never forwarded, logged or kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from credproxy.protocol.errors import ErrorCode, ProxyError

KNOWN_ERRORS: Final[dict[str, str]] = {
    "invalid_request": "the provider rejected the request as malformed",
    "invalid_client": "the provider does not accept this client (check client_id)",
    "invalid_grant": "the provider refused the code or grant (wrong, used or expired)",
    "unauthorized_client": "the provider does not allow this client to use this flow",
    "unsupported_grant_type": "the provider does not support this grant type",
    "invalid_scope": "the provider rejected the requested scopes",
    "access_denied": "the login was denied",
    "unsupported_response_type": "the provider does not support this response type",
    "server_error": "the provider reported an internal error",
    "temporarily_unavailable": "the provider is temporarily unavailable",
    "authorization_pending": "the user has not finished logging in yet",
    "slow_down": "the provider asked to poll more slowly",
    "expired_token": "the device code expired before the login was completed",
    "invalid_token": "the provider rejected the token",
    "interaction_required": "the provider needs the user to interact",
    "login_required": "the provider needs the user to log in",
    "consent_required": "the provider needs the user's consent",
}
UNKNOWN_ERROR: Final = "unknown_error"


def reduce_error_code(body: object, aliases: Mapping[str, str] | None = None) -> str:
    """The ``error`` member if it is a registered code, else ``unknown_error``.

    ``aliases`` maps a provider's own codes to the registered ones (a provider
    adapter's); an ``error`` object's ``code`` member counts as the code.
    """
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):
            error = error.get("code")
        if isinstance(error, str) and aliases:
            error = aliases.get(error, error)
        if isinstance(error, str) and error in KNOWN_ERRORS:
            return error
    return UNKNOWN_ERROR


class OAuthFlowError(Exception):
    """A login or refresh failed. ``message`` is ours and safe to show a sandbox.

    ``code`` is the protocol error code; ``oauth_error`` is the provider's
    registered error code, or ``None`` when the failure was not the provider's
    answer (network, malformed response). ``transient`` marks a failure worth
    retrying (network error, timeout, HTTP 5xx, 429 with ``Retry-After``), and
    ``retry_after`` is the provider's ``Retry-After`` in seconds, if it sent one.
    """

    def __init__(
        self,
        code: ErrorCode | str,
        message: str,
        *,
        oauth_error: str | None = None,
        transient: bool = False,
        retry_after: float | None = None,
        interval_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message
        self.oauth_error = oauth_error
        self.transient = transient
        self.retry_after = retry_after
        self.interval_s = interval_s
        """The poll interval a ``slow_down`` answer asked for, when it named one."""

    @classmethod
    def from_provider(
        cls,
        provider: str,
        body: object,
        *,
        code: ErrorCode = ErrorCode.EXCHANGE_FAILED,
        status: int | None = None,
        retry_after: float | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> OAuthFlowError:
        error = reduce_error_code(body, aliases)
        text = KNOWN_ERRORS.get(error, "the provider refused the request")
        if error == UNKNOWN_ERROR and status is not None and status != 200:
            text = f"the provider answered HTTP {status}"
        transient = status is not None and (
            status >= 500 or (status == 429 and retry_after is not None)
        )
        interval = body.get("interval") if isinstance(body, Mapping) else None
        return cls(
            code,
            f"{provider}: {text} ({error})",
            oauth_error=error,
            transient=transient and error != "invalid_grant",
            retry_after=retry_after if transient else None,
            interval_s=_seconds(interval) if error == "slow_down" else None,
        )

    def to_proxy_error(self) -> ProxyError:
        return ProxyError(self.code, self.message)

    def __repr__(self) -> str:
        return f"OAuthFlowError({self.code!s}, {self.message!r})"


def _seconds(value: object) -> float | None:
    """A poll interval a provider named: 1 to 600 s, as a number or digits (form bodies)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 3:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 1 <= value <= 600 else None


def provider_not_found(name: str, nearest: str | None = None) -> ProxyError:
    """What the user meets when no preset or ``[providers.NAME]`` table has that name."""
    if nearest is not None:
        return ProxyError(
            ErrorCode.PROVIDER_NOT_FOUND,
            f"no OAuth provider {name!r}; did you mean {nearest!r}? "
            "(`credproxy providers` lists them)",
        )
    return ProxyError(
        ErrorCode.PROVIDER_NOT_FOUND,
        f"no OAuth provider {name!r}: no preset has that name (`credproxy providers` lists "
        f"them); add a [providers.{name}] table to the host's credproxy config "
        "(docs/providers.md), then restart the daemon",
    )
