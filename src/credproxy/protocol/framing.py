"""Length-prefixed JSON framing: 4-byte big-endian length, then a UTF-8 JSON object.

Sans-IO in the manner of h11: ``FrameDecoder.feed`` takes bytes and returns the
objects completed so far; nothing here touches a socket or a clock. The length
is checked the moment the four header bytes are in, before any body byte is
buffered, so a hostile peer cannot make us allocate more than the limit.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, Final

import msgspec

MAX_FRAME_BYTES: Final = 65_536
HEADER_BYTES: Final = 4
_HEADER = struct.Struct(">I")
_FORBIDDEN_KEY: Final = "refresh_token"
# The encoder never escapes ASCII letters, so an object key of that name
# always shows up as these bytes in the encoded body.
_FORBIDDEN_KEY_BYTES: Final = b'"' + _FORBIDDEN_KEY.encode("ascii") + b'"'

_json_decoder = msgspec.json.Decoder()
_json_encoder = msgspec.json.Encoder()


class FrameError(Exception):
    """The byte stream is unusable; the only safe reaction is to close the connection."""


class SecretLeakError(FrameError):
    """An outgoing frame still carries a refresh token: a bug, refused at the last gate."""


def _contains_forbidden_key(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if _FORBIDDEN_KEY in item:
                return True
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def encode_frame(message: Mapping[str, Any], *, allow_refresh_token: bool = False) -> bytes:
    """Serialize one message as a frame.

    The encoder is the second, independent guard of the secret boundary: a frame
    with a ``refresh_token`` key anywhere is refused unless the caller says the
    frame stays on the host side (``allow_refresh_token``).
    """
    body = _json_encoder.encode(message)
    # Checked on the encoded body, not the input: msgspec also encodes structs,
    # dataclasses and other mappings, which a walk over dicts would miss. The
    # byte search is cheap; only a hit pays for decoding, which tells a key
    # from a string value such as a grant type named "refresh_token".
    if (
        not allow_refresh_token
        and _FORBIDDEN_KEY_BYTES in body
        and _contains_forbidden_key(_json_decoder.decode(body))
    ):
        raise SecretLeakError("refusing to encode a frame that carries a refresh_token")
    if len(body) > MAX_FRAME_BYTES:
        raise FrameError(
            f"frame body of {len(body)} bytes exceeds the {MAX_FRAME_BYTES}-byte limit"
        )
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental decoder; feed it whatever the socket produced."""

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._max = max_frame_bytes
        self._buffer = bytearray()
        self._expected: int | None = None

    @property
    def has_partial_frame(self) -> bool:
        """True while some bytes of a frame (header included) wait for the rest."""
        return bool(self._buffer) or self._expected is not None

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        frames: list[dict[str, Any]] = []
        while True:
            if self._expected is None:
                if len(self._buffer) < HEADER_BYTES:
                    return frames
                (length,) = _HEADER.unpack_from(self._buffer)
                if length > self._max:
                    raise FrameError(f"frame length {length} exceeds the {self._max}-byte limit")
                del self._buffer[:HEADER_BYTES]
                self._expected = length
            if len(self._buffer) < self._expected:
                return frames
            body = bytes(self._buffer[: self._expected])
            del self._buffer[: self._expected]
            self._expected = None
            frames.append(_decode_body(body))


def _decode_body(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError("frame body is not valid UTF-8") from None
    try:
        value = _json_decoder.decode(text)
    except (msgspec.DecodeError, RecursionError):
        raise FrameError("frame body is not valid JSON") from None
    if not isinstance(value, dict):
        raise FrameError("frame body is not a JSON object")
    return value
