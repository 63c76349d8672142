"""The OS keyring backend: one Secret Service item per credential.

Items live under the service name ``credproxy`` with the user name
``token/<provider>/<bucket>`` or ``key/<name>``. The keyring API cannot list
items, so an index item (``index``) names them; it is updated after the item
itself under a cross-process file lock, so listing never misses a saved
credential. Every call blocks on D-Bus and therefore runs in a thread. There is
no cache: a value saved by another process is seen on the next read.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from filelock import FileLock, Timeout

from credproxy.store.base import CorruptRecordError, StoreError, Token, validate_name
from credproxy.store.file import key_record_id, token_record_id
from credproxy.store.secretservice import SecretService

INDEX_ITEM: Final = "index"
LOCK_TIMEOUT_S: Final = 10.0


def default_lock_path() -> Path:
    """In the session's runtime directory when there is one, else the user data directory."""
    from platformdirs import user_data_path

    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "credproxy" if runtime else user_data_path("credproxy")
    return base / "keyring-index.lock"


class KeyringStore:
    """A ``CredentialStore`` in the freedesktop Secret Service (gnome-keyring, KWallet)."""

    def __init__(
        self,
        service: SecretService | None = None,
        lock_path: Path | None = None,
    ) -> None:
        self._service = service or SecretService()
        path = lock_path or default_lock_path()
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {path.parent}: {exc.strerror}") from None
        self._index_lock = FileLock(path, timeout=LOCK_TIMEOUT_S, mode=0o600)
        self._thread_lock = threading.Lock()

    @classmethod
    def open(
        cls, service: SecretService | None = None, lock_path: Path | None = None
    ) -> KeyringStore:
        """Open and probe, so a locked or absent keyring fails at startup with what to do."""
        store = cls(service, lock_path)
        store._service.check()
        return store

    # --- blocking helpers (run in a thread) -------------------------------------

    def _index(self) -> dict[str, list[str]]:
        raw = self._service.get(INDEX_ITEM)
        if raw is None:
            return {"records": []}
        try:
            data = json.loads(raw)
            records = data["records"]
            if not isinstance(records, list) or not all(isinstance(r, str) for r in records):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise StoreError(
                "the credproxy index item in the keyring is damaged; delete the 'credproxy' "
                "'index' entry with your keyring tool and save the credentials again"
            ) from None
        return {"records": records}

    def _update_index(self, change: Callable[[set[str]], bool]) -> None:
        with self._thread_lock:
            try:
                self._index_lock.acquire()
            except Timeout:
                raise StoreError(
                    "the keyring index stayed locked by another credproxy process; retry"
                ) from None
            try:
                records = set(self._index()["records"])
                if change(records):
                    self._service.set(INDEX_ITEM, json.dumps({"records": sorted(records)}))
            finally:
                self._index_lock.release()

    def _get(self, record_id: str) -> Any:
        raw = self._service.get(record_id)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise CorruptRecordError(
                f"the keyring entry {record_id!r} is damaged; remove it and save it again"
            ) from None

    def _set(self, record_id: str, value: Any) -> None:
        self._service.set(record_id, json.dumps(value, separators=(",", ":")))

        def add(records: set[str]) -> bool:
            if record_id in records:
                return False
            records.add(record_id)
            return True

        self._update_index(add)

    def _remove(self, record_id: str) -> bool:
        removed = self._service.delete(record_id)

        def drop(records: set[str]) -> bool:
            if record_id not in records:
                return False
            records.discard(record_id)
            return True

        self._update_index(drop)
        return removed

    def _ids(self) -> list[str]:
        return self._index()["records"]

    # --- the CredentialStore protocol --------------------------------------------

    async def get_token(self, provider: str, bucket: str) -> Token | None:
        value = await asyncio.to_thread(self._get, token_record_id(provider, bucket))
        if value is not None and not isinstance(value, dict):
            raise CorruptRecordError(
                f"the keyring entry for token {provider} (bucket {bucket}) is not a token; "
                f"remove it with `credproxy token rm {provider} --bucket {bucket}`"
            )
        return value

    async def save_token(self, provider: str, bucket: str, token: Token) -> None:
        validate_name("provider", provider)
        validate_name("bucket", bucket)
        await asyncio.to_thread(self._set, token_record_id(provider, bucket), dict(token))

    async def remove_token(self, provider: str, bucket: str) -> bool:
        return await asyncio.to_thread(self._remove, token_record_id(provider, bucket))

    async def list_providers(self) -> list[str]:
        ids = await asyncio.to_thread(self._ids)
        return sorted(
            {p[1] for p in (i.split("/") for i in ids) if len(p) == 3 and p[0] == "token"}
        )

    async def list_buckets(self, provider: str) -> list[str]:
        ids = await asyncio.to_thread(self._ids)
        return sorted(
            p[2]
            for p in (i.split("/") for i in ids)
            if len(p) == 3 and p[0] == "token" and p[1] == provider
        )

    async def get_key(self, name: str) -> str | None:
        value = await asyncio.to_thread(self._get, key_record_id(name))
        if value is None:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("value"), str):
            raise CorruptRecordError(
                f"the keyring entry for API key {name} is damaged; "
                f"set it again with `credproxy key set {name}`"
            )
        key: str = value["value"]
        return key

    async def set_key(self, name: str, value: str) -> None:
        validate_name("key", name)
        if not isinstance(value, str) or not value:
            raise ValueError("an API key must be a non-empty string")
        await asyncio.to_thread(self._set, key_record_id(name), {"value": value})

    async def remove_key(self, name: str) -> bool:
        return await asyncio.to_thread(self._remove, key_record_id(name))

    async def list_keys(self) -> list[str]:
        ids = await asyncio.to_thread(self._ids)
        return sorted(i[4:] for i in ids if i.startswith("key/") and len(i) > 4)

    async def close(self) -> None:
        return None
