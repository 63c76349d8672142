"""Host-side store commands: ``key set/rm``, ``token import/rm``, ``import llxprt``.

They work on the store directly (no daemon needed; a running daemon sees the
change on its next read of the file store). Secrets are never taken from argv
and never printed: a key comes from stdin or a hidden prompt, and reports name
credentials, never values. ``host_status`` and ``host_key_list`` serve
``credproxy status`` and ``credproxy key list`` on the host. Every failure is
one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

import click

from credproxy.cli import key, main, token
from credproxy.cli._daemon_options import config_option, store_options
from credproxy.cli._group import PASS_THROUGH

if TYPE_CHECKING:
    from credproxy.settings import Settings
    from credproxy.store.base import CredentialStore
    from credproxy.store.writepath import WritePath

EXIT_FAILURE: Final = 1
EXIT_NOT_FOUND: Final = 3
MAX_KEY_BYTES: Final = 16 * 1024
DEFAULT_BUCKET: Final = "default"

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, exit_code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"credproxy: {message}", err=True)
    sys.exit(exit_code)


@contextmanager
def _reported_errors() -> Iterator[None]:
    """Store and config errors carry safe, actionable messages; others are named by type."""
    from credproxy.settings import ConfigError
    from credproxy.store.base import StoreError

    try:
        yield
    except (StoreError, ConfigError, ValueError) as exc:
        _fail(str(exc))
    except PASS_THROUGH:
        raise
    except Exception as exc:
        _fail(f"unexpected {type(exc).__name__}; nothing was printed")


def open_host_store(backend: str | None, config_path: Path | None) -> CredentialStore:
    from credproxy.hardening import harden_process
    from credproxy.settings import load_settings
    from credproxy.store.factory import open_store

    harden_process()
    return open_store(backend, load_settings(config_path))


def _run(
    backend: str | None,
    config_path: Path | None,
    action: Callable[[CredentialStore], Coroutine[Any, Any, T]],
) -> T:
    return _run_on(open_host_store(backend, config_path), action)


def _run_on(
    store: CredentialStore, action: Callable[[CredentialStore], Coroutine[Any, Any, T]]
) -> T:
    """Run ``action`` on an opened store and close it, whatever happens."""

    async def body() -> T:
        try:
            return await action(store)
        finally:
            await store.close()

    import asyncio

    return asyncio.run(body())


async def _nothing(store: CredentialStore) -> None:
    """For ``_run_on`` when the store only needs closing."""


def _writes(store: CredentialStore) -> WritePath:
    """The store's one write path: the same per-credential locks a daemon takes."""
    from credproxy.store.writepath import write_path

    return write_path(store)


def _print_json(value: object) -> None:
    click.echo(json.dumps(value, sort_keys=True))


def _check_name(kind: str, value: str, hint: str) -> str:
    from credproxy.store.base import validate_name

    try:
        return validate_name(kind, value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None


# --- keys --------------------------------------------------------------------------------


def _read_key_value(name: str) -> str:
    stdin = sys.stdin
    if stdin.isatty():
        value = click.prompt(f"API key {name}", hide_input=True, prompt_suffix=": ", err=True)
    else:
        value = stdin.read(MAX_KEY_BYTES + 1)
        if len(value) > MAX_KEY_BYTES:
            _fail(f"the key on stdin is longer than {MAX_KEY_BYTES} characters")
    value = value.strip()
    if not value:
        _fail("no key given: pipe it on stdin or type it at the prompt")
    if any(char.isspace() for char in value):
        _fail("the key must be a single line without spaces")
    return str(value)


@key.command("set")
@click.argument("name")
@store_options
def key_set(name: str, backend: str | None, config_path: Path | None) -> None:
    """Store the API key NAME; the value is read from stdin or a hidden prompt, never argv.

    The store is opened first, so a broken config or store is reported before
    you type the key.
    """
    _check_name("key", name, "NAME")
    with _reported_errors():
        opened = open_host_store(backend, config_path)
        try:
            value = _read_key_value(name)
        except BaseException:
            _run_on(opened, _nothing)
            raise
        _run_on(opened, lambda store: _writes(store).set_key(name, value))
    click.echo(f"saved API key {name}", err=True)


@key.command("rm")
@click.argument("name")
@store_options
def key_rm(name: str, backend: str | None, config_path: Path | None) -> None:
    """Remove the API key NAME from the store."""
    _check_name("key", name, "NAME")
    with _reported_errors():
        removed = _run(backend, config_path, lambda store: _writes(store).remove_key(name))
    if not removed:
        _fail(f"no API key {name} in the store", EXIT_NOT_FOUND)
    click.echo(f"removed API key {name}", err=True)


# --- tokens ------------------------------------------------------------------------------


@token.command("import")
@click.argument("provider")
@click.option("--bucket", default=DEFAULT_BUCKET, show_default=True, help="Token bucket.")
@click.option(
    "--file",
    "source",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Token JSON ('-' for stdin). LLxprt's token files are accepted as they are.",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was imported as JSON.")
@store_options
def token_import(
    *,
    provider: str,
    bucket: str,
    source: Path,
    as_json: bool,
    backend: str | None,
    config_path: Path | None,
) -> None:
    """Store a token (with its refresh token) for PROVIDER from a JSON file.

    The imported token replaces the bucket's stored token as a whole (it may
    belong to another account, so nothing of the old one is kept). Accepted:
    expiry in Unix seconds or milliseconds, expires_at (seconds, milliseconds
    or ISO 8601), expiry_date (milliseconds), expires_in (from the file's
    modification time); token_type defaults to Bearer.
    """
    _check_name("provider", provider, "PROVIDER")
    _check_name("bucket", bucket, "--bucket")
    from credproxy.migrate import MigrationError, load_token_file, normalize_token

    with _reported_errors():
        try:
            if str(source) == "-":
                raw = sys.stdin.buffer.read(64 * 1024 + 1)
                try:
                    parsed = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    raise MigrationError("stdin is not valid JSON") from None
                value = normalize_token(parsed)
            else:
                value = load_token_file(source)
        except MigrationError as exc:
            _fail(f"cannot import {source}: {exc}")
        _run(
            backend,
            config_path,
            lambda store: _writes(store).replace_token(provider, bucket, value),
        )
    report = {
        "provider": provider,
        "bucket": bucket,
        "expiry": value["expiry"],
        "refreshToken": bool(value.get("refresh_token")),
    }
    if as_json:
        _print_json(report)
    else:
        refresh = "with" if report["refreshToken"] else "without"
        click.echo(f"imported token {provider} (bucket {bucket}), {refresh} a refresh token")
    _warn_if_expired(provider, value["expiry"], report["refreshToken"])


def _warn_if_expired(provider: str, expiry: object, refreshable: bool) -> None:
    """An expired token is stored as given (its refresh token may still work), but not
    without a word: a file from the wrong place or years ago is a common mistake."""
    from credproxy.cli.sandbox import describe_expiry
    from credproxy.tokens import expiry_seconds

    now = time.time()
    seconds = expiry_seconds(expiry)
    if seconds is None or seconds > now:
        return
    if refreshable:
        then = f"the host refreshes it on first use if [providers.{provider}] is configured"
    else:
        then = "with no refresh token it cannot be used: log in again or import a fresh one"
    click.echo(
        f"credproxy: warning: the imported token {describe_expiry(seconds, now)}; {then}",
        err=True,
    )


@token.command("rm")
@click.argument("provider")
@click.option("--bucket", default=DEFAULT_BUCKET, show_default=True, help="Token bucket.")
@store_options
def token_rm(provider: str, bucket: str, backend: str | None, config_path: Path | None) -> None:
    """Remove the token of PROVIDER (one bucket) from the store."""
    _check_name("provider", provider, "PROVIDER")
    _check_name("bucket", bucket, "--bucket")
    with _reported_errors():
        removed = _run(
            backend, config_path, lambda store: _writes(store).remove_token(provider, bucket)
        )
    if not removed:
        _fail(f"no token {provider} (bucket {bucket}) in the store", EXIT_NOT_FOUND)
    click.echo(f"removed token {provider} (bucket {bucket})", err=True)


def host_token_get(
    *,
    provider: str,
    bucket: str,
    as_json: bool,
    backend: str | None,
    config_path: Path | None,
) -> None:
    """``credproxy token get`` on the host: read the store, refresh a due token here."""
    from credproxy.hardening import harden_process
    from credproxy.settings import load_settings
    from credproxy.store.factory import open_store

    with _reported_errors():
        settings = load_settings(config_path)
        harden_process()
        token = _run_on(
            open_store(backend, settings),
            lambda store: usable_host_token(store, settings, provider, bucket),
        )
    if as_json:
        _print_json(token)
    else:
        click.echo(token["access_token"])


async def usable_host_token(
    store: CredentialStore, settings: Settings, provider: str, bucket: str
) -> dict[str, Any]:
    """The sanitized stored token, refreshed first when due (as a daemon would, under
    the same cross-process refresh lock); exits 1 when it expired and could not be."""
    from credproxy.client.commands import due_expiry, unrefreshed_message
    from credproxy.oauth.config import ProviderRegistry
    from credproxy.oauth.http import OAuthHttp
    from credproxy.protocol.errors import ProxyError
    from credproxy.refresh import RefreshCoordinator
    from credproxy.store.writepath import write_path
    from credproxy.tokens import sanitize

    token = await store.get_token(provider, bucket)
    if token is None:
        _fail(
            f"no token {provider} (bucket {bucket}) in the store; run `credproxy login "
            f"{provider}` or `credproxy token import {provider}`",
            EXIT_NOT_FOUND,
        )
    now = time.time()
    expiry = due_expiry(token, now)
    if expiry is None:
        return sanitize(token)
    registry = ProviderRegistry.from_settings(settings)
    http = OAuthHttp()
    try:
        registry.require(provider)
        refreshed = await RefreshCoordinator(registry, http, write_path(store)).refresh(
            provider, bucket
        )
        return sanitize(refreshed)
    except ProxyError as exc:
        if expiry <= now:
            _fail(unrefreshed_message(provider, bucket, expiry, now, exc.message))
        return sanitize(token)
    finally:
        await http.close()


# --- import llxprt ------------------------------------------------------------------------


@main.group("import")
def import_group() -> None:
    """Bring credentials over from other tools into the host store."""


@import_group.command("llxprt")
@click.option(
    "--from",
    "source",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="LLxprt's directory (default: ~/.llxprt).",
)
@click.option(
    "--provider",
    "providers",
    multiple=True,
    help="A provider name containing '-', so '<provider>-<bucket>.json' splits right.",
)
@click.option("--dry-run", is_flag=True, help="Report what would be imported; change nothing.")
@click.option(
    "--delete-originals", is_flag=True, help="Delete each plaintext file once it is in the store."
)
@click.option("--overwrite", is_flag=True, help="Replace credentials the store already holds.")
@click.option(
    "--from-keyring",
    is_flag=True,
    help="Also read newer LLxprt's keyring items (llxprt-code-oauth, llxprt-code-provider-keys).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@store_options
def import_llxprt_command(
    *,
    source: Path | None,
    providers: tuple[str, ...],
    dry_run: bool,
    delete_originals: bool,
    overwrite: bool,
    from_keyring: bool,
    as_json: bool,
    backend: str | None,
    config_path: Path | None,
) -> None:
    """Import ~/.llxprt/oauth/*.json tokens and ~/.llxprt/keys/* API keys.

    Token files are <provider>.json (default bucket) or <provider>-<bucket>.json.
    Because both names may contain '-', the split follows the longest known
    provider name (LLxprt's, the config's, and --provider); other names with a
    '-' are skipped and reported. Key files: '.xai_key' becomes the key 'xai'.
    Exits 1 when any source was skipped (the report says why).
    """
    for name in providers:
        _check_name("provider", name, "--provider")
    from credproxy.migrate import import_llxprt

    with _reported_errors():
        from credproxy.oauth.presets import PRESETS
        from credproxy.settings import load_settings

        settings = load_settings(config_path)
        known = set(providers) | set(settings.providers) | set(PRESETS)

        async def action(store: CredentialStore) -> list[Any]:
            return await import_llxprt(
                store,
                source,
                known_providers=known,
                dry_run=dry_run,
                delete_originals=delete_originals and not dry_run,
                overwrite=overwrite,
                from_keyring=from_keyring,
            )

        items = _run(backend, config_path, action)
    if as_json:
        _print_json({"dryRun": dry_run, "items": [item.as_dict() for item in items]})
    else:
        if not items:
            from credproxy.migrate import default_llxprt_dir

            where = source if source is not None else default_llxprt_dir()
            click.echo(
                f"nothing to import: no token files in {where / 'oauth'} and no key files "
                f"in {where / 'keys'} (--from names another directory)"
            )
        for item in items:
            label = f"{item.kind} {item.name or '?'}"
            line = f"{item.status:<15} {label:<40} {item.source}"
            if item.detail:
                line += f"  ({item.detail})"
            if item.removed_original:
                line += "  [original deleted]"
            click.echo(line)
    if any(item.status == "skipped" for item in items):
        sys.exit(EXIT_FAILURE)


# --- host-side views for `credproxy status` and `credproxy key list` ---------------------------


async def collect_host_status(
    store: CredentialStore, *, now: float | None = None
) -> dict[str, Any]:
    """Providers, buckets, expiry countdowns and key names; never a token or key value."""
    from credproxy.store.base import CorruptRecordError

    moment = time.time() if now is None else now
    providers: dict[str, dict[str, dict[str, Any]]] = {}
    for provider in await store.list_providers():
        buckets: dict[str, dict[str, Any]] = {}
        for bucket in await store.list_buckets(provider):
            try:
                found = await store.get_token(provider, bucket)
            except CorruptRecordError:
                buckets[bucket] = {"error": "damaged record", "status": "damaged record"}
                continue
            if found is None:
                continue
            entry = _expiry_entry(found.get("expiry"), moment)
            entry["refreshToken"] = bool(found.get("refresh_token"))
            entry.update(_renewal_entry(found, entry.get("expiry"), moment))
            buckets[bucket] = entry
        if buckets:
            providers[provider] = buckets
    return {"mode": "host", "providers": providers, "keys": await store.list_keys()}


async def collect_key_names(store: CredentialStore) -> list[str]:
    return await store.list_keys()


def _expiry_entry(expiry: object, now: float) -> dict[str, Any]:
    from credproxy.client.commands import expiry_entry

    return expiry_entry(expiry, now)


def _renewal_entry(token: dict[str, Any], expiry: object, now: float) -> dict[str, Any]:
    """When the token is renewed and how its last refresh went (host metadata).

    ``renewsAt`` is when a running daemon's scheduler renews it (``expiry`` minus
    the renewal lead; its jitter may make that up to 30 s earlier); without a
    running daemon the next use after that renews it.
    """
    from credproxy.client.commands import _duration
    from credproxy.renewal import renewal_lead
    from credproxy.store.writepath import host_metadata

    entry: dict[str, Any] = {"renewsAt": None, "lastRefresh": None}
    if not token.get("refresh_token"):
        entry["renewal"] = "not renewable: no refresh token (log in again when it expires)"
    elif isinstance(expiry, int | float) and not isinstance(expiry, bool):
        renews_at = float(expiry) - renewal_lead(float(expiry) - now)
        entry["renewsAt"] = renews_at
        entry["renewal"] = (
            "renewal due now (by a running daemon, or on next use)"
            if renews_at <= now
            else f"renewed in {_duration(renews_at - now)} (by a running daemon, or on next use)"
        )
    else:
        entry["renewal"] = "renewed on use (expiry unknown)"
    last = host_metadata(token).get("last_refresh")
    if isinstance(last, dict) and last.get("outcome") in ("ok", "failed"):
        at = last.get("at")
        report: dict[str, Any] = {"outcome": last["outcome"], "at": at}
        for name in ("code", "message"):
            if isinstance(last.get(name), str):
                report[name] = last[name]
        entry["lastRefresh"] = report
    return entry


def _last_refresh_line(report: dict[str, Any] | None, now: float) -> str:
    from credproxy.client.commands import _duration

    if report is None:
        return "last refresh: none recorded"
    at = report.get("at")
    when = (
        f" {_duration(max(0.0, now - float(at)))} ago"
        if isinstance(at, int | float) and not isinstance(at, bool)
        else ""
    )
    if report["outcome"] == "ok":
        return f"last refresh: ok{when}"
    return f"last refresh: failed{when} ({report.get('code')}: {report.get('message')})"


def store_description(store: CredentialStore) -> str:
    from credproxy.store.file import FileStore
    from credproxy.store.keyring import KeyringStore
    from credproxy.store.redis import RedisStore

    if isinstance(store, RedisStore):
        tls = ", TLS" if store.settings.url.startswith("rediss:") else ""
        return (
            f"redis store {store.settings.location} prefix {store.settings.prefix} "
            f"(user {store.settings.username or 'default'}{tls}; data key from "
            f"{store.key_source or 'unknown'})"
        )
    if isinstance(store, FileStore):
        return f"file store {store.directory} (data key from {store.key_source})"
    if isinstance(store, KeyringStore):
        return "keyring store (Secret Service)"
    return "memory store (empty in a new process)"


def host_status(
    *, as_json: bool = False, backend: str | None = None, config_path: Path | None = None
) -> dict[str, Any]:
    """``credproxy status`` on the host: print names and expiry (never values); return them."""
    with _reported_errors():

        async def action(store: CredentialStore) -> dict[str, Any]:
            health = await _backend_health(store)
            if health.get("reachable") is False:
                report: dict[str, Any] = {"mode": "host", "providers": {}, "keys": []}
            else:
                report = await collect_host_status(store)
            report["store"] = store_description(store)
            report["backend"] = health
            return report

        report = _run(backend, config_path, action)
    health = report["backend"]
    if as_json:
        _print_json(report)
        if health.get("reachable") is False:
            sys.exit(EXIT_FAILURE)
        return report
    click.echo(f"credproxy host view ({report['store']})")
    if "reachable" in health:
        if health["reachable"]:
            subscribed = "change notices on" if health.get("subscribed") else "change notices off"
            click.echo(
                f"backend: reachable, round trip {health['roundTripMs']} ms, "
                f"{health.get('records', 0)} records, {subscribed}"
            )
        else:
            _fail(f"backend: {health.get('error', 'unreachable')}")
    providers: dict[str, dict[str, dict[str, Any]]] = report["providers"]
    click.echo("providers:" if providers else "providers: none stored")
    for provider, buckets in providers.items():
        click.echo(f"  {provider}")
        for bucket, entry in buckets.items():
            refresh = ", refresh token held" if entry.get("refreshToken") else ""
            click.echo(f"    {bucket}: {entry['status']}{refresh}")
            if "renewal" in entry:
                click.echo(f"      {entry['renewal']}")
                click.echo(f"      {_last_refresh_line(entry.get('lastRefresh'), time.time())}")
    keys: list[str] = report["keys"]
    click.echo("api keys:" if keys else "api keys: none stored")
    for name in keys:
        click.echo(f"  {name}")
    return report


async def _backend_health(store: CredentialStore) -> dict[str, Any]:
    """The backend's own report (Redis: reachability, round trip), else just its name."""
    probe = getattr(store, "health", None)
    if probe is not None:
        health: dict[str, Any] = await probe()
        return health
    from credproxy.store.file import FileStore
    from credproxy.store.keyring import KeyringStore

    if isinstance(store, FileStore):
        return {"backend": "file"}
    if isinstance(store, KeyringStore):
        return {"backend": "keyring"}
    return {"backend": "memory"}


def host_key_list(
    *, as_json: bool = False, backend: str | None = None, config_path: Path | None = None
) -> list[str]:
    """``credproxy key list`` on the host: print the store's key names and return them."""
    with _reported_errors():
        names = _run(backend, config_path, collect_key_names)
    if as_json:
        _print_json({"keys": names})
    else:
        for name in names:
            click.echo(name)
    return names


# --- store copy / redis-password -----------------------------------------------------------


@main.group("store")
def store_group() -> None:
    """The host store itself: move credentials between backends, Redis access."""


@store_group.command("copy")
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Choice(["file", "keyring", "redis"]),
    help="Backend to copy from.",
)
@click.option(
    "--to",
    "target",
    required=True,
    type=click.Choice(["file", "keyring", "redis"]),
    help="Backend to copy into.",
)
@click.option("--overwrite", is_flag=True, help="Replace credentials the target already holds.")
@click.option("--dry-run", is_flag=True, help="Report what would be copied; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@config_option
def store_copy(
    *,
    source: str,
    target: str,
    overwrite: bool,
    dry_run: bool,
    as_json: bool,
    config: Path | None,
) -> None:
    """Copy every token (refresh token included) and API key from one backend to another.

    Both backends are read from the same [store] table: `--from file --to redis`
    moves one machine's credentials into the fleet's Redis store (`[store] url`
    and friends), `--from redis --to file` takes a copy back out. Each record is
    decrypted with the source's data key and sealed again with the target's; no
    value is printed. Credentials the target already holds are skipped unless
    --overwrite. Exits 1 when anything was skipped (the report says why).
    """
    if source == target:
        raise click.BadParameter("--from and --to name the same backend", param_hint="--to")
    from credproxy.hardening import harden_process
    from credproxy.settings import load_settings
    from credproxy.store.factory import open_store

    with _reported_errors():
        settings = load_settings(config)
        harden_process()
        origin = open_store(source, settings)
        try:
            destination = open_store(target, settings)
        except BaseException:
            _run_on(origin, _nothing)
            raise

        async def action(store: CredentialStore) -> list[dict[str, str]]:
            try:
                return await copy_store(origin, store, overwrite=overwrite, dry_run=dry_run)
            finally:
                await origin.close()

        items = _run_on(destination, action)
    if as_json:
        _print_json({"from": source, "to": target, "dryRun": dry_run, "items": items})
    else:
        if not items:
            click.echo(f"nothing to copy: the {source} store is empty")
        for item in items:
            line = f"{item['status']:<12} {item['kind']} {item['name']}"
            if item.get("detail"):
                line += f"  ({item['detail']})"
            click.echo(line)
    if any(item["status"] == "skipped" for item in items):
        sys.exit(EXIT_FAILURE)


async def copy_store(
    origin: CredentialStore, target: CredentialStore, *, overwrite: bool, dry_run: bool
) -> list[dict[str, str]]:
    """Tokens then keys, each written through the target's write path (its record locks,
    Redis leases on Redis); one report item per credential, never a value."""
    from functools import partial
    from operator import methodcaller

    items: list[dict[str, str]] = []

    async def copy(
        kind: str,
        name: str,
        read: Callable[[CredentialStore], Awaitable[Any]],
        write: Callable[[Any], Awaitable[Any]],
    ) -> None:
        from credproxy.store.base import CorruptRecordError

        item = {"kind": kind, "name": name}
        items.append(item)
        try:
            value = await read(origin)
        except CorruptRecordError as exc:
            item.update(status="skipped", detail=str(exc))
            return
        if value is None:
            item.update(status="skipped", detail="removed while copying")
        elif not overwrite and await read(target) is not None:
            item.update(status="skipped", detail="the target has it; --overwrite replaces")
        else:
            if not dry_run:
                await write(value)
            item["status"] = "would copy" if dry_run else "copied"

    writes = _writes(target)
    for provider in await origin.list_providers():
        for bucket in await origin.list_buckets(provider):
            await copy(
                "token",
                f"{provider}/{bucket}",
                methodcaller("get_token", provider, bucket),
                partial(writes.replace_token, provider, bucket),
            )
    for name in await origin.list_keys():
        await copy("key", name, methodcaller("get_key", name), partial(writes.set_key, name))
    return items


@store_group.command("redis-password")
@config_option
def store_redis_password(config: Path | None) -> None:
    """Keep the Redis ACL user's password in the OS keyring (for password_keyring = true).

    The password is read from stdin or a hidden prompt, never argv; the entry is
    named after [store] username and url.
    """
    from credproxy.settings import load_settings
    from credproxy.store.redis import RedisSettings
    from credproxy.store.secretservice import SecretService

    with _reported_errors():
        settings = RedisSettings.from_store_settings(load_settings(config).store)
        value = _read_key_value(f"Redis password for {settings.keyring_entry}")
        SecretService().set(settings.keyring_entry, value)
    click.echo(f"saved the Redis password in the keyring as {settings.keyring_entry}", err=True)
