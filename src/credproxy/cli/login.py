"""``credproxy login`` and ``credproxy logout``.

Inside a sandbox (``LLXPRT_CREDENTIAL_SOCKET`` set) the host daemon runs the
login and this command only shows and relays (``credproxy.client.login``). On
the host without a socket the same flow runs in this process and the token
goes straight into the host store. What the user must see goes to stderr;
stdout carries only the result (``--json`` for scripts). When stdin is not a
terminal, the pasted code is read from it, one line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click

from credproxy.cli import main
from credproxy.cli._daemon_options import CONFIG_HELP, STORE_HELP, store_choice
from credproxy.cli._group import EXIT_INTERRUPTED
from credproxy.cli._names import check_name

if TYPE_CHECKING:
    import asyncio

    from credproxy.client.login import LoginResult, Prompter
    from credproxy.oauth.config import ProviderConfig, ProviderRegistry
    from credproxy.oauth.flows import DeviceCodeFlow, LoopbackFlow
    from credproxy.settings import Settings
    from credproxy.store.base import CredentialStore

_SUMMARY_FIELDS: Final = ("token_type", "expiry", "scope")

F = TypeVar("F", bound=Callable[..., Any])


def _name_options(function: F) -> F:
    """PROVIDER and ``--bucket``, which both commands take."""
    function = click.option(
        "--bucket", default="default", show_default=True, callback=check_name, help="Token bucket."
    )(function)
    return click.argument("provider", callback=check_name)(function)


def _host_options(function: F) -> F:
    """``--config`` and ``--store``, which only the host branch reads."""
    function = click.option(
        "--store", "store", type=store_choice(), help=f"Host only. {STORE_HELP}"
    )(function)
    return click.option(
        "--config",
        "config",
        type=click.Path(dir_okay=False, path_type=Path),
        help=f"Host only, with the [providers.NAME] tables. {CONFIG_HELP}",
    )(function)


class _LoginCancelled(click.ClickException):
    """Ctrl-C ends a login as it ends every prompt: exit 130."""

    exit_code = EXIT_INTERRUPTED


def _fail(message: str, code: str, as_json: bool) -> click.ClickException:
    if as_json:
        click.echo(json.dumps({"ok": False, "code": code, "error": message}))
    return click.ClickException(message)


def _report(provider: str, bucket: str, result: LoginResult, as_json: bool) -> None:
    summary: dict[str, Any] = {
        "ok": True,
        "provider": provider,
        "bucket": bucket,
        "flow_type": result.flow_type,
    }
    summary.update({k: result.token[k] for k in _SUMMARY_FIELDS if k in result.token})
    if as_json:
        click.echo(json.dumps(summary))
        return
    expiry = result.token.get("expiry")
    until = ""
    from credproxy.tokens import NO_EXPIRY

    if isinstance(expiry, int | float) and not isinstance(expiry, bool):
        when = datetime.fromtimestamp(min(expiry, NO_EXPIRY), UTC)
        until = f"; the access token is valid until {when:%Y-%m-%d %H:%M:%S} UTC"
        if expiry >= NO_EXPIRY:
            until = "; the access token does not expire"
    click.echo(f"Logged in to {provider} (bucket {bucket}){until}.")


@main.command()
@_name_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the result.")
@_host_options
def login(
    provider: str, bucket: str, as_json: bool, config: Path | None, store: str | None
) -> None:
    """Log in to PROVIDER and keep the token on the host.

    In a sandbox the host daemon runs the login: open the URL shown, then
    paste the code (or wait; the device and browser flows finish by
    themselves). Ctrl-C cancels the login on the host.
    """
    from credproxy.client.env import in_sandbox
    from credproxy.client.login import LoginError, Prompter

    prompter = Prompter()
    try:
        if in_sandbox():
            if config is not None or store is not None:
                raise click.UsageError("--config and --store apply on the host only")
            result = _login_via_proxy(provider, bucket, prompter)
        else:
            result = _login_on_host(provider, bucket, config, store, prompter)
    except LoginError as exc:
        raise _fail(exc.message, exc.code, as_json) from None
    except KeyboardInterrupt:
        prompter.finish()
        if prompter.interactive:
            # The terminal echoed ^C where the cursor stood, after "Code: " say.
            click.echo("", err=True)
        _fail("Login cancelled.", "CANCELLED", as_json)
        raise _LoginCancelled("Login cancelled.") from None
    _report(provider, bucket, result, as_json)


def _login_via_proxy(provider: str, bucket: str, prompter: Prompter) -> LoginResult:
    from credproxy.client import ProxyClient, ProxyClientError
    from credproxy.client.login import LoginError, run_login

    try:
        client = ProxyClient.from_env()
    except ProxyClientError as exc:
        raise LoginError(exc.message, code=exc.code) from None
    with client:
        return run_login(client, provider, bucket, prompter=prompter)


def _login_on_host(
    provider: str, bucket: str, config: Path | None, backend: str | None, prompter: Prompter
) -> LoginResult:
    import asyncio

    from credproxy.client.login import LoginError
    from credproxy.hardening import harden_process
    from credproxy.oauth.config import ProviderRegistry
    from credproxy.protocol.errors import ProxyError
    from credproxy.settings import ConfigError, load_settings
    from credproxy.store.base import StoreError
    from credproxy.store.factory import open_store

    try:
        settings = load_settings(config)
        registry = ProviderRegistry.from_settings(settings)
        provider_config = registry.require(provider)
        harden_process()
        credential_store = open_store(backend, settings)
    except ProxyError as exc:
        message = exc.message
        if registry.missing(provider) is not None:
            from credproxy.settings import default_config_path

            message += f" ({settings.path or default_config_path()})"
        raise LoginError(_sentence(message, provider), code=exc.code) from None
    except (ConfigError, StoreError) as exc:
        raise LoginError(str(exc), code="CONFIG") from None
    return asyncio.run(_host_flow(registry, provider_config, bucket, credential_store, prompter))


def _sentence(message: str, provider: str) -> str:
    """A message as a sentence; a provider name that starts it keeps its case."""
    if not message.startswith(provider):
        message = message[:1].upper() + message[1:]
    return message if message.endswith((".", "?")) else message + "."


def _in_daemon_thread(read: Callable[[], str]) -> asyncio.Future[str]:
    """Read stdin without blocking the loop or holding up its shutdown on Ctrl-C."""
    import asyncio
    import threading

    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()

    def settle(value: str | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value or "")

    def run() -> None:
        try:
            value = read()
        except Exception as exc:
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, value, None)

    threading.Thread(target=run, name="credproxy-read-code", daemon=True).start()
    return future


async def _host_flow(
    registry: ProviderRegistry,
    config: ProviderConfig,
    bucket: str,
    store: CredentialStore,
    prompter: Prompter,
) -> LoginResult:
    from credproxy.client.login import DENIED_MESSAGE, LoginError, LoginResult
    from credproxy.oauth.errors import OAuthFlowError
    from credproxy.oauth.flows import CodePasteFlow, start_flow
    from credproxy.oauth.http import OAuthHttp
    from credproxy.protocol.errors import ProxyError
    from credproxy.store.base import StoreError
    from credproxy.store.writepath import write_path
    from credproxy.tokens import sanitize

    http = OAuthHttp()
    try:
        endpoints = await registry.endpoints(config, http)
        flow, shown = await start_flow(config, endpoints, http)
        try:
            prompter.show(flow.flow_type, shown)
            if isinstance(flow, CodePasteFlow):
                token = await flow.finish(await _in_daemon_thread(prompter.read_code))
            else:
                token = await _wait_for(flow, prompter)
        finally:
            await flow.aclose()
        # A damaged stored token is replaced: its message says to log in again.
        stored = await write_path(store).save_login(config.name, bucket, token)
    except OAuthFlowError as exc:
        if exc.oauth_error == "access_denied":
            raise LoginError(DENIED_MESSAGE, code=exc.code) from None
        raise LoginError(f"Login failed: {exc.message}", code=exc.code) from None
    except ProxyError as exc:
        raise LoginError(f"Login failed: {exc.message}", code=exc.code) from None
    except StoreError as exc:
        raise LoginError(str(exc), code="STORE") from None
    finally:
        await http.close()
        await store.close()
    return LoginResult(flow.flow_type, sanitize(stored))


async def _wait_for(flow: DeviceCodeFlow | LoopbackFlow, prompter: Prompter) -> dict[str, Any]:
    """The device and browser flows finish by themselves; show progress meanwhile."""
    import asyncio
    import time

    from credproxy.client.login import LoginError
    from credproxy.sessions import DEFAULT_TIMEOUT_S

    waiting = asyncio.ensure_future(flow.wait())
    deadline = time.monotonic() + DEFAULT_TIMEOUT_S
    try:
        while not waiting.done():
            if time.monotonic() > deadline:
                raise LoginError("Login session expired. Run `credproxy login` again.")
            await asyncio.wait({waiting}, timeout=flow.poll_interval_ms / 1000)
            if not waiting.done():
                prompter.progress()
        return waiting.result()
    finally:
        waiting.cancel()
        prompter.finish()


@main.command()
@_name_options
@_host_options
@click.option(
    "--no-revoke",
    is_flag=True,
    help="Host only: do not revoke the refresh token at the provider.",
)
def logout(
    provider: str, bucket: str, config: Path | None, store: str | None, no_revoke: bool
) -> None:
    """Forget PROVIDER's token (in a sandbox: ask the host; on the host: also revoke it)."""
    from credproxy.client.env import in_sandbox

    if in_sandbox():
        from credproxy.client import ProxyClient, ProxyClientError

        if config is not None or store is not None or no_revoke:
            raise click.UsageError("--config, --store and --no-revoke apply on the host only")
        try:
            with ProxyClient.from_env() as client:
                client.remove_token(provider, bucket)
        except ProxyClientError as exc:
            raise click.ClickException(f"Logout failed: {exc.message}") from None
        click.echo(f"Logged out of {provider} (bucket {bucket}).")
        return
    import asyncio

    from credproxy.hardening import harden_process
    from credproxy.settings import ConfigError, load_settings
    from credproxy.store.base import StoreError
    from credproxy.store.factory import open_store

    try:
        settings = load_settings(config)
        harden_process()
        credential_store = open_store(store, settings)
    except (ConfigError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        removed, revoked = asyncio.run(
            _host_logout(settings, provider, bucket, credential_store, not no_revoke)
        )
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    if not removed:
        click.echo(
            f"Not logged in to {provider} (bucket {bucket}): the store holds no such token "
            "(`credproxy status` lists what it holds).",
            err=True,
        )
        return
    note = " and revoked at the provider" if revoked else ""
    click.echo(f"Logged out of {provider} (bucket {bucket}){note}.")


async def _host_logout(
    settings: Settings, provider: str, bucket: str, store: CredentialStore, revoke: bool
) -> tuple[bool, bool]:
    """Remove the token, revoking its refresh token first where the provider allows.

    Returns whether a token was removed and whether it was revoked: a mistyped
    name must not read as a successful logout.
    """
    from credproxy.store.base import CorruptRecordError

    revoked = False
    try:
        try:
            token = await store.get_token(provider, bucket)
        except CorruptRecordError:
            click.echo(
                "warning: the stored token is damaged, so it cannot be revoked; removing it anyway",
                err=True,
            )
            token = None
        refresh = token.get("refresh_token") if token else None
        if revoke and isinstance(refresh, str) and refresh:
            revoked = await _revoke(settings, provider, refresh)
        from credproxy.store.writepath import write_path

        removed = await write_path(store).remove_token(provider, bucket)
    finally:
        await store.close()
    return removed, revoked


async def _revoke(settings: Settings, provider: str, refresh: str) -> bool:
    """RFC 7009 revocation, when the provider is configured and has an endpoint. A
    refusal is reported and the caller removes the local token anyway."""
    from credproxy.oauth.config import ProviderRegistry
    from credproxy.oauth.errors import OAuthFlowError
    from credproxy.oauth.http import OAuthHttp
    from credproxy.settings import ConfigError

    try:
        config = ProviderRegistry.from_settings(settings).get(provider)
    except ConfigError:
        config = None
    if config is None:
        return False
    http = OAuthHttp()
    try:
        endpoints = await ProviderRegistry({provider: config}).endpoints(config, http)
        if endpoints.revocation is None:
            return False
        form, basic = config.client_auth()
        form.update(token=refresh, token_type_hint="refresh_token")
        answer = await http.post_form(
            provider, "revocation request", endpoints.revocation, form, auth=basic
        )
        if answer.status == 200:
            return True
        click.echo(
            f"warning: the provider refused the revocation (HTTP {answer.status}); "
            "removing the local token anyway",
            err=True,
        )
    except OAuthFlowError as exc:
        click.echo(f"warning: {exc.message}; removing the local token anyway", err=True)
    finally:
        await http.close()
    return False
