"""Probing the host for what a command needs inside bubblewrap.

The sandbox root is empty except for what is bound in, so the launcher finds
the command on the host ``PATH``, follows a ``#!`` line to its interpreter,
and, for Python, asks that interpreter where its standard library, its
environment and any editable source trees live. Everything is bound
read-only; nothing under the caller's home is added unless the command's own
runtime lives there.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Final

from credproxy.sandbox.bwrap import RootLayout
from credproxy.sandbox.spec import CommandNotExecutableError, CommandNotFoundError, SandboxError

ROOT_ENTRIES: Final = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
ETC_COMMON: Final = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/alternatives",
    "/etc/ssl/certs",
    "/etc/ca-certificates",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
)
"""Readable by every user on the host and needed by ordinary programs;
``/etc/ssl/private``, ``/etc/shadow`` and the like stay out."""
ETC_NETWORK: Final = ("/etc/resolv.conf", "/etc/hosts", "/etc/host.conf", "/etc/gai.conf")
PROBE_TIMEOUT_S: Final = 10.0

_PYTHON_PROBE: Final = (
    "import json, sys\n"
    "print(json.dumps({'prefixes': [sys.prefix, sys.base_prefix, sys.exec_prefix,"
    " sys.base_exec_prefix], 'path': sys.path}))\n"
)


def minimal_paths(paths: list[str]) -> tuple[str, ...]:
    """Existing absolute paths, without those already inside another one, sorted."""
    kept: list[PurePosixPath] = []
    candidates = sorted(
        {PurePosixPath(os.path.normpath(p)) for p in paths if os.path.isabs(p)},
        key=lambda p: (len(p.parts), str(p)),
    )
    for candidate in candidates:
        if candidate == PurePosixPath("/"):
            raise SandboxError("refusing to bind the host root into the sandbox")
        if not os.path.lexists(candidate):
            continue
        if any(candidate.is_relative_to(parent) for parent in kept):
            continue
        kept.append(candidate)
    return tuple(sorted(str(p) for p in kept))


def resolve_command(name: str, search_path: str | None) -> str:
    """The absolute host path of ``name``, as the caller's shell would find it."""
    if "/" in name:
        return os.path.abspath(name)
    found = shutil.which(name, path=search_path)
    if found is None:
        raise CommandNotFoundError(f"command {name!r} not found on PATH")
    return os.path.abspath(found)


def shebang_interpreter(executable: str, search_path: str | None) -> str | None:
    """The interpreter named on the ``#!`` line, with ``/usr/bin/env NAME`` resolved."""
    try:
        with open(executable, "rb") as handle:
            first = handle.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    if not words:
        return None
    if os.path.basename(words[0]) == "env":
        names = [w for w in words[1:] if not w.startswith("-")]
        if not names:
            return None
        found = shutil.which(names[0], path=search_path)
        return os.path.abspath(found) if found else None
    return words[0]


def _editable_roots(directory: str) -> list[str]:
    """Source trees of setuptools' finder-style editable installs (``MAPPING``)."""
    roots: list[str] = []
    try:
        entries = list(Path(directory).glob("__editable___*_finder.py"))
    except OSError:
        return roots
    for finder in entries:
        try:
            tree = ast.parse(finder.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            continue
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "MAPPING" for t in node.targets
            ):
                try:
                    mapping = ast.literal_eval(node.value)
                except ValueError:
                    continue
                if isinstance(mapping, dict):
                    roots += [v for v in mapping.values() if isinstance(v, str)]
    return roots


def python_runtime(interpreter: str) -> tuple[list[str], list[str]]:
    """Paths a Python interpreter reads at start-up, and its ``bin`` directories.

    Runs the interpreter once with ``-I`` (the sandbox has no ``PYTHON*``
    variables either, so the answer matches what it will see inside).
    """
    try:
        done = subprocess.run(
            [interpreter, "-I", "-c", _PYTHON_PROBE],
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            check=True,
            stdin=subprocess.DEVNULL,
        )
        info = json.loads(done.stdout)
        prefixes = [str(p) for p in info["prefixes"]]
        search = [str(p) for p in info["path"]]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError) as exc:
        raise SandboxError(
            f"cannot ask {interpreter} for its installation paths ({type(exc).__name__}); "
            "bind them with --bind"
        ) from None
    paths = [*prefixes, *search, os.path.realpath(interpreter)]
    for entry in search:
        if os.path.isdir(entry):
            paths += _editable_roots(entry)
    bins = [os.path.join(prefixes[0], "bin")]
    return paths, bins


def installation_prefix(interpreter: str, home: str | None = None) -> str | None:
    """``PREFIX`` of an interpreter installed as ``PREFIX/bin/NAME`` outside ``/usr``.

    A node from nvm or a ruby from rbenv keeps its globally installed
    packages under that prefix (``lib/node_modules``, ``lib/ruby/gems``), so a
    script run by it needs the whole prefix. A prefix that is, or contains,
    the home directory is never chosen.
    """
    real = os.path.realpath(interpreter)
    bin_dir = os.path.dirname(real)
    if os.path.basename(bin_dir) != "bin":
        return None
    prefix = PurePosixPath(os.path.dirname(bin_dir))
    home_dir = PurePosixPath(os.path.realpath(home or os.path.expanduser("~")))
    if prefix in (PurePosixPath("/"), PurePosixPath("/usr")) or home_dir.is_relative_to(prefix):
        return None
    if _inside(str(prefix), "/usr"):
        return None
    return str(prefix)


def _is_python(interpreter: str) -> bool:
    return os.path.basename(interpreter).startswith("python")


def probe_layout(
    command: tuple[str, ...], *, share_net: bool, search_path: str | None
) -> tuple[RootLayout, str]:
    """The root for ``command`` and the absolute path to execute inside."""
    executable = resolve_command(command[0], search_path)
    if not os.path.isfile(executable) or not os.access(executable, os.X_OK):
        raise CommandNotExecutableError(f"{executable} is not an executable file")
    paths = ["/usr", executable]
    path_dirs: list[str] = []
    symlinks: list[tuple[str, str]] = []
    for entry in ROOT_ENTRIES:
        host = f"/{entry}"
        if os.path.islink(host):
            symlinks.append((os.readlink(host), host))
        elif os.path.isdir(host):
            paths.append(host)
    paths += [*ETC_COMMON, *(ETC_NETWORK if share_net else ())]
    interpreter = shebang_interpreter(executable, search_path)
    if interpreter is not None:
        paths.append(interpreter)
    python = interpreter if interpreter and _is_python(interpreter) else None
    if python is None and _is_python(executable):
        python = executable
    if python is not None:
        extra, bins = python_runtime(python)
        paths += extra
        path_dirs += bins
    elif interpreter is not None:
        prefix = installation_prefix(interpreter)
        if prefix is not None:
            paths.append(prefix)
            path_dirs.append(os.path.join(prefix, "bin"))
    paths.append(os.path.realpath(executable))
    read_only = minimal_paths([_through_root_links(p, symlinks) for p in paths])
    visible = [d for d in path_dirs if any(_inside(d, root) for root in read_only)]
    layout = RootLayout(
        symlinks=tuple(symlinks),
        read_only=read_only,
        path_dirs=tuple(dict.fromkeys(visible)),
    )
    return layout, executable


def _through_root_links(path: str, symlinks: list[tuple[str, str]]) -> str:
    """``path`` with a leading root symlink resolved (``/bin/sh`` -> ``/usr/bin/sh``).

    The sandbox recreates ``/bin -> usr/bin`` as a symlink; binding ``/bin/sh``
    itself would first create a real ``/bin`` directory and bwrap then fails to
    make the symlink, so a ``#!/bin/sh`` script could not run.
    """
    pure = PurePosixPath(path)
    for target, link in symlinks:
        if pure.is_relative_to(link):
            base = PurePosixPath(link).parent / target
            return os.path.normpath(base / pure.relative_to(link))
    return path


def _inside(path: str, root: str) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(root))
