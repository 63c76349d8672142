"""The argv builders and host probes: pure functions, no sandbox engine needed.

podman and docker are never started on these machines (no engine runs
here), so their command lines are checked here and only here.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import click
import pytest

from credproxy.cli.run import build_grant
from credproxy.sandbox.bwrap import RootLayout, build_bwrap_argv, bwrap_env
from credproxy.sandbox.container import DOCKER_WRAPPER, build_container_argv
from credproxy.sandbox.launch import check_exposure, none_env
from credproxy.sandbox.runtime import (
    installation_prefix,
    minimal_paths,
    probe_layout,
    shebang_interpreter,
)
from credproxy.sandbox.spec import (
    CAPABILITY_FD_ENV,
    CAPABILITY_TOKEN_ENV,
    GUEST_SOCKET,
    GUEST_TOKEN_DIR,
    SOCKET_ENV,
    Mount,
    SandboxError,
    SandboxSpec,
    parse_bind,
)

HOST_SOCKET = "/run/user/1000/credproxy-1000/42-0123456789abcdef0123456789abcdef.sock"


def _pairs(argv: list[str], flag: str, width: int) -> list[tuple[str, ...]]:
    """Every occurrence of ``flag`` with the ``width`` arguments after it."""
    return [tuple(argv[i + 1 : i + 1 + width]) for i, arg in enumerate(argv) if arg == flag]


def _options(argv: list[str]) -> list[str]:
    return argv[: argv.index("--")]


LAYOUT = RootLayout(
    symlinks=(("usr/lib", "/lib"), ("usr/bin", "/bin")),
    read_only=("/etc/ld.so.cache", "/opt/py", "/usr"),
    path_dirs=("/opt/py/bin",),
)


def test_bwrap_unshares_everything_and_isolates_session_env_and_caps() -> None:
    spec = SandboxSpec(command=("tool", "--flag"), socket_path=HOST_SOCKET)
    argv = build_bwrap_argv(spec, LAYOUT, {"PATH": "/usr/bin"})
    options = _options(argv)
    for flag in ("--unshare-all", "--die-with-parent", "--new-session", "--clearenv"):
        assert flag in options
    assert "--share-net" not in options
    assert _pairs(argv, "--cap-drop", 1) == [("ALL",)]
    assert argv[argv.index("--") + 1 :] == ["tool", "--flag"]


def test_bwrap_reports_its_pid_on_the_info_fd_only_when_asked() -> None:
    spec = SandboxSpec(command=("x",), socket_path=HOST_SOCKET)
    assert "--info-fd" not in build_bwrap_argv(spec, LAYOUT, {})
    assert build_bwrap_argv(spec, LAYOUT, {}, bwrap="/usr/bin/bwrap", info_fd=4)[:3] == [
        "/usr/bin/bwrap",
        "--info-fd",
        "4",
    ]


def test_bwrap_clearenv_comes_before_every_setenv() -> None:
    argv = build_bwrap_argv(
        SandboxSpec(command=("x",), socket_path=HOST_SOCKET), LAYOUT, {"A": "1", "B": "2"}
    )
    clear = argv.index("--clearenv")
    assert all(i > clear for i, arg in enumerate(argv) if arg == "--setenv")
    assert _pairs(argv, "--setenv", 2) == [("A", "1"), ("B", "2")]


def test_bwrap_binds_only_the_socket_read_write_at_the_fixed_guest_path() -> None:
    argv = build_bwrap_argv(SandboxSpec(command=("x",), socket_path=HOST_SOCKET), LAYOUT, {})
    assert _pairs(argv, "--bind", 2) == [(HOST_SOCKET, GUEST_SOCKET)]
    assert _pairs(argv, "--ro-bind", 2) == [(p, p) for p in LAYOUT.read_only]
    assert ("/",) in _pairs(argv, "--remount-ro", 1)
    assert _pairs(argv, "--tmpfs", 1) == [("/tmp",)]
    assert _pairs(argv, "--symlink", 2) == list(LAYOUT.symlinks)


def test_bwrap_root_is_remounted_read_only_after_every_mount() -> None:
    spec = SandboxSpec(
        command=("x",), socket_path=HOST_SOCKET, binds=(Mount("/data", "/work", False),)
    )
    argv = build_bwrap_argv(spec, LAYOUT, {})
    remount = argv.index("--remount-ro")
    mounts = [i for i, a in enumerate(argv) if a in ("--bind", "--ro-bind", "--tmpfs", "--proc")]
    assert max(mounts) < remount


def test_bwrap_user_binds_keep_their_mode() -> None:
    spec = SandboxSpec(
        command=("x",),
        socket_path=HOST_SOCKET,
        binds=(Mount("/data", "/work", False), Mount("/ref", "/ref", True)),
    )
    argv = build_bwrap_argv(spec, LAYOUT, {})
    assert ("/data", "/work") in _pairs(argv, "--bind", 2)
    assert ("/ref", "/ref") in _pairs(argv, "--ro-bind", 2)


def test_bwrap_shares_network_only_when_asked() -> None:
    spec = SandboxSpec(command=("x",), socket_path=HOST_SOCKET, share_net=True)
    options = _options(build_bwrap_argv(spec, LAYOUT, {}))
    assert "--share-net" in options
    assert options.index("--share-net") > options.index("--unshare-all")


def test_bwrap_command_words_are_never_read_as_bwrap_options() -> None:
    spec = SandboxSpec(command=("--bind", "/", "/"), socket_path=HOST_SOCKET)
    argv = build_bwrap_argv(spec, LAYOUT, {})
    assert argv[-4:] == ["--", "--bind", "/", "/"]


def test_bwrap_env_keeps_only_terminal_and_locale_names_from_the_host() -> None:
    host = {
        "TERM": "xterm-256color",
        "LANG": "C.UTF-8",
        "AWS_SECRET_ACCESS_KEY": "hostsecret",
        "HOME": "/home/alice",
        CAPABILITY_TOKEN_ENV: "a" * 64,
        "PATH": "/home/alice/bin:/usr/bin",
    }
    env = bwrap_env(LAYOUT, host, {SOCKET_ENV: GUEST_SOCKET, CAPABILITY_FD_ENV: "3"})
    assert env == {
        "PATH": "/opt/py/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "TERM": "xterm-256color",
        "LANG": "C.UTF-8",
        SOCKET_ENV: GUEST_SOCKET,
        CAPABILITY_FD_ENV: "3",
    }


def test_none_env_drops_an_outer_token_and_the_passphrase_and_points_at_the_run_socket() -> None:
    host = {
        "PATH": "/usr/bin",
        CAPABILITY_TOKEN_ENV: "b" * 64,
        CAPABILITY_FD_ENV: "9",
        "CREDPROXY_PASSPHRASE": "store passphrase",
    }
    env = none_env(host, HOST_SOCKET)
    assert env == {"PATH": "/usr/bin", SOCKET_ENV: HOST_SOCKET, CAPABILITY_FD_ENV: "3"}


PODMAN_SPEC = SandboxSpec(
    command=("llxprt", "--yolo"),
    socket_path=HOST_SOCKET,
    binds=(Mount("/src", "/workspace", False),),
    image="ghcr.io/example/sandbox:1",
    engine_args=("--memory", "2g"),
)


def test_podman_passes_the_token_pipe_with_preserve_fds() -> None:
    argv = build_container_argv("podman", PODMAN_SPEC, uid=1000, gid=1000, tty=False)
    assert argv[:4] == ["podman", "run", "--rm", "-i"]
    assert _pairs(argv, "--preserve-fds", 1) == [("1",)]
    assert _pairs(argv, "-e", 1) == [(f"{SOCKET_ENV}={GUEST_SOCKET}",), (f"{CAPABILITY_FD_ENV}=3",)]
    assert _pairs(argv, "-v", 1) == [(f"{HOST_SOCKET}:{GUEST_SOCKET}",), ("/src:/workspace",)]
    assert _pairs(argv, "--network", 1) == [("none",)]
    assert _pairs(argv, "--cap-drop", 1) == [("ALL",)]
    assert _pairs(argv, "--security-opt", 1) == [("no-new-privileges",)]
    assert _pairs(argv, "--userns", 1) == [("keep-id",)]
    image_at = argv.index("ghcr.io/example/sandbox:1")
    assert argv[image_at + 1 :] == ["llxprt", "--yolo"]
    assert argv[image_at - 2 : image_at] == ["--memory", "2g"]
    assert "-t" not in argv


def test_podman_as_root_keeps_the_user_namespace_and_uses_a_rootfs_path() -> None:
    spec = SandboxSpec(
        command=("sh",), socket_path=HOST_SOCKET, image="/srv/rootfs", share_net=True
    )
    argv = build_container_argv("podman", spec, uid=0, gid=0, tty=True)
    assert "--userns" not in argv
    assert "--network" not in argv
    assert "-t" in argv
    assert argv[-3:] == ["--rootfs", "/srv/rootfs", "sh"]


def test_docker_reads_the_token_from_a_read_only_fifo_dir_never_from_env() -> None:
    spec = SandboxSpec(command=("llxprt", "-p", "hi"), socket_path=HOST_SOCKET, image="img:1")
    argv = build_container_argv(
        "docker", spec, uid=1000, gid=100, tty=False, token_dir="/tmp/credproxy-cap-x"
    )
    assert "--preserve-fds" not in argv
    assert not any(CAPABILITY_TOKEN_ENV in a for a in argv)
    assert (f"/tmp/credproxy-cap-x:{GUEST_TOKEN_DIR}:ro",) in _pairs(argv, "-v", 1)
    assert _pairs(argv, "--user", 1) == [("1000:100",)]
    assert _pairs(argv, "--entrypoint", 1) == [("/bin/sh",)]
    image_at = argv.index("img:1")
    assert argv[image_at + 1 :] == ["-c", DOCKER_WRAPPER, "credproxy-run", "llxprt", "-p", "hi"]


def test_docker_without_a_token_dir_is_refused() -> None:
    spec = SandboxSpec(command=("x",), socket_path=HOST_SOCKET, image="img")
    with pytest.raises(SandboxError, match="token directory"):
        build_container_argv("docker", spec, uid=1, gid=1, tty=False)


@pytest.mark.parametrize("engine", ["podman", "docker"])
def test_containers_need_an_image(engine: str) -> None:
    spec = SandboxSpec(command=("x",), socket_path=HOST_SOCKET)
    with pytest.raises(SandboxError, match="--image is required"):
        build_container_argv(engine, spec, uid=1, gid=1, tty=False, token_dir="/t")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["/a:b:/c", "/a,b:/c"])
def test_container_volume_paths_with_separators_are_refused(bad: str) -> None:
    host, _, guest = bad.rpartition(":")
    spec = SandboxSpec(
        command=("x",), socket_path=HOST_SOCKET, image="i", binds=(Mount(host, guest, False),)
    )
    with pytest.raises(SandboxError, match="must not contain"):
        build_container_argv("podman", spec, uid=1, gid=1, tty=False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/a:/b", Mount("/a", "/b", False)),
        ("/a:/b:ro", Mount("/a", "/b", True)),
        ("/a:/b:rw", Mount("/a", "/b", False)),
    ],
)
def test_parse_bind_accepts_host_guest_and_mode(value: str, expected: Mount) -> None:
    assert parse_bind(value) == expected


@pytest.mark.parametrize("value", ["/a", "a:/b", "/a:b", "/a:/b:rx", "/a/../etc:/b", "/a:/", ":/b"])
def test_parse_bind_refuses_relative_traversing_or_root_targets(value: str) -> None:
    with pytest.raises(SandboxError):
        parse_bind(value)


def test_minimal_paths_drops_nested_and_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "c").mkdir()
    paths = [
        str(tmp_path / "a" / "b"),
        str(tmp_path / "a"),
        str(tmp_path / "c") + "/",
        str(tmp_path / "missing"),
        "relative",
    ]
    assert minimal_paths(paths) == (str(tmp_path / "a"), str(tmp_path / "c"))


def test_minimal_paths_refuses_the_host_root() -> None:
    with pytest.raises(SandboxError, match="host root"):
        minimal_paths(["/usr", "/"])


def _script(path: Path, first_line: str) -> str:
    path.write_text(first_line + "\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_shebang_interpreter_follows_env_on_the_search_path(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = _script(bin_dir / "python3.99", "#!/bin/sh")
    script = _script(tmp_path / "tool", "#!/usr/bin/env -S python3.99 -u")
    assert shebang_interpreter(script, str(bin_dir)) == fake
    assert shebang_interpreter(_script(tmp_path / "t2", "#!/opt/py/bin/python -I"), None) == (
        "/opt/py/bin/python"
    )
    assert shebang_interpreter(_script(tmp_path / "t3", "echo no shebang"), None) is None


def test_probe_layout_binds_this_python_and_its_editable_source() -> None:
    """The venv this suite runs in is what ``credproxy`` inside bwrap needs."""
    import sys

    import credproxy

    venv_bin = os.path.dirname(sys.executable)
    layout, executable = probe_layout(
        ("credproxy",), share_net=False, search_path=venv_bin + os.pathsep + "/usr/bin"
    )
    assert executable == os.path.join(venv_bin, "credproxy")
    package_dir = os.path.dirname(os.path.dirname(credproxy.__file__))
    for needed in (sys.prefix, sys.base_prefix, package_dir):
        assert any(Path(needed).is_relative_to(root) for root in layout.read_only), needed
    assert os.path.join(sys.prefix, "bin") in layout.path_dirs
    assert "/etc/resolv.conf" not in layout.read_only
    assert not any(Path(p).is_relative_to("/etc/ssl/private") for p in layout.read_only)


def test_check_exposure_refuses_binds_around_or_inside_the_store(tmp_path: Path) -> None:
    store = tmp_path / "data" / "store"
    store.mkdir(parents=True)
    check_exposure([str(tmp_path / "other")], (str(store),))
    for bound in (tmp_path, tmp_path / "data", store, store / "sub"):
        with pytest.raises(SandboxError, match="holds credentials"):
            check_exposure([str(bound)], (str(store),))


def test_check_exposure_sees_through_symlinks(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    link = tmp_path / "innocent"
    link.symlink_to(store)
    with pytest.raises(SandboxError):
        check_exposure([str(link)], (str(store),))


def test_grant_from_flags_holds_exactly_the_flags() -> None:
    grant = build_grant(("demo", "other:work"), ("k1",), True, False, label="run x")
    assert grant.providers == frozenset({"demo", "other:work"})
    assert grant.keys == frozenset({"k1"})
    assert grant.can_save and not grant.can_remove
    assert grant.allows_token("other", "work") and not grant.allows_token("other")
    empty = build_grant((), (), False, False, label="run x")
    assert not empty.allows_provider("demo") and not empty.allows_key("k1")
    assert not empty.is_full
    assert build_grant((), (), False, False, label="").grant_id != empty.grant_id


@pytest.mark.parametrize(("allow", "keys"), [(("a:b:c",), ()), (("../x",), ()), ((), ("a b",))])
def test_grant_flags_with_bad_names_are_refused(
    allow: tuple[str, ...], keys: tuple[str, ...]
) -> None:
    with pytest.raises(click.BadParameter):
        build_grant(allow, keys, False, False, label="")


def test_a_script_run_by_an_interpreter_outside_usr_gets_its_whole_prefix(tmp_path: Path) -> None:
    """As for ``#!/usr/bin/env node`` with node from nvm: the global packages
    live under the interpreter's prefix, next to its ``bin``."""
    prefix = tmp_path / "versions" / "node" / "v20"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "lib" / "node_modules" / "tool").mkdir(parents=True)
    _script(prefix / "bin" / "node", "#!/bin/sh")
    target = prefix / "lib" / "node_modules" / "tool" / "cli.js"
    _script(target, "#!/usr/bin/env node")
    (prefix / "bin" / "tool").symlink_to(target)
    layout, executable = probe_layout(
        ("tool",), share_net=False, search_path=f"{prefix / 'bin'}:/usr/bin:/bin"
    )
    assert executable == str(prefix / "bin" / "tool")
    assert str(prefix) in layout.read_only
    assert str(prefix / "bin") in layout.path_dirs


def test_installation_prefix_never_picks_the_home_directory_or_usr(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "bin").mkdir(parents=True)
    interpreter = _script(home / "bin" / "node", "#!/bin/sh")
    assert installation_prefix(interpreter, home=str(home)) is None
    assert installation_prefix(interpreter, home=str(home / "sub")) is None
    assert installation_prefix(interpreter, home="/nonexistent-home") == str(home)
    assert installation_prefix("/usr/bin/sh", home="/nonexistent-home") is None
