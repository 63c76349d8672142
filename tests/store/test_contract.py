"""What every credential backend does alike, run over each one.

The file and keyring backends share their protocol methods (``store.records``),
and the memory store stands in for them in daemon tests, so one set of
assertions holds for all three. On the keyring, listing goes through its index
item; on the file store, through the file's record table; on Redis, through
its index set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from credproxy.store.base import CredentialStore
from credproxy.store.file import FileStore
from credproxy.store.keyring import KeyringStore
from credproxy.store.keysource import KeySettings
from credproxy.store.memory import MemoryStore
from credproxy.store.redis import RedisSettings, RedisStore
from credproxy.store.secretservice import SecretService
from tests.fixtures.redis import STORE_USER

TOKEN = {
    "access_token": "ct-access-5e1b",
    "refresh_token": "ct-refresh-8a2c",
    "expiry": 1_900_000_000,
    "token_type": "Bearer",
}


@pytest.fixture(params=["memory", "file", "keyring", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CredentialStore]:
    backend: CredentialStore
    if request.param == "memory":
        backend = MemoryStore()
    elif request.param == "file":
        backend = FileStore(tmp_path / "store", KeySettings(source="keyfile"))
    elif request.param == "redis":
        server = request.getfixturevalue("redis_server")
        prefix = request.getfixturevalue("redis_prefix")
        backend = RedisStore(
            RedisSettings.from_section(
                {
                    "url": server.url,
                    "username": STORE_USER,
                    "password_file": str(server.password_file()),
                    "prefix": prefix,
                }
            ),
            KeySettings(source="keyfile", key_file=tmp_path / "fleet.key"),
        )
    else:
        request.getfixturevalue("gnome_keyring")
        # A service name per test, so tests never see each other's items.
        service = SecretService(f"credproxy-test-{request.node.name[-40:]}")
        backend = KeyringStore.open(service, tmp_path / "index.lock")
    try:
        yield backend
    finally:
        await backend.close()


async def test_listing_is_sorted_and_scoped_per_provider(store: CredentialStore) -> None:
    await store.save_token("qwen", "work", TOKEN)
    await store.save_token("anthropic", "default", TOKEN)
    await store.save_token("qwen", "a-personal", TOKEN)
    await store.save_token("qwen", "a-personal", TOKEN)  # saving again lists it once
    await store.set_key("zeta", "z-value")
    await store.set_key("alpha", "a-value")
    assert await store.list_providers() == ["anthropic", "qwen"]
    assert await store.list_buckets("qwen") == ["a-personal", "work"]
    assert await store.list_buckets("absent") == []
    assert await store.list_keys() == ["alpha", "zeta"]


async def test_remove_reports_whether_something_was_removed(store: CredentialStore) -> None:
    await store.save_token("openai", "default", TOKEN)
    await store.set_key("k", "v-secret")
    assert await store.remove_token("openai", "default") is True
    assert await store.remove_token("openai", "default") is False
    assert await store.remove_key("k") is True
    assert await store.remove_key("k") is False
    assert await store.get_token("openai", "default") is None
    assert await store.list_providers() == []
    assert await store.list_keys() == []
