"""The work of the sandbox-side commands, without click: token get, key get, key list, status.

``credproxy.cli.sandbox`` wraps these in click commands (``--help``, usage
errors, the host-side branches); ``credproxy.console`` runs them directly
when a sandbox-side command line is plain, so such a command starts without
importing click at all. Every failure is one line on stderr and an exit code
per class of failure; a secret is never part of an error.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, NoReturn

if TYPE_CHECKING:
    from credproxy.client import ProxyClient, ProxyClientError

EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_FOUND: Final = 3
EXIT_UNAUTHORIZED: Final = 4
EXIT_CONNECTION: Final = 5
EXIT_NOT_CONFIGURED: Final = 6

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


def fail(message: str, exit_code: int) -> NoReturn:
    sys.stderr.write(f"credproxy: {message}\n")
    sys.stderr.flush()
    sys.exit(exit_code)


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _print_json(value: object) -> None:
    _print(json.dumps(value, sort_keys=True))


@contextmanager
def reported_errors(*pass_through: type[BaseException]) -> Iterator[None]:
    """Turn every failure into one line on stderr and a class-specific exit code.

    Client errors carry messages already stripped of control characters and
    never holding a secret; anything unexpected is named by its type only,
    because its text could hold anything. Interrupts, end of input and a
    closed stdout (and ``pass_through``) go on to the caller, which ends them
    the way every command does.
    """
    from credproxy.client import ProxyClientError, ProxyConfigError, UnauthorizedError
    from credproxy.client.env import CAPABILITY_FD_ENV, CAPABILITY_TOKEN_ENV

    token_passed = CAPABILITY_FD_ENV in os.environ or CAPABILITY_TOKEN_ENV in os.environ
    untouched: tuple[type[BaseException], ...] = (
        SystemExit,
        KeyboardInterrupt,
        EOFError,
        BrokenPipeError,
        *pass_through,
    )
    try:
        yield
    except ProxyClientError as exc:
        message = exc.message
        if isinstance(exc, UnauthorizedError) and not token_passed:
            message += f"; {NO_TOKEN_HINT}"
        elif isinstance(exc, ProxyConfigError) and CAPABILITY_FD_ENV in message:
            message += f"; {FD_HINT}"
        fail(message, _exit_code(exc))
    except untouched:
        raise
    except Exception as exc:
        fail(f"unexpected {type(exc).__name__}; nothing was printed", EXIT_FAILURE)


def sandbox_client() -> ProxyClient:
    from credproxy.client import ProxyClient, in_sandbox

    if not in_sandbox():
        from credproxy.client._exceptions import config_error

        raise config_error(
            "LLXPRT_CREDENTIAL_SOCKET is not set, so there is no proxy to ask. "
            "Run this inside a sandbox started with `credproxy run`; on the host use "
            "`credproxy status` and `credproxy key list` to see what the store holds"
        )
    return ProxyClient.from_env()


def token_get(provider: str, bucket: str, as_json: bool) -> None:
    from credproxy.tokens import sanitize

    with sandbox_client() as client:
        result = sanitize(usable_token(client, provider, bucket))
    if as_json:
        _print_json(result)
    else:
        _print(result["access_token"])


def usable_token(client: ProxyClient, provider: str, bucket: str) -> dict[str, Any]:
    """The stored token, refreshed by the host first when it is expired or about to be.

    ``get_token`` hands out what is stored, expired or not; a command whose
    output goes straight into an Authorization header must not print a dead
    token. When the refresh fails, a still-valid token is printed as it is; an
    expired one is not printed at all: exit 1 with the reason.
    """
    from credproxy.client import ProxyClientError, ProxyConnectionError

    token = client.get_token(provider, bucket)
    now = time.time()
    expiry = due_expiry(token, now)
    if expiry is None:
        return token
    try:
        return client.refresh_token(provider, bucket)
    except ProxyConnectionError:
        raise
    except ProxyClientError as exc:
        if expiry <= now:
            fail(unrefreshed_message(provider, bucket, expiry, now, exc.message), EXIT_FAILURE)
        return token


def due_expiry(token: dict[str, Any], now: float) -> float | None:
    """The token's expiry when it is within ``REFRESH_MARGIN_S`` (or past), else None."""
    from credproxy.tokens import expiry_seconds

    expiry = expiry_seconds(token.get("expiry"))
    if expiry is None or expiry - now > REFRESH_MARGIN_S:
        return None
    return expiry


def unrefreshed_message(provider: str, bucket: str, expiry: float, now: float, why: str) -> str:
    return (
        f"the token {provider} (bucket {bucket}) {describe_expiry(expiry, now)} "
        f"and could not be refreshed: {why}"
    )


def key_get(name: str, as_json: bool) -> None:
    with sandbox_client() as client:
        value = client.get_api_key(name)
    if as_json:
        _print_json({"name": name, "key": value})
    else:
        _print(value)


def key_list(as_json: bool) -> None:
    with sandbox_client() as client:
        names = client.list_api_keys()
    if as_json:
        _print_json({"keys": names})
    else:
        for name in names:
            _print(name)


def status(as_json: bool) -> None:
    with sandbox_client() as client:
        report = sandbox_status(client, now=time.time())
    if as_json:
        _print_json(report)
    else:
        for line in format_status(report):
            _print(line)


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
            buckets[bucket] = expiry_entry(found.get("expiry"), now)
        providers[provider] = buckets
    return {
        "mode": "sandbox",
        "socket": client.socket_path,
        "protocolVersion": client.protocol_version,
        "providers": providers,
        "keys": client.list_api_keys(),
    }


def expiry_entry(expiry: object, now: float) -> dict[str, Any]:
    """``{"expiry", "expiresIn", "status"}`` as status shows it, on either side."""
    from credproxy.tokens import expiry_seconds

    seconds = expiry_seconds(expiry)
    if seconds is None:
        return {"expiry": None, "status": "expiry unknown"}
    return {
        "expiry": expiry,
        "expiresIn": int(seconds - now),
        "status": describe_expiry(seconds, now),
    }


def describe_expiry(expiry: float, now: float) -> str:
    """``expires in 54m`` or ``expired 3m ago``, rounded down to the largest units."""
    from credproxy.tokens import NO_EXPIRY

    if expiry >= NO_EXPIRY:
        return "does not expire"
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
