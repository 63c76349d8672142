"""Runs INSIDE a sandbox and reports, as one JSON line, what it can see.

Used by ``tests/sandbox``; it imports nothing from credproxy so it works with
whatever Python the sandbox has.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import stat
import sys
from typing import Any


def _read_fd(fd: int) -> str:
    chunks: list[bytes] = []
    while chunk := os.read(fd, 256):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode("ascii", "replace")


def _sockets(top: str, found: list[str]) -> None:
    """Every socket file under ``top``, without following symlinks or entering /proc."""
    try:
        entries = os.scandir(top)
    except OSError:
        return
    with entries:
        for entry in entries:
            if entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                if entry.path not in ("/proc", "/sys"):
                    _sockets(entry.path, found)
            elif not entry.is_file(follow_symlinks=False):
                with_mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISSOCK(with_mode):
                    found.append(entry.path)


def _open_fds() -> dict[str, str]:
    """Open descriptors and what they point at, without the one listing them."""
    found: dict[str, str] = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{name}")
            if not target.startswith("/proc/"):
                found[name] = target
    return found


def _mount_points() -> list[str]:
    """A file bind-mounted onto a path keeps the directory entry's type of the
    file underneath, so a walk by entry type misses it; mount points are stat'ed."""
    points: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            raw = line.split()[4]
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), raw))
    return points


def _process_texts() -> list[str]:
    """environ and cmdline of every process this sandbox can see."""
    texts: list[str] = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        for part in ("environ", "cmdline"):
            try:
                with open(f"/proc/{name}/{part}", "rb") as handle:
                    texts.append(handle.read().decode("utf-8", "replace"))
            except OSError:
                continue
    return texts


def _connect(family: int, address: Any) -> str:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect(address)
    except OSError as exc:
        return type(exc).__name__
    finally:
        sock.close()
    return "connected"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--read-fd", action="store_true")
    parser.add_argument("--walk", action="store_true")
    parser.add_argument("--exists", action="append", default=[])
    parser.add_argument("--abstract")
    parser.add_argument("--tcp", type=int)
    parser.add_argument("--parent", action="store_true")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "environ": dict(os.environ),
        "pid": os.getpid(),
        "uid": os.getuid(),
        "fds": _open_fds(),
        "process_texts": _process_texts(),
        "exists": {path: os.path.lexists(path) for path in args.exists},
    }
    fd_var = os.environ.get("LLXPRT_CAPABILITY_FD")
    if args.read_fd and fd_var is not None:
        report["fd_target"] = os.readlink(f"/proc/self/fd/{fd_var}")
        report["token_line"] = _read_fd(int(fd_var))
    if args.walk:
        found: list[str] = []
        _sockets("/", found)
        for point in _mount_points():
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(point).st_mode):
                    found.append(point)
        report["sockets"] = sorted(set(found))
    if args.abstract:
        report["abstract"] = _connect(socket.AF_UNIX, "\0" + args.abstract)
    if args.tcp:
        report["tcp"] = _connect(socket.AF_INET, ("127.0.0.1", args.tcp))
    if args.parent:
        parent = os.getppid()
        for part in ("environ", "cmdline"):
            try:
                with open(f"/proc/{parent}/{part}", "rb") as handle:
                    report[f"parent_{part}"] = handle.read().decode("utf-8", "replace")
            except PermissionError:
                # An undumpable parent's environ is closed to its own uid (not to root).
                report[f"parent_{part}"] = None
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
