"""The daemon's OAuth state: providers, the HTTP client, login sessions, refresh.

One ``OAuthRuntime`` lives in ``ServerState.oauth``; the server
creates it with ``install`` at start-up and awaits ``aclose`` at shutdown, so
background logins, loopback listeners and the HTTP session end with the daemon.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from credproxy.oauth.config import ProviderRegistry
from credproxy.oauth.errors import provider_not_found
from credproxy.oauth.flows import Clock
from credproxy.oauth.http import OAuthHttp
from credproxy.refresh import RefreshCoordinator
from credproxy.renewal import ProactiveScheduler
from credproxy.sessions import OAuthSessionManager
from credproxy.store.base import CredentialStore
from credproxy.store.writepath import write_path

if TYPE_CHECKING:
    from credproxy.server.context import ServerState
    from credproxy.settings import Settings


class OAuthRuntime:
    def __init__(
        self,
        providers: ProviderRegistry,
        store: CredentialStore,
        *,
        sessions: OAuthSessionManager | None = None,
        http: OAuthHttp | None = None,
        clock: Clock = time.time,
    ) -> None:
        """Logins and refreshes write through the store's one write path
        (``store.writepath``); the server bounds every request by time."""
        self.providers = providers
        self.sessions = sessions if sessions is not None else OAuthSessionManager()
        self.http = http if http is not None else OAuthHttp()
        self.clock = clock
        self.writes = write_path(store)
        self.refresher = RefreshCoordinator(providers, self.http, self.writes, clock=clock)
        self.renewal = ProactiveScheduler(self.refresher.refresh)

    def token_seen(self, provider: str, bucket: str, token: Mapping[str, Any]) -> None:
        """A host-side token was served, saved or refreshed: (re)schedule its renewal.
        Tokens of providers without a table are left alone (nothing could renew them)."""
        if self.providers.get(provider) is not None:
            self.renewal.observe(provider, bucket, token)

    def token_removed(self, provider: str, bucket: str) -> None:
        self.renewal.forget(provider, bucket)

    def start(self) -> None:
        """Start the session sweep; call inside the daemon's running loop. Idempotent."""
        if not self.sessions.gc_running:
            self.sessions.start_gc()

    async def aclose(self) -> None:
        """Stop renewing, end every login (tasks cancelled, listeners closed), then the
        HTTP session."""
        await self.renewal.aclose()
        await self.sessions.aclose()
        await self.http.close()


def install(state: ServerState, settings: Settings) -> OAuthRuntime:
    """Create the runtime from the presets, ``[providers]`` and ``[oauth]`` and hang it on
    ``state``; the daemon starts and closes it with itself."""
    runtime = OAuthRuntime(
        ProviderRegistry.from_settings(settings),
        state.store,
        sessions=OAuthSessionManager(
            max_sessions_per_identity=settings.oauth.max_sessions_per_identity,
            max_sessions=settings.oauth.max_sessions,
        ),
    )
    state.oauth = runtime
    return runtime


def optional_runtime(state: ServerState) -> OAuthRuntime | None:
    """The daemon's OAuth runtime, if it has one (a daemon without providers may not)."""
    return state.oauth


def runtime_of(state: ServerState, provider: str) -> OAuthRuntime:
    """The daemon's OAuth runtime; a daemon without one has no provider of that name."""
    runtime = state.oauth
    if runtime is None:
        raise provider_not_found(provider)
    return runtime
