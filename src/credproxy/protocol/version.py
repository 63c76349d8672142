"""Handshake version negotiation (``protocol.md``, "Handshake").

The server supports versions 1 and 2; version 2 adds only ``cancel``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from credproxy.protocol.errors import ErrorCode, ProxyError

if TYPE_CHECKING:
    from credproxy.protocol.messages import Handshake

SUPPORTED_VERSIONS: Final = (1, 2)
MIN_VERSION: Final = min(SUPPORTED_VERSIONS)
MAX_VERSION: Final = max(SUPPORTED_VERSIONS)


def negotiate(envelope_version: object, offer: Handshake) -> int:
    """Pick the highest supported version inside the client's range.

    A client that sends no bounds offers only the version in its envelope.
    """
    low, high = offer.minVersion, offer.maxVersion
    if low is None and high is None:
        if not _is_int(envelope_version):
            raise ProxyError(ErrorCode.UNKNOWN_VERSION, "handshake carries no usable version")
        low = high = envelope_version
    if not _is_int(low) or not _is_int(high):
        raise ProxyError(
            ErrorCode.UNKNOWN_VERSION, "minVersion and maxVersion must both be integers"
        )
    assert isinstance(low, int) and isinstance(high, int)
    if low > high:
        raise ProxyError(ErrorCode.UNKNOWN_VERSION, "minVersion is greater than maxVersion")
    for version in sorted(SUPPORTED_VERSIONS, reverse=True):
        if low <= version <= high:
            return version
    raise ProxyError(
        ErrorCode.UNKNOWN_VERSION,
        f"no common protocol version: server supports {MIN_VERSION} to {MAX_VERSION}",
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
