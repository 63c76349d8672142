"""The byte sizes of frames (``docs/protocol.md``, "Limits and timeouts").

Both sides keep these, so they live apart from ``limits.Limits``, the
daemon's per-connection policy: the sandbox-side client reads them without
loading ``dataclasses`` (and ``inspect`` with it), a tenth of its start-up.
"""

from __future__ import annotations

from typing import Final

FRAME_HEADER_BYTES: Final = 4
SMALL_FRAME_BYTES: Final = 65_536
"""Frame body limit before the handshake and on a version 1 connection."""
LARGE_FRAME_BYTES: Final = 4 * 1024 * 1024
"""Frame body limit on a version 2 connection, as LLxprt Code's v2 allows."""


def frame_limit(
    version: int | None, small: int = SMALL_FRAME_BYTES, large: int = LARGE_FRAME_BYTES
) -> int:
    """The frame body limit: large only once version 2 is agreed."""
    return large if version is not None and version >= 2 else small
