"""Sandbox-side commands: ``token get``, ``key get``, ``key list`` and ``status``.

Inside a sandbox (``LLXPRT_CREDENTIAL_SOCKET`` set) they ask the proxy with
the blocking client; on the host, ``key list`` and ``status`` read the store
through the storage commands instead. The sandbox-side work lives in
``credproxy.client.commands`` (no click), which ``credproxy.console`` also runs
directly for a plain command line; this module adds ``--help``, usage errors
and the host branches. Nothing heavy is imported before it is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import click

from credproxy.cli import key, main, token
from credproxy.cli._daemon_options import store_options
from credproxy.cli._group import PASS_THROUGH
from credproxy.cli._names import check_name
from credproxy.client import commands
from credproxy.client.commands import describe_expiry, format_status, sandbox_status

__all__ = ["describe_expiry", "format_status", "sandbox_status"]

EXIT_CODES_HELP: Final = (
    "\b\nExit codes:\n"
    "  0  success\n"
    "  1  other failure (host-side error, rate limit, re-login needed)\n"
    "  2  usage error\n"
    "  3  no such token, key or provider\n"
    "  4  not allowed: outside this sandbox's grant, or a bad capability token\n"
    "  5  cannot reach the proxy: no daemon, connection lost, or no answer in time\n"
    "  6  not set up: no LLXPRT_CREDENTIAL_SOCKET, or a bad capability token variable"
)


@token.command("get", epilog=EXIT_CODES_HELP)
@click.argument("provider", callback=check_name)
@click.option(
    "--bucket", default="default", show_default=True, callback=check_name, help="Token bucket."
)
@click.option("--json", "as_json", is_flag=True, help="Print the token object (no refresh token).")
@store_options
def token_get(
    provider: str, bucket: str, as_json: bool, backend: str | None, config_path: Path | None
) -> None:
    """Print the access token for PROVIDER.

    The token alone goes to stdout, so `$(credproxy token get PROVIDER)` works.
    A token that has expired (or expires within 30 s) is refreshed first: inside
    a sandbox by the host, on the host by this command (through the store's
    refresh lock, so it never races a daemon into a second refresh). An expired
    token that could not be refreshed is not printed: exit 1 with the reason.
    """
    if _on_host(backend, config_path):
        from credproxy.cli.store_commands import host_token_get

        host_token_get(
            provider=provider,
            bucket=bucket,
            as_json=as_json,
            backend=backend,
            config_path=config_path,
        )
        return
    with commands.reported_errors(*PASS_THROUGH):
        commands.token_get(provider, bucket, as_json)


@key.command("get", epilog=EXIT_CODES_HELP)
@click.argument("name", callback=check_name)
@click.option("--json", "as_json", is_flag=True, help='Print {"name": ..., "key": ...}.')
def key_get(name: str, as_json: bool) -> None:
    """Print the API key NAME (inside a sandbox)."""
    with commands.reported_errors(*PASS_THROUGH):
        commands.key_get(name, as_json)


@key.command("list", epilog=EXIT_CODES_HELP)
@click.option("--json", "as_json", is_flag=True, help='Print {"keys": [...]}.')
@store_options
def key_list(as_json: bool, backend: str | None, config_path: Path | None) -> None:
    """List API key names (values are never shown).

    Inside a sandbox: the names its grant may read. On the host: the store's
    names (--store and --config pick the store; they apply on the host only).
    """
    if _on_host(backend, config_path):
        from credproxy.cli.store_commands import host_key_list

        host_key_list(as_json=as_json, backend=backend, config_path=config_path)
        return
    with commands.reported_errors(*PASS_THROUGH):
        commands.key_list(as_json)


@main.command("status", epilog=EXIT_CODES_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@store_options
def status(as_json: bool, backend: str | None, config_path: Path | None) -> None:
    """Show what is reachable: providers, buckets, token expiry and key names.

    Inside a sandbox this is what its grant lets it see; on the host it is the
    whole store (--store and --config pick it; they apply on the host only).
    No token or key value is ever shown.
    """
    if _on_host(backend, config_path):
        from credproxy.cli.store_commands import host_status

        host_status(as_json=as_json, backend=backend, config_path=config_path)
        return
    with commands.reported_errors(*PASS_THROUGH):
        commands.status(as_json)


def _on_host(backend: str | None, config_path: Path | None) -> bool:
    """True without a proxy socket; host-only options inside a sandbox are a usage error."""
    from credproxy.client import in_sandbox

    if not in_sandbox():
        return True
    if backend is not None or config_path is not None:
        raise click.UsageError(
            "--store and --config work on the host store; inside a sandbox "
            "(LLXPRT_CREDENTIAL_SOCKET is set) the proxy decides what is visible"
        )
    return False
