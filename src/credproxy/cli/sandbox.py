"""Sandbox-side commands: ``token get``, ``key get``, ``key list`` and ``status``.

Inside a sandbox (``LLXPRT_CREDENTIAL_SOCKET`` set) they ask the proxy with
the blocking client; on the host, ``key list`` and ``status`` read the store
through the storage commands instead. Every failure is one line on stderr
and an exit code per class of failure (see ``EXIT_CODES_HELP``); a secret is
never part of an error, and nothing heavy is imported before it is needed.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

import click

from credproxy.cli import key, main, token
from credproxy.cli._daemon_options import store_options
from credproxy.cli._group import PASS_THROUGH
from credproxy.cli._names import check_name

if TYPE_CHECKING:
    from credproxy.client import ProxyClient, ProxyClientError

EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_FOUND: Final = 3
EXIT_UNAUTHORIZED: Final = 4
EXIT_CONNECTION: Final = 5
EXIT_NOT_CONFIGURED: Final = 6

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

REFRESH_MARGIN_S: Final = 30.0
"""``token get`` asks the host to refresh a token this close to its expiry."""

NO_TOKEN_HINT: Final = (
    "no capability token was passed: set LLXPRT_CAPABILITY_FD=3 and start the command "
    "with 3<TOKEN_FILE (the .token file `credproxy serve` printed)"
)

FD_HINT: Final = (
    "start the command with 3<TOKEN_FILE (the .token file `credproxy serve` printed), "
    "or unset LLXPRT_CAPABILITY_FD"
)


def _exit_code(exc: ProxyClientError) -> int:
    from credproxy.client import (
        NotFoundError,
        ProviderNotFoundError,
        ProxyConfigError,
        ProxyConnectionError,
        UnauthorizedError,
    )

    if isinstance(exc, NotFoundError | ProviderNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, UnauthorizedError):
        return EXIT_UNAUTHORIZED
    if isinstance(exc, ProxyConnectionError):
        return EXIT_CONNECTION
    if isinstance(exc, ProxyConfigError):
        return EXIT_NOT_CONFIGURED
    return EXIT_FAILURE


def _fail(message: str, exit_code: int) -> NoReturn:
    click.echo(f"credproxy: {message}", err=True)
    sys.exit(exit_code)


@contextmanager
def _reported_errors() -> Iterator[None]:
    """Turn every failure into one line on stderr and a class-specific exit code.

    Client errors carry messages already stripped of control characters and
    never holding a secret; anything unexpected is named by its type only,
    because its text could hold anything.
    """
    from credproxy.client import ProxyClientError, ProxyConfigError, UnauthorizedError
    from credproxy.client.env import CAPABILITY_FD_ENV, CAPABILITY_TOKEN_ENV

    token_passed = CAPABILITY_FD_ENV in os.environ or CAPABILITY_TOKEN_ENV in os.environ
    try:
        yield
    except ProxyClientError as exc:
        message = exc.message
        if isinstance(exc, UnauthorizedError) and not token_passed:
            message += f"; {NO_TOKEN_HINT}"
        elif isinstance(exc, ProxyConfigError) and CAPABILITY_FD_ENV in message:
            message += f"; {FD_HINT}"
        _fail(message, _exit_code(exc))
    except PASS_THROUGH:
        raise
    except Exception as exc:
        _fail(f"unexpected {type(exc).__name__}; nothing was printed", EXIT_FAILURE)


def _sandbox_client() -> ProxyClient:
    from credproxy.client import ProxyClient, in_sandbox

    if not in_sandbox():
        raise _not_in_sandbox()
    return ProxyClient.from_env()


def _not_in_sandbox() -> Exception:
    from credproxy.client._exceptions import config_error

    return config_error(
        "LLXPRT_CREDENTIAL_SOCKET is not set, so there is no proxy to ask. "
        "Run this inside a sandbox started with `credproxy run`; on the host use "
        "`credproxy status` and `credproxy key list` to see what the store holds"
    )


def _print_json(value: object) -> None:
    click.echo(json.dumps(value, sort_keys=True))


@token.command("get", epilog=EXIT_CODES_HELP)
@click.argument("provider", callback=check_name)
@click.option(
    "--bucket", default="default", show_default=True, callback=check_name, help="Token bucket."
)
@click.option("--json", "as_json", is_flag=True, help="Print the token object (no refresh token).")
def token_get(provider: str, bucket: str, as_json: bool) -> None:
    """Print the access token for PROVIDER (inside a sandbox).

    The token alone goes to stdout, so `$(credproxy token get PROVIDER)` works.
    A token that has expired (or expires within 30 s) is refreshed by the host
    first; if that fails, the stored token is printed with a warning on stderr.
    """
    with _reported_errors():
        from credproxy.tokens import sanitize

        with _sandbox_client() as client:
            result = sanitize(_usable_token(client, provider, bucket))
        if as_json:
            _print_json(result)
        else:
            click.echo(result["access_token"])


def _usable_token(client: ProxyClient, provider: str, bucket: str) -> dict[str, Any]:
    """The stored token, refreshed by the host first when it is expired or about to be.

    ``get_token`` hands out what is stored, expired or not; a command whose
    output goes straight into an Authorization header must not print a dead
    token without a word. When the refresh fails, a still-valid token is
    printed as it is, and an expired one with a warning that says why.
    """
    from credproxy.client import ProxyClientError, ProxyConnectionError

    token = client.get_token(provider, bucket)
    expiry = token.get("expiry")
    if isinstance(expiry, bool) or not isinstance(expiry, int | float):
        return token
    now = time.time()
    if not math.isfinite(expiry) or expiry - now > REFRESH_MARGIN_S:
        return token
    try:
        return client.refresh_token(provider, bucket)
    except ProxyConnectionError:
        raise
    except ProxyClientError as exc:
        if expiry <= now:
            click.echo(
                f"credproxy: warning: the token {provider} (bucket {bucket}) "
                f"{describe_expiry(float(expiry), now)} and the host did not refresh it: "
                f"{exc.message}",
                err=True,
            )
        return token


@key.command("get", epilog=EXIT_CODES_HELP)
@click.argument("name", callback=check_name)
@click.option("--json", "as_json", is_flag=True, help='Print {"name": ..., "key": ...}.')
def key_get(name: str, as_json: bool) -> None:
    """Print the API key NAME (inside a sandbox)."""
    with _reported_errors():
        with _sandbox_client() as client:
            value = client.get_api_key(name)
        if as_json:
            _print_json({"name": name, "key": value})
        else:
            click.echo(value)


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
    with _reported_errors():
        with _sandbox_client() as client:
            names = client.list_api_keys()
        if as_json:
            _print_json({"keys": names})
        else:
            for name in names:
                click.echo(name)


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
    with _reported_errors():
        with _sandbox_client() as client:
            report = sandbox_status(client, now=time.time())
        if as_json:
            _print_json(report)
        else:
            for line in format_status(report):
                click.echo(line)


def sandbox_status(client: ProxyClient, *, now: float) -> dict[str, Any]:
    """Names and expiry of everything the grant shows; never a token value."""
    from credproxy.client import ProxyClientError, ProxyConnectionError

    providers: dict[str, dict[str, dict[str, Any]]] = {}
    for provider in client.list_providers():
        buckets: dict[str, dict[str, Any]] = {}
        for bucket in client.list_buckets(provider):
            try:
                found = client.get_token(provider, bucket)
            except ProxyConnectionError:
                raise
            except ProxyClientError as exc:
                buckets[bucket] = {"error": exc.code}
                continue
            buckets[bucket] = _expiry_entry(found.get("expiry"), now)
        providers[provider] = buckets
    return {
        "mode": "sandbox",
        "socket": client.socket_path,
        "protocolVersion": client.protocol_version,
        "providers": providers,
        "keys": client.list_api_keys(),
    }


def _expiry_entry(expiry: object, now: float) -> dict[str, Any]:
    if isinstance(expiry, bool) or not isinstance(expiry, int | float) or not math.isfinite(expiry):
        return {"expiry": None, "status": "expiry unknown"}
    return {
        "expiry": expiry,
        "expiresIn": int(expiry - now),
        "status": describe_expiry(float(expiry), now),
    }


def describe_expiry(expiry: float, now: float) -> str:
    """``expires in 54m`` or ``expired 3m ago``, rounded down to the largest units."""
    remaining = expiry - now
    if remaining >= 0:
        return f"expires in {_duration(remaining)}"
    return f"expired {_duration(-remaining)} ago"


def _duration(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


def format_status(report: dict[str, Any]) -> list[str]:
    lines = [
        f"credproxy sandbox view (socket {report['socket']}, protocol v{report['protocolVersion']})"
    ]
    providers: dict[str, dict[str, dict[str, Any]]] = report["providers"]
    lines.append("providers:" if providers else "providers: none visible")
    for provider, buckets in providers.items():
        lines.append(f"  {provider}")
        for bucket, entry in buckets.items():
            detail = entry.get("status") or f"unavailable ({entry.get('error')})"
            lines.append(f"    {bucket}: {detail}")
    keys: list[str] = report["keys"]
    lines.append("api keys:" if keys else "api keys: none visible")
    lines.extend(f"  {name}" for name in keys)
    return lines


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
