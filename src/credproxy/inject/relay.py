"""The relay inside a sandbox without network: loopback ports forwarded to host Unix sockets.

``python -m credproxy.inject.relay --listen PORT=SOCKET ... -- COMMAND ...``
binds each ``127.0.0.1:PORT`` in the sandbox's own network namespace, then
starts COMMAND, copies bytes between every accepted connection and a new
connection to SOCKET (bound in from the host), and exits with COMMAND's
status. No network is shared with the host: the only way out is the socket.

Standard library only, so it starts fast and needs nothing but Python. The
signals a terminal or ``credproxy run`` sends reach COMMAND through its
process group; the relay only keeps them from ending itself first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from typing import Final

from credproxy.sandbox.spec import CAPABILITY_FD

PASSED_SIGNALS: Final = (  # launch.FORWARDED_SIGNALS; launch imports too much to load here
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGWINCH,
)
COPY_CHUNK: Final = 1 << 16
USAGE: Final = "usage: python -m credproxy.inject.relay --listen PORT=SOCKET ... -- COMMAND ..."


def parse_args(argv: list[str]) -> tuple[list[tuple[int, str]], list[str]]:
    """``--listen PORT=SOCKET`` pairs, and the command after ``--``."""
    if "--" not in argv:
        raise ValueError(USAGE)
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    if not command or len(options) % 2:
        raise ValueError(USAGE)
    pairs: list[tuple[int, str]] = []
    for flag, value in zip(options[::2], options[1::2], strict=True):
        port_text, _, path = value.partition("=")
        if flag != "--listen" or not port_text.isdigit() or not path.startswith("/"):
            raise ValueError(USAGE)
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is out of range")
        pairs.append((port, path))
    return pairs, command


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(COPY_CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()


def _forwarder(path: str) -> object:
    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            host_reader, host_writer = await asyncio.open_unix_connection(path)
        except OSError:
            writer.transport.abort()
            return
        try:
            await asyncio.gather(_pipe(reader, host_writer), _pipe(host_reader, writer))
        finally:
            for side in (writer, host_writer):
                side.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await side.wait_closed()

    return forward


async def relay(pairs: list[tuple[int, str]], command: list[str]) -> int:
    servers = [
        await asyncio.start_server(_forwarder(path), "127.0.0.1", port)  # type: ignore[arg-type]
        for port, path in pairs
    ]
    loop = asyncio.get_running_loop()
    for signum in PASSED_SIGNALS:
        # A caught signal is reset to its default in COMMAND at exec; an ignored one would not be.
        loop.add_signal_handler(signum, lambda: None)
    keep = (CAPABILITY_FD,) if _is_open(CAPABILITY_FD) else ()
    try:
        child = await asyncio.create_subprocess_exec(*command, pass_fds=keep)
    except FileNotFoundError:
        print(f"credproxy relay: command {command[0]!r} not found", file=sys.stderr)
        return 127
    except PermissionError:
        print(f"credproxy relay: cannot execute {command[0]!r}", file=sys.stderr)
        return 126
    finally:
        for fd in keep:
            os.close(fd)
    code = await child.wait()
    for server in servers:
        server.close()
    return 128 - code if code < 0 else code


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    try:
        pairs, command = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"credproxy relay: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(relay(pairs, command))
    except OSError as exc:
        print(f"credproxy relay: cannot listen: {exc.strerror}", file=sys.stderr)
        return 125


if __name__ == "__main__":
    sys.exit(main())
