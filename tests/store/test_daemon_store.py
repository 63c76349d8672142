"""Real daemons on real stores: two sharing a file store lose nothing; one on the keyring."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from credproxy.store.file import FileStore
from credproxy.store.keysource import KeySettings
from tests.fixtures.daemon import DaemonFactory, DaemonHandle
from tests.fixtures.keyring import KeyringSession

SAVES_PER_DAEMON = 40


def token(prefix: str, index: int) -> dict[str, Any]:
    return {"access_token": f"{prefix}-at-{index}", "expiry": 1_900_000_000, "token_type": "Bearer"}


def save_many(daemon: DaemonHandle, prefix: str, errors: list[str]) -> None:
    with daemon.client() as client:
        for index in range(SAVES_PER_DAEMON):
            reply = client.request(
                "save_token",
                {"provider": prefix, "bucket": f"b{index}", "token": token(prefix, index)},
            )
            if reply.get("ok") is not True:
                errors.append(str(reply))


def two_daemons(credproxy_daemon: DaemonFactory) -> tuple[DaemonHandle, DaemonHandle, Path]:
    workdir = credproxy_daemon.workdir()
    first = credproxy_daemon(workdir=workdir, socket_path=workdir / "a.sock", capability=False)
    second = credproxy_daemon(workdir=workdir, socket_path=workdir / "b.sock", capability=False)
    return first, second, workdir / "store"


def test_two_daemons_saving_concurrently_to_one_store_lose_nothing(
    credproxy_daemon: DaemonFactory,
) -> None:
    first, second, store_dir = two_daemons(credproxy_daemon)
    errors: list[str] = []
    threads = [
        threading.Thread(target=save_many, args=(first, "alpha", errors)),
        threading.Thread(target=save_many, args=(second, "beta", errors)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []

    expected = sorted(f"b{index}" for index in range(SAVES_PER_DAEMON))
    for daemon in (first, second):
        with daemon.client() as client:
            providers = client.request("list_providers")
            assert providers["data"] == {"providers": ["alpha", "beta"]}
            for prefix in ("alpha", "beta"):
                buckets = client.request("list_buckets", {"provider": prefix})
                assert sorted(buckets["data"]["buckets"]) == expected

    async def read_back() -> None:
        store = FileStore(store_dir, KeySettings(source="keyfile"))
        try:
            for prefix in ("alpha", "beta"):
                for index in range(SAVES_PER_DAEMON):
                    assert await store.get_token(prefix, f"b{index}") == token(prefix, index)
        finally:
            await store.close()

    asyncio.run(read_back())


def test_a_save_through_one_daemon_is_served_by_the_other_on_the_next_request(
    credproxy_daemon: DaemonFactory,
) -> None:
    first, second, _ = two_daemons(credproxy_daemon)
    with first.client() as writer, second.client() as reader:
        for generation in range(10):
            saved = {**token("shared", generation), "scope": f"gen-{generation}"}
            reply = writer.request(
                "save_token", {"provider": "shared", "bucket": "default", "token": saved}
            )
            assert reply["ok"] is True, reply
            got = reader.request("get_token", {"provider": "shared", "bucket": "default"})
            assert got["ok"] is True, got
            assert got["data"]["access_token"] == saved["access_token"]
            assert got["data"]["scope"] == f"gen-{generation}"
        removed = writer.request("remove_token", {"provider": "shared", "bucket": "default"})
        assert removed["ok"] is True
        gone = reader.request("get_token", {"provider": "shared", "bucket": "default"})
        assert gone["ok"] is False
        assert gone["code"] == "NOT_FOUND"


def test_daemon_on_the_keyring_store_serves_what_it_saved(
    credproxy_daemon: DaemonFactory, gnome_keyring: KeyringSession
) -> None:
    """`credproxy serve --store keyring` against the real gnome-keyring of the session."""
    daemon = credproxy_daemon(store="keyring", capability=False)
    saved = {**token("kr", 1), "refresh_token": "kr-refresh-never-served"}
    with daemon.client() as client:
        reply = client.request(
            "save_token", {"provider": "kr-daemon", "bucket": "default", "token": saved}
        )
        assert reply["ok"] is True, reply
        got = client.request("get_token", {"provider": "kr-daemon"})
        assert got["ok"] is True, got
        assert got["data"] == token("kr", 1)
        listed = client.request("list_buckets", {"provider": "kr-daemon"})
        assert listed["data"] == {"buckets": ["default"]}
        assert b"kr-refresh-never-served" not in bytes(client.received)
        assert client.request("remove_token", {"provider": "kr-daemon"})["ok"] is True
