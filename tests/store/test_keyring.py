"""The OS keyring backend and the keyring-held data key, against a real gnome-keyring."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import keyring
import keyring.core
import pytest

from credproxy.store.base import CorruptRecordError, StoreError
from credproxy.store.factory import open_store
from credproxy.store.file import DATA_FILE, FileStore
from credproxy.store.keyring import INDEX_ITEM, KeyringStore
from credproxy.store.keysource import KEY_FILE_NAME, KeySettings
from credproxy.store.secretservice import (
    LOCKED_MESSAGE,
    UNAVAILABLE_MESSAGE,
    KeyringLockedError,
    KeyringUnavailableError,
    SecretService,
)
from tests.fixtures.keyring import KeyringSession
from tests.fixtures.settings import settings_of

TOKEN = {
    "access_token": "kr-access-9d2f",
    "refresh_token": "kr-refresh-4c1a",
    "expiry": 1_900_000_000,
    "token_type": "Bearer",
}


@pytest.fixture
def service(gnome_keyring: KeyringSession, request: pytest.FixtureRequest) -> SecretService:
    """A service name per test, so tests never see each other's items."""
    return SecretService(f"credproxy-test-{request.node.name[-40:]}")


@pytest.fixture
def keyring_store(service: SecretService, tmp_path: Path) -> KeyringStore:
    return KeyringStore.open(service, tmp_path / "index.lock")


@pytest.fixture(autouse=True)
def _keyring_never_chooses_a_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """credproxy must name its backend; keyring's own choice would be a silent fallback."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("keyring.get_keyring() was called")

    monkeypatch.setattr(keyring, "get_keyring", refuse)
    monkeypatch.setattr(keyring.core, "get_keyring", refuse)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")


async def test_token_and_key_round_trip_through_the_secret_service(
    keyring_store: KeyringStore,
) -> None:
    await keyring_store.save_token("openai", "default", TOKEN)
    await keyring_store.set_key("gemini", "g-key-value")
    assert await keyring_store.get_token("openai", "default") == TOKEN
    assert await keyring_store.get_key("gemini") == "g-key-value"
    assert await keyring_store.get_token("openai", "other") is None
    assert await keyring_store.get_key("absent") is None


async def test_second_store_instance_sees_writes_at_once(
    service: SecretService, tmp_path: Path
) -> None:
    first = KeyringStore.open(service, tmp_path / "index.lock")
    second = KeyringStore.open(SecretService(service.service), tmp_path / "index.lock")
    await first.save_token("openai", "default", TOKEN)
    assert await second.get_token("openai", "default") == TOKEN
    await second.save_token("openai", "default", {**TOKEN, "access_token": "rotated"})
    token = await first.get_token("openai", "default")
    assert token is not None
    assert token["access_token"] == "rotated"
    assert await first.list_buckets("openai") == ["default"]


async def test_damaged_index_item_says_how_to_recover(
    keyring_store: KeyringStore, service: SecretService
) -> None:
    await keyring_store.set_key("k", "v")
    service.set(INDEX_ITEM, "{not json")
    with pytest.raises(StoreError, match="index item in the keyring is damaged"):
        await keyring_store.list_keys()


async def test_damaged_token_item_is_reported_corrupt(
    keyring_store: KeyringStore, service: SecretService
) -> None:
    service.set("token/openai/default", "[1, 2]")
    with pytest.raises(CorruptRecordError, match="token openai"):
        await keyring_store.get_token("openai", "default")


async def test_blocking_keyring_calls_run_off_the_event_loop(
    gnome_keyring: KeyringSession, tmp_path: Path
) -> None:
    """A real SecretService, subclassed only to record which thread each D-Bus call ran on."""
    threads: list[int] = []

    class Recording(SecretService):
        def get(self, username: str) -> str | None:
            threads.append(threading.get_ident())
            return super().get(username)

        def set(self, username: str, value: str) -> None:
            threads.append(threading.get_ident())
            super().set(username, value)

    store = KeyringStore(Recording("credproxy-test-threads"), tmp_path / "index.lock")
    await store.save_token("openai", "default", TOKEN)
    await store.get_token("openai", "default")
    await store.list_providers()
    assert threads
    assert threading.get_ident() not in threads


def test_factory_opens_the_keyring_backend(gnome_keyring: KeyringSession) -> None:
    assert isinstance(open_store("keyring", settings_of({})), KeyringStore)


def test_locked_keyring_gives_the_unlock_message(locked_keyring: KeyringSession) -> None:
    with pytest.raises(KeyringLockedError) as caught:
        open_store("keyring", settings_of({}))
    assert str(caught.value) == LOCKED_MESSAGE


async def test_locked_keyring_fails_reads_and_writes_with_the_unlock_message(
    locked_keyring: KeyringSession, tmp_path: Path
) -> None:
    store = KeyringStore(SecretService(), tmp_path / "index.lock")
    with pytest.raises(KeyringLockedError, match="Unlock your keyring on the host and retry"):
        await store.get_key("k")
    with pytest.raises(KeyringLockedError, match="Unlock your keyring on the host and retry"):
        await store.set_key("k", "v")


def test_bus_without_a_keyring_says_to_use_the_file_store(
    bus_without_keyring: KeyringSession,
) -> None:
    with pytest.raises(KeyringUnavailableError) as caught:
        open_store("keyring", settings_of({}))
    assert str(caught.value).startswith(UNAVAILABLE_MESSAGE)


def test_file_store_asked_for_a_keyring_key_without_a_keyring_says_use_a_key_file(
    bus_without_keyring: KeyringSession, tmp_path: Path
) -> None:
    with pytest.raises(KeyringUnavailableError, match='key_source = "keyfile"'):
        FileStore(tmp_path / "store", KeySettings(source="keyring"))


def test_no_session_bus_at_all_says_to_use_the_file_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path / 'no-bus'}")
    with pytest.raises(KeyringUnavailableError) as caught:
        open_store("keyring", settings_of({}))
    assert str(caught.value).startswith(UNAVAILABLE_MESSAGE)
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS")
    with pytest.raises(KeyringUnavailableError):
        SecretService().check()


# --- the file store's data key held in the keyring ------------------------------------


async def test_file_store_keeps_its_data_key_in_the_keyring_not_on_disk(
    service: SecretService, tmp_path: Path
) -> None:
    settings = KeySettings(source="keyring", secret_service=lambda: service)
    store = FileStore(tmp_path / "store", settings)
    await store.save_token("openai", "default", TOKEN)
    await store.close()
    assert store.key_source == "keyring"
    assert not (tmp_path / "store" / KEY_FILE_NAME).exists()
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == sorted(
        [DATA_FILE, "credentials.lock"]
    )
    reopened = FileStore(tmp_path / "store", KeySettings(secret_service=lambda: service))
    assert reopened.key_source == "keyring"
    assert await reopened.get_token("openai", "default") == TOKEN
    await reopened.close()


async def test_auto_key_source_prefers_a_working_keyring(
    service: SecretService, tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "store", KeySettings(secret_service=lambda: service))
    assert store.key_source == "keyring"
    await store.close()


async def test_auto_key_source_falls_back_to_a_key_file_without_a_keyring(
    bus_without_keyring: KeyringSession, tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "store", KeySettings())
    assert store.key_source == "keyfile"
    assert (tmp_path / "store" / KEY_FILE_NAME).exists()
    await store.close()


async def test_keyring_keyed_store_with_its_keyring_entry_gone_says_what_to_do(
    service: SecretService, tmp_path: Path
) -> None:
    settings = KeySettings(source="keyring", secret_service=lambda: service)
    store = FileStore(tmp_path / "store", settings)
    await store.close()
    for username in list(_items(service)):
        service.delete(username)
    with pytest.raises(StoreError, match="missing from the keyring"):
        FileStore(tmp_path / "store", settings)


async def test_keyring_keyed_store_on_a_locked_keyring_gives_the_unlock_message(
    gnome_keyring: KeyringSession,
    locked_keyring: KeyringSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Created against the unlocked keyring, reopened while only a locked one answers."""
    bus = "DBUS_SESSION_BUS_ADDRESS"
    monkeypatch.setenv(bus, gnome_keyring.env[bus])
    settings = KeySettings(source="keyring")
    store = FileStore(tmp_path / "store", settings)
    await store.close()
    monkeypatch.setenv(bus, locked_keyring.env[bus])
    with pytest.raises(KeyringLockedError) as caught:
        FileStore(tmp_path / "store", KeySettings())
    assert str(caught.value) == LOCKED_MESSAGE
    monkeypatch.setenv(bus, f"unix:path={tmp_path / 'gone'}")
    with pytest.raises(KeyringUnavailableError, match=r"kept in the OS keyring.*DBUS_SESSION"):
        FileStore(tmp_path / "store", KeySettings())


def _items(service: SecretService) -> list[str]:
    import secretstorage

    connection = secretstorage.dbus_init()
    try:
        collection = secretstorage.get_default_collection(connection)
        return [
            item.get_attributes().get("username", "")
            for item in collection.search_items({"service": service.service})
        ]
    finally:
        connection.close()


async def test_concurrent_saves_from_two_store_instances_keep_every_index_entry(
    service: SecretService, tmp_path: Path
) -> None:
    first = KeyringStore.open(service, tmp_path / "index.lock")
    second = KeyringStore.open(SecretService(service.service), tmp_path / "index.lock")
    await asyncio.gather(
        *(first.save_token("one", f"b{index}", TOKEN) for index in range(6)),
        *(second.save_token("two", f"b{index}", TOKEN) for index in range(6)),
    )
    expected = [f"b{index}" for index in range(6)]
    assert await first.list_buckets("one") == expected
    assert await first.list_buckets("two") == expected


# --- importing newer LLxprt's keyring items --------------------------------------------


def _add_rust_keyring_item(service: str, username: str, secret: str) -> None:
    """An item shaped the way keyring-rs (LLxprt's @napi-rs/keyring) writes it."""
    import secretstorage

    connection = secretstorage.dbus_init()
    try:
        collection = secretstorage.get_default_collection(connection)
        attributes = {
            "service": service,
            "username": username,
            "target": "default",
            "application": "rust-keyring",
        }
        collection.create_item(f"{username}@{service}", attributes, secret.encode(), replace=True)
    finally:
        connection.close()


async def test_import_llxprt_reads_and_removes_llxprt_keyring_items(
    gnome_keyring: KeyringSession, tmp_path: Path
) -> None:
    from credproxy.migrate import import_llxprt

    suffix = "-import-test"
    llxprt_token = {**TOKEN, "expiry": 1_900_000_000_000, "scope": None}
    _add_rust_keyring_item(f"llxprt-code-oauth{suffix}", "gemini:work", json.dumps(llxprt_token))
    _add_rust_keyring_item(f"llxprt-code-oauth{suffix}", "__securestore_probe__1a2b", "probe")
    _add_rust_keyring_item(f"llxprt-code-oauth{suffix}", "bad name:x", json.dumps(TOKEN))
    SecretService(f"llxprt-code-provider-keys{suffix}").set("openai", "sk-from-llxprt-keyring\n")

    store = FileStore(tmp_path / "store", KeySettings(source="keyfile"))
    items = await import_llxprt(
        store,
        tmp_path / "no-llxprt-dir",
        from_keyring=True,
        delete_originals=True,
        secret_service=lambda name: SecretService(name + suffix),
    )
    report = {(item.kind, item.name, item.status) for item in items}
    assert report == {
        ("token", "gemini/work", "imported"),
        ("key", "openai", "imported"),
        ("token", "", "skipped"),
    }
    assert await store.get_token("gemini", "work") == {**TOKEN, "scope": None}
    assert await store.get_key("openai") == "sk-from-llxprt-keyring"
    await store.close()
    remaining = [name for name, _ in SecretService(f"llxprt-code-oauth{suffix}").search()]
    assert remaining == ["__securestore_probe__1a2b", "bad name:x"]
    assert SecretService(f"llxprt-code-provider-keys{suffix}").search() == []
    for item in items:
        assert "sk-from-llxprt" not in json.dumps(item.as_dict())
