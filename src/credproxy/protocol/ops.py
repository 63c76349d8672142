"""The operations by name (``protocol.md``, "Operations"), without their schemas.

This is the op table's first half: what both sides need to know of an op
without loading msgspec, which the sandbox-side client never imports.
``protocol.messages`` builds each ``Op`` on one of these, adding the payload
and result schemas and the grant rule the daemon needs; an op exists only
when it is declared in both (``tests/protocol/test_op_table.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

NAME_PATTERN: Final = r"^[A-Za-z0-9._@-]{1,64}\Z"
NAME_RE: Final = re.compile(NAME_PATTERN)
"""Provider, bucket and key names; the one compiled copy of the pattern."""
DEFAULT_BUCKET: Final = "default"


class OpFacts(NamedTuple):
    """A named tuple, not a dataclass: the client's imports stay free of ``dataclasses``."""

    name: str
    min_version: int = 1
    name_fields: tuple[str, ...] | None = None
    """Set when the op's payload schema is nothing but these fields, each a name
    (``NAME_PATTERN``). A payload holding every one of them as a valid name is
    then valid without consulting the schema; ``None`` when the payload has
    other kinds of fields."""

    def plainly_valid(self, payload: Mapping[str, Any]) -> bool:
        """True when the op's schema certainly accepts ``payload``.

        False means only "not decided here": the schema then decides, and
        words the error. Extra fields never matter, as the schemas ignore them.
        """
        if self.name_fields is None:
            return False
        for field in self.name_fields:
            value = payload.get(field)
            if type(value) is not str or NAME_RE.match(value) is None:
                return False
        return True


_PROVIDER_BUCKET: Final = ("provider", "bucket")

HANDSHAKE: Final = OpFacts("handshake")
CANCEL: Final = OpFacts("cancel", min_version=2)
GET_TOKEN: Final = OpFacts("get_token", name_fields=_PROVIDER_BUCKET)
SAVE_TOKEN: Final = OpFacts("save_token")
REMOVE_TOKEN: Final = OpFacts("remove_token", name_fields=_PROVIDER_BUCKET)
LIST_PROVIDERS: Final = OpFacts("list_providers", name_fields=())
LIST_BUCKETS: Final = OpFacts("list_buckets", name_fields=("provider",))
GET_API_KEY: Final = OpFacts("get_api_key", name_fields=("name",))
LIST_API_KEYS: Final = OpFacts("list_api_keys", name_fields=())
HAS_API_KEY: Final = OpFacts("has_api_key", name_fields=("name",))
GET_BUCKET_STATS: Final = OpFacts("get_bucket_stats", name_fields=_PROVIDER_BUCKET)
REFRESH_TOKEN: Final = OpFacts("refresh_token", name_fields=_PROVIDER_BUCKET)
OAUTH_INITIATE: Final = OpFacts("oauth_initiate", name_fields=_PROVIDER_BUCKET)
OAUTH_EXCHANGE: Final = OpFacts("oauth_exchange")
OAUTH_POLL: Final = OpFacts("oauth_poll")
OAUTH_CANCEL: Final = OpFacts("oauth_cancel")

ALL_OP_FACTS: Final[tuple[OpFacts, ...]] = (
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

REQUEST_OPS: Final[dict[str, OpFacts]] = {
    facts.name: facts for facts in ALL_OP_FACTS if facts is not HANDSHAKE
}
"""Ops valid after the handshake, by name."""
