"""Choosing a backend: always explicit, never left to ``keyring``'s own guess.

``[store]`` in the config file:
  backend     file (default) | keyring | memory | redis
  path        store directory of the file backend (default: the user data
              directory); the environment variable CREDPROXY_STORE_DIR wins
  key_source  auto (default) | keyring | keyfile | passphrase; env CREDPROXY_KEY_SOURCE
  key_file    the data key file (default: store.key in the store directory);
              env CREDPROXY_KEY_FILE
The passphrase comes from CREDPROXY_PASSPHRASE, else from a prompt on a terminal.
The Redis backend's own keys (url, username, password_file, ...) are read by
``store.redis.RedisSettings``; its data key comes from the same sources, with
"auto" meaning a key file (``redis-<prefix>.key`` in the store directory),
since every host of a fleet needs the same key.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

from credproxy.store.base import CredentialStore, StoreError
from credproxy.store.memory import MemoryStore

if TYPE_CHECKING:
    from credproxy.settings import Settings, StoreSettings

DEFAULT_BACKEND: Final = "file"
STORE_DIR_ENV: Final = "CREDPROXY_STORE_DIR"
KEY_SOURCE_ENV: Final = "CREDPROXY_KEY_SOURCE"
KEY_FILE_ENV: Final = "CREDPROXY_KEY_FILE"
PASSPHRASE_ENV: Final = "CREDPROXY_PASSPHRASE"


def _setting(configured: str | None, env: str) -> str | None:
    return os.environ.get(env) or configured or None


def store_directory(settings: Settings | StoreSettings) -> Path:
    """Where the file store lives: env, then ``[store] path``, then the user data dir."""
    section = _section(settings)
    configured = _setting(section.path, STORE_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    from platformdirs import user_data_path

    return user_data_path("credproxy")


def passphrase_from_env_or_prompt(new: bool) -> str:
    """The store passphrase: CREDPROXY_PASSPHRASE, else a hidden prompt on a terminal."""
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value
    if not sys.stdin.isatty():
        raise StoreError(
            f"the store is protected by a passphrase: set {PASSPHRASE_ENV} or run in a terminal"
        )
    import getpass

    first = getpass.getpass("credproxy store passphrase: ")
    if new and getpass.getpass("repeat the passphrase: ") != first:
        raise StoreError("the passphrases differ; nothing was created")
    return first


def _section(settings: Settings | StoreSettings) -> StoreSettings:
    from credproxy.settings import Settings

    return settings.store if isinstance(settings, Settings) else settings


def backend_name(backend: str | None, settings: Settings | StoreSettings) -> str:
    """The backend named on the command line, else in ``[store]``, else the default."""
    return backend or _section(settings).backend or DEFAULT_BACKEND


def open_store(backend: str | None, settings: Settings | StoreSettings) -> CredentialStore:
    """Open the backend named on the command line, else in ``[store]`` of the config."""
    section = _section(settings)
    name = backend_name(backend, section)
    if name == "memory":
        return MemoryStore()
    if name in ("file", "redis"):
        from credproxy.store.keysource import KeySettings

        key_file = _setting(section.key_file, KEY_FILE_ENV)
        source = _setting(section.key_source, KEY_SOURCE_ENV) or "auto"
        key_settings = KeySettings(
            source=source,
            key_file=Path(key_file).expanduser() if key_file else None,
            passphrase=passphrase_from_env_or_prompt,
        )
        if name == "file":
            from credproxy.store.file import FileStore

            return FileStore(store_directory(section), key_settings)
        from credproxy.store.redis import RedisSettings, RedisStore

        redis = RedisSettings.from_store_settings(section)
        if source == "auto":
            key_settings.source = "keyfile"
        if key_settings.key_file is None:
            key_settings.key_file = store_directory(section) / f"redis-{redis.prefix}.key"
        return RedisStore(redis, key_settings, store_directory(section))
    if name == "keyring":
        from credproxy.store.keyring import KeyringStore

        return KeyringStore.open()
    from credproxy.settings import STORE_BACKENDS

    raise StoreError(f"unknown store backend {name!r}; choose one of: {', '.join(STORE_BACKENDS)}")
