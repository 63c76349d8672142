"""Envelopes and per-operation payload schemas (``protocol.md``, "Envelopes" and "Operations").

Every payload is converted into a frozen msgspec struct before a handler sees
it, so a handler never touches unvalidated input. Validation messages name the
field, never echo the value. Each op is declared on its ``protocol.ops`` entry
(name, minimum version), the part of the table that loads without msgspec.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Final, Generic, Literal, TypeVar, get_args

import msgspec

from credproxy.protocol import ops
from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.protocol.limits import MAX_ID_LENGTH, MAX_OP_ECHO
from credproxy.protocol.ops import DEFAULT_BUCKET, NAME_PATTERN, OpFacts

FlowType = Literal["pkce_redirect", "device_code", "browser_redirect"]
"""The login flows, as ``flow_type`` names them on the wire and ``flow`` in the config."""
FLOW_TYPES: Final[tuple[FlowType, ...]] = get_args(FlowType)

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


class GrantRule(StrEnum):
    """What part of a grant an op needs; the op's handler enforces it."""

    NONE = "none"
    """Connection-level (handshake, cancel): no credential is touched."""
    TOKEN = "token"
    """Read one provider:bucket."""
    TOKEN_SAVE = "token+save"
    TOKEN_REMOVE = "token+remove"
    PROVIDER = "provider"
    """Listing: only what the grant allows is shown."""
    KEY = "key"
    SESSION = "session"
    """A login session bound to the identity that opened it."""


class Result(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """Base of the ``data`` schemas of successful answers; extra fields pass through."""


class TokenResult(Result, frozen=True):
    access_token: str
    expiry: float
    token_type: str


class Done(Result, frozen=True):
    pass


class ProvidersResult(Result, frozen=True):
    providers: list[str]


class BucketsResult(Result, frozen=True):
    buckets: list[str]


class KeyResult(Result, frozen=True):
    key: str


class KeysResult(Result, frozen=True):
    keys: list[str]


class ExistsResult(Result, frozen=True):
    exists: bool


class BucketStatsResult(Result, frozen=True):
    bucket: str
    requestCount: int
    percentage: float


class LoginStarted(Result, frozen=True):
    session_id: str
    flow_type: str


class PollResult(Result, frozen=True):
    status: str


class VersionResult(Result, frozen=True):
    version: int


class CancelResult(Result, frozen=True):
    cancelled: bool


P = TypeVar("P", bound=Payload)


@dataclass(frozen=True, slots=True)
class Op(Generic[P]):
    """One operation, declared once: the daemon's handler table, the client's
    schema check, the audit's op names and the docs test all read it."""

    facts: OpFacts
    """Name and minimum version, from ``protocol.ops``."""
    payload: type[P]
    result: type[Result]
    grant: GrantRule
    connection_level: bool = False
    """Answered by the protocol core itself (handshake, cancel), not by a handler."""

    @property
    def name(self) -> str:
        return self.facts.name

    @property
    def min_version(self) -> int:
        return self.facts.min_version


HANDSHAKE: Final = Op(ops.HANDSHAKE, Handshake, VersionResult, GrantRule.NONE, True)
CANCEL: Final = Op(ops.CANCEL, Cancel, CancelResult, GrantRule.NONE, True)
GET_TOKEN: Final = Op(ops.GET_TOKEN, ProviderBucket, TokenResult, GrantRule.TOKEN)
SAVE_TOKEN: Final = Op(ops.SAVE_TOKEN, SaveToken, Done, GrantRule.TOKEN_SAVE)
REMOVE_TOKEN: Final = Op(ops.REMOVE_TOKEN, ProviderBucket, Done, GrantRule.TOKEN_REMOVE)
LIST_PROVIDERS: Final = Op(ops.LIST_PROVIDERS, Empty, ProvidersResult, GrantRule.PROVIDER)
LIST_BUCKETS: Final = Op(ops.LIST_BUCKETS, ProviderOnly, BucketsResult, GrantRule.PROVIDER)
GET_API_KEY: Final = Op(ops.GET_API_KEY, KeyName, KeyResult, GrantRule.KEY)
LIST_API_KEYS: Final = Op(ops.LIST_API_KEYS, Empty, KeysResult, GrantRule.KEY)
HAS_API_KEY: Final = Op(ops.HAS_API_KEY, KeyName, ExistsResult, GrantRule.KEY)
GET_BUCKET_STATS: Final = Op(
    ops.GET_BUCKET_STATS, ProviderBucket, BucketStatsResult, GrantRule.TOKEN
)
REFRESH_TOKEN: Final = Op(ops.REFRESH_TOKEN, ProviderBucket, TokenResult, GrantRule.TOKEN)
OAUTH_INITIATE: Final = Op(ops.OAUTH_INITIATE, ProviderBucket, LoginStarted, GrantRule.TOKEN)
OAUTH_EXCHANGE: Final = Op(ops.OAUTH_EXCHANGE, Exchange, TokenResult, GrantRule.SESSION)
OAUTH_POLL: Final = Op(ops.OAUTH_POLL, SessionRef, PollResult, GrantRule.SESSION)
OAUTH_CANCEL: Final = Op(ops.OAUTH_CANCEL, SessionRef, Done, GrantRule.SESSION)

ALL_OPS: Final[tuple[Op[Any], ...]] = (
    HANDSHAKE,
    CANCEL,
    GET_TOKEN,
    SAVE_TOKEN,
    REMOVE_TOKEN,
    LIST_PROVIDERS,
    LIST_BUCKETS,
    GET_API_KEY,
    LIST_API_KEYS,
    HAS_API_KEY,
    GET_BUCKET_STATS,
    REFRESH_TOKEN,
    OAUTH_INITIATE,
    OAUTH_EXCHANGE,
    OAUTH_POLL,
    OAUTH_CANCEL,
)
"""The op table. Adding an op is one declaration here and in ``protocol.ops``, plus
one handler."""

OPERATIONS: Final[dict[str, Op[Any]]] = {op.name: op for op in ALL_OPS if op is not HANDSHAKE}
"""Ops valid after the handshake, by name."""


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


def request_id_of(frame: dict[str, Any]) -> str | None:
    """The frame's id when it is a well-formed id, else ``None``."""
    raw = frame.get("id")
    if isinstance(raw, str) and 0 < len(raw) <= MAX_ID_LENGTH:
        return raw
    return None


_UNSET: Final = object()


def parse_request(frame: dict[str, Any], version: int, request_id: object = _UNSET) -> Request:
    """Validate one post-handshake frame against the envelope and its op's schema.

    A caller that already took the id with ``request_id_of`` passes it in.
    """
    if request_id is _UNSET:
        request_id = request_id_of(frame)
    if not isinstance(request_id, str):
        request_id = None
    if request_id is None:
        if "id" not in frame:
            raise RequestError("missing field `id`")
        raise RequestError(f"field `id` must be a string of 1 to {MAX_ID_LENGTH} characters")
    op = frame.get("op")
    if not isinstance(op, str):
        raise RequestError("missing or non-string field `op`", request_id)
    spec = OPERATIONS.get(op)
    if spec is None or version < spec.min_version:
        raise RequestError(f"unknown op {printable(op)!r}", request_id)
    raw_payload = frame.get("payload", {})
    if not isinstance(raw_payload, dict):
        raise RequestError("field `payload` must be an object", request_id)
    return Request(request_id, op, convert_payload(raw_payload, spec.payload, request_id))


def convert_payload(raw: dict[str, Any], schema: type[P], request_id: str | None = None) -> P:
    try:
        return msgspec.convert(raw, schema)
    except msgspec.ValidationError as exc:
        raise RequestError(f"invalid payload: {_describe(exc)}", request_id) from None


def _describe(exc: msgspec.ValidationError) -> str:
    text = str(exc).replace("$.", "payload.")
    return _REGEX_IN_MESSAGE.sub("of the allowed form", text)


_REGEX_IN_MESSAGE: Final = re.compile(r"matching regex '.*?'(?= - at|$)")


def printable(op: object) -> str | None:
    """Op names are echoed in errors and audit lines; keep them short and plain."""
    if not isinstance(op, str):
        return None
    clipped = op[:MAX_OP_ECHO]
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
