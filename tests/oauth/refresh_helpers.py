"""Shared steps of the write-path and refresh-once tests: real daemons on one store,
logged in against the real oidc-provider, with the host store read and written
directly the way a second process would."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from credproxy.client import ProxyClient
from tests.fixtures.daemon import DaemonFactory, DaemonHandle, store_config
from tests.fixtures.oidc import OidcServer
from tests.oauth.browser import HeadlessUser
from tests.oauth.harness import OAuthDaemon, start_oauth_daemon

REFRESH_GRANT = "refresh_token"
PROVIDER = "paste"


def oauth_daemon(factory: DaemonFactory, oidc: OidcServer, *args: str) -> OAuthDaemon:
    return start_oauth_daemon(factory, {PROVIDER: oidc.provider_table("pkce_redirect")}, *args)


def second_daemon(factory: DaemonFactory, first: OAuthDaemon, *args: str) -> DaemonHandle:
    """Another ``credproxy serve`` process on ``first``'s store and providers."""
    return factory("--config", str(first.config_path), *args)


def log_in(daemon: OAuthDaemon, oidc: OidcServer, bucket: str = "default") -> dict[str, Any]:
    """A real code-paste login through the daemon; the sanitized token it answered."""
    with ProxyClient(str(daemon.socket_path), daemon.token) as client:
        started = client.oauth_initiate(PROVIDER, bucket)
        with HeadlessUser() as user:
            code = user.copy_code(started["auth_url"], oidc.oob_uri)
        return client.oauth_exchange(started["session_id"], code)


def refresh_grants(oidc: OidcServer) -> int:
    return oidc.token_requests().get(REFRESH_GRANT, 0)


def on_host_store(daemon: OAuthDaemon, action: Callable[[Any], Any]) -> Any:
    """Run ``action(store)`` on the daemon's file store in a fresh process-like context
    (own event loop, own store object), as the host CLI would."""
    from credproxy.store.factory import open_store

    result: list[Any] = []
    errors: list[BaseException] = []

    async def run() -> None:
        store = open_store("file", store_config(daemon.store_dir))
        try:
            result.append(await action(store))
        finally:
            await store.close()

    def thread_main() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=thread_main)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def expire_stored_token(daemon: OAuthDaemon, bucket: str = "default") -> None:
    """Make the stored access token expired, keeping its refresh token (time passing).

    Called while nothing else writes this record, so a plain read and write will do.
    """

    async def expire(store: Any) -> None:
        token = await store.get_token(PROVIDER, bucket)
        assert token is not None
        await store.save_token(PROVIDER, bucket, {**token, "expiry": 1})

    on_host_store(daemon, expire)
