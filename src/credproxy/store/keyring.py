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
from pathlib import Path
from typing import Any, Final

from filelock import FileLock, Timeout

from credproxy.store.base import StoreError
from credproxy.store.records import RecordStore, corrupt
from credproxy.store.secretservice import SecretService

INDEX_ITEM: Final = "index"
LOCK_TIMEOUT_S: Final = 10.0


def default_lock_path() -> Path:
    """In the session's runtime directory when there is one, else the user data directory."""
    from platformdirs import user_data_path

    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "credproxy" if runtime else user_data_path("credproxy")
    return base / "keyring-index.lock"


class KeyringStore(RecordStore):
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
        self.record_lock_directory = path.parent / "locks"
        """Where ``store.writepath`` keeps the per-credential lock files."""
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

    def _update_index(self, record_id: str, *, listed: bool) -> None:
        """List or unlist ``record_id``; the index item is rewritten only when that changes it."""
        with self._thread_lock:
            try:
                self._index_lock.acquire()
            except Timeout:
                raise StoreError(
                    "the keyring index stayed locked by another credproxy process; retry"
                ) from None
            try:
                records = set(self._index()["records"])
                if (record_id in records) != listed:
                    records ^= {record_id}
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
            raise corrupt(record_id, "in the keyring is damaged") from None

    def _put(self, record_id: str, value: dict[str, Any] | None) -> bool:
        """The item first, then the index: listing never misses a saved credential."""
        if value is None:
            changed = self._service.delete(record_id)
        else:
            self._service.set(record_id, json.dumps(value, separators=(",", ":")))
            changed = True
        self._update_index(record_id, listed=value is not None)
        return changed

    def _ids(self) -> list[str]:
        return self._index()["records"]

    # --- the record operations of RecordStore -------------------------------------

    async def _load_record(self, record_id: str) -> Any:
        return await asyncio.to_thread(self._get, record_id)

    async def _store_record(self, record_id: str, value: dict[str, Any] | None) -> bool:
        return await asyncio.to_thread(self._put, record_id, value)

    async def _record_ids(self) -> list[str]:
        return await asyncio.to_thread(self._ids)

    async def close(self) -> None:
        return None
