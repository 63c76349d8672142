"""The podman and docker command lines for one launch (pure functions).

Both get the socket bind-mounted at ``GUEST_SOCKET``, no network unless
asked, every capability dropped and ``no-new-privileges``.

How the capability token travels differs:

- podman runs the container as a child of the podman process, so
  ``--preserve-fds 1`` hands the inherited pipe on as descriptor 3, exactly
  as for ``none`` and ``bwrap``.
- docker asks a daemon to start the container; nothing the docker CLI
  inherits reaches it. The launcher instead makes a FIFO in a fresh 0700
  host directory, mounts that directory read-only, and starts the command
  through ``/bin/sh`` which opens the FIFO as descriptor 3 and then execs the
  command. The host writes the token into the FIFO once and removes it, so
  the token is never at rest in a file, never in ``docker inspect`` (as an
  environment variable would be) and never in any process's argv or
  environment. The image must have ``/bin/sh``; the command replaces the
  image's entrypoint.
"""

from __future__ import annotations

from typing import Final, Literal

from credproxy.sandbox.spec import (
    CAPABILITY_FD,
    CAPABILITY_FD_ENV,
    GUEST_SOCKET,
    GUEST_TOKEN_DIR,
    SOCKET_ENV,
    SandboxError,
    SandboxSpec,
)

Engine = Literal["podman", "docker"]
TOKEN_FIFO_NAME: Final = "token"
DOCKER_WRAPPER: Final = f'exec {CAPABILITY_FD}<"{GUEST_TOKEN_DIR}/{TOKEN_FIFO_NAME}" && exec "$@"'
"""Opens the FIFO as the capability descriptor, then replaces itself with the command."""


def _volume(host: str, guest: str, read_only: bool) -> list[str]:
    for path in (host, guest):
        if ":" in path or "," in path:
            raise SandboxError(f"container bind path {path!r} must not contain ':' or ','")
    return ["-v", f"{host}:{guest}" + (":ro" if read_only else "")]


def build_container_argv(
    engine: Engine,
    spec: SandboxSpec,
    *,
    uid: int,
    gid: int,
    tty: bool,
    token_dir: str | None = None,
    executable: str | None = None,
) -> list[str]:
    """The ``podman run``/``docker run`` argv.

    ``token_dir`` (docker only) is the host directory holding the token FIFO.
    For podman an ``image`` starting with ``/`` is used as ``--rootfs``.
    """
    if not spec.image:
        raise SandboxError(f"--image is required with --sandbox {engine}")
    argv = [executable or engine, "run", "--rm", "-i"]
    if tty:
        argv.append("-t")
    if not spec.share_net:
        argv += ["--network", "none"]
    argv += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    argv += _volume(spec.socket_path, GUEST_SOCKET, read_only=False)
    for mount in spec.binds:
        argv += _volume(mount.host, mount.guest, mount.read_only)
    argv += ["-e", f"{SOCKET_ENV}={GUEST_SOCKET}", "-e", f"{CAPABILITY_FD_ENV}={CAPABILITY_FD}"]
    if engine == "podman":
        argv += ["--preserve-fds", "1"]
        if uid != 0:
            argv += ["--userns", "keep-id"]
        argv += list(spec.engine_args)
        if spec.image.startswith("/"):
            argv += ["--rootfs", spec.image]
        else:
            argv.append(spec.image)
        return [*argv, *spec.command]
    if token_dir is None:
        raise SandboxError("docker needs a token directory for the capability FIFO")
    argv += ["--user", f"{uid}:{gid}"]
    argv += _volume(token_dir, GUEST_TOKEN_DIR, read_only=True)
    argv += ["--entrypoint", "/bin/sh", *spec.engine_args, spec.image]
    return [*argv, "-c", DOCKER_WRAPPER, "credproxy-run", *spec.command]
