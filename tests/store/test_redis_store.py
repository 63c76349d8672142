"""The Redis store against a real redis-server: sealing, caching, compare-and-set, leases,
TLS, ACL users, and what a client meets while Redis is down.

Two ``RedisStore`` objects on one prefix and one key file stand for two hosts of
a fleet. The server runs with ``default`` off, so every store authenticates as
the ACL user ``credproxy`` with a password from a 0600 file.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from credproxy.store.base import StoreError, StoreUnavailableError
from credproxy.store.factory import open_store
from credproxy.store.redis import RedisSettings, RedisStore, StoreConflictError
from tests.fixtures.redis import STORE_USER, RedisServer
from tests.store.redis_fleet import store_settings

ACCESS = "rs-canary-access-7d41c9"
REFRESH = "rs-canary-refresh-2b88e0"
API_KEY = "rs-canary-apikey-51f0aa"
FUTURE = 4_000_000_000


def token(access: str = ACCESS, refresh: str = REFRESH, expiry: float = FUTURE) -> dict[str, Any]:
    return {
        "access_token": access,
        "refresh_token": refresh,
        "expiry": expiry,
        "token_type": "Bearer",
    }


def section(server: RedisServer, prefix: str, tmp: Path, **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "backend": "redis",
        "url": server.url,
        "username": STORE_USER,
        "password_file": str(server.password_file()),
        "prefix": prefix,
        "path": str(tmp / "host"),
        "key_file": str(tmp / "fleet.key"),
        "timeout_s": 2.0,
    }
    values.update(extra)
    return values


class Hosts:
    """Opens ``RedisStore``s on one prefix and key file (hosts of one fleet); closes them all."""

    def __init__(self, server: RedisServer, prefix: str, tmp: Path) -> None:
        self.server, self.prefix, self.tmp = server, prefix, tmp
        self.opened: list[RedisStore] = []

    def __call__(self, **extra: Any) -> RedisStore:
        store = open_store(
            None, store_settings(section(self.server, self.prefix, self.tmp, **extra))
        )
        assert isinstance(store, RedisStore)
        self.opened.append(store)
        return store

    async def __aenter__(self) -> Hosts:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for store in self.opened:
            await store.close()


@pytest.fixture
async def make_store(
    redis_server: RedisServer, redis_prefix: str, tmp_path: Path
) -> AsyncIterator[Hosts]:
    async with Hosts(redis_server, redis_prefix, tmp_path) as hosts:
        yield hosts


@pytest.fixture
async def private_hosts(
    private_redis: RedisServer, redis_prefix: str, tmp_path: Path
) -> AsyncIterator[Hosts]:
    """Hosts on a redis-server of this test alone, which it may stop and start."""
    async with Hosts(private_redis, redis_prefix, tmp_path) as hosts:
        yield hosts


async def test_a_token_saved_on_one_host_is_read_on_another(
    make_store: Hosts,
) -> None:
    first, second = make_store(), make_store()
    await first.save_token("acme", "default", token())
    await first.set_key("openai", API_KEY)
    assert await second.get_token("acme", "default") == token()
    assert await second.get_key("openai") == API_KEY
    assert await second.list_providers() == ["acme"]
    assert await second.list_keys() == ["openai"]


async def test_redis_holds_only_ciphertext(
    make_store: Hosts, redis_server: RedisServer, redis_prefix: str
) -> None:
    store = make_store()
    await store.save_token("acme", "work", token())
    await store.set_key("openai", API_KEY)
    await store.save_token("acme", "work", token(access=ACCESS + "-2"))
    everything = b"\n".join(redis_server.all_bytes(redis_prefix))
    assert b"token/acme/work" in everything  # the scan did reach the records
    for canary in (ACCESS, REFRESH, API_KEY, "access_token", "refresh_token"):
        assert canary.encode() not in everything


async def test_a_removal_on_one_host_reaches_the_other_hosts_cache_within_a_second(
    make_store: Hosts,
) -> None:
    first, second = make_store(), make_store()
    await first.save_token("acme", "default", token())
    assert await second.get_token("acme", "default") == token()  # now cached on second
    await _until(lambda: second.subscribed)
    await first.remove_token("acme", "default")
    deadline = time.monotonic() + 1.0
    while await second.get_token("acme", "default") is not None:
        assert time.monotonic() < deadline, "the removal never reached the other host"
        await asyncio.sleep(0.01)
    await first.save_token("acme", "default", token(access="new-access"))
    deadline = time.monotonic() + 1.0
    while (await second.get_token("acme", "default") or {}).get("access_token") != "new-access":
        assert time.monotonic() < deadline, "the new token never reached the other host"
        await asyncio.sleep(0.01)


async def test_a_cached_read_costs_no_redis_command(
    make_store: Hosts, redis_server: RedisServer
) -> None:
    store = make_store()
    await store.save_token("acme", "default", token())
    await _until(lambda: store.subscribed)
    await store.get_token("acme", "default")
    before = _command_calls(redis_server)
    for _ in range(200):
        assert await store.get_token("acme", "default") == token()
    after = _command_calls(redis_server)
    assert after - before < 5  # INFO itself and the subscription's health pings


def _command_calls(server: RedisServer) -> int:
    client = server.admin()
    try:
        stats: dict[str, Any] = client.info("commandstats")
    finally:
        client.close()
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


async def test_a_writer_whose_lease_ran_out_cannot_overwrite_the_newer_token(
    make_store: Hosts,
) -> None:
    """Host A takes the lease and reads, then its event loop stalls (as a paused or
    swapped-out process would) past the lease's time to live; host B takes the
    lease and saves a rotated token; A's late save is refused and B's token stays."""
    seed = make_store()
    await seed.save_token("acme", "default", token(refresh="rt-1"))
    lock = "token,acme,default"
    read_done, resume = threading.Event(), threading.Event()
    outcome: list[BaseException | None] = []

    async def host_a() -> None:
        store = make_store(lease_ttl_s=0.6)
        try:
            async with store.record_locks.hold(lock):
                assert (await store.get_token("acme", "default") or {})["refresh_token"] == "rt-1"
                read_done.set()
                resume.wait(20)  # blocks this loop: no renewal can run
                try:
                    await store.save_token("acme", "default", token(refresh="rt-old"))
                    outcome.append(None)
                except StoreError as exc:
                    outcome.append(exc)
        finally:
            await store.close()

    thread = threading.Thread(target=lambda: asyncio.run(host_a()))
    thread.start()
    try:
        assert await asyncio.to_thread(read_done.wait, 20)
        # Only A's lease must run out; B's is the default, so a loaded machine
        # that delays B's renewal cannot take B's lease away before it saves.
        host_b = make_store()
        async with host_b.record_locks.hold(lock):
            assert (await host_b.get_token("acme", "default") or {})["refresh_token"] == "rt-1"
            await host_b.save_token("acme", "default", token(refresh="rt-2"))
    finally:
        resume.set()
        await asyncio.to_thread(thread.join, 30)
    assert len(outcome) == 1 and isinstance(outcome[0], StoreConflictError)
    assert "nothing was overwritten" in str(outcome[0])
    assert (await make_store().get_token("acme", "default") or {})["refresh_token"] == "rt-2"


async def test_a_write_under_a_lease_fails_when_another_host_wrote_after_the_read(
    make_store: Hosts,
) -> None:
    first, second = make_store(), make_store()
    await first.save_token("acme", "default", token(refresh="rt-1"))
    async with first.record_locks.hold("token,acme,default"):
        await first.get_token("acme", "default")
        await second.save_token("acme", "default", token(refresh="rt-2"))  # no lease
        with pytest.raises(StoreConflictError, match="another host changed"):
            await first.save_token("acme", "default", token(refresh="rt-old"))
    assert (await second.get_token("acme", "default") or {})["refresh_token"] == "rt-2"


async def test_the_lease_is_held_by_one_host_at_a_time_and_released_by_its_owner(
    make_store: Hosts, redis_server: RedisServer, redis_prefix: str
) -> None:
    hosts = [make_store() for _ in range(4)]
    inside = 0
    most = 0

    async def critical(store: RedisStore) -> None:
        nonlocal inside, most
        async with store.record_locks.hold("refresh,acme,default"):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.02)
            inside -= 1

    await asyncio.gather(*(critical(h) for h in hosts for _ in range(3)))
    assert most == 1
    assert sum(h.record_locks.acquired for h in hosts) == 12
    admin = redis_server.admin()
    try:
        assert admin.exists(f"{redis_prefix}:lease:refresh,acme,default") == 0
    finally:
        admin.close()


async def test_a_lease_is_renewed_while_its_holder_works(
    make_store: Hosts,
) -> None:
    holder, other = make_store(lease_ttl_s=1.5), make_store(lease_ttl_s=1.5)
    other.record_locks._wait_s = 0.3
    async with holder.record_locks.hold("refresh,acme,default"):
        await asyncio.sleep(3.5)  # more than twice the time to live
        with pytest.raises(StoreError, match="stayed locked by another credproxy host"):
            async with other.record_locks.hold("refresh,acme,default"):
                pass


async def test_a_second_host_with_another_data_key_is_refused(
    make_store: Hosts, tmp_path: Path
) -> None:
    await make_store().save_token("acme", "default", token())
    other_key = tmp_path / "other.key"
    other_key.write_bytes(os.urandom(32))
    other_key.chmod(0o600)
    stranger = make_store(key_file=str(other_key))
    with pytest.raises(StoreError, match="does not open the Redis store"):
        await stranger.get_token("acme", "default")


async def test_tls_with_the_test_ca_works_and_an_unknown_ca_is_refused(
    make_store: Hosts, redis_server: RedisServer
) -> None:
    secure = make_store(url=redis_server.tls_url, tls_ca_file=str(redis_server.ca_file))
    await secure.save_token("acme", "default", token())
    assert (await secure.health())["tls"] is True
    assert await make_store().get_token("acme", "default") == token()
    untrusted = make_store(url=redis_server.tls_url)
    with pytest.raises(StoreUnavailableError, match="certificate verify failed"):
        await untrusted.get_token("acme", "default")


async def test_the_unix_socket_url_works(make_store: Hosts, redis_server: RedisServer) -> None:
    local = make_store(url=redis_server.unix_url)
    await local.set_key("k", API_KEY)
    assert await make_store().get_key("k") == API_KEY


async def test_a_wrong_password_or_no_user_is_a_clear_error(
    make_store: Hosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    with pytest.raises(StoreError, match="refused the store's user credproxy"):
        await make_store(password_file=str(wrong)).get_key("k")
    anonymous = make_store(password_file=None, username=None)
    with pytest.raises(StoreError, match="refused the store's user default"):
        await anonymous.get_key("k")


async def test_the_password_comes_from_the_environment_when_no_file_is_named(
    make_store: Hosts,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CREDPROXY_REDIS_PASSWORD", redis_server.store_password)
    await make_store(password_file=None).set_key("k", API_KEY)
    assert await make_store().get_key("k") == API_KEY


def test_a_password_in_the_url_or_a_readable_password_file_is_refused(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with pytest.raises(StoreError, match="must not contain the Redis password"):
        RedisSettings.from_section({"url": "redis://user:secret-pw@127.0.0.1:6379/0"})
    loose = tmp_path / "loose.pass"
    loose.write_text("pw\n")
    loose.chmod(0o644)
    settings = RedisSettings.from_section({"url": redis_server.url, "password_file": str(loose)})
    with pytest.raises(StoreError, match="chmod 600"):
        settings.password()


async def test_redis_down_is_a_prompt_unreachable_error_and_the_store_reconnects(
    private_hosts: Hosts, private_redis: RedisServer
) -> None:
    """With Redis stopped, an uncached read fails fast with 'unreachable', a cached live
    token is still served (the default policy), an expired one is not, and once
    Redis is back the same store object works again and nothing written is lost."""
    store = private_hosts()
    await store.save_token("acme", "live", token())
    await store.save_token("acme", "expired", token(expiry=1_000))
    await store.set_key("k", API_KEY)
    await store.get_token("acme", "live")
    private_redis.stop()
    await _until(lambda: not store.subscribed)  # as soon as the server is gone
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        await store.list_providers()
    with pytest.raises(StoreUnavailableError):
        await store.get_token("acme", "expired")
    with pytest.raises(StoreUnavailableError):
        await store.save_token("acme", "live", token(access="lost"))
    assert time.monotonic() - started < 15.0
    assert await store.get_token("acme", "live") == token()
    private_redis.start()
    await store.save_token("acme", "after", token(access="after"))
    assert await store.list_buckets("acme") == ["after", "expired", "live"]
    assert (await store.get_token("acme", "live") or {})["access_token"] == ACCESS
    assert await private_hosts().get_key("k") == API_KEY


async def test_cached_tokens_are_refused_while_redis_is_down_when_configured(
    private_hosts: Hosts, private_redis: RedisServer
) -> None:
    strict = private_hosts(serve_cached_when_unreachable=False)
    await strict.save_token("acme", "live", token())
    assert await strict.get_token("acme", "live") == token()
    private_redis.stop()
    await _until(lambda: not strict.subscribed)
    with pytest.raises(StoreUnavailableError):
        await strict.get_token("acme", "live")


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_a_frozen_redis_is_an_unreachable_error_in_time_not_a_hang(
    private_hosts: Hosts, private_redis: RedisServer
) -> None:
    """SIGSTOP keeps Redis's sockets open but answers nothing: the slow-Redis case.
    Every call ends within its timeout_s (2 s here) and the silent change
    subscription is given up, so reads stop trusting the cache; after SIGCONT the
    same store works again."""
    store = private_hosts()
    await store.save_token("acme", "live", token())
    await _until(lambda: store.subscribed)
    assert private_redis.process is not None
    private_redis.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="no answer in time"):
            await store.get_key("never-cached")
        assert time.monotonic() - started < 15.0
        await _until(lambda: not store.subscribed, timeout=15.0)
        assert await store.get_token("acme", "live") == token()  # cached, still live
    finally:
        private_redis.process.send_signal(signal.SIGCONT)
    await store.set_key("after", API_KEY)
    assert await store.get_key("after") == API_KEY
    await _until(lambda: store.subscribed)


async def test_a_damaged_key_check_in_redis_is_told_from_a_wrong_key(
    make_store: Hosts, redis_server: RedisServer, redis_prefix: str
) -> None:
    await make_store().save_token("acme", "default", token())
    admin = redis_server.admin()
    try:
        admin.hset(f"{redis_prefix}:header", "check", "bm90IGEgY2hlY2s=")
    finally:
        admin.close()
    with pytest.raises(StoreError, match="has a damaged header: its key check is not"):
        await make_store().get_token("acme", "default")
