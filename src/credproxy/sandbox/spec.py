"""What a sandbox launch needs, independent of the engine that runs it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Final, Literal

SandboxKind = Literal["none", "bwrap", "podman", "docker"]
SANDBOX_KINDS: Final[tuple[SandboxKind, ...]] = ("none", "bwrap", "podman", "docker")

GUEST_SOCKET: Final = "/run/credproxy.sock"
"""Where the socket appears inside bwrap and containers: fixed, so a guest
never learns the host's runtime directory layout from its environment."""

CAPABILITY_FD: Final = 3
"""The descriptor number the capability pipe gets in the child."""

GUEST_TOKEN_DIR: Final = "/run/credproxy-capability"
"""Docker only: where the read-only token directory is mounted (see ``container``)."""

SOCKET_ENV: Final = "LLXPRT_CREDENTIAL_SOCKET"
CAPABILITY_FD_ENV: Final = "LLXPRT_CAPABILITY_FD"
CAPABILITY_TOKEN_ENV: Final = "LLXPRT_CAPABILITY_TOKEN"


class SandboxError(Exception):
    """The sandbox cannot be set up; the message says what to change."""

    exit_code = 125
    """What ``credproxy run`` exits with (podman and docker use 125 the same way)."""


class CommandNotFoundError(SandboxError):
    exit_code = 127


class CommandNotExecutableError(SandboxError):
    exit_code = 126


@dataclass(frozen=True, slots=True)
class Mount:
    """A host path made visible at ``guest`` inside the sandbox."""

    host: str
    guest: str
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """Engine-independent description of one launch.

    ``socket_path`` is the daemon's socket on the host; the guest sees it at
    ``GUEST_SOCKET``. ``image`` and ``engine_args`` are used by containers only.
    """

    command: tuple[str, ...]
    socket_path: str
    binds: tuple[Mount, ...] = ()
    share_net: bool = False
    image: str | None = None
    engine_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    """Extra environment for the command (the injection proxy's base URLs and stand-ins)."""
    wrapper: tuple[str, ...] = ()
    """bwrap only: a program run inside that starts the command as its child (the
    injection relay); its runtime is bound read-only like the command's."""


def parse_bind(value: str) -> Mount:
    """``HOST:GUEST`` or ``HOST:GUEST:ro`` (or ``:rw``); both paths absolute."""
    parts = value.split(":")
    read_only = False
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        read_only = parts[2] == "ro"
        parts = parts[:2]
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise SandboxError(f"bind {value!r}: use HOST:GUEST or HOST:GUEST:ro")
    host, guest = parts
    for label, path in (("host", host), ("guest", guest)):
        pure = PurePosixPath(path)
        if not pure.is_absolute():
            raise SandboxError(f"bind {value!r}: the {label} path must be absolute")
        if ".." in pure.parts:
            raise SandboxError(f"bind {value!r}: the {label} path must not contain '..'")
    if PurePosixPath(guest) == PurePosixPath("/"):
        raise SandboxError(f"bind {value!r}: cannot bind over the sandbox root")
    return Mount(host=host, guest=guest, read_only=read_only)
