"""Framing: the length-prefixed JSON decoder's limits and the encoder's secret guard.

What the body may hold is checked with both JSON codecs (``protocol.codec``):
the daemon's msgspec and the sandbox client's standard library.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from credproxy.protocol.codec import STDLIB_JSON, JsonCodec, msgspec_json
from credproxy.protocol.framing import (
    MAX_FRAME_BYTES,
    FrameDecoder,
    FrameError,
    SecretLeakError,
    encode_frame,
)


def raw_frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@pytest.fixture(params=[msgspec_json(), STDLIB_JSON], ids=lambda codec: codec.name)
def codec(request: pytest.FixtureRequest) -> JsonCodec:
    chosen: JsonCodec = request.param
    return chosen


# --- decoding ----------------------------------------------------------------


def test_encoded_frame_decodes_to_the_same_message() -> None:
    message = {"v": 1, "id": "1", "op": "get_token", "payload": {"provider": "gemini"}}
    assert FrameDecoder().feed(encode_frame(message)) == [message]


def test_frame_fed_one_byte_at_a_time_completes_on_the_last_byte() -> None:
    data = encode_frame({"v": 1, "op": "handshake"})
    decoder = FrameDecoder()
    for byte in data[:-1]:
        assert decoder.feed(bytes([byte])) == []
        assert decoder.has_partial_frame
    assert decoder.feed(data[-1:]) == [{"v": 1, "op": "handshake"}]
    assert not decoder.has_partial_frame


def test_several_frames_in_one_chunk_come_out_in_order() -> None:
    messages = [{"n": n} for n in range(5)]
    data = b"".join(encode_frame(m) for m in messages)
    assert FrameDecoder().feed(data) == messages


def test_chunk_ending_inside_the_next_header_keeps_the_partial_frame() -> None:
    first, second = encode_frame({"n": 1}), encode_frame({"n": 2})
    decoder = FrameDecoder()
    assert decoder.feed(first + second[:2]) == [{"n": 1}]
    assert decoder.has_partial_frame
    assert decoder.feed(second[2:]) == [{"n": 2}]
    assert not decoder.has_partial_frame


def test_header_alone_counts_as_a_partial_frame() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(struct.pack(">I", 10)) == []
    assert decoder.has_partial_frame


def test_fresh_decoder_has_no_partial_frame() -> None:
    assert not FrameDecoder().has_partial_frame


def test_oversize_length_header_is_rejected_before_any_body_byte() -> None:
    with pytest.raises(FrameError, match="exceeds"):
        FrameDecoder().feed(struct.pack(">I", MAX_FRAME_BYTES + 1))


def test_maximum_length_header_is_accepted_and_waits_for_the_body() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(struct.pack(">I", MAX_FRAME_BYTES)) == []
    assert decoder.has_partial_frame


def test_frame_of_exactly_the_limit_decodes() -> None:
    filler = "x" * (MAX_FRAME_BYTES - len(b'{"a":""}'))
    body = msgspec.json.encode({"a": filler})
    assert len(body) == MAX_FRAME_BYTES
    assert FrameDecoder().feed(raw_frame(body)) == [{"a": filler}]


def test_custom_frame_limit_admits_smaller_frames_and_rejects_a_longer_header() -> None:
    decoder = FrameDecoder(max_frame_bytes=8)
    assert decoder.feed(raw_frame(b'{"a":1}')) == [{"a": 1}]
    with pytest.raises(FrameError):
        decoder.feed(struct.pack(">I", 9))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"a":"\xff"}', id="invalid-utf8"),
        pytest.param(b'{"a":"\xed\xa0\x80"}', id="utf8-encoded-surrogate"),
        pytest.param(b"\xef\xbb\xbf{}", id="byte-order-mark"),
    ],
)
def test_body_that_is_not_utf8_is_a_frame_error(body: bytes, codec: JsonCodec) -> None:
    with pytest.raises(FrameError):
        FrameDecoder(codec=codec).feed(raw_frame(body))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"a":1} trailing',
        b"{'a':1}",
        b'{"a":NaN}',
        b'{"a":Infinity}',
        b'{"a":1e99999}',
        b'{"a":"\\ud800"}',  # lone surrogate escape
        b'{"a":"\\udc00\\ud800"}',  # surrogates in the wrong order
        b'{"\\ud83d":1}',  # lone surrogate in a key
        b'{"a":["x",{"b":"\\udfff"}]}',  # deep inside
        b'{"a":-Infinity}',
        b'{"a":-1e400}',
        b'{"a":01}',
        b'{"a":1,}',
        b'{"a":"\\x41"}',
        b"\x0c{}",
        b'{"a":"\x00"}',  # raw control character in a string
        b'{"a":' + b"1" * 5000 + b"}",  # past Python's int digit limit
    ],
)
def test_body_that_is_not_valid_json_is_a_frame_error(body: bytes, codec: JsonCodec) -> None:
    with pytest.raises(FrameError, match="not valid JSON"):
        FrameDecoder(codec=codec).feed(raw_frame(body))


@pytest.mark.parametrize("body", [b"[]", b'"s"', b"1", b"null", b"true", b"[{}]"])
def test_top_level_that_is_not_an_object_is_a_frame_error(body: bytes, codec: JsonCodec) -> None:
    with pytest.raises(FrameError, match="not a JSON object"):
        FrameDecoder(codec=codec).feed(raw_frame(body))


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 30_000 + b"]" * 30_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    ],
    ids=["arrays", "objects"],
)
def test_deep_nesting_is_a_frame_error_not_a_crash(body: bytes, codec: JsonCodec) -> None:
    with pytest.raises(FrameError):
        FrameDecoder(codec=codec).feed(raw_frame(body))


def test_error_messages_do_not_echo_the_body(codec: JsonCodec) -> None:
    with pytest.raises(FrameError) as info:
        FrameDecoder(codec=codec).feed(raw_frame(b'{"access_token":"sekrit-value"'))
    assert "sekrit" not in str(info.value)


# --- the encoder's guard -----------------------------------------------------


@dataclasses.dataclass
class TokenRecord:
    access_token: str
    refresh_token: str


class TokenStruct(msgspec.Struct):
    access_token: str
    refresh_token: str


@pytest.mark.parametrize(
    "message",
    [
        pytest.param({"refresh_token": "r"}, id="top-level"),
        pytest.param({"data": {"token": {"refresh_token": "r"}}}, id="nested-object"),
        pytest.param({"data": [{"a": 1}, {"refresh_token": "r"}]}, id="inside-list"),
        pytest.param({"data": ({"refresh_token": "r"},)}, id="inside-tuple"),
        pytest.param({"data": {"refresh_token": None}}, id="null-value"),
    ],
)
def test_encoder_refuses_a_refresh_token_key_at_any_depth(
    message: dict[str, Any], codec: JsonCodec
) -> None:
    with pytest.raises(SecretLeakError):
        encode_frame(message, codec=codec)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param({"data": TokenRecord("a", "r")}, id="dataclass"),
        pytest.param({"data": [TokenStruct("a", "r")]}, id="msgspec-struct"),
    ],
)
def test_msgspec_encoder_refuses_a_refresh_token_inside_any_object_it_encodes(
    message: dict[str, Any],
) -> None:
    with pytest.raises(SecretLeakError):
        encode_frame(message)


def test_secret_leak_error_is_a_frame_error_and_does_not_show_the_value(codec: JsonCodec) -> None:
    with pytest.raises(FrameError) as info:
        encode_frame({"refresh_token": "sekrit-refresh"}, codec=codec)
    assert "sekrit" not in str(info.value)


def test_host_side_frames_may_carry_a_refresh_token_when_asked() -> None:
    data = encode_frame({"refresh_token": "r"}, allow_refresh_token=True)
    assert FrameDecoder().feed(data) == [{"refresh_token": "r"}]


@pytest.mark.parametrize(
    "message",
    [
        pytest.param({"grant_types_supported": ["refresh_token"]}, id="string-value"),
        pytest.param({"error": 'bad "refresh_token"'}, id="quoted-inside-string"),
        pytest.param({"refresh_token_expires_in": 3600}, id="longer-key"),
    ],
)
def test_the_word_outside_a_key_is_not_refused(message: dict[str, Any], codec: JsonCodec) -> None:
    assert FrameDecoder(codec=codec).feed(encode_frame(message, codec=codec)) == [message]


def test_encoder_refuses_a_body_over_the_limit(codec: JsonCodec) -> None:
    with pytest.raises(FrameError, match="exceeds"):
        encode_frame({"a": "x" * MAX_FRAME_BYTES}, codec=codec)


# --- properties --------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(
    st.text(max_size=8).filter(lambda key: key != "refresh_token"), json_values, max_size=5
)


@given(messages=st.lists(json_objects, min_size=1, max_size=4), data=st.data())
def test_any_split_of_a_frame_stream_decodes_to_the_same_messages(
    messages: list[dict[str, Any]], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(m, allow_refresh_token=True) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = FrameDecoder()
    decoded: list[dict[str, Any]] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        decoded.extend(decoder.feed(stream[start:cut]))
        start = cut
    assert decoded == messages
    assert not decoder.has_partial_frame


@given(chunks=st.lists(st.binary(max_size=64), max_size=8))
def test_arbitrary_bytes_yield_objects_or_a_frame_error_only(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    try:
        for chunk in chunks:
            for frame in decoder.feed(chunk):
                assert isinstance(frame, dict)
    except FrameError:
        pass


@given(body=st.binary(max_size=256))
def test_arbitrary_body_yields_an_object_or_a_frame_error_only(body: bytes) -> None:
    try:
        frames = FrameDecoder().feed(raw_frame(body))
    except FrameError:
        return
    assert len(frames) == 1
    assert isinstance(frames[0], dict)
