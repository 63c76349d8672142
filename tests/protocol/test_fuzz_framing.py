"""The frame decoder against a one-shot reference, under any stream and any chunking.

A short deterministic fuzz run (derandomized, bounded examples) that is part
of the suite; ``benchmarks/fuzz.py --target decoder`` runs the long,
coverage-guided campaign. The reference parses the whole stream at once with
the simplest loop that follows ``protocol.md`` ("Framing"); the incremental
decoder must agree with it frame for frame, raise exactly where it finds the
stream unusable, and say it holds a partial frame exactly when bytes are left.
The one liberty ``feed`` takes: when a chunk ends in a bad frame, the good
frames earlier in that same chunk are dropped with the error. The server core
takes one frame at a time with ``next_frame`` and answers those frames, so
the liberty never reaches the wire (``test_protocol_server.py`` pins that).
"""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from credproxy.protocol.framing import FrameDecoder, FrameError, encode_frame

DETERMINISTIC = settings(derandomize=True, max_examples=200, deadline=None, database=None)
SMALL_LIMIT = 200


def reference_decode(stream: bytes, limit: int) -> tuple[list[dict[str, Any]], bool, int]:
    """Frames, whether the stream is unusable, and how many bytes are left over."""
    frames: list[dict[str, Any]] = []
    at = 0
    while True:
        if len(stream) - at < 4:
            return frames, False, len(stream) - at
        length = int.from_bytes(stream[at : at + 4], "big")
        if length > limit:
            return frames, True, 0
        if len(stream) - at - 4 < length:
            return frames, False, len(stream) - at
        body = stream[at + 4 : at + 4 + length]
        at += 4 + length
        try:
            value = msgspec.json.decode(body.decode("utf-8"))
        except (UnicodeDecodeError, msgspec.DecodeError, RecursionError):
            return frames, True, 0
        if not isinstance(value, dict):
            return frames, True, 0
        frames.append(value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
objects = st.dictionaries(st.text(max_size=6), json_values, max_size=4)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Valid frames, arbitrary bodies and raw bytes, then byte-level mutations."""
    parts: list[bytes] = []
    for kind in draw(st.lists(st.integers(0, 3), max_size=6)):
        if kind == 0:
            parts.append(encode_frame(draw(objects)))
        elif kind == 1:
            body = draw(st.binary(max_size=40))
            parts.append(len(body).to_bytes(4, "big") + body)
        elif kind == 2:
            parts.append(draw(st.binary(max_size=12)))
        else:
            parts.append(draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big"))
    stream = bytearray(b"".join(parts))
    for _ in range(draw(st.integers(0, 3))):
        if not stream:
            break
        at = draw(st.integers(0, len(stream) - 1))
        action = draw(st.integers(0, 2))
        if action == 0:
            stream[at] ^= 1 << draw(st.integers(0, 7))
        elif action == 1:
            del stream[at]
        else:
            stream.insert(at, draw(st.integers(0, 255)))
    return bytes(stream)


def _cuts(data: st.DataObject, size: int) -> list[int]:
    points = data.draw(st.lists(st.integers(0, size), max_size=8))
    return sorted({0, size, *points})


@DETERMINISTIC
@given(stream=streams(), data=st.data(), limit=st.sampled_from([SMALL_LIMIT, 65_536]))
def test_incremental_decoding_agrees_with_the_one_shot_reference(
    stream: bytes, data: st.DataObject, limit: int
) -> None:
    expected, unusable, left_over = reference_decode(stream, limit)
    decoder = FrameDecoder(max_frame_bytes=limit)
    got: list[dict[str, Any]] = []
    raised = False
    cuts = _cuts(data, len(stream))
    for start, end in itertools.pairwise(cuts):
        try:
            got.extend(decoder.feed(stream[start:end]))
        except FrameError:
            raised = True
            break
    assert raised == unusable
    if unusable:
        # Frames completed in the chunk that also holds the bad one are dropped with
        # it (the connection closes either way); every earlier frame came out.
        assert got == expected[: len(got)]
    else:
        assert got == expected
        assert decoder.has_partial_frame == (left_over > 0)


@DETERMINISTIC
@given(frames=st.lists(objects, min_size=1, max_size=5), data=st.data())
def test_a_valid_stream_decodes_whole_however_it_is_cut(
    frames: list[dict[str, Any]], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(frame) for frame in frames)
    decoder = FrameDecoder()
    got: list[dict[str, Any]] = []
    cuts = _cuts(data, len(stream))
    for start, end in itertools.pairwise(cuts):
        got.extend(decoder.feed(stream[start:end]))
    assert got == frames
    assert not decoder.has_partial_frame


@DETERMINISTIC
@given(length=st.integers(SMALL_LIMIT + 1, 2**32 - 1), tail=st.binary(max_size=64))
def test_an_oversize_header_is_refused_before_its_body_arrives(length: int, tail: bytes) -> None:
    decoder = FrameDecoder(max_frame_bytes=SMALL_LIMIT)
    try:
        decoder.feed(length.to_bytes(4, "big"))
    except FrameError:
        return
    raise AssertionError(f"a {length}-byte header was accepted; then {len(tail)} more bytes")
