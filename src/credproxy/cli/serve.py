"""``credproxy serve``: run the host daemon in the foreground."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from credproxy.cli import main
from credproxy.cli._daemon_options import (
    STORE_HELP,
    build_grant,
    check_names,
    config_option,
    grant_options,
    load_settings,
    store_choice,
    warn_unknown_providers,
)

if TYPE_CHECKING:
    from credproxy.grants import Grant
    from credproxy.logbudget import LogBudget
    from credproxy.protocol.limits import Limits
    from credproxy.server.app import ConnectionCaps
    from credproxy.settings import Settings
    from credproxy.store.base import CredentialStore


LOG_LEVELS = ("debug", "info", "warning")


@dataclass(frozen=True)
class _Options:
    store: str | None
    config: Path | None
    socket: Path | None
    allow: tuple[str, ...]
    allow_key: tuple[str, ...]
    allow_save: bool
    allow_remove: bool
    no_capability: bool
    capability_file: Path | None
    capability_fd: int | None
    allow_uid: tuple[int, ...]
    audit_log: Path | None
    audit_max_mb: int
    audit_keep: int
    as_json: bool
    rate_limit: float
    listen_backlog: int
    log_level: str


def _check_options(opts: _Options) -> None:
    restricted = bool(opts.allow or opts.allow_key)
    check_names(opts.allow, opts.allow_key)
    if (opts.allow_save or opts.allow_remove) and not restricted:
        raise click.UsageError(
            "--allow-save/--allow-remove narrow a grant made with --allow or --allow-key; "
            "the default grant already includes saving and removing"
        )
    if opts.no_capability:
        conflicts = [
            flag
            for flag, given in (
                ("--allow", bool(opts.allow)),
                ("--allow-key", bool(opts.allow_key)),
                ("--capability-file", opts.capability_file is not None),
                ("--capability-fd", opts.capability_fd is not None),
                ("--allow-uid", bool(opts.allow_uid)),
            )
            if given
        ]
        if conflicts:
            raise click.UsageError(
                f"--no-capability cannot be combined with {', '.join(conflicts)}: "
                "without capability tokens there are no grants to restrict, and other "
                "uids cannot be told apart"
            )
    if opts.capability_file is not None and opts.capability_fd is not None:
        raise click.UsageError("give either --capability-file or --capability-fd, not both")
    if opts.capability_fd is not None and opts.capability_fd < 3:
        raise click.BadParameter("must be 3 or higher", param_hint="--capability-fd")


def _build_grant(opts: _Options) -> Grant:
    from credproxy.grants import Grant

    if not (opts.allow or opts.allow_key):
        return Grant.full()
    return build_grant(
        opts.allow, opts.allow_key, opts.allow_save, opts.allow_remove, "", id_prefix="serve"
    )


def write_capability_file(path: Path, token: str) -> None:
    """Write ``<64 hex>\\n`` to a new 0600 file; an old regular file of ours is replaced,
    anything else (a symlink, another user's file) is refused."""
    with contextlib.suppress(FileNotFoundError):
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            raise click.ClickException(
                f"refusing to overwrite {path}: it is not a regular file of ours"
            )
        path.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise click.ClickException(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(token + "\n")


def write_capability_fd(fd: int, token: str) -> None:
    try:
        with os.fdopen(fd, "w", encoding="ascii", closefd=True) as handle:
            handle.write(token + "\n")
    except OSError as exc:
        raise click.ClickException(
            f"cannot write the capability token to fd {fd}: {exc.strerror}"
        ) from None


@main.command()
@click.option("--store", "store", type=store_choice(), help=STORE_HELP)
@config_option
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Socket path (default: $XDG_RUNTIME_DIR/credproxy-UID/PID-NONCE.sock).",
)
@grant_options("the grant")
@click.option(
    "--no-capability",
    is_flag=True,
    help="No capability token: every process of your uid gets full access.",
)
@click.option(
    "--capability-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the capability token here (0600).",
)
@click.option("--capability-fd", type=int, metavar="N", help="Write the capability token to fd N.")
@click.option(
    "--allow-uid",
    type=click.IntRange(min=0),
    multiple=True,
    metavar="UID",
    help="Also admit connections of this uid (they still need the token). Repeatable.",
)
@click.option(
    "--audit-log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append audit lines to this file (0600) instead of stderr.",
)
@click.option(
    "--audit-log-max-mb",
    "audit_max_mb",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    metavar="MB",
    help="Rotate the --audit-log file when it would pass this size.",
)
@click.option(
    "--audit-log-keep",
    "audit_keep",
    type=click.IntRange(min=1, max=1000),
    default=5,
    show_default=True,
    metavar="N",
    help="Rotated audit files kept (FILE.1 is the newest); older ones are deleted.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object when ready.")
@click.option(
    "--rate-limit",
    type=click.FloatRange(min=1.0, max=1_000_000.0),
    default=60.0,
    show_default=True,
    metavar="N",
    help="Requests per second allowed on one connection (bursts up to N).",
)
@click.option(
    "--listen-backlog",
    type=click.IntRange(min=1, max=65_535),
    default=1024,
    show_default=True,
    metavar="N",
    help="Connections the kernel queues for the daemon (capped by net.core.somaxconn).",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS),
    default="info",
    show_default=True,
    help="What the daemon logs to stderr: debug adds a line per connection "
    "(opened, closed, what a peer did wrong).",
)
def serve(**params: Any) -> None:
    """Run the credential daemon in the foreground until SIGINT or SIGTERM.

    \b
    Access: by default one capability token with FULL access (every provider,
    bucket and key, save and remove) is issued and written to a 0600 file next
    to the socket; only processes that are handed that file (or fd) get in.
    --allow and --allow-key issue a narrower grant instead. --no-capability
    drops tokens: any process of your uid that reaches the socket gets full
    access.

    \b
    Hand the token to a sandboxed command as fd 3:
      export LLXPRT_CREDENTIAL_SOCKET=SOCKET
      LLXPRT_CAPABILITY_FD=3 COMMAND 3< TOKEN_FILE
    The token itself is never printed.
    """
    run_serve(options_from(params))


def options_from(params: Mapping[str, Any]) -> _Options:
    """The command's options, checked, from click's parameters."""
    socket_path, capability_file = params["socket_path"], params["capability_file"]
    opts = _Options(
        store=params["store"],
        config=params["config"],
        socket=socket_path.absolute() if socket_path else None,
        allow=params["allow"],
        allow_key=params["allow_key"],
        allow_save=params["allow_save"],
        allow_remove=params["allow_remove"],
        no_capability=params["no_capability"],
        capability_file=capability_file.absolute() if capability_file else None,
        capability_fd=params["capability_fd"],
        allow_uid=params["allow_uid"],
        audit_log=params["audit_log"],
        audit_max_mb=params["audit_max_mb"],
        audit_keep=params["audit_keep"],
        as_json=params["as_json"],
        rate_limit=params["rate_limit"],
        listen_backlog=params["listen_backlog"],
        log_level=params["log_level"],
    )
    _check_options(opts)
    return opts


def run_serve(
    opts: _Options,
    *,
    limits: Limits | None = None,
    wrap_store: Callable[[CredentialStore], CredentialStore] | None = None,
    log_budget: LogBudget | None = None,
    caps: ConnectionCaps | None = None,
) -> None:
    """Run the daemon until a signal stops it. ``limits``, ``wrap_store``,
    ``log_budget`` and ``caps`` are for programs that embed ``serve`` (the test
    suite holds store calls with them, keeps one budget window for a whole
    test and makes the connection caps small)."""
    from credproxy.audit import AuditLogError
    from credproxy.hardening import harden_process
    from credproxy.protocol.limits import Limits
    from credproxy.server.listener import ListenerError
    from credproxy.settings import ConfigError
    from credproxy.store.base import StoreError
    from credproxy.store.factory import open_store

    harden_process()
    try:
        settings = load_settings(opts.config)
        credential_store = open_store(opts.store, settings)
    except (ConfigError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None
    import asyncio

    limits = replace(limits or Limits(), rate_per_second=opts.rate_limit)
    try:
        asyncio.run(
            _run(
                opts,
                credential_store,
                settings,
                limits,
                wrap_store,
                log_budget=log_budget,
                caps=caps,
            )
        )
    except (ListenerError, StoreError, AuditLogError) as exc:
        raise click.ClickException(str(exc)) from None


async def _open_store(store: CredentialStore) -> None:
    """A network store (Redis) connects and checks its data key before the daemon
    listens, so a wrong key or password stops ``serve`` at once; a store that is only
    unreachable now is not fatal: the daemon serves other work and retries on each call."""
    from credproxy.store.base import StoreUnavailableError

    connect = getattr(store, "connect", None)
    if connect is None:
        return
    try:
        await connect()
    except StoreUnavailableError as exc:
        logging.getLogger("credproxy.server").warning("%s; starting anyway", exc)


async def _run(
    opts: _Options,
    credential_store: CredentialStore,
    settings: Settings,
    limits: Limits,
    wrap_store: Callable[[CredentialStore], CredentialStore] | None,
    *,
    log_budget: LogBudget | None,
    caps: ConnectionCaps | None,
) -> None:
    from credproxy.audit import AuditLog, configure_daemon_logging
    from credproxy.logbudget import DEFAULT_LOG_BUDGET
    from credproxy.server.app import ConnectionCaps
    from credproxy.server.daemon import DaemonSettings, build_daemon

    budget = log_budget or DEFAULT_LOG_BUDGET
    log_handler = configure_daemon_logging(getattr(logging, opts.log_level.upper()), budget)
    audit = (
        AuditLog.to_file(
            opts.audit_log,
            max_bytes=opts.audit_max_mb * 1024 * 1024,
            keep=opts.audit_keep,
            budget=budget,
        )
        if opts.audit_log
        else AuditLog.to_stderr(budget=budget)
    )
    if opts.allow:
        warn_unknown_providers(opts.allow, settings, await credential_store.list_providers())
    grant = _build_grant(opts)
    built = build_daemon(
        DaemonSettings(
            store=credential_store,
            audit=audit,
            config=settings,
            grant=None if opts.no_capability else grant,
            socket_path=opts.socket,
            allowed_uids=frozenset(opts.allow_uid),
            limits=limits,
            wrap_store=wrap_store,
            listen_backlog=opts.listen_backlog,
            caps=caps or ConnectionCaps(),
        )
    )
    daemon, token = built.daemon, built.capability_token
    del built
    token_file: Path | None = None
    try:
        await _open_store(credential_store)
        path = await daemon.start()
        daemon.install_signal_handlers()
        if token is not None:
            if opts.capability_fd is not None:
                write_capability_fd(opts.capability_fd, token)
            else:
                token_file = opts.capability_file or path.with_suffix(".token")
                write_capability_file(token_file, token)
        del token
        _announce(opts, path, token_file, grant)
        await daemon.serve_forever()
    finally:
        await daemon.stop()
        if token_file is not None:
            with contextlib.suppress(OSError):
                token_file.unlink()
        await credential_store.close()
        audit.close()
        log_handler.flush_repeats()


def _announce(opts: _Options, path: Path, token_file: Path | None, grant: Grant) -> None:
    if opts.as_json:
        record = {
            "socket": str(path),
            "capability_file": str(token_file) if token_file else None,
            "capability_fd": opts.capability_fd,
            "grant": "none" if opts.no_capability else grant.describe(),
            "pid": os.getpid(),
        }
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()
        return
    quoted = shlex.quote(str(path))
    lines = [f"credproxy daemon listening on {path} (pid {os.getpid()})"]
    if opts.no_capability:
        lines.append(
            f"no capability token: every process of uid {os.getuid()} that reaches the "
            "socket has full access"
        )
    else:
        default = "" if (opts.allow or opts.allow_key) else " (default; narrow it with --allow)"
        lines.append(f"grant: {grant.describe()}{default}")
    if token_file is not None:
        # The three lines to paste stay adjacent so one selection takes them all;
        # TOKEN_FILE is the name the README's examples use.
        quoted_file = shlex.quote(str(token_file))
        lines.append(f"capability token in {token_file} (0600); hand it over as fd 3.")
        lines.append("In the shell that runs sandboxed commands, paste:")
        lines.append(f"export LLXPRT_CREDENTIAL_SOCKET={quoted}")
        lines.append("export LLXPRT_CAPABILITY_FD=3")
        lines.append(f"TOKEN_FILE={quoted_file}")
        lines.append('  then start each command with 3<"$TOKEN_FILE", e.g.:')
        lines.append('  credproxy status 3<"$TOKEN_FILE"')
    else:
        lines.append(f"export LLXPRT_CREDENTIAL_SOCKET={quoted}")
        if opts.capability_fd is not None:
            lines.append(f"capability token written to fd {opts.capability_fd}")
    click.echo("\n".join(lines))
