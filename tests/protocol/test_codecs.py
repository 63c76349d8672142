"""The two JSON codecs of framing write the same frames and refuse the same bodies.

The daemon frames with msgspec, the sandbox-side client with the standard
library (``protocol/codec.py``); a peer must not be able to tell which one
wrote a frame, nor get one of them to accept what the other refuses. The
documented differences (exponent notation of very large or small floats,
non-finite floats, ``True``/``None`` dict keys) are pinned here too.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credproxy.client import _core as calls
from credproxy.protocol.codec import STDLIB_JSON, JsonCodec, msgspec_json
from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.protocol.framing import FrameDecoder, FrameError, encode_frame
from credproxy.protocol.limits import LARGE_FRAME_BYTES
from credproxy.protocol.messages import failure, success

MSGSPEC = msgspec_json()
CODECS = [MSGSPEC, STDLIB_JSON]
NON_ASCII = "prövider-名前-🔑-\u2028\u2029-\x7f-\ufeff"
CONTROL = "".join(chr(code) for code in range(0x20)) + '"\\/'

REQUESTS: list[calls.Call[Any]] = [
    calls.get_token("gemini"),
    calls.get_token("anthropic", "work@team"),
    calls.save_token(
        "gemini",
        {
            "access_token": "ya29.abc",
            "expiry": 1_764_480_000.123456,
            "token_type": "Bearer",
            "scope": f"openid {NON_ASCII}",
            "extra": {"nested": [1, 2.5, None, True, False, -0.0, 2**64, -(2**63)]},
        },
    ),
    calls.remove_token("gemini", "b.2"),
    calls.list_providers(),
    calls.list_buckets("qwen"),
    calls.get_api_key("openai"),
    calls.list_api_keys(),
    calls.has_api_key("openai"),
    calls.get_bucket_stats("gemini"),
    calls.refresh_token("gemini"),
    calls.oauth_initiate("codex"),
    calls.oauth_exchange("0" * 32, f"code-{NON_ASCII}"),
    calls.oauth_poll("f" * 32),
    calls.oauth_cancel("a" * 32),
]

REPRESENTATIVE = [
    {
        "v": 2,
        "op": "handshake",
        "payload": {"minVersion": 1, "maxVersion": 2, "capabilityToken": "ab" * 32},
    },
    *(
        {"v": 2, "id": f"id-{index}", "op": call.op, "payload": call.payload}
        for index, call in enumerate(REQUESTS)
    ),
    {"v": 2, "id": "x", "op": "cancel", "payload": {"targetId": "id-1"}},
    {"v": 2, "id": "n", "op": "get_token", "payload": {"provider": NON_ASCII, "bucket": CONTROL}},
    {"v": 1, "id": "u", "op": f"ünknown-{NON_ASCII}", "payload": {NON_ASCII: CONTROL}},
    success("id-0", 2, None, {"access_token": "a" * 900, "expiry": 1e9, "token_type": "Bearer"}),
    success(None, 1, "handshake", {"version": 1}),
    success("k", 2, None, {"providers": ["gemini", NON_ASCII], "keys": []}),
    success("s", 2, None, {"bucket": "default", "requestCount": 12, "percentage": 33.25}),
    failure("e1", 2, None, ProxyError(ErrorCode.NOT_FOUND, f"no token {NON_ASCII}")),
    failure(None, 1, "handshake", ProxyError(ErrorCode.UNAUTHORIZED, "bad capability token")),
    failure(
        "e2",
        2,
        None,
        ProxyError(ErrorCode.RATE_LIMITED, f"slow down {CONTROL}", retry_after=1.5),
    ),
    failure(
        "e3",
        2,
        None,
        ProxyError(ErrorCode.INVALID_REQUEST, f"unknown op 'ünknown-{NON_ASCII}'"),
    ),
]


@pytest.mark.parametrize("message", REPRESENTATIVE, ids=lambda m: str(m.get("op", m.get("id"))))
def test_both_codecs_write_the_same_frame_and_read_it_back(message: dict[str, Any]) -> None:
    frames = [encode_frame(message, max_frame_bytes=LARGE_FRAME_BYTES, codec=c) for c in CODECS]
    assert frames[0] == frames[1]
    for codec in CODECS:
        assert FrameDecoder(LARGE_FRAME_BYTES, codec=codec).feed(frames[0]) == [message]


def test_non_ascii_is_written_as_utf8_and_control_characters_as_short_escapes() -> None:
    message = {"name": NON_ASCII, "control": '\x00\x1f\b\f\n\r\t"\\/'}
    for codec in CODECS:
        body = encode_frame(message, codec=codec)[4:]
        assert NON_ASCII.encode("utf-8") in body
        assert b'\\u0000\\u001f\\b\\f\\n\\r\\t\\"\\\\/' in body


# --- generated values --------------------------------------------------------

texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
plain_floats = st.floats(allow_nan=False, allow_infinity=False).filter(
    lambda x: x == 0 or 1e-4 <= abs(x) < 1e16
)
"""Floats both write alike: the ones whose shortest form needs no exponent."""
leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | plain_floats
    | texts
)
values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=24,
)
objects = st.dictionaries(texts.filter(lambda key: key != "refresh_token"), values, max_size=6)


@given(message=objects)
def test_any_json_object_is_the_same_frame_from_both_codecs(message: dict[str, Any]) -> None:
    frame = encode_frame(message, max_frame_bytes=LARGE_FRAME_BYTES)
    assert encode_frame(message, max_frame_bytes=LARGE_FRAME_BYTES, codec=STDLIB_JSON) == frame
    assert FrameDecoder(LARGE_FRAME_BYTES, codec=STDLIB_JSON).feed(frame) == [message]


@given(number=st.floats(allow_nan=False, allow_infinity=False))
def test_any_finite_float_reads_back_as_the_same_double_from_either_codec(number: float) -> None:
    frames = [encode_frame({"n": number}, codec=codec) for codec in CODECS]
    for frame in frames:
        for codec in CODECS:
            [decoded] = FrameDecoder(codec=codec).feed(frame)
            assert decoded["n"] == number
            assert math.copysign(1.0, decoded["n"]) == math.copysign(1.0, number)


def test_floats_with_an_exponent_differ_only_in_notation() -> None:
    """Documented in protocol/codec.py: msgspec drops the ``+`` and the zero padding."""
    assert encode_frame({"n": 1e16})[4:] == b'{"n":1e16}'
    assert encode_frame({"n": 1e16}, codec=STDLIB_JSON)[4:] == b'{"n":1e+16}'
    assert encode_frame({"n": 1e-7})[4:] == b'{"n":1e-7}'
    assert encode_frame({"n": 1e-7}, codec=STDLIB_JSON)[4:] == b'{"n":1e-07}'


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_a_non_finite_float_is_refused_by_json_where_msgspec_writes_null(number: float) -> None:
    assert encode_frame({"n": number})[4:] == b'{"n":null}'
    with pytest.raises(ValueError):
        encode_frame({"n": number}, codec=STDLIB_JSON)


def test_a_lone_surrogate_cannot_be_encoded_by_either_codec() -> None:
    for codec in CODECS:
        with pytest.raises(UnicodeEncodeError):
            encode_frame({"s": "\ud800"}, codec=codec)


# --- decoding: same answer or same refusal -----------------------------------


def outcome(codec: JsonCodec, body: bytes) -> object:
    try:
        [frame] = FrameDecoder(LARGE_FRAME_BYTES, codec=codec).feed(
            struct.pack(">I", len(body)) + body
        )
    except FrameError as exc:
        return ("refused", str(exc))
    return ("read", json.dumps(frame, sort_keys=True))


@pytest.mark.parametrize(
    ("body", "read_as"),
    [
        pytest.param(b'{"a":1,"a":2}', {"a": 2}, id="duplicate-keys-keep-the-last"),
        pytest.param(b'{"a":{"b":1},"a":"x"}', {"a": "x"}, id="duplicate-of-another-type"),
        pytest.param(b'{"a":"\\ud83d\\ude00"}', {"a": "\U0001f600"}, id="surrogate-pair"),
        pytest.param(b'{"a":"\\u00e9\\/"}', {"a": "é/"}, id="escapes"),
        pytest.param(b'{"a":"\x7f"}', {"a": "\x7f"}, id="raw-delete"),
        pytest.param(b'{"\\u0000":1}', {"\x00": 1}, id="escaped-nul-key"),
        pytest.param(b' \t\r\n{"a":-0} ', {"a": 0}, id="whitespace-and-minus-zero"),
        pytest.param(b'{"a":1E2,"b":1e-400}', {"a": 100.0, "b": 0.0}, id="exponents"),
        pytest.param(b'{"a":' + b"9" * 4300 + b"}", {"a": int("9" * 4300)}, id="4300-digits"),
        pytest.param(b'{"a":18446744073709551616}', {"a": 2**64}, id="beyond-64-bits"),
        pytest.param(b'{"a":"\\\\ud800"}', {"a": "\\ud800"}, id="escaped-backslash-not-escape"),
        pytest.param(b"[" * 900 + b"{}" + b"]" * 900, None, id="900-levels-not-an-object"),
    ],
)
def test_both_codecs_read_the_same_value(body: bytes, read_as: dict[str, Any] | None) -> None:
    results = [outcome(codec, body) for codec in CODECS]
    assert results[0] == results[1]
    if read_as is not None:
        assert results[0] == ("read", json.dumps(read_as, sort_keys=True))


JSONISH = st.sampled_from(
    [
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        '"',
        '"a"',
        "\\",
        "\\u",
        "d800",
        "dc00",
        "00e9",
        "0",
        "1",
        "-",
        "+",
        ".",
        "e",
        "E",
        "400",
        "true",
        "false",
        "null",
        "NaN",
        "Infinity",
        " ",
        "\t",
        "\x00",
        "\x1f",
        "é",
        "\ufeff",
    ]
)


@given(parts=st.lists(JSONISH, max_size=24))
def test_both_codecs_agree_on_near_json_text(parts: list[str]) -> None:
    body = ("{" + "".join(parts)).encode("utf-8")
    assert outcome(MSGSPEC, body) == outcome(STDLIB_JSON, body)


@given(body=st.binary(max_size=128))
def test_both_codecs_agree_on_arbitrary_bytes(body: bytes) -> None:
    assert outcome(MSGSPEC, body) == outcome(STDLIB_JSON, body)
