"""Finding the proxy from the environment: socket variable, token by descriptor or variable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from credproxy.client import ProxyConfigError, discover, in_sandbox
from credproxy.client import env as client_env

TOKEN = "0123456789abcdef" * 4
SOCKET = "/run/credproxy-test/proxy.sock"


def pipe_with(data: bytes, *, close_writer: bool = True) -> tuple[int, int | None]:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, data)
    if close_writer:
        os.close(write_fd)
        return read_fd, None
    return read_fd, write_fd


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_socket_and_fd_token_are_discovered_and_token_variables_removed() -> None:
    read_fd, _ = pipe_with(TOKEN.encode() + b"\n")
    environ = {
        "LLXPRT_CREDENTIAL_SOCKET": SOCKET,
        "LLXPRT_CAPABILITY_FD": str(read_fd),
        "OTHER": "kept",
    }
    found = discover(environ)
    assert found.socket_path == SOCKET
    assert found.capability_token == TOKEN
    assert environ == {"LLXPRT_CREDENTIAL_SOCKET": SOCKET, "OTHER": "kept"}
    assert not fd_is_open(read_fd)


def test_environment_repr_hides_the_token() -> None:
    found = discover({"LLXPRT_CREDENTIAL_SOCKET": SOCKET, "LLXPRT_CAPABILITY_TOKEN": TOKEN})
    assert found.capability_token == TOKEN
    assert TOKEN not in repr(found)


def test_token_variable_is_read_and_removed() -> None:
    environ = {"LLXPRT_CREDENTIAL_SOCKET": SOCKET, "LLXPRT_CAPABILITY_TOKEN": TOKEN}
    assert discover(environ).capability_token == TOKEN
    assert "LLXPRT_CAPABILITY_TOKEN" not in environ


def test_no_token_at_all_means_none() -> None:
    assert discover({"LLXPRT_CREDENTIAL_SOCKET": SOCKET}).capability_token is None


def test_descriptor_wins_over_variable_and_both_are_removed() -> None:
    read_fd, _ = pipe_with(TOKEN.encode() + b"\n")
    other = "f" * 64
    environ = {
        "LLXPRT_CREDENTIAL_SOCKET": SOCKET,
        "LLXPRT_CAPABILITY_FD": str(read_fd),
        "LLXPRT_CAPABILITY_TOKEN": other,
    }
    assert discover(environ).capability_token == TOKEN
    assert set(environ) == {"LLXPRT_CREDENTIAL_SOCKET"}


def test_missing_socket_variable_says_we_are_not_in_a_sandbox() -> None:
    assert not in_sandbox({})
    with pytest.raises(ProxyConfigError) as caught:
        discover({})
    assert "LLXPRT_CREDENTIAL_SOCKET" in caught.value.message
    assert caught.value.code == "CONFIG"


def test_relative_socket_path_is_refused() -> None:
    with pytest.raises(ProxyConfigError, match="absolute"):
        discover({"LLXPRT_CREDENTIAL_SOCKET": "relative.sock"})


@pytest.mark.parametrize(
    "content",
    [
        TOKEN.encode(),  # no newline
        TOKEN.upper().encode() + b"\n",
        TOKEN.encode() + b"\n\n",
        TOKEN.encode() + b"\r\n",
        TOKEN[:-1].encode() + b"\n",
        b"",
        TOKEN.encode()[:-1] + b"\xff\n",
    ],
)
def test_malformed_descriptor_content_is_refused_without_echoing_it(
    content: bytes,
) -> None:
    read_fd, _ = pipe_with(content)
    environ = {"LLXPRT_CREDENTIAL_SOCKET": SOCKET, "LLXPRT_CAPABILITY_FD": str(read_fd)}
    with pytest.raises(ProxyConfigError) as caught:
        discover(environ)
    assert TOKEN[:16] not in caught.value.message
    assert TOKEN[:16].upper() not in caught.value.message
    assert "LLXPRT_CAPABILITY_FD" not in environ
    assert not fd_is_open(read_fd)


def test_descriptor_holding_more_than_128_bytes_is_refused() -> None:
    read_fd, _ = pipe_with(b"a" * 200)
    with pytest.raises(ProxyConfigError, match="128 bytes"):
        discover({"LLXPRT_CREDENTIAL_SOCKET": SOCKET, "LLXPRT_CAPABILITY_FD": str(read_fd)})
    assert not fd_is_open(read_fd)


def test_descriptor_whose_writer_never_closes_gives_up_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_env, "FD_READ_TIMEOUT_S", 0.05)
    read_fd, write_fd = pipe_with(TOKEN.encode() + b"\n", close_writer=False)
    assert write_fd is not None
    try:
        with pytest.raises(ProxyConfigError, match="end of file"):
            discover({"LLXPRT_CREDENTIAL_SOCKET": SOCKET, "LLXPRT_CAPABILITY_FD": str(read_fd)})
        assert not fd_is_open(read_fd)
    finally:
        os.close(write_fd)


def test_closed_descriptor_number_is_reported_as_not_open() -> None:
    read_fd, _ = pipe_with(b"")
    os.close(read_fd)
    with pytest.raises(ProxyConfigError, match="not name an open file descriptor"):
        discover({"LLXPRT_CREDENTIAL_SOCKET": SOCKET, "LLXPRT_CAPABILITY_FD": str(read_fd)})


@pytest.mark.parametrize("value", ["", "x", "-3", "3.0", " 3", "99999999999"])
def test_descriptor_variable_must_be_a_plain_number(value: str) -> None:
    environ = {"LLXPRT_CREDENTIAL_SOCKET": SOCKET, "LLXPRT_CAPABILITY_FD": value}
    with pytest.raises(ProxyConfigError, match="descriptor number"):
        discover(environ)
    assert "LLXPRT_CAPABILITY_FD" not in environ


@pytest.mark.parametrize("value", ["0", "1", "2"])
def test_standard_streams_are_never_read_as_the_token_descriptor(value: str) -> None:
    with pytest.raises(ProxyConfigError, match="stdin"):
        discover({"LLXPRT_CREDENTIAL_SOCKET": SOCKET, "LLXPRT_CAPABILITY_FD": value})
    assert fd_is_open(int(value))


@pytest.mark.parametrize("value", [TOKEN.upper(), TOKEN + "\n", TOKEN[:63], "", "z" * 64])
def test_malformed_token_variable_is_refused_without_echoing_it(value: str) -> None:
    environ = {"LLXPRT_CREDENTIAL_SOCKET": SOCKET, "LLXPRT_CAPABILITY_TOKEN": value}
    with pytest.raises(ProxyConfigError) as caught:
        discover(environ)
    assert "LLXPRT_CAPABILITY_TOKEN" not in environ
    if value:
        assert value.strip() not in caught.value.message


CHILD = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from credproxy.client import discover
    fd = int(os.environ["LLXPRT_CAPABILITY_FD"])
    found = discover()
    try:
        os.fstat(fd)
        fd_open = True
    except OSError:
        fd_open = False
    grandchild = subprocess.run(
        [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
        capture_output=True, text=True, check=True,
    )
    print(json.dumps({
        "socket": found.socket_path,
        "token": found.capability_token,
        "fd_open": fd_open,
        "own_env": sorted(k for k in os.environ if k.startswith("LLXPRT_")),
        "grandchild_env": sorted(
            k for k in json.loads(grandchild.stdout) if k.startswith("LLXPRT_")
        ),
    }))
    """
)


def test_token_passed_on_an_inherited_fd_is_read_and_not_inherited_further() -> None:
    """A real pipe passed with pass_fds, as the sandbox launcher does it."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, TOKEN.encode() + b"\n")
    os.close(write_fd)
    env = {
        **os.environ,
        "LLXPRT_CREDENTIAL_SOCKET": SOCKET,
        "LLXPRT_CAPABILITY_FD": str(read_fd),
        "LLXPRT_CAPABILITY_TOKEN": "f" * 64,
    }
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            env=env,
            pass_fds=(read_fd,),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(read_fd)
    try:
        stdout, stderr = child.communicate(timeout=30)
    finally:
        child.kill()
    assert child.returncode == 0, stderr
    report = json.loads(stdout)
    assert report == {
        "socket": SOCKET,
        "token": TOKEN,
        "fd_open": False,
        "own_env": ["LLXPRT_CREDENTIAL_SOCKET"],
        "grandchild_env": ["LLXPRT_CREDENTIAL_SOCKET"],
    }
