"""Envelopes and per-operation payload schemas (``protocol.md``, "Envelopes" and "Operations").

Every payload is converted into a frozen msgspec struct before a handler sees
it, so a handler never touches unvalidated input. Validation messages name the
field, never echo the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Final, TypeVar

import msgspec

from credproxy.protocol.errors import ErrorCode, ProxyError

NAME_PATTERN: Final = r"^[A-Za-z0-9._@-]{1,64}\Z"
MAX_ID_LENGTH: Final = 128
DEFAULT_BUCKET: Final = "default"

Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
SessionId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}\Z")]
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
AuthCode = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class Payload(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """Base of all payload schemas; unknown fields are ignored for forward compatibility."""


class Empty(Payload, frozen=True):
    pass


class ProviderBucket(Payload, frozen=True):
    provider: Name
    bucket: Name = DEFAULT_BUCKET


class SaveToken(Payload, frozen=True):
    provider: Name
    token: dict[str, Any]
    bucket: Name = DEFAULT_BUCKET


class ProviderOnly(Payload, frozen=True):
    provider: Name


class KeyName(Payload, frozen=True):
    name: Name


class SessionRef(Payload, frozen=True):
    session_id: SessionId


class Exchange(Payload, frozen=True):
    session_id: SessionId
    code: AuthCode


class Cancel(Payload, frozen=True):
    targetId: RequestId


class Handshake(Payload, frozen=True):
    """Loosely typed on purpose: bad bounds are UNKNOWN_VERSION and a bad token is
    UNAUTHORIZED (protocol order of checks), not a schema error."""

    minVersion: Any = None
    maxVersion: Any = None
    capabilityToken: Any = None


@dataclass(frozen=True, slots=True)
class OpSpec:
    payload: type[Payload]
    min_version: int = 1


OPERATIONS: Final[dict[str, OpSpec]] = {
    "get_token": OpSpec(ProviderBucket),
    "save_token": OpSpec(SaveToken),
    "remove_token": OpSpec(ProviderBucket),
    "list_providers": OpSpec(Empty),
    "list_buckets": OpSpec(ProviderOnly),
    "get_api_key": OpSpec(KeyName),
    "list_api_keys": OpSpec(Empty),
    "has_api_key": OpSpec(KeyName),
    "get_bucket_stats": OpSpec(ProviderBucket),
    "refresh_token": OpSpec(ProviderBucket),
    "oauth_initiate": OpSpec(ProviderBucket),
    "oauth_exchange": OpSpec(Exchange),
    "oauth_poll": OpSpec(SessionRef),
    "oauth_cancel": OpSpec(SessionRef),
    "cancel": OpSpec(Cancel, min_version=2),
}


@dataclass(frozen=True, slots=True)
class Request:
    """A validated request envelope."""

    id: str
    op: str
    payload: Payload


class RequestError(ProxyError):
    """An envelope or payload failed validation; ``request_id`` is set when it was readable."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(ErrorCode.INVALID_REQUEST, message)
        self.request_id = request_id


def _request_id(frame: dict[str, Any]) -> str | None:
    raw = frame.get("id")
    if isinstance(raw, str) and 0 < len(raw) <= MAX_ID_LENGTH:
        return raw
    return None


def parse_request(frame: dict[str, Any], version: int) -> Request:
    """Validate one post-handshake frame against the envelope and its op's schema."""
    request_id = _request_id(frame)
    if request_id is None:
        if "id" not in frame:
            raise RequestError("missing field `id`")
        raise RequestError(f"field `id` must be a string of 1 to {MAX_ID_LENGTH} characters")
    op = frame.get("op")
    if not isinstance(op, str):
        raise RequestError("missing or non-string field `op`", request_id)
    spec = OPERATIONS.get(op)
    if spec is None or version < spec.min_version:
        raise RequestError(f"unknown op {_printable(op)!r}", request_id)
    raw_payload = frame.get("payload", {})
    if not isinstance(raw_payload, dict):
        raise RequestError("field `payload` must be an object", request_id)
    return Request(request_id, op, convert_payload(raw_payload, spec.payload, request_id))


P = TypeVar("P", bound=Payload)


def convert_payload(raw: dict[str, Any], schema: type[P], request_id: str | None = None) -> P:
    try:
        return msgspec.convert(raw, schema)
    except msgspec.ValidationError as exc:
        raise RequestError(f"invalid payload: {_describe(exc)}", request_id) from None


def _describe(exc: msgspec.ValidationError) -> str:
    text = str(exc).replace("$.", "payload.")
    return _REGEX_IN_MESSAGE.sub("of the allowed form", text)


_REGEX_IN_MESSAGE: Final = re.compile(r"matching regex '.*?'(?= - at|$)")


def _printable(op: str) -> str:
    """Op names are echoed in errors; keep them short and plain."""
    clipped = op[:32]
    return "".join(ch if ch.isprintable() else "?" for ch in clipped)


def success(
    request_id: str | None, version: int, op: str | None, data: dict[str, Any]
) -> dict[str, Any]:
    message: dict[str, Any] = {"v": version}
    if request_id is not None:
        message["id"] = request_id
    if op is not None and request_id is None:
        message["op"] = op
    message["ok"] = True
    message["data"] = data
    return message


def failure(
    request_id: str | None,
    version: int,
    op: str | None,
    error: ProxyError,
) -> dict[str, Any]:
    message: dict[str, Any] = {"v": version}
    if request_id is not None:
        message["id"] = request_id
    if op is not None and request_id is None:
        message["op"] = op
    message["ok"] = False
    message["code"] = error.code
    message["error"] = error.message
    if error.retry_after is not None:
        message["retryAfter"] = error.retry_after
    return message
