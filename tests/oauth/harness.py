"""Helpers for the end-to-end login tests: a daemon configured with OAuth providers,
a byte-recording relay in front of its socket, and ``credproxy login`` client
processes driven the way a person would drive them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fixtures.daemon import DaemonFactory, DaemonHandle, daemon_env, store_config

LINE_TIMEOUT_S = 20.0


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def write_config(
    path: Path,
    store_dir: Path,
    providers: Mapping[str, Mapping[str, Any]],
    oauth: Mapping[str, Any] | None = None,
) -> None:
    lines = [
        "[store]",
        'backend = "file"',
        f"path = {json.dumps(str(store_dir))}",
        'key_source = "keyfile"',
    ]
    if oauth:
        lines.append("[oauth]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in oauth.items()]
    for name, table in providers.items():
        lines.append(f"[providers.{name}]")
        nested = {k: v for k, v in table.items() if isinstance(v, Mapping)}
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if k not in nested]
        for key, sub in nested.items():
            lines.append(f"[providers.{name}.{key}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in sub.items()]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class OAuthDaemon:
    handle: DaemonHandle
    store_dir: Path
    config_path: Path

    @property
    def socket_path(self) -> Path:
        return self.handle.socket_path

    @property
    def token(self) -> str:
        assert self.handle.capability_token is not None
        return self.handle.capability_token

    def stored_token(self, provider: str, bucket: str = "default") -> dict[str, Any] | None:
        return read_stored_token(self.store_dir, provider, bucket)


def read_stored_token(store_dir: Path, provider: str, bucket: str) -> dict[str, Any] | None:
    """Read the host store through the file backend (its own loop, in a thread)."""
    from credproxy.store.factory import open_store

    result: list[dict[str, Any] | None] = []

    async def read() -> None:
        store = open_store("file", store_config(store_dir))
        try:
            result.append(await store.get_token(provider, bucket))
        finally:
            await store.close()

    thread = threading.Thread(target=lambda: asyncio.run(read()))
    thread.start()
    thread.join()
    return result[0] if result else None


def start_oauth_daemon(
    factory: DaemonFactory,
    providers: Mapping[str, Mapping[str, Any]],
    *args: str,
    oauth: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    tokens: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
) -> OAuthDaemon:
    """A real ``credproxy serve`` whose config also has ``[providers.*]``; our ``--config``
    comes after the fixture's and wins."""
    workdir = factory.workdir()
    store_dir = workdir / "store"
    config_path = workdir / "oauth-config.toml"
    write_config(config_path, store_dir, providers, oauth)
    handle = factory("--config", str(config_path), *args, workdir=workdir, env=env, tokens=tokens)
    return OAuthDaemon(handle, store_dir, config_path)


class Relay:
    """A Unix socket in front of the daemon's that records every byte the daemon sent
    to clients: the test's view of what crossed into the sandbox."""

    def __init__(self, upstream: Path, path: Path) -> None:
        self.upstream = upstream
        self.path = path
        self.to_client = bytearray()
        self.to_host = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(os.fsencode(path))
        self._listener.listen(64)
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(os.fsencode(self.upstream))
            self._sockets += [client, upstream]
            for src, dst, sink in ((upstream, client, self.to_client), (client, upstream, None)):
                pump = threading.Thread(target=self._pump, args=(src, dst, sink), daemon=True)
                pump.start()
                self._threads.append(pump)

    def _pump(self, src: socket.socket, dst: socket.socket, sink: bytearray | None) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    (sink if sink is not None else self.to_host).extend(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def received(self) -> bytes:
        with self._lock:
            return bytes(self.to_client)

    def close(self) -> None:
        """Shut the sockets down first: that (unlike close) wakes threads blocked on them."""
        self._closed = True
        for sock in [self._listener, *self._sockets]:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)
        for sock in [self._listener, *self._sockets]:
            sock.close()
        self.path.unlink(missing_ok=True)


@contextmanager
def relay_for(daemon: OAuthDaemon) -> Iterator[Relay]:
    relay = Relay(daemon.socket_path, daemon.handle.workdir / "relay.sock")
    try:
        yield relay
    finally:
        relay.close()


@dataclass
class LoginProcess:
    """``credproxy login`` running as the sandboxed client."""

    process: subprocess.Popen[bytes]
    stderr_lines: list[str] = field(default_factory=list)
    _buffer: bytes = b""

    def read_line_matching(self, pattern: str) -> re.Match[str]:
        """Read stderr until a line matches ``pattern``."""
        regex = re.compile(pattern)
        for line in self.stderr_lines:
            found = regex.search(line)
            if found:
                return found
        assert self.process.stderr is not None
        deadline = time.monotonic() + LINE_TIMEOUT_S
        while True:
            while b"\n" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\n", 1)
                line = raw.decode(errors="replace")
                self.stderr_lines.append(line)
                found = regex.search(line)
                if found:
                    return found
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no line matching {pattern!r}: {self.stderr_lines}"
            ready, _, _ = select.select([self.process.stderr], [], [], remaining)
            if ready:
                chunk = os.read(self.process.stderr.fileno(), 4096)
                assert chunk, f"login exited before {pattern!r}: {self.stderr_lines}"
                self._buffer += chunk

    def paste(self, code: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(code.encode() + b"\n")
        self.process.stdin.close()
        self.process.stdin = None

    def interrupt(self) -> None:
        self.process.send_signal(signal.SIGINT)

    def finish(self, timeout: float = 30.0) -> tuple[int, str, str]:
        """Exit status, stdout and all of stderr."""
        if self.process.stdin is not None:
            self.process.stdin.close()
            self.process.stdin = None
        stdout, stderr = self.process.communicate(timeout=timeout)
        text = self._buffer.decode(errors="replace") + stderr.decode(errors="replace")
        self.stderr_lines += text.splitlines()
        return self.process.returncode, stdout.decode(), "\n".join(self.stderr_lines)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None and not stream.closed:
                stream.close()


def start_login(
    socket_path: Path, capability_token: str, provider: str, *args: str
) -> LoginProcess:
    """Start ``credproxy login PROVIDER --json`` inside the "sandbox" (proxy mode):
    the capability token arrives on an inherited pipe, as ``credproxy run`` passes it."""
    read_end, write_end = os.pipe()
    os.write(write_end, capability_token.encode() + b"\n")
    os.close(write_end)
    env = daemon_env(
        {
            "LLXPRT_CREDENTIAL_SOCKET": str(socket_path),
            "LLXPRT_CAPABILITY_FD": str(read_end),
        }
    )
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "credproxy", "login", provider, "--json", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            pass_fds=(read_end,),
        )
    finally:
        os.close(read_end)
    return LoginProcess(process)


def start_host_login(config_path: Path, provider: str, *args: str) -> LoginProcess:
    """``credproxy login PROVIDER --json`` on the host: no socket, the store in the config."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "credproxy",
            "login",
            provider,
            "--json",
            "--config",
            str(config_path),
            *args,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=daemon_env(),
    )
    return LoginProcess(process)
