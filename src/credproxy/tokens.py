"""The token model: validation, the sanitize choke point, and the merge rule.

Tokens are plain JSON objects. ``sanitize`` is the one place where a token is
made fit to leave the host; the frame encoder refuses any frame that still has
a ``refresh_token`` key, an independent second guard.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from credproxy.protocol.errors import ErrorCode, ProxyError

Token = dict[str, Any]

HOST_ONLY_FIELDS: Final = frozenset({"refresh_token"})
_REQUIRED_FIELDS: Final = ("access_token", "expiry", "token_type")
_encoder: Final = msgspec.json.Encoder()
MAX_TOKEN_FIELDS: Final = 64
MAX_TOKEN_BYTES: Final = 32_768
"""Encoded size of a token that crosses the socket; leaves room in a 64 KiB frame."""


def validate_token(raw: Mapping[str, Any]) -> Token:
    """Check the fields every token must have; the message names fields, never values."""
    if not isinstance(raw, Mapping):
        raise ProxyError(ErrorCode.INVALID_REQUEST, "token must be a JSON object")
    if len(raw) > MAX_TOKEN_FIELDS:
        raise ProxyError(
            ErrorCode.INVALID_REQUEST, f"token has more than {MAX_TOKEN_FIELDS} fields"
        )
    access = raw.get("access_token")
    if not isinstance(access, str) or not access:
        raise ProxyError(ErrorCode.INVALID_REQUEST, "token.access_token must be a non-empty string")
    expiry = expiry_seconds(raw.get("expiry"))
    if expiry is None or expiry < 0:
        raise ProxyError(ErrorCode.INVALID_REQUEST, "token.expiry must be Unix seconds (a number)")
    token_type = raw.get("token_type")
    if not isinstance(token_type, str) or not token_type:
        raise ProxyError(ErrorCode.INVALID_REQUEST, "token.token_type must be a non-empty string")
    refresh = raw.get("refresh_token")
    if refresh is not None and not isinstance(refresh, str):
        raise ProxyError(ErrorCode.INVALID_REQUEST, "token.refresh_token must be a string")
    return dict(raw)


def check_merged_size(token: Mapping[str, Any]) -> None:
    """Refuse a merge result that is too big to keep.

    ``save_token`` merges into the stored token, so a sandbox that saves new
    field names again and again would grow the stored token without end: the
    store with it, until ``get_token`` cannot fit the token in a frame and
    fails for every sandbox sharing that bucket.
    """
    if len(token) > MAX_TOKEN_FIELDS:
        raise ProxyError(
            ErrorCode.INVALID_REQUEST,
            f"token would have more than {MAX_TOKEN_FIELDS} fields merged with the stored one",
        )
    if len(_encoder.encode(sanitize(token))) > MAX_TOKEN_BYTES:
        raise ProxyError(
            ErrorCode.INVALID_REQUEST,
            f"token would exceed {MAX_TOKEN_BYTES} bytes merged with the stored one",
        )


def expiry_seconds(expiry: object) -> float | None:
    """A token's ``expiry`` as finite Unix seconds, or None when it is not a usable number."""
    if isinstance(expiry, bool) or not isinstance(expiry, int | float) or not _finite(expiry):
        return None
    return float(expiry)


def _finite(number: float) -> bool:
    """``math.isfinite`` that says False, not OverflowError, for an int beyond any float."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def sanitize(token: Mapping[str, Any]) -> Token:
    """The copy of a token that may cross the socket: everything but host-only fields."""
    return {key: value for key, value in token.items() if key not in HOST_ONLY_FIELDS}


def merge(stored: Mapping[str, Any] | None, incoming: Mapping[str, Any]) -> Token:
    """Combine a stored token with a newer one (``save_token`` and refresh).

    access_token and expiry always come from ``incoming``; refresh_token is
    replaced only by a non-empty value; every other field is replaced when
    present in ``incoming`` and kept otherwise.
    """
    merged: Token = dict(stored or {})
    for key, value in incoming.items():
        if key == "refresh_token":
            if isinstance(value, str) and value:
                merged[key] = value
            continue
        merged[key] = value
    return merged
