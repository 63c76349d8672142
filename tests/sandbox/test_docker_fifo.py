"""The docker token hand-off (a FIFO in a read-only mounted directory, opened as
fd 3 by the ``/bin/sh`` wrapper), run for real with bubblewrap standing in
for the container engine: no Docker engine runs on these machines. The
mount, the wrapper and the FIFO are exactly what ``docker run`` gets."""

from __future__ import annotations

import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from credproxy.sandbox.bwrap import build_bwrap_argv, bwrap_env
from credproxy.sandbox.container import DOCKER_WRAPPER
from credproxy.sandbox.launch import Prepared, run_prepared
from credproxy.sandbox.runtime import probe_layout
from credproxy.sandbox.spec import GUEST_TOKEN_DIR, Mount, SandboxSpec

TOKEN = "0123456789abcdef" * 4


@pytest.fixture
def listening_socket() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="cpfifo-")
    path = os.path.join(directory, "s.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    try:
        yield path
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(directory)


def _container_like(
    socket_path: str, token_dir: str, command: tuple[str, ...], *, wrapped: bool = True
) -> Prepared:
    """bwrap with the token directory mounted read-only where docker would mount it."""
    layout, sh = probe_layout(("sh",), share_net=False, search_path="/usr/bin:/bin")
    wrapper = (sh, "-c", DOCKER_WRAPPER, "credproxy-run") if wrapped else ()
    spec = SandboxSpec(
        command=(*wrapper, *command),
        socket_path=socket_path,
        binds=(Mount(token_dir, GUEST_TOKEN_DIR, True),),
    )
    argv = build_bwrap_argv(spec, layout, bwrap_env(layout, {}, {"LLXPRT_CAPABILITY_FD": "3"}))
    return Prepared(
        argv=argv,
        env={"PATH": "/usr/bin:/bin"},
        own_process_group=True,
        token_fd=False,
        fifo_dir=token_dir,
    )


async def test_fifo_delivers_the_token_once_as_fd_3_and_leaves_nothing_behind(
    listening_socket: str, capfd: pytest.CaptureFixture[str]
) -> None:
    token_dir = tempfile.mkdtemp(prefix="credproxy-cap-")
    script = f'cat <&3; echo "entries:$(ls -A {GUEST_TOKEN_DIR} | wc -l)"; cat <&3; echo end'
    code = await run_prepared(
        _container_like(listening_socket, token_dir, ("sh", "-c", script)), TOKEN
    )
    out = capfd.readouterr().out
    assert code == 0
    assert out == f"{TOKEN}\nentries:0\nend\n"
    assert not Path(token_dir).exists()


async def test_a_container_that_never_reads_the_fifo_does_not_hang_the_run(
    listening_socket: str, capfd: pytest.CaptureFixture[str]
) -> None:
    token_dir = tempfile.mkdtemp(prefix="credproxy-cap-")
    prepared = _container_like(
        listening_socket, token_dir, ("/bin/sh", "-c", "exit 3"), wrapped=False
    )
    code = await run_prepared(prepared, TOKEN)
    assert code == 3
    assert not Path(token_dir).exists()
    assert TOKEN not in capfd.readouterr().out


def test_wrapper_names_the_fixed_guest_fifo() -> None:
    assert re.fullmatch(r'exec 3<"/run/credproxy-capability/token" && exec "\$@"', DOCKER_WRAPPER)
