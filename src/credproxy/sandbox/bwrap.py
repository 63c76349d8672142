"""The bubblewrap command line for one launch (pure; see ``runtime`` for probing the host).

The sandbox gets every namespace unshared (network too unless asked), no
capabilities, a fresh session (no TIOCSTI into the caller's terminal), a
cleared environment, and a read-only root built from ``/usr``, the few
``/etc`` files programs need, and the runtime of the command (e.g. a Python
installation). The daemon's socket is the only host socket bound in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from credproxy.sandbox.spec import GUEST_SOCKET, SandboxSpec


@dataclass(frozen=True, slots=True)
class RootLayout:
    """The host paths the sandbox root is made of.

    ``symlinks`` are ``(target, path)`` pairs recreated inside (``/lib ->
    usr/lib`` on merged-/usr systems); ``read_only`` paths are bound read-only
    at the same place. Both come from ``runtime.probe_layout``.
    """

    symlinks: tuple[tuple[str, str], ...] = ()
    read_only: tuple[str, ...] = ("/usr",)
    path_dirs: tuple[str, ...] = field(default=())
    """Directories put in front of ``PATH`` inside (e.g. a venv's ``bin``)."""


DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
SANDBOX_TMP = "/tmp"  # noqa: S108  (a private tmpfs inside the sandbox)
SANDBOX_HOME = SANDBOX_TMP


def bwrap_env(
    layout: RootLayout, host_env: Mapping[str, str], extra: Mapping[str, str]
) -> dict[str, str]:
    """The whole environment inside: nothing from the host but terminal and locale names."""
    env = {
        "PATH": ":".join([*layout.path_dirs, DEFAULT_PATH]),
        "HOME": SANDBOX_HOME,
        "TMPDIR": SANDBOX_TMP,
    }
    for name in ("TERM", "COLORTERM", "LANG", "LC_ALL", "NO_COLOR"):
        value = host_env.get(name)
        if value is not None:
            env[name] = value
    env.update(extra)
    return env


def build_bwrap_argv(
    spec: SandboxSpec,
    layout: RootLayout,
    env: Mapping[str, str],
    *,
    bwrap: str = "bwrap",
    info_fd: int | None = None,
) -> list[str]:
    """``info_fd``: where bwrap reports the sandbox's pid (for signal forwarding)."""
    argv = [bwrap, *(["--info-fd", str(info_fd)] if info_fd is not None else [])]
    argv += [
        "--unshare-all",
        *(["--share-net"] if spec.share_net else []),
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--clearenv",
    ]
    # The fresh /proc, /dev and /tmp come first so a runtime that lives under
    # /tmp on the host is mounted on top of the tmpfs, not hidden by it.
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", SANDBOX_TMP]
    for path in layout.read_only:
        argv += ["--ro-bind", path, path]
    for target, path in layout.symlinks:
        argv += ["--symlink", target, path]
    argv += ["--bind", spec.socket_path, GUEST_SOCKET]
    for mount in spec.binds:
        argv += ["--ro-bind" if mount.read_only else "--bind", mount.host, mount.guest]
    argv += ["--remount-ro", "/", "--chdir", SANDBOX_HOME]
    for name in sorted(env):
        argv += ["--setenv", name, env[name]]
    argv += ["--", *spec.command]
    return argv
