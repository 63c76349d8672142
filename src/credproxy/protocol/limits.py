"""Every limit of the protocol in one table (``docs/protocol.md``, "Limits and timeouts").

The sans-IO core enforces the ones about bytes and counts; the I/O shell
enforces the ones about time, reading the same table. Tests and operators
override a field with ``dataclasses.replace``. The frame sizes are kept in
``sizes``, which the sandbox-side client reads without loading ``dataclasses``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from credproxy.protocol.sizes import (
    FRAME_HEADER_BYTES,
    LARGE_FRAME_BYTES,
    SMALL_FRAME_BYTES,
    frame_limit,
)

__all__ = [
    "DEFAULT_LIMITS",
    "FRAME_HEADER_BYTES",
    "LARGE_FRAME_BUDGET_BYTES",
    "LARGE_FRAME_BYTES",
    "MAX_ID_LENGTH",
    "MAX_OP_ECHO",
    "SMALL_FRAME_BYTES",
    "Limits",
]

MAX_ID_LENGTH: Final = 128
MAX_OP_ECHO: Final = 32
"""At most this many characters of an unknown op name are echoed in an error."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What one connection may do. Sizes in bytes, times in seconds."""

    small_frame_bytes: int = SMALL_FRAME_BYTES
    large_frame_bytes: int = LARGE_FRAME_BYTES
    max_in_flight: int = 16
    """Requests running or answered but not yet written, per connection."""
    rate_per_second: float = 60.0
    """Requests per second per connection, bursts up to the same number."""
    partial_frame_s: float = 5.0
    handshake_s: float = 30.0
    """An unauthenticated connection holds a descriptor; it gets this long to handshake."""
    call_s: float = 15.0
    """Host work of one operation (store or provider call)."""
    write_s: float = 30.0
    """A peer that does not read its answers for this long loses the connection."""
    write_high_water: int = 256 * 1024
    """Unwritten answer bytes past which a connection stops reading its peer."""
    stall_s: float = 2.0
    """A frame or handshake unfinished this long, with nothing in flight, marks a
    stalled connection: when the daemon is full it gives its place to a newcomer."""
    idle_s: float = 30.0
    """A connection that sent nothing and got no answer this long may likewise give
    its place to a newcomer when the daemon is full (after stalled ones)."""

    def frame_limit(self, version: int | None) -> int:
        """The frame body limit: large only once version 2 is agreed."""
        return frame_limit(version, self.small_frame_bytes, self.large_frame_bytes)


DEFAULT_LIMITS: Final = Limits()

LARGE_FRAME_BUDGET_BYTES: Final = 64 * 1024 * 1024
"""Bytes all connections of one daemon together may hold for frames larger than
``SMALL_FRAME_BYTES`` while they arrive; see ``FrameBudget``."""
