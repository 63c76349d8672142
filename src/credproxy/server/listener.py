"""Where the daemon's socket lives and who may connect (``protocol.md``, "Socket placement").

The default path is ``$XDG_RUNTIME_DIR`` (or the system temp dir) /
``credproxy-<uid>/<pid>-<nonce>.sock``. The directory must be ours and 0700
before anything is bound in it, because its permissions are what keep other
users away from the socket between ``bind`` and ``chmod``. Every accepted
connection is checked again with SO_PEERCRED, which the kernel fills in and a
peer cannot forge.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import socket
import stat
import struct
import tempfile
from pathlib import Path
from typing import Final

from credproxy.placement import DIR_PREFIX
from credproxy.server.context import PeerCredentials

SUN_PATH_MAX: Final = 107
"""Usable bytes of ``sockaddr_un.sun_path`` on Linux (108 with the terminating NUL)."""
NONCE_HEX: Final = 32
_LEFTOVER_RE: Final = re.compile(r"^(\d+)-[0-9a-f]{32}\.(sock|token)\Z")
_UCRED: Final = struct.Struct("3i")
DEFAULT_LISTEN_BACKLOG: Final = 1024
SOMAXCONN_PATH: Final = "/proc/sys/net/core/somaxconn"
_START_TIME_SLACK_S: Final = 2.0
"""``btime`` in ``/proc/stat`` has whole seconds; a daemon's files are written after it starts."""


class ListenerError(Exception):
    """The socket cannot be placed safely; the message says why and what to do."""


def runtime_base() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
        return Path(runtime)
    return Path(tempfile.gettempdir())


def socket_dir(base: Path | None = None, uid: int | None = None) -> Path:
    """Create (or verify) the per-user socket directory: ours, a real directory, 0700."""
    uid = os.getuid() if uid is None else uid
    directory = (base or runtime_base()) / f"{DIR_PREFIX}{uid}"
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    check_private_dir(directory, uid)
    return directory


def check_private_dir(directory: Path, uid: int | None = None) -> None:
    uid = os.getuid() if uid is None else uid
    try:
        info = os.lstat(directory)
    except OSError as exc:
        raise ListenerError(f"cannot use socket directory {directory}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ListenerError(
            f"refusing to use {directory}: it is not a directory (a symlink or file is in "
            "the way); remove it or pass --socket PATH"
        )
    if info.st_uid != uid:
        raise ListenerError(
            f"refusing to use {directory}: it is owned by uid {info.st_uid}, not by uid {uid} "
            "that runs the daemon; someone else may control it. Remove it or pass --socket PATH"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode != 0o700:
        raise ListenerError(
            f"refusing to use {directory}: its mode is {mode:04o}, it must be 0700; "
            f"run `chmod 700 {directory}` or pass --socket PATH"
        )


def default_socket_path(base: Path | None = None) -> Path:
    directory = socket_dir(base)
    sweep_stale_sockets(directory)
    return directory / f"{os.getpid()}-{secrets.token_hex(NONCE_HEX // 2)}.sock"


def sweep_stale_sockets(directory: Path) -> int:
    """Remove sockets and capability files left by daemons of ours that died
    without cleaning up (SIGKILL, power loss); live daemons' files stay.

    A file is stale when the pid in its name is gone, or is now held by a
    process that started after the file was written (the pid was reused).
    A connect test would also tell, but every credproxy command on the host
    sweeps, and it must not knock on every live daemon's socket to do so:
    it is used only where the start time is unknown (no ``/proc``) and the
    daemon's socket should be there. Returns how many files were removed.
    """
    try:
        entries = list(directory.iterdir())
    except OSError:
        return 0
    removed = 0
    for entry in entries:
        match = _LEFTOVER_RE.match(entry.name)
        if match is None:
            continue
        expected = stat.S_ISSOCK if match.group(2) == "sock" else stat.S_ISREG
        try:
            info = os.lstat(entry)
        except OSError:
            continue
        if not expected(info.st_mode) or info.st_uid != os.getuid():
            continue
        if _is_live_owner(int(match.group(1)), info.st_mtime, entry.with_suffix(".sock")):
            continue
        with contextlib.suppress(OSError):
            entry.unlink()
            removed += 1
    return removed


def sweep_runtime_dir() -> int:
    """Sweep our ``credproxy-<uid>`` directory if it exists and is safe to use;
    never creates it (commands that never serve should leave no trace)."""
    directory = runtime_base() / f"{DIR_PREFIX}{os.getuid()}"
    try:
        check_private_dir(directory)
    except ListenerError:
        return 0
    return sweep_stale_sockets(directory)


def _is_live_owner(pid: int, written_at: float, socket_path: Path) -> bool:
    if not _pid_alive(pid):
        return False
    started = _process_start_time(pid)
    if started is not None:
        return started <= written_at + _START_TIME_SLACK_S
    return _accepts_connections(socket_path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _process_start_time(pid: int) -> float | None:
    """When ``pid`` started, in seconds since the epoch, from ``/proc``; ``None``
    where ``/proc`` does not say (not Linux, or the process just went)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
        with open("/proc/stat", "rb") as handle:
            boot = next(line for line in handle if line.startswith(b"btime "))
        # Field 22, counted after the command name, which may hold spaces and ")".
        ticks = int(raw[raw.rindex(b")") + 2 :].split()[19])
        return int(boot.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _accepts_connections(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(os.fsencode(path))
    except OSError as exc:
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        probe.close()
    return True


def check_path_length(path: Path) -> None:
    size = len(os.fsencode(path))
    if size > SUN_PATH_MAX:
        raise ListenerError(
            f"socket path {path} is {size} bytes; a Unix socket path must fit in "
            f"{SUN_PATH_MAX} bytes (sun_path). Set XDG_RUNTIME_DIR or --socket to a shorter path"
        )


def remove_stale_socket(path: Path) -> None:
    """Clear ``path`` for bind: only a socket nobody listens on may be removed."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ListenerError(
            f"refusing to replace {path}: it exists and is not a socket; remove it yourself "
            "or choose another --socket path"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(os.fsencode(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ListenerError(f"cannot check existing socket {path}: {exc.strerror}") from None
    else:
        raise ListenerError(
            f"another process is listening on {path}; stop it or choose another path"
        )
    finally:
        probe.close()
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ListenerError(f"cannot remove the stale socket {path}: {exc.strerror}") from None


def check_parent(path: Path) -> None:
    """An explicit socket path must sit in a directory others cannot rewrite: in a
    world-writable directory without the sticky bit another user could swap the
    socket for a symlink between our ``bind`` and ``chmod``."""
    parent = path.parent
    try:
        info = os.stat(parent)
    except OSError as exc:
        raise ListenerError(f"cannot use socket directory {parent}: {exc.strerror}") from None
    writable_by_others = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable_by_others and not info.st_mode & stat.S_ISVTX:
        raise ListenerError(
            f"refusing to place the socket in {parent}: other users can write there and it "
            "has no sticky bit; choose a directory only you can write to"
        )


def effective_backlog(requested: int = DEFAULT_LISTEN_BACKLOG) -> int:
    """``requested`` capped by ``net.core.somaxconn``, which the kernel applies
    silently anyway; the cap is read so the daemon can pass the real figure on."""
    try:
        with open(SOMAXCONN_PATH, encoding="ascii") as handle:
            ceiling = int(handle.read().strip())
    except (OSError, ValueError):
        return requested
    return max(1, min(requested, ceiling))


def bind_socket(
    path: Path, *, mode: int = 0o600, backlog: int = DEFAULT_LISTEN_BACKLOG
) -> socket.socket:
    """A listening socket at ``path`` with ``mode``; the caller owns it afterwards.

    ``backlog`` is how many connections the kernel queues before the daemon
    accepts them: sandboxes that start together connect at once, and a full
    queue refuses them. asyncio listens again when it starts serving the
    socket, so its server must be given the same backlog (``Daemon.start``)."""
    check_path_length(path)
    check_parent(path)
    remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fsencode(path))
        os.chmod(path, mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                path.unlink()
        raise ListenerError(f"cannot listen on {path}: {exc.strerror}") from None
    return sock


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """SO_PEERCRED of a connected Unix socket, as the host kernel reports it."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid=pid, uid=uid, gid=gid)


def peer_allowed(peer: PeerCredentials, allowed_uids: frozenset[int]) -> bool:
    return peer.uid is not None and (peer.uid == os.getuid() or peer.uid in allowed_uids)


def unlink_socket(path: Path) -> None:
    """Remove our socket file, and only if it is still a socket."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            path.unlink()
