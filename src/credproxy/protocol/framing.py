"""Length-prefixed JSON framing: 4-byte big-endian length, then a UTF-8 JSON object.

Sans-IO in the manner of h11: ``FrameDecoder.feed`` takes bytes and returns the
objects completed so far; nothing here touches a socket or a clock. The length
is checked the moment the four header bytes are in, before any body byte is
buffered, so a hostile peer cannot make us allocate more than the limit.

Both directions take the JSON codec as a parameter (``protocol.codec``):
msgspec's by default, as the daemon uses it; the standard library's where a
short-lived process should not pay for importing msgspec (the sandbox-side
client). The frames are the same bytes either way.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any, Final

from credproxy.protocol.codec import JsonCodec, msgspec_json
from credproxy.protocol.sizes import FRAME_HEADER_BYTES, SMALL_FRAME_BYTES

MAX_FRAME_BYTES: Final = SMALL_FRAME_BYTES
"""The limit before the handshake and on version 1; see ``limits.Limits.frame_limit``."""
HEADER_BYTES: Final = FRAME_HEADER_BYTES
_HEADER = struct.Struct(">I")
_FORBIDDEN_KEY: Final = "refresh_token"
# The encoder never escapes ASCII letters, so an object key of that name
# always shows up as these bytes in the encoded body.
_FORBIDDEN_KEY_BYTES: Final = b'"' + _FORBIDDEN_KEY.encode("ascii") + b'"'


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


def encode_frame(
    message: Mapping[str, Any],
    *,
    allow_refresh_token: bool = False,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    codec: JsonCodec | None = None,
) -> bytes:
    """Serialize one message as a frame (with msgspec unless ``codec`` says otherwise).

    The encoder is the second, independent guard of the secret boundary: a frame
    with a ``refresh_token`` key anywhere is refused unless the caller says the
    frame stays on the host side (``allow_refresh_token``).
    """
    if codec is None:
        codec = msgspec_json()
    body = codec.encode(message)
    # Checked on the encoded body, not the input: msgspec also encodes structs,
    # dataclasses and other mappings, which a walk over dicts would miss. The
    # byte search is cheap; only a hit pays for decoding, which tells a key
    # from a string value such as a grant type named "refresh_token".
    if (
        not allow_refresh_token
        and _FORBIDDEN_KEY_BYTES in body
        and _contains_forbidden_key(codec.decode(body.decode("utf-8")))
    ):
        raise SecretLeakError("refusing to encode a frame that carries a refresh_token")
    if len(body) > max_frame_bytes:
        raise FrameError(
            f"frame body of {len(body)} bytes exceeds the {max_frame_bytes}-byte limit"
        )
    return _HEADER.pack(len(body)) + body


class FrameBudget:
    """Bytes that all decoders of one daemon may hold for frames above the small limit.

    A version 2 peer may announce frames up to 4 MiB; without a shared budget
    256 connections each holding one half-sent large frame would pin a
    gigabyte. A decoder reserves a large frame's whole length when its header
    arrives and returns it when the frame is decoded or the decoder is closed;
    a decoder that cannot reserve waits (``FrameDecoder.blocked``) and is told
    through its ``wake`` callback when bytes come back. Frames up to the small
    limit never touch the budget.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._waiters: dict[int, Callable[[], None]] = {}

    def reserve(self, size: int) -> bool:
        if self.used + size > self.capacity:
            return False
        self.used += size
        return True

    def release(self, size: int) -> None:
        self.used -= size
        if self._waiters:
            waiters = list(self._waiters.values())
            self._waiters.clear()
            for wake in waiters:
                wake()

    def wait(self, key: int, wake: Callable[[], None]) -> None:
        self._waiters[key] = wake

    def forget(self, key: int) -> None:
        self._waiters.pop(key, None)


class FrameDecoder:
    """Incremental decoder; feed it whatever the socket produced.

    ``receive`` buffers bytes and ``next_frame`` takes one frame at a time, so a
    caller can change ``max_frame_bytes`` between frames (the limit grows once
    version 2 is agreed). ``feed`` does both for callers that need no pause.
    """

    def __init__(
        self,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        budget: FrameBudget | None = None,
        codec: JsonCodec | None = None,
    ) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._budget = budget
        self._codec = codec if codec is not None else msgspec_json()
        self._reserved = 0
        self._buffer = bytearray()
        self._start = 0
        self._expected: int | None = None
        self.blocked = False
        """A large frame waits for room in the daemon's budget; read nothing more."""

    @property
    def has_partial_frame(self) -> bool:
        """True while some bytes of a frame (header included) wait for the rest."""
        return len(self._buffer) > self._start or self._expected is not None

    @property
    def buffered(self) -> int:
        return len(self._buffer) - self._start

    def receive(self, data: bytes) -> None:
        if self._start:
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    def next_frame(self) -> dict[str, Any] | None:
        """The next complete frame, or ``None`` until more bytes (or budget) arrive."""
        buffer = self._buffer
        if self._expected is None:
            start = self._start
            if len(buffer) - start < HEADER_BYTES:
                return None
            (length,) = _HEADER.unpack_from(buffer, start)
            if length > self.max_frame_bytes:
                raise FrameError(
                    f"frame length {length} exceeds the {self.max_frame_bytes}-byte limit"
                )
            self._start = start + HEADER_BYTES
            self._expected = length
        if not self._reserve(self._expected):
            return None
        end = self._start + self._expected
        if len(buffer) < end:
            return None
        body = bytes(memoryview(buffer)[self._start : end])
        self._start = end
        self._expected = None
        self._give_back()
        if end == len(buffer):
            buffer.clear()
            self._start = 0
        return _decode_body(body, self._codec)

    def _reserve(self, length: int) -> bool:
        if self._budget is None or length <= SMALL_FRAME_BYTES or self._reserved:
            self.blocked = False
            return True
        if self._budget.reserve(length):
            self._reserved = length
            self.blocked = False
            return True
        self.blocked = True
        return False

    def _give_back(self) -> None:
        if self._reserved and self._budget is not None:
            reserved, self._reserved = self._reserved, 0
            self._budget.release(reserved)

    def close(self) -> None:
        """Drop buffered bytes and return any reservation to the budget."""
        self._buffer = bytearray()
        self._start = 0
        self._expected = None
        self._give_back()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self.receive(data)
        frames: list[dict[str, Any]] = []
        while (frame := self.next_frame()) is not None:
            frames.append(frame)
        return frames


def _decode_body(body: bytes, codec: JsonCodec) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError("frame body is not valid UTF-8") from None
    try:
        value = codec.decode(text)
    except codec.decode_errors:
        raise FrameError("frame body is not valid JSON") from None
    if not isinstance(value, dict):
        raise FrameError("frame body is not a JSON object")
    return value
