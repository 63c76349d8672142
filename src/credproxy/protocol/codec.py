"""The JSON codecs a frame body can go through (RFC 8259; ``protocol.md``, "Framing").

Framing is one implementation with two interchangeable codecs:

- ``msgspec_json()``: msgspec, the fast one, on the daemon's hot path. Its
  import costs about 30 ms, so it is loaded on first use, never by importing
  this module.
- ``STDLIB_JSON``: the standard ``json`` module, set up to write the bytes
  msgspec writes and to refuse what msgspec refuses. The sandbox-side client
  uses it, so ``credproxy token get`` starts without loading msgspec.

Where they agree (``tests/protocol/test_codecs.py`` pins it): compact
separators, UTF-8 written as is (no ``\\uXXXX`` for non-ASCII), the same
escapes for ``"``, ``\\`` and control characters, integers of any size; on
input both keep the last of duplicate keys and refuse ``NaN``/``Infinity``,
numbers beyond a double, integers of more than 4300 digits, lone UTF-16
surrogates (``"\\ud800"``), control characters in strings, a byte order mark,
trailing data, and nesting deeper than the interpreter's recursion limit
(about 1000 levels; no protocol message nests more than four).

Where they differ, on the encoding side only: a float below 1e-4 or from 1e16
up is written ``1e16`` / ``1e-7`` by msgspec and ``1e+16`` / ``1e-07`` by
``json`` (the same double either way). msgspec writes a non-finite float as
``null`` and a set, bytes or a datetime in some JSON form; ``json`` refuses
them (``ValueError``, ``TypeError``), so the client refuses to send a value it
would otherwise change. ``json`` writes ``True``/``None`` dict keys as
``"true"``/``"null"`` where msgspec refuses them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from functools import cache
from typing import Any, Final, NamedTuple, NoReturn


class JsonCodec(NamedTuple):
    """A named tuple, not a dataclass: the client's imports stay free of ``dataclasses``."""

    name: str
    encode: Callable[[Any], bytes]
    """Compact UTF-8 JSON; raises ``TypeError`` or ``ValueError`` for what JSON cannot hold."""
    decode: Callable[[str], Any]
    """One JSON value from a whole text; raises one of ``decode_errors`` when malformed."""
    decode_errors: tuple[type[Exception], ...]


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")

_stdlib_encoder: Final = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":")
)
_stdlib_decoder: Final = json.JSONDecoder(
    parse_float=_finite_float, parse_constant=_refuse_constant
)


def _stdlib_encode(value: Any) -> bytes:
    return _stdlib_encoder.encode(value).encode("utf-8")


def _stdlib_decode(text: str) -> Any:
    value = _stdlib_decoder.decode(text)
    # json lets a lone surrogate escape through as a str no UTF-8 can carry;
    # only a \uD800-\uDFFF escape can make one, so only such a text is walked.
    if _SURROGATE_ESCAPE.search(text) and _holds_lone_surrogate(value):
        raise ValueError("lone UTF-16 surrogate in a string")
    return value


def _holds_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


STDLIB_JSON: Final = JsonCodec("json", _stdlib_encode, _stdlib_decode, (ValueError, RecursionError))
"""``json.JSONDecodeError`` and the too-many-digits error are both ``ValueError``."""


@cache
def msgspec_json() -> JsonCodec:
    """msgspec's codec, imported on the first call."""
    import msgspec

    return JsonCodec(
        "msgspec",
        msgspec.json.Encoder().encode,
        msgspec.json.Decoder().decode,
        (msgspec.DecodeError, RecursionError),
    )
