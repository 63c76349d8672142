"""``credproxy run``: one command, one grant, one daemon that lives exactly as long.

The daemon is embedded in this process; the capability token is issued for
a grant built from the flags, handed to the command on a pipe (never argv or
environment) and forgotten when the command exits, because the daemon and
its socket go with it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

import click

from credproxy.cli import main
from credproxy.cli._daemon_options import (
    STORE_HELP,
    build_grant,
    config_option,
    grant_options,
    load_settings,
    store_choice,
    warn_unknown_providers,
)
from credproxy.sandbox.spec import SANDBOX_KINDS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from credproxy.audit import AuditLog
    from credproxy.grants import Grant
    from credproxy.sandbox.spec import SandboxKind, SandboxSpec
    from credproxy.server.context import ServerState
    from credproxy.settings import Settings
    from credproxy.store.base import CredentialStore

SETUP_FAILED: Final = 125
"""Exit code when ``run`` itself fails before the command starts (as podman/docker do)."""
STOP_GRACE_S: Final = 2.0
"""The command has exited; in-flight requests and login sessions get this long to end."""

__all__ = ["build_grant", "run"]


@dataclass(frozen=True)
class _RunPlan:
    kind: SandboxKind
    spec: SandboxSpec
    grant: Grant
    protected: tuple[str, ...]
    settings: Settings
    audit_log: Path | None
    inject: tuple[str, ...] = ()
    intercept: tuple[str, ...] = ()


@main.command(context_settings={"allow_interspersed_args": False})
@click.option(
    "--sandbox",
    "kind",
    type=click.Choice(SANDBOX_KINDS),
    default="bwrap",
    show_default=True,
    help="How to isolate the command (see docs/sandboxes.md).",
)
@grant_options("the command")
@click.option("--store", "store", type=store_choice(), help=STORE_HELP)
@config_option
@click.option(
    "--bind",
    "binds",
    multiple=True,
    metavar="HOST:GUEST[:ro]",
    help="Make a host path visible inside the sandbox. Repeatable.",
)
@click.option(
    "--share-net/--no-net",
    "share_net",
    default=None,
    help="Give the sandbox the host's network (default: no network).",
)
@click.option("--image", help="Container image (podman/docker); for podman a /path is a rootfs.")
@click.option(
    "--engine-arg",
    "engine_args",
    multiple=True,
    metavar="ARG",
    help="Extra argument for `podman run`/`docker run`, before the image. Repeatable.",
)
@click.option(
    "--audit-log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append the daemon's audit lines to this file (0600); default: not kept.",
)
@click.option(
    "--inject",
    "inject",
    multiple=True,
    metavar="ROUTE",
    help="Serve this route's API through the host proxy: the command gets the base URL "
    "and a stand-in credential, never the secret (presets: anthropic, anthropic-oauth, "
    "openai, gemini, github; or [routes.NAME] in the config). Repeatable.",
)
@click.option(
    "--intercept",
    "intercept",
    multiple=True,
    metavar="HOST",
    help="Also intercept HTTPS to HOST (an --inject route's upstream) through HTTPS_PROXY "
    "with a CA made for this run, for tools that cannot change their base URL. Repeatable.",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(  # noqa: PLR0917  (click passes every option)
    kind: SandboxKind,
    allow: tuple[str, ...],
    allow_key: tuple[str, ...],
    allow_save: bool,
    allow_remove: bool,
    store: str | None,
    config: Path | None,
    binds: tuple[str, ...],
    share_net: bool | None,
    image: str | None,
    engine_args: tuple[str, ...],
    audit_log: Path | None,
    inject: tuple[str, ...],
    intercept: tuple[str, ...],
    command: tuple[str, ...],
) -> None:
    """Run COMMAND with a private daemon that grants only what the flags allow.

    \b
    Example:
      credproxy run --sandbox bwrap --allow anthropic -- llxprt
      credproxy run --inject anthropic -- agent
    Without --allow/--allow-key the command may read nothing. With --inject
    ROUTE it gets ROUTE's base URL and a stand-in credential in the route's
    environment variables (e.g. ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY), and
    the host adds the real secret to its requests (--sandbox none or bwrap).
    The command's exit code is returned; SIGINT, SIGTERM, SIGHUP, SIGQUIT and
    SIGWINCH are passed on to it.
    """
    from credproxy.sandbox.spec import Mount, SandboxError, SandboxSpec, parse_bind
    from credproxy.settings import ConfigError
    from credproxy.store.base import StoreError
    from credproxy.store.factory import open_store

    if kind == "none" and share_net is False:
        raise click.UsageError(
            "--no-net needs a sandbox: with --sandbox none the host network is used"
        )
    if kind not in ("podman", "docker") and (image or engine_args):
        raise click.UsageError("--image and --engine-arg apply to --sandbox podman/docker only")
    if (allow_save or allow_remove) and not allow:
        raise click.UsageError(
            "--allow-save/--allow-remove apply to tokens the grant may read; add --allow"
        )
    grant = build_grant(
        allow, allow_key, allow_save, allow_remove, label=f"run {os.path.basename(command[0])}"
    )
    try:
        mounts: tuple[Mount, ...] = tuple(parse_bind(b) for b in binds)
    except SandboxError as exc:
        raise click.BadParameter(str(exc), param_hint="--bind") from None
    for mount in mounts:
        if not os.path.exists(mount.host):
            raise click.BadParameter(
                f"{mount.host} does not exist on the host", param_hint="--bind"
            )
    if intercept and not inject:
        raise click.UsageError("--intercept needs --inject ROUTE for the host's credential")
    if inject and kind not in ("none", "bwrap"):
        raise click.UsageError(f"--inject works with --sandbox none or bwrap, not {kind}")
    from credproxy.hardening import harden_process

    # The core limit would be inherited by COMMAND; this process is undumpable anyway.
    harden_process(limit_core=False)
    try:
        settings = load_settings(config)
        if inject:
            _check_inject(settings, inject, intercept)
        protected = _protected_paths(store, settings, config)
        credential_store = open_store(store, settings)
    except (ConfigError, StoreError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(SETUP_FAILED)
    plan = _RunPlan(
        kind=kind,
        spec=SandboxSpec(
            command=command,
            socket_path="",
            binds=mounts,
            share_net=bool(share_net),
            image=image,
            engine_args=engine_args,
        ),
        grant=grant,
        protected=protected,
        settings=settings,
        audit_log=audit_log,
        inject=tuple(dict.fromkeys(inject)),
        intercept=tuple(dict.fromkeys(h.lower() for h in intercept)),
    )
    import asyncio

    sys.exit(asyncio.run(_run(plan, credential_store)))


async def _run(plan: _RunPlan, credential_store: CredentialStore) -> int:
    import asyncio
    import logging

    from credproxy.audit import configure_daemon_logging
    from credproxy.inject.service import InjectSetupError
    from credproxy.sandbox.launch import prepare, run_prepared
    from credproxy.sandbox.spec import SandboxError
    from credproxy.server.daemon import DaemonSettings, build_daemon
    from credproxy.server.listener import ListenerError
    from credproxy.settings import ConfigError

    log_handler = configure_daemon_logging(logging.WARNING)
    closing_async: list[Callable[[], Awaitable[None]]] = []
    with contextlib.ExitStack() as closing:
        closing.callback(log_handler.flush_repeats)
        try:
            audit = _open_audit(plan.audit_log, closing)
            if plan.grant.providers:
                allowed = tuple(sorted(plan.grant.providers))
                stored = await credential_store.list_providers()
                warn_unknown_providers(allowed, plan.settings, stored)
            built = build_daemon(
                DaemonSettings(
                    store=credential_store,
                    audit=audit,
                    config=plan.settings,
                    grant=plan.grant,
                    close_timeout_s=STOP_GRACE_S,
                )
            )
            daemon, token = built.daemon, built.capability_token
            del built
            assert token is not None
            try:
                path = await daemon.start()
                spec = replace(plan.spec, socket_path=str(path))
                if plan.inject:
                    spec = await _start_inject(
                        plan, spec, state=daemon.state, audit=audit, closing=closing_async
                    )
                prepared = await asyncio.to_thread(
                    prepare, plan.kind, spec, dict(os.environ), plan.protected
                )
                return await run_prepared(prepared, token)
            finally:
                del token
                for close in reversed(closing_async):
                    await close()
                await daemon.stop(STOP_GRACE_S)
        except SandboxError as exc:
            click.echo(f"Error: {exc}", err=True)
            return exc.exit_code
        except (ConfigError, InjectSetupError, ListenerError, PermissionError) as exc:
            click.echo(f"Error: {exc}", err=True)
            return SETUP_FAILED
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            click.echo(f"Error: {exc.strerror or type(exc).__name__}{where}", err=True)
            return SETUP_FAILED
        finally:
            await credential_store.close()


def _check_inject(settings: Settings, inject: tuple[str, ...], intercept: tuple[str, ...]) -> None:
    """Unknown routes and intercept hosts are one-line errors before anything starts."""
    from credproxy.inject.routes import check_inject_config, parse_routes
    from credproxy.inject.service import InjectSetupError, check_intercept
    from credproxy.settings import ConfigError

    routes = parse_routes(settings.routes)
    check_inject_config(settings.inject)
    unknown = [name for name in inject if name not in routes]
    if unknown:
        raise ConfigError(
            f"--inject {unknown[0]}: no such route; known: {', '.join(sorted(routes))} "
            "(add [routes.NAME] to the config)"
        )
    try:
        check_intercept({n: routes[n] for n in inject}, intercept)
    except InjectSetupError as exc:
        raise ConfigError(str(exc)) from None


async def _start_inject(
    plan: _RunPlan,
    spec: SandboxSpec,
    *,
    state: ServerState,
    audit: AuditLog,
    closing: list[Callable[[], Awaitable[None]]],
) -> SandboxSpec:
    """Start this run's injection proxy and give the command its environment and relay."""
    from credproxy.inject.routes import parse_routes
    from credproxy.inject.secrets import StoreSecrets
    from credproxy.inject.service import InjectSession

    routes = parse_routes(plan.settings.routes)
    session = InjectSession(
        [routes[name] for name in plan.inject],
        StoreSecrets(state.store, state.oauth),
        plan.settings.inject,
        intercept=plan.intercept,
        audit=audit,
    )
    closing.append(session.aclose)
    await session.start(relay=plan.kind == "bwrap" and not plan.spec.share_net)
    return replace(
        spec,
        env=tuple(sorted(session.env().items())),
        binds=(*spec.binds, *session.mounts()),
        wrapper=session.wrapper(),
    )


def _open_audit(path: Path | None, closing: contextlib.ExitStack) -> AuditLog:
    from credproxy.audit import AuditLog

    if path is None:
        return AuditLog(closing.enter_context(_null_stream()))
    audit = AuditLog.to_file(path)
    closing.callback(audit.close)
    return audit


def _null_stream() -> IO[str]:
    """Where audit lines go when --audit-log is not given: the command owns the terminal."""
    return open(os.devnull, "w", encoding="utf-8")


def _protected_paths(
    backend: str | None, settings: Settings, config: Path | None
) -> tuple[str, ...]:
    """Host paths no sandbox may see: the config file (it may hold client
    secrets) and, for the file store, its directory and key file."""
    from credproxy.settings import default_config_path
    from credproxy.store.factory import KEY_FILE_ENV, backend_name, store_directory

    paths = [str(config if config is not None else default_config_path())]
    if backend_name(backend, settings) == "file":
        paths.append(str(store_directory(settings)))
        key_file = os.environ.get(KEY_FILE_ENV) or settings.store.key_file
        if key_file:
            paths.append(os.path.expanduser(key_file))
    return tuple(paths)
