"""The credential proxy wire protocol, sans-IO: bytes in, validated messages out.

The names below load on first use, so that importing one module of the
package (as the sandbox-side client imports ``framing`` and ``ops``) does not
load the msgspec schemas of ``messages``.
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from credproxy.protocol.errors import ErrorCode, ProxyError
    from credproxy.protocol.framing import (
        MAX_FRAME_BYTES,
        FrameDecoder,
        FrameError,
        encode_frame,
    )
    from credproxy.protocol.messages import OPERATIONS, Request, RequestError, parse_request
    from credproxy.protocol.version import SUPPORTED_VERSIONS, negotiate

_HOMES = {
    "ErrorCode": "errors",
    "ProxyError": "errors",
    "MAX_FRAME_BYTES": "framing",
    "FrameDecoder": "framing",
    "FrameError": "framing",
    "encode_frame": "framing",
    "OPERATIONS": "messages",
    "Request": "messages",
    "RequestError": "messages",
    "parse_request": "messages",
    "SUPPORTED_VERSIONS": "version",
    "negotiate": "version",
}

__all__ = [
    "MAX_FRAME_BYTES",
    "OPERATIONS",
    "SUPPORTED_VERSIONS",
    "ErrorCode",
    "FrameDecoder",
    "FrameError",
    "ProxyError",
    "Request",
    "RequestError",
    "encode_frame",
    "negotiate",
    "parse_request",
]


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{home}"), name)
