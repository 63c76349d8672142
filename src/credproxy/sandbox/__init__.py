"""Launching one command with the daemon's socket and a capability token.

The argument builders (``bwrap``, ``container``) are pure functions from a
``SandboxSpec`` to an argv list so they can be read and tested without a
sandbox engine; ``launch`` does the process work (fd passing, signals, exit
status). The token never travels in argv or the environment: it is written
to a pipe the child inherits as ``LLXPRT_CAPABILITY_FD`` (``protocol.md``,
"Environment contract").
"""

from __future__ import annotations

from credproxy.sandbox.spec import (
    CAPABILITY_FD,
    GUEST_SOCKET,
    SANDBOX_KINDS,
    Mount,
    SandboxError,
    SandboxSpec,
    parse_bind,
)

__all__ = [
    "CAPABILITY_FD",
    "GUEST_SOCKET",
    "SANDBOX_KINDS",
    "Mount",
    "SandboxError",
    "SandboxSpec",
    "parse_bind",
]
