"""Login sessions through a real ``Daemon`` on a real socket, run inside the test's
event loop so the test can hold two capability tokens of one daemon and inject the
session manager's clock (``credproxy serve`` issues one token and uses the real clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from credproxy.audit import AuditLog
from credproxy.client import (
    AsyncProxyClient,
    ProxyClient,
    ResourceExhaustedError,
    UnauthorizedError,
)
from credproxy.client.login import EXPIRED_MESSAGE, LoginError, Prompter, run_login
from credproxy.grants import CapabilityTable, Grant
from credproxy.oauth.config import ProviderRegistry
from credproxy.oauth.http import HttpResponse, OAuthHttp
from credproxy.oauth.runtime import OAuthRuntime
from credproxy.server.app import Daemon
from credproxy.server.context import ServerState
from credproxy.sessions import OAuthSessionManager
from credproxy.store.memory import MemoryStore
from tests.fixtures.hanging_store import HangingStore
from tests.fixtures.oidc import OidcServer
from tests.fixtures.settings import providers_of
from tests.oauth.browser import HeadlessUser


class FakeClock:
    """The session manager's monotonic clock, advanced by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


SESSION_CAP = 3


class CountingHttp(OAuthHttp):
    """The daemon's real HTTP client, counting the provider requests a login start
    sends. The device logins already open poll the token endpoint in the
    background every 50 ms; those polls are not counted, so a slow machine
    cannot make them look like requests of the logins under test."""

    BACKGROUND: Final = "device token request"

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    async def _call(self, *args: Any, **kwargs: Any) -> HttpResponse:
        if args[1:2] != (self.BACKGROUND,):
            self.requests += 1
        return await super()._call(*args, **kwargs)


@dataclass
class InProcess:
    daemon: Daemon
    runtime: OAuthRuntime
    store: MemoryStore
    clock: FakeClock
    tokens: dict[str, str]
    http: CountingHttp

    @property
    def path(self) -> str:
        return str(self.daemon.socket_path)

    def client(self, who: str) -> AsyncProxyClient:
        return AsyncProxyClient(self.path, self.tokens[who])


@pytest.fixture
async def in_process(oidc_server: OidcServer) -> AsyncIterator[InProcess]:
    async with running(oidc_server, MemoryStore()) as started:
        yield started


@contextlib.asynccontextmanager
async def running(oidc_server: OidcServer, store: MemoryStore) -> AsyncIterator[InProcess]:
    config = {
        "providers": {
            "paste": oidc_server.provider_table("pkce_redirect"),
            "device": oidc_server.provider_table("device_code"),
        }
    }
    clock = FakeClock()
    http = CountingHttp()
    state = ServerState(store=store)
    runtime = OAuthRuntime(
        ProviderRegistry(providers_of(config)),
        store,
        sessions=OAuthSessionManager(
            60.0, clock=clock, max_sessions_per_identity=SESSION_CAP, environ={}
        ),
        http=http,
    )
    state.oauth = runtime
    table = CapabilityTable()
    tokens = {
        "alice": table.issue(Grant("alice", providers=frozenset({"paste", "device"}))),
        "bob": table.issue(Grant("bob", providers=frozenset({"paste", "device"}))),
    }
    workdir = Path(tempfile.mkdtemp(prefix="cpo-", dir="/tmp"))
    daemon = Daemon(
        state,
        capabilities=table,
        socket_path=workdir / "d.sock",
        audit=AuditLog(io.StringIO()),
    )
    await daemon.start()
    try:
        yield InProcess(daemon, runtime, store, clock, tokens, http)
    finally:
        await daemon.stop(grace_s=1.0)
        workdir.rmdir()


@pytest.mark.parametrize("provider", ["paste", "device"])
async def test_a_session_cannot_be_used_by_a_sandbox_with_another_grant(
    in_process: InProcess, provider: str
) -> None:
    async with in_process.client("alice") as alice, in_process.client("bob") as bob:
        started = await alice.oauth_initiate(provider)
        sid = started["session_id"]
        attempts: list[Any] = [bob.oauth_poll(sid), bob.oauth_cancel(sid)]
        if provider == "paste":
            attempts.append(bob.oauth_exchange(sid, "some-code"))
        for attempt in attempts:
            with pytest.raises(UnauthorizedError):
                await attempt
        if provider == "device":  # bob's attempts neither consumed nor ended it
            assert (await alice.oauth_poll(sid))["status"] == "pending"
        await alice.oauth_cancel(sid)


async def test_an_expired_session_is_reported_and_the_driver_says_to_log_in_again(
    in_process: InProcess,
) -> None:
    """The injected clock jumps past the 60 s session timeout while the driver polls."""
    out = io.StringIO()
    polls = 0

    def advance_clock(_: float) -> None:
        nonlocal polls
        polls += 1
        if polls == 2:
            in_process.clock.now += 61.0

    def drive() -> None:
        with ProxyClient(in_process.path, in_process.tokens["alice"]) as client:
            run_login(client, "device", prompter=Prompter(out=out), sleep=advance_clock)

    with pytest.raises(LoginError) as caught:
        await asyncio.to_thread(drive)
    assert caught.value.message == EXPIRED_MESSAGE
    assert caught.value.code == "SESSION_EXPIRED"
    assert "Open http" in out.getvalue()


async def test_the_daemon_ends_open_logins_when_it_stops(in_process: InProcess) -> None:
    async with in_process.client("alice") as alice:
        await alice.oauth_initiate("device")
    runtime = in_process.runtime
    assert runtime.sessions.gc_running
    assert len(runtime.sessions) == 1
    await in_process.daemon.stop(grace_s=1.0)
    assert len(runtime.sessions) == 0
    assert not runtime.sessions.gc_running


async def test_a_sandbox_at_its_session_cap_makes_the_host_send_no_provider_request(
    in_process: InProcess,
) -> None:
    """The cap is checked before the device authorization request, not after it."""
    async with in_process.client("alice") as alice, in_process.client("bob") as bob:
        for _ in range(SESSION_CAP):
            await alice.oauth_initiate("device")
        sent = in_process.http.requests
        for _ in range(5):
            with pytest.raises(ResourceExhaustedError) as caught:
                await alice.oauth_initiate("device")
        assert in_process.http.requests == sent
        assert "finish or cancel one" in caught.value.message
        await bob.oauth_initiate("device")  # another sandbox has its own allowance
        assert in_process.http.requests == sent + 1


async def test_concurrent_logins_beyond_the_cap_send_no_extra_provider_requests(
    in_process: InProcess,
) -> None:
    """Logins still waiting for the provider hold their place under the cap."""
    async with in_process.client("alice") as alice:
        await alice.oauth_initiate("device")  # discovery is fetched once, here
        sent = in_process.http.requests
        outcomes = await asyncio.gather(
            *(alice.oauth_initiate("device") for _ in range(8)), return_exceptions=True
        )
    started = [o for o in outcomes if isinstance(o, dict)]
    refused = [o for o in outcomes if isinstance(o, ResourceExhaustedError)]
    assert len(started) == SESSION_CAP - 1
    assert len(refused) == 8 - len(started)
    assert in_process.http.requests == sent + len(started)


async def test_a_device_login_whose_store_never_answers_ends_with_an_error_not_pending(
    oidc_server: OidcServer,
) -> None:
    """The login's final save runs in the background, outside any request's time
    limit: a hung store must end the session with an error the poll reports (the
    host's log names the store timeout), not leave it pending until it expires."""
    store = HangingStore("get_token")
    async with running(oidc_server, store) as daemon, daemon.client("alice") as alice:
        daemon.runtime.writes.store_timeout_s = 0.5
        started = await alice.oauth_initiate("device")
        with HeadlessUser() as user:
            await asyncio.to_thread(
                user.enter_device_code, started["verification_url"], started["user_code"]
            )
        async with asyncio.timeout(30.0):
            while (reply := await alice.oauth_poll(started["session_id"]))["status"] == "pending":
                await asyncio.sleep(0.05)
        store.answer.set()
    assert reply["status"] == "error"
    assert reply["code"] == "INTERNAL_ERROR"
    assert "start it again" in reply["error"]
    assert store.stalled >= 1
