"""open_store: the backend and the file store's location are always chosen explicitly."""

from __future__ import annotations

from pathlib import Path

import pytest

from credproxy.settings import ConfigError
from credproxy.store.base import StoreError
from credproxy.store.factory import open_store, store_directory
from credproxy.store.file import DATA_FILE, FileStore
from credproxy.store.keysource import KEY_FILE_NAME
from credproxy.store.memory import MemoryStore
from tests.fixtures.settings import settings_of


async def test_file_is_the_default_backend(tmp_path: Path) -> None:
    config = settings_of({"store": {"path": str(tmp_path / "s"), "key_source": "keyfile"}})
    store = open_store(None, config)
    assert isinstance(store, FileStore)
    assert (tmp_path / "s" / DATA_FILE).exists()
    await store.close()


async def test_config_backend_and_path_are_used(tmp_path: Path) -> None:
    config = settings_of(
        {"store": {"backend": "file", "path": str(tmp_path / "cfg"), "key_source": "keyfile"}}
    )
    store = open_store(None, config)
    assert isinstance(store, FileStore)
    assert store.directory == tmp_path / "cfg"
    await store.close()


async def test_command_line_backend_wins_over_the_config(tmp_path: Path) -> None:
    config = settings_of({"store": {"backend": "file", "path": str(tmp_path / "cfg")}})
    assert isinstance(open_store("memory", config), MemoryStore)
    assert not (tmp_path / "cfg").exists()


async def test_environment_overrides_the_config_path_and_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDPROXY_STORE_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("CREDPROXY_KEY_SOURCE", "keyfile")
    monkeypatch.setenv("CREDPROXY_KEY_FILE", str(tmp_path / "k" / "data.key"))
    store = open_store("file", settings_of({"store": {"path": str(tmp_path / "cfg")}}))
    assert isinstance(store, FileStore)
    assert store.directory == tmp_path / "env"
    assert (tmp_path / "k" / "data.key").exists()
    assert not (tmp_path / "env" / KEY_FILE_NAME).exists()
    assert not (tmp_path / "cfg").exists()
    await store.close()


async def test_passphrase_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDPROXY_PASSPHRASE", "a long enough passphrase")
    config = settings_of({"store": {"path": str(tmp_path / "p"), "key_source": "passphrase"}})
    store = open_store("file", config)
    await store.set_key("k", "v-secret")
    await store.close()
    reopened = open_store("file", config)
    assert await reopened.get_key("k") == "v-secret"
    await reopened.close()
    monkeypatch.setenv("CREDPROXY_PASSPHRASE", "another passphrase")
    with pytest.raises(StoreError, match="wrong passphrase"):
        open_store("file", config)


def test_default_directory_is_the_user_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert store_directory(settings_of({})) == tmp_path / "xdg" / "credproxy"


def test_unknown_backend_lists_the_choices() -> None:
    with pytest.raises(StoreError, match="choose one of: file, keyring, memory"):
        open_store("sqlite", settings_of({}))


def test_store_setting_of_the_wrong_type_is_reported() -> None:
    with pytest.raises(ConfigError, match=r"\[store\] path: expected `str`, got `int`"):
        settings_of({"store": {"path": 42}})
    with pytest.raises(ConfigError, match="store: expected `object`, got `str`"):
        settings_of({"store": "file"})
