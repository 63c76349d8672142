"""The credential proxy wire protocol, sans-IO: bytes in, validated messages out."""

from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.protocol.framing import MAX_FRAME_BYTES, FrameDecoder, FrameError, encode_frame
from credproxy.protocol.messages import OPERATIONS, Request, RequestError, parse_request
from credproxy.protocol.version import SUPPORTED_VERSIONS, negotiate

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
