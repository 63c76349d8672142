"""Finding the proxy from inside a sandbox (``protocol.md``, "Environment contract").

The socket path comes from ``LLXPRT_CREDENTIAL_SOCKET``; the capability token
from the descriptor named by ``LLXPRT_CAPABILITY_FD`` or, the older way, from
``LLXPRT_CAPABILITY_TOKEN``. Both token variables leave the environment as soon
as they are read (whether or not the token is good), so child processes never
inherit them, and the descriptor is closed. Error messages name the variable
and what is wrong with it; they never contain the token.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
import time
from collections.abc import MutableMapping
from typing import Final, NamedTuple

from credproxy.client._exceptions import config_error

SOCKET_ENV: Final = "LLXPRT_CREDENTIAL_SOCKET"
CAPABILITY_FD_ENV: Final = "LLXPRT_CAPABILITY_FD"
CAPABILITY_TOKEN_ENV: Final = "LLXPRT_CAPABILITY_TOKEN"

MAX_FD_BYTES: Final = 128
FD_READ_TIMEOUT_S: Final = 5.0
_TOKEN_RE: Final = re.compile(r"[0-9a-f]{64}")
_FD_RE: Final = re.compile(r"[0-9]{1,9}")


class ProxyEnvironment(NamedTuple):
    """Where the proxy is and the token to present; the token never shows in ``repr``.

    A named tuple, not a dataclass: a sandbox command does not load ``dataclasses``.
    """

    socket_path: str
    capability_token: str | None = None

    def __repr__(self) -> str:
        return f"ProxyEnvironment(socket_path={self.socket_path!r})"


def in_sandbox(environ: MutableMapping[str, str] | None = None) -> bool:
    """True when the proxy socket variable is set, which is what selects proxy mode."""
    env = os.environ if environ is None else environ
    return bool(env.get(SOCKET_ENV))


def socket_path_from_env(environ: MutableMapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    path = env.get(SOCKET_ENV)
    if not path:
        raise config_error(
            f"{SOCKET_ENV} is not set: this process is not inside a credproxy sandbox"
        )
    if not os.path.isabs(path):
        raise config_error(f"{SOCKET_ENV} must be an absolute path")
    return path


def read_capability_token(environ: MutableMapping[str, str] | None = None) -> str | None:
    """The capability token, taken out of the environment; ``None`` when none was passed.

    Both variables are removed before anything is checked, so a malformed token
    is not left behind for child processes either. The descriptor wins when
    both are set.
    """
    env = os.environ if environ is None else environ
    fd_text = env.pop(CAPABILITY_FD_ENV, None)
    token_text = env.pop(CAPABILITY_TOKEN_ENV, None)
    if fd_text is not None:
        return _token_from_fd(fd_text)
    if token_text is not None:
        if not _TOKEN_RE.fullmatch(token_text):
            raise config_error(
                f"{CAPABILITY_TOKEN_ENV} is malformed: expected 64 lowercase hex characters"
            )
        return token_text
    return None


def discover(environ: MutableMapping[str, str] | None = None) -> ProxyEnvironment:
    """Socket path and capability token from the environment, scrubbing the token variables."""
    env = os.environ if environ is None else environ
    token = read_capability_token(env)
    return ProxyEnvironment(socket_path_from_env(env), token)


def _token_from_fd(fd_text: str) -> str:
    if not _FD_RE.fullmatch(fd_text):
        raise config_error(f"{CAPABILITY_FD_ENV} must be a file descriptor number")
    fd = int(fd_text)
    if fd <= 2:
        raise config_error(
            f"{CAPABILITY_FD_ENV} must name an inherited descriptor other than stdin, "
            "stdout or stderr"
        )
    try:
        raw = _read_to_eof(fd)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    if len(raw) != 65 or raw[64:] != b"\n" or not _TOKEN_RE.fullmatch(raw[:64].decode("latin-1")):
        raise config_error(
            f"the descriptor in {CAPABILITY_FD_ENV} does not hold a capability token "
            "(64 lowercase hex characters and one newline)"
        )
    return raw[:64].decode("ascii")


def _read_to_eof(fd: int) -> bytes:
    """At most ``MAX_FD_BYTES`` bytes up to end of file.

    A writer that never closes its end would hang the client forever; after
    ``FD_READ_TIMEOUT_S`` the read gives up with a message that says so.
    """
    chunks: list[bytes] = []
    total = 0
    deadline = time.monotonic() + FD_READ_TIMEOUT_S
    poller = select.poll()
    try:
        poller.register(fd, select.POLLIN)
    except (OSError, ValueError):
        raise _bad_fd(fd) from None
    while True:
        remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
        if not poller.poll(remaining_ms):
            raise config_error(
                f"the descriptor in {CAPABILITY_FD_ENV} did not reach end of file within "
                f"{FD_READ_TIMEOUT_S:g} s (the launcher must close its end)"
            )
        try:
            chunk = os.read(fd, MAX_FD_BYTES + 1 - total)
        except BlockingIOError:
            continue
        except OSError as exc:
            if exc.errno == errno.EBADF:
                raise _bad_fd(fd) from None
            raise config_error(
                f"cannot read the descriptor in {CAPABILITY_FD_ENV}: {os.strerror(exc.errno or 0)}"
            ) from None
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > MAX_FD_BYTES:
            raise config_error(
                f"the descriptor in {CAPABILITY_FD_ENV} holds more than {MAX_FD_BYTES} bytes"
            )


def _bad_fd(fd: int) -> Exception:
    return config_error(f"{CAPABILITY_FD_ENV}={fd} does not name an open file descriptor")
