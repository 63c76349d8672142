"""The token model: validation, the sanitize choke point, and the merge rule.

Tokens are plain JSON objects. ``sanitize`` is the one place where a token is
made fit to leave the host; the frame encoder refuses any frame that still has
a ``refresh_token`` key, an independent second guard. ``from_sandbox`` is the
same boundary the other way: a token a sandbox saves loses every host-only
field at any depth before it is merged, so nothing it saves can plant a
refresh token (nested ones would make the encoder refuse every later answer
for that bucket) or overwrite what the host keeps about the record.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from credproxy.protocol.codec import msgspec_json
from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.protocol.sizes import LARGE_FRAME_BYTES

Token = dict[str, Any]

REFRESH_TOKEN: Final = "refresh_token"
HOST_METADATA: Final = "credproxy_host"
"""Host-only bookkeeping kept in the stored record (last refresh outcome); never served."""
HOST_ONLY_FIELDS: Final = frozenset({REFRESH_TOKEN, HOST_METADATA})
_REQUIRED_FIELDS: Final = ("access_token", "expiry", "token_type")
NO_EXPIRY: Final = 253_402_300_799
"""``expiry`` of a token that does not expire (GitHub OAuth App tokens): 9999-12-31
23:59:59 UTC, the last second ``datetime`` can show. The protocol needs a number, and
LLxprt's client, like ours, refreshes only near ``expiry``, so it never tries; nor does
the host, since such a token has no refresh token."""
MAX_TOKEN_FIELDS: Final = 64
MAX_TOKEN_BYTES: Final = LARGE_FRAME_BYTES - 4096
"""Encoded size of a token that crosses the socket: what fits a version 2 frame
with room for the envelope. Tokens above 64 KiB can be read over version 2 only."""


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
    # Measured as the daemon encodes it for a frame.
    if len(msgspec_json().encode(sanitize(token))) > MAX_TOKEN_BYTES:
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
    """The copy of a token that may cross the socket: everything but host-only fields.

    A ``refresh_token`` key is removed at any depth, so even a record saved by an
    older version with one nested inside stays servable.
    """
    return {
        key: _without_refresh_tokens(value)
        for key, value in token.items()
        if key not in HOST_ONLY_FIELDS
    }


def _without_refresh_tokens(value: Any) -> Any:
    """A copy of ``value`` without any ``refresh_token`` key inside (iterative: no
    recursion limit for a hostile nesting depth)."""
    if not isinstance(value, dict | list):
        return value
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(value, root, 0)]
    while stack:
        source, parent, slot = stack.pop()
        if isinstance(source, dict):
            copy: Any = {}
            for key, item in source.items():
                if key == REFRESH_TOKEN:
                    continue
                copy[key] = None
                stack.append((item, copy, key))
        elif isinstance(source, list):
            copy = [None] * len(source)
            for index, item in enumerate(source):
                stack.append((item, copy, index))
        else:
            copy = source
        parent[slot] = copy
    return root[0]


def from_sandbox(raw: Mapping[str, Any]) -> Token:
    """A token a sandbox saves, validated and stripped of host-only fields at any depth.

    Nested ``refresh_token`` keys are stripped, not refused: the protocol drops a
    sandbox's refresh token silently, and a client that nests one (LLxprt keeps
    provider extras) should not fail its save for it.
    """
    token = validate_token(raw)
    return {
        key: _without_refresh_tokens(value)
        for key, value in token.items()
        if key not in HOST_ONLY_FIELDS
    }


def merge(stored: Mapping[str, Any] | None, incoming: Mapping[str, Any]) -> Token:
    """Combine a stored token with a newer one (``save_token`` and refresh).

    access_token and expiry always come from ``incoming``; refresh_token is
    replaced only by a non-empty value; every other field is replaced when
    present in ``incoming`` and kept otherwise. Host metadata is the write
    path's to set, never taken from ``incoming``.
    """
    merged: Token = dict(stored or {})
    for key, value in incoming.items():
        if key == HOST_METADATA:
            continue
        if key == REFRESH_TOKEN:
            if isinstance(value, str) and value:
                merged[key] = value
            continue
        merged[key] = value
    return merged
