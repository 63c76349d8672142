"""Running the sandboxed command: the token pipe, the spawn, signals and exit status.

The child is started with ``posix_spawn`` so the token pipe can be placed at
exactly descriptor 3 and every other inherited descriptor closed, without
running Python code between fork and exec. The parent waits on a pidfd, so
the daemon's event loop keeps serving while the command runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from credproxy.placement import DIR_PREFIX
from credproxy.sandbox.bwrap import RootLayout, build_bwrap_argv, bwrap_env
from credproxy.sandbox.container import TOKEN_FIFO_NAME, build_container_argv
from credproxy.sandbox.runtime import minimal_paths, probe_layout
from credproxy.sandbox.spec import (
    CAPABILITY_FD,
    CAPABILITY_FD_ENV,
    CAPABILITY_TOKEN_ENV,
    GUEST_SOCKET,
    SOCKET_ENV,
    CommandNotExecutableError,
    CommandNotFoundError,
    SandboxError,
    SandboxKind,
    SandboxSpec,
)

INFO_FD: Final = 4
"""bwrap writes the sandbox's init pid here (``--info-fd``), for signal forwarding."""
FORWARDED_SIGNALS: Final = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGWINCH,
)
TERMINAL_SIGNALS: Final = frozenset({signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH})
"""Signals a terminal sends to its whole foreground process group by itself.
bwrap's command is in a session of its own and never gets them from the
terminal, so for bwrap they are always forwarded (SIGWINCH keeps a
full-screen program's size right)."""
_HIGH_FD: Final = 10


@dataclass
class Prepared:
    """A launch ready to spawn; built by ``prepare``."""

    argv: list[str]
    env: dict[str, str]
    own_process_group: bool = False
    """bwrap: the inner command is in its own session, so the terminal's
    Ctrl-C must reach only us, and we forward it inside."""
    bwrap_info: bool = False
    token_fd: bool = True
    fifo_dir: str | None = None


WITHHELD_ENV: Final = frozenset({CAPABILITY_TOKEN_ENV, CAPABILITY_FD_ENV, "CREDPROXY_PASSPHRASE"})
"""Never passed on: an outer sandbox's token, and the store passphrase ``run`` used."""


def _withheld(host_env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in host_env.items() if k not in WITHHELD_ENV}


def none_env(host_env: Mapping[str, str], socket_path: str) -> dict[str, str]:
    """The caller's environment, minus ``WITHHELD_ENV``, plus the socket and fd."""
    env = _withheld(host_env)
    env[SOCKET_ENV] = socket_path
    env[CAPABILITY_FD_ENV] = str(CAPABILITY_FD)
    return env


def check_exposure(bound: list[str], protected: tuple[str, ...]) -> None:
    """Refuse a layout that would show the store, its key or the config inside."""
    for secret in protected:
        real_secret = Path(os.path.realpath(secret))
        for path in bound:
            real = Path(os.path.realpath(path))
            if real_secret.is_relative_to(real) or real.is_relative_to(real_secret):
                raise SandboxError(
                    f"refusing to expose {path} inside the sandbox: it contains or lies in "
                    f"{secret}, which holds credentials or their configuration; "
                    "bind a narrower path"
                )


def host_secret_paths(host_env: Mapping[str, str], uid: int | None = None) -> tuple[str, ...]:
    """Paths that hand credentials to whoever can open them, hidden from every sandbox.

    The per-user socket directories hold other daemons' sockets and their
    capability token files (``credproxy serve`` writes a full-access token
    there by default), and the session bus and keyring control socket answer
    Secret Service requests for the keyring store and the file store's key. A
    bind of ``/tmp`` or of the runtime directory would otherwise hand all of
    them to the sandbox.
    """
    uid = os.getuid() if uid is None else uid
    bases = [tempfile.gettempdir()]
    runtime = host_env.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        bases.append(runtime)
        paths = [os.path.join(runtime, "bus"), os.path.join(runtime, "keyring")]
    else:
        paths = []
    paths += [os.path.join(base, f"{DIR_PREFIX}{uid}") for base in bases]
    for entry in host_env.get("DBUS_SESSION_BUS_ADDRESS", "").split(";"):
        transport, _, options = entry.partition(":")
        if transport != "unix":
            continue
        for option in options.split(","):
            key, _, value = option.partition("=")
            if key == "path" and os.path.isabs(value):
                paths.append(value)
    return tuple(dict.fromkeys(paths))


def prepare(
    kind: SandboxKind,
    spec: SandboxSpec,
    host_env: Mapping[str, str],
    protected: tuple[str, ...] = (),
) -> Prepared:
    """Everything needed to spawn; ``protected`` paths, and ``host_secret_paths``,
    must stay invisible inside."""
    protected = (*protected, *host_secret_paths(host_env))
    if not spec.command:
        raise SandboxError("no command given; put it after --")
    if spec.wrapper and kind != "bwrap":
        raise SandboxError("a relay inside the sandbox needs --sandbox bwrap")
    if kind == "none":
        if spec.binds:
            raise SandboxError("--bind needs a sandbox (bwrap, podman or docker)")
        env = none_env(host_env, spec.socket_path)
        env.update(spec.env)
        return Prepared(argv=list(spec.command), env=env)
    if kind == "bwrap":
        bwrap = shutil.which("bwrap", path=host_env.get("PATH"))
        if bwrap is None:
            raise SandboxError("bwrap not found on PATH; install bubblewrap")
        layout, executable = probe_layout(
            spec.command, share_net=spec.share_net, search_path=host_env.get("PATH")
        )
        command = (executable, *spec.command[1:])
        if spec.wrapper:
            wrapper_layout, wrapper_exe = probe_layout(
                spec.wrapper, share_net=spec.share_net, search_path=host_env.get("PATH")
            )
            layout = merge_layouts(layout, wrapper_layout)
            command = (wrapper_exe, *spec.wrapper[1:], *command)
        check_exposure([*layout.read_only, *(m.host for m in spec.binds)], protected)
        inner = SandboxSpec(
            command=command,
            socket_path=spec.socket_path,
            binds=spec.binds,
            share_net=spec.share_net,
        )
        env = bwrap_env(
            layout,
            host_env,
            {SOCKET_ENV: GUEST_SOCKET, CAPABILITY_FD_ENV: str(CAPABILITY_FD), **dict(spec.env)},
        )
        argv = build_bwrap_argv(inner, layout, env, bwrap=bwrap, info_fd=INFO_FD)
        return Prepared(
            argv=argv,
            env={"PATH": host_env.get("PATH", "")},
            own_process_group=True,
            bwrap_info=True,
        )
    check_exposure([m.host for m in spec.binds], protected)
    engine = shutil.which(kind, path=host_env.get("PATH"))
    if engine is None:
        raise SandboxError(f"{kind} not found on PATH")
    fifo_dir = tempfile.mkdtemp(prefix="credproxy-cap-") if kind == "docker" else None
    try:
        argv = build_container_argv(
            kind,
            spec,
            uid=os.getuid(),
            gid=os.getgid(),
            tty=sys.stdin.isatty(),
            token_dir=fifo_dir,
            executable=engine,
        )
    except SandboxError:
        if fifo_dir is not None:
            shutil.rmtree(fifo_dir, ignore_errors=True)
        raise
    return Prepared(
        argv=argv, env=_withheld(host_env), token_fd=kind == "podman", fifo_dir=fifo_dir
    )


def merge_layouts(first: RootLayout, second: RootLayout) -> RootLayout:
    """One root holding both runtimes; ``first``'s ``PATH`` entries come first."""
    return RootLayout(
        symlinks=first.symlinks,
        read_only=minimal_paths([*first.read_only, *second.read_only]),
        path_dirs=tuple(dict.fromkeys([*first.path_dirs, *second.path_dirs])),
    )


def _high_dup(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)


def _token_pipe(token: str) -> int:
    """A pipe's read end already holding ``token`` and a newline, write end closed."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        os.write(write_fd, (token + "\n").encode("ascii"))
    finally:
        os.close(write_fd)
    return read_fd


def _inherited_fds(keep: set[int]) -> list[int]:
    """Our own inheritable descriptors: they would leak into the child."""
    leaking: list[int] = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2 or fd in keep:
            continue
        try:
            if os.get_inheritable(fd):
                leaking.append(fd)
        except OSError:
            continue
    return leaking


def spawn(prepared: Prepared, token_fd: int | None, info_fd: int | None) -> int:
    """Start the child; ``token_fd`` becomes descriptor 3, ``info_fd`` descriptor 4."""
    actions: list[tuple[int, int] | tuple[int, int, int]] = []
    sources: list[int] = []
    targets: set[int] = set()
    try:
        for fd, target in ((token_fd, CAPABILITY_FD), (info_fd, INFO_FD)):
            if fd is not None:
                high = _high_dup(fd)
                sources.append(high)
                targets.add(target)
                actions.append((os.POSIX_SPAWN_DUP2, high, target))
        # Close actions run after the dup2s, so they must spare the targets.
        actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inherited_fds(targets)]
        name = prepared.argv[0]
        executable = name if "/" in name else shutil.which(name, path=prepared.env.get("PATH"))
        if executable is None:
            raise CommandNotFoundError(f"command {name!r} not found on PATH")
        defaults = (signal.SIGPIPE, signal.SIGXFSZ, *FORWARDED_SIGNALS)
        try:
            if prepared.own_process_group:
                return os.posix_spawn(
                    executable,
                    prepared.argv,
                    prepared.env,
                    file_actions=actions,
                    setpgroup=0,
                    setsigmask=(),
                    setsigdef=defaults,
                )
            return os.posix_spawn(
                executable,
                prepared.argv,
                prepared.env,
                file_actions=actions,
                setsigmask=(),
                setsigdef=defaults,
            )
        except FileNotFoundError:
            raise CommandNotFoundError(f"command {name!r} does not exist") from None
        except OSError as exc:
            raise CommandNotExecutableError(
                f"cannot start {executable}: {exc.strerror or type(exc).__name__}"
            ) from None
    finally:
        for fd in sources:
            os.close(fd)


async def wait_exit(pid: int) -> int:
    """The child's exit code, shell style (128 + signal number when killed)."""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        _, status = await asyncio.to_thread(os.waitpid, pid, 0)
    else:
        done: asyncio.Future[None] = loop.create_future()

        def exited() -> None:
            if not done.done():
                done.set_result(None)

        loop.add_reader(pidfd, exited)
        try:
            await asyncio.shield(done)
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        _, status = os.waitpid(pid, 0)  # noqa: ASYNC222  (the pidfd said it has exited)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class _SignalForwarder:
    """Passes INT/TERM/HUP/QUIT/WINCH on to the command.

    A terminal already delivers INT and HUP to every process of its
    foreground group; when the child shares that group with us, forwarding
    them again would deliver them twice, so only kill(1)-style signals are
    forwarded then. For bwrap the command runs in its own session, so the
    signal goes to the sandbox's process group, whose leader bwrap reports
    on ``--info-fd``.
    """

    def __init__(self, pid: int, prepared: Prepared, info: _InfoReader | None) -> None:
        self.pid = pid
        self.prepared = prepared
        self.info = info

    def __call__(self, signum: int) -> None:
        if self.prepared.own_process_group:
            # bwrap's init inside is the leader of the sandbox's session and
            # process group; the command and its own children are in it. The
            # init (pid 1 there) has no handlers, so the kernel spares it.
            target = self.info.poll() if self.info is not None else None
            try:
                if target is not None:
                    os.killpg(target, signum)
                else:
                    os.kill(self.pid, signum)
            except ProcessLookupError:
                pass
            return
        if signum in TERMINAL_SIGNALS and _terminal_reaches_us():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)


def _terminal_reaches_us() -> bool:
    """True when we are in the foreground process group of our controlling terminal."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


class _InfoReader:
    """bwrap's ``--info-fd`` JSON, read without blocking as it arrives.

    The forwarder polls it too, so a signal that comes right after the
    command started finds the sandbox's pid even if the loop has not yet
    run the reader callback.
    """

    MAX_BYTES: Final = 65536

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd: int | None = fd
        self._buffer = b""
        self.pid: int | None = None

    def poll(self) -> int | None:
        while self._fd is not None:
            try:
                chunk = os.read(self._fd, 4096)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            self._buffer += chunk
            if not chunk or len(self._buffer) > self.MAX_BYTES:
                self.close()
            self._parse()
            if self.pid is not None:
                self.close()
        return self.pid

    def _parse(self) -> None:
        with contextlib.suppress(ValueError, TypeError, KeyError):
            pid = json.loads(self._buffer)["child-pid"]
            if isinstance(pid, int) and pid > 1:
                self.pid = pid

    def fd_for_loop(self) -> int:
        if self._fd is None:
            raise ValueError("the info pipe is closed")
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(RuntimeError, ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None


class _FifoDelivery:
    """Docker: write the token once into a FIFO the container opens as fd 3."""

    def __init__(self, directory: str, token: str) -> None:
        self.path = os.path.join(directory, TOKEN_FIFO_NAME)
        self.directory = directory
        os.mkfifo(self.path, 0o600)
        self._token = token
        self._thread = threading.Thread(target=self._deliver, name="credproxy-fifo", daemon=True)
        self._thread.start()

    def _deliver(self) -> None:
        """Blocks in open() until the container's shell opens the reading end."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            with contextlib.suppress(OSError):
                os.write(fd, (self._token + "\n").encode("ascii"))
        finally:
            os.close(fd)

    def close(self) -> None:
        """Unblock a writer still waiting (the container never started), then clean up."""
        if self._thread.is_alive():
            with contextlib.suppress(OSError):
                fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                self._thread.join(timeout=5)
                os.close(fd)
        self._thread.join(timeout=5)
        shutil.rmtree(self.directory, ignore_errors=True)


async def run_prepared(prepared: Prepared, token: str) -> int:
    """Spawn, forward signals, wait for the exit code; every pipe and FIFO is cleaned up."""
    loop = asyncio.get_running_loop()
    fifo: _FifoDelivery | None = None
    info: _InfoReader | None = None
    token_fd: int | None = None
    info_write: int | None = None
    try:
        if prepared.fifo_dir is not None:
            fifo = _FifoDelivery(prepared.fifo_dir, token)
        if prepared.token_fd:
            token_fd = _token_pipe(token)
        if prepared.bwrap_info:
            info_read, info_write = os.pipe2(os.O_CLOEXEC)
            info = _InfoReader(info_read)
        try:
            pid = spawn(prepared, token_fd, info_write)
        finally:
            for fd in (token_fd, info_write):
                if fd is not None:
                    os.close(fd)
        forwarder = _SignalForwarder(pid, prepared, info)
        if info is not None:
            loop.add_reader(info.fd_for_loop(), info.poll)
        for signum in FORWARDED_SIGNALS:
            loop.add_signal_handler(signum, forwarder, signum)
        try:
            return await wait_exit(pid)
        finally:
            for signum in FORWARDED_SIGNALS:
                loop.remove_signal_handler(signum)
    finally:
        if info is not None:
            info.close()
        if fifo is not None:
            fifo.close()
        elif prepared.fifo_dir is not None:
            shutil.rmtree(prepared.fifo_dir, ignore_errors=True)


__all__ = ["Prepared", "none_env", "prepare", "run_prepared", "spawn", "wait_exit"]
