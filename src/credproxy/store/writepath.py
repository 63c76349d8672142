"""The one write path for stored credentials: read-merge-write under the record's lock.

Every change to a stored token or key (a sandbox's ``save_token``, a refresh,
a login, logout, import, ``key set``/``rm``, migration) goes through
``WritePath``: it takes the record's lock, reads the freshest stored record,
computes the new one from it and writes it before letting go. The lock is held
in process (one ``asyncio.Lock`` per record, per event loop) and across
processes (one ``filelock`` file per record in a ``locks`` directory beside the
store; the kernel releases it when its holder dies), so two daemons and the
host CLI sharing a store never lose an acknowledged update. A backend shared
across hosts brings its own cross-host locks as ``record_locks`` (the Redis
store's leases), used instead of lock files.

Refreshes take a second, separate lock per record (``refresh_lock``) for the
whole provider call, so a slow provider never holds up a sandbox's save or a
logout; the refresh's own write is a compare-and-set against the refresh token
it used (``apply_refresh``), so a logout or a new login that happened meanwhile
wins.

Every store call made here is bounded (``DEFAULT_STORE_TIMEOUT_S``): a request
is also bounded by the server, but a login finishing in the background or a
renewal is not, and a hung keyring must not stall them for good. A call that
overruns fails its caller with ``StoreTimeoutError``, while the call itself
runs on (a keyring or file call in a thread cannot be stopped) and keeps the
record's lock until it ends, so a late write still lands under the lock and
nobody reads the record before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from filelock import FileLock, Timeout

from credproxy.store.base import CorruptRecordError, CredentialStore, StoreError, Token
from credproxy.tokens import (
    HOST_METADATA,
    REFRESH_TOKEN,
    check_merged_size,
    from_sandbox,
    merge,
)

LOCK_DIR: Final = "locks"
DEFAULT_LOCK_TIMEOUT_S: Final = 15.0
DEFAULT_STORE_TIMEOUT_S: Final = 15.0
_POLL_S: Final = 0.01
_POLL_MAX_S: Final = 0.05


T = TypeVar("T")


class BucketLimitError(StoreError):
    """A sandbox tried to create one bucket more than a provider may have."""


class StoreTimeoutError(StoreError):
    """The store did not answer in time (a hung keyring, a stalled disk)."""


class _StoreCalls:
    """Store calls made while holding one record's lock, each bounded in time."""

    def __init__(self, store_timeout_s: float) -> None:
        self._timeout_s = store_timeout_s
        self.unfinished: asyncio.Future[Any] | None = None

    async def __call__(self, call: Awaitable[T]) -> T:
        task = asyncio.ensure_future(call)
        self.unfinished = task
        try:
            async with asyncio.timeout(self._timeout_s):
                result = await asyncio.shield(task)
        except TimeoutError:
            if task.done():  # the store's own TimeoutError, not our bound
                raise
            task.add_done_callback(_retrieve)
            raise _store_timeout(self._timeout_s) from None
        self.unfinished = None
        return result


def _store_timeout(timeout_s: float) -> StoreTimeoutError:
    return StoreTimeoutError(
        f"the credential store did not answer within {timeout_s:g} s (a locked or hung "
        "keyring, or a stalled disk); check it on the host and retry"
    )


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a late call's outcome as seen: its caller has already had its error."""
    if not future.cancelled():
        future.exception()


class RecordLocks:
    """One lock per record name, in process and (with a directory) across processes."""

    def __init__(
        self, directory: Path | None, *, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
    ) -> None:
        self.directory = directory
        self._timeout_s = timeout_s
        self._local: dict[tuple[int, str], tuple[asyncio.Lock, list[int]]] = {}
        self._files: dict[tuple[int, str], FileLock] = {}
        if directory is not None:
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the lock directory {directory}: {exc.strerror}"
                ) from None

    def _file(self, key: tuple[int, str], name: str) -> FileLock | None:
        if self.directory is None:
            return None
        lock = self._files.get(key)
        if lock is None:
            # thread_local=False: the in-process asyncio lock already serializes
            # holders, and the release may run in another thread than the acquire.
            lock = FileLock(self.directory / f"{name}.lock", mode=0o600, thread_local=False)
            self._files[key] = lock
        return lock

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        """Hold ``name`` in this process and in every other one sharing the directory.

        The file lock is polled without blocking, so waiting never occupies a
        thread and a cancelled waiter leaves nothing acquired behind.
        """
        key = (id(asyncio.get_running_loop()), name)
        entry = self._local.get(key)
        if entry is None:
            entry = self._local[key] = (asyncio.Lock(), [0])
        local, users = entry
        users[0] += 1
        try:
            deadline = time.monotonic() + self._timeout_s
            try:
                async with asyncio.timeout(self._timeout_s):
                    await local.acquire()
            except TimeoutError:
                raise self._stuck(name) from None
            try:
                file_lock = self._file(key, name)
                if file_lock is not None:
                    await self._acquire_file(file_lock, name, deadline)
                try:
                    yield
                finally:
                    if file_lock is not None:
                        file_lock.release()
            finally:
                local.release()
        finally:
            users[0] -= 1
            if not users[0]:
                # The table only holds records someone is using right now.
                self._local.pop(key, None)
                self._files.pop(key, None)

    async def _acquire_file(self, lock: FileLock, name: str, deadline: float) -> None:
        pause = _POLL_S
        while True:
            try:
                lock.acquire(blocking=False)
                return
            except Timeout:
                pass
            except OSError as exc:
                raise StoreError(
                    f"cannot take the lock {self.directory}/{name}.lock: {exc.strerror}"
                ) from None
            if time.monotonic() >= deadline:
                raise self._stuck(name)
            await asyncio.sleep(pause)
            pause = min(pause * 2, _POLL_MAX_S)

    def _stuck(self, name: str) -> StoreError:
        where = f" (lock file {self.directory / (name + '.lock')})" if self.directory else ""
        return StoreError(
            f"the stored credential stayed locked by another credproxy process for "
            f"{self._timeout_s:g} s{where}; retry"
        )


def token_lock(provider: str, bucket: str) -> str:
    """Lock names use ',' which no provider, bucket or key name may contain."""
    return f"token,{provider},{bucket}"


def refresh_lock(provider: str, bucket: str) -> str:
    return f"refresh,{provider},{bucket}"


def key_lock(name: str) -> str:
    return f"key,{name}"


class LockTable(Protocol):
    """What ``WritePath`` needs of record locks: ``RecordLocks`` (lock files), or a
    backend's own, such as the Redis store's leases (``store.redis.RedisLeases``)."""

    def hold(self, name: str) -> contextlib.AbstractAsyncContextManager[None]: ...


def store_locks(store: object) -> LockTable:
    """The backend's own cross-host locks (``record_locks``) when it has them, else
    lock files beside the store (or in-process locks for a private store)."""
    own = getattr(store, "record_locks", None)
    if own is not None and callable(getattr(own, "hold", None)):
        locks: LockTable = own
        return locks
    return RecordLocks(lock_directory(store))


def lock_directory(store: object) -> Path | None:
    """Where a backend keeps its lock files; None for a store private to this process."""
    directory = getattr(store, "record_lock_directory", None)
    return directory if isinstance(directory, Path) else None


class WritePath:
    """Every change to ``store``'s credentials; see the module docstring."""

    def __init__(
        self,
        store: CredentialStore,
        locks: LockTable | None = None,
        *,
        store_timeout_s: float = DEFAULT_STORE_TIMEOUT_S,
    ) -> None:
        self.store = store
        self.locks = locks if locks is not None else store_locks(store)
        self.store_timeout_s = store_timeout_s
        self._releasing: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def holding(self, name: str) -> AsyncIterator[_StoreCalls]:
        """Hold the lock ``name`` and make bounded store calls through the value given.

        A call still running when the block ends (it overran its bound, or the caller
        was cancelled) keeps the lock until it finishes, released by a task of its own.
        """
        held = contextlib.AsyncExitStack()
        await held.enter_async_context(self.locks.hold(name))
        calls = _StoreCalls(self.store_timeout_s)
        try:
            yield calls
        finally:
            late = calls.unfinished
            if late is None or late.done():
                await held.aclose()
            else:
                releasing = asyncio.get_running_loop().create_task(_release_after(late, held))
                self._releasing.add(releasing)
                releasing.add_done_callback(self._releasing.discard)

    async def read_token(self, provider: str, bucket: str) -> Token | None:
        """The stored token, read without the lock (no decision to write rests on it)."""
        return await _StoreCalls(self.store_timeout_s)(self.store.get_token(provider, bucket))

    async def read_token_locked(self, provider: str, bucket: str) -> Token | None:
        """The stored token once no write of it is under way, a late one included."""
        async with self.holding(token_lock(provider, bucket)) as call:
            return await call(self.store.get_token(provider, bucket))

    # --- tokens -------------------------------------------------------------------------

    async def update_token(
        self,
        provider: str,
        bucket: str,
        change: Callable[[Token | None], Token | None],
        *,
        replace_damaged: bool = False,
    ) -> Token | None:
        """Apply ``change`` to the freshest stored token under its lock and store the
        result (None removes). ``change`` returning its argument unchanged writes
        nothing. A damaged record reads as None when ``replace_damaged``."""
        async with self.holding(token_lock(provider, bucket)) as call:
            try:
                current = await call(self.store.get_token(provider, bucket))
            except CorruptRecordError:
                if not replace_damaged:
                    raise
                current = None
                damaged = True
            else:
                damaged = False
            new = change(None if current is None else dict(current))
            if new is None:
                if current is not None or damaged:
                    await call(self.store.remove_token(provider, bucket))
                return None
            if current is not None and new == current:
                return new
            await call(self.store.save_token(provider, bucket, new))
            return new

    async def save_from_sandbox(
        self, provider: str, bucket: str, raw: Mapping[str, Any], *, max_buckets: int
    ) -> Token:
        """A sandbox's ``save_token``: sanitized at any depth, merged into the stored
        token so the host's refresh token and metadata stay. Returns the stored token."""
        incoming = from_sandbox(raw)
        async with self.holding(token_lock(provider, bucket)) as call:
            stored = await call(self.store.get_token(provider, bucket))
            if stored is None and len(await call(self.store.list_buckets(provider))) >= max_buckets:
                raise BucketLimitError(
                    f"provider {provider!r} already has {max_buckets} buckets; remove one on "
                    "the host before saving a new bucket"
                )
            merged = merge(stored, incoming)
            check_merged_size(merged)
            if merged != stored:
                await call(self.store.save_token(provider, bucket, merged))
            return merged

    async def save_login(self, provider: str, bucket: str, token: Token) -> Token:
        """A completed login: merged into the stored token (a damaged one is replaced);
        the previous refresh outcome no longer describes this grant."""

        def change(stored: Token | None) -> Token:
            merged = merge(stored, token)
            merged.pop(HOST_METADATA, None)
            return merged

        result = await self.update_token(provider, bucket, change, replace_damaged=True)
        assert result is not None
        return result

    async def replace_token(self, provider: str, bucket: str, token: Token) -> Token:
        """An import: the new token replaces the stored one whole (another account, maybe)."""
        fresh = {k: v for k, v in token.items() if k != HOST_METADATA}
        await self.update_token(provider, bucket, lambda _: fresh, replace_damaged=True)
        return fresh

    async def remove_token(self, provider: str, bucket: str) -> bool:
        """Logout: gone under the lock, so a refresh finishing later sees no record
        and writes nothing (``apply_refresh``)."""
        async with self.holding(token_lock(provider, bucket)) as call:
            return await call(self.store.remove_token(provider, bucket))

    async def apply_refresh(
        self, provider: str, bucket: str, used: str, fresh: Token, *, now: float
    ) -> Token | None:
        """Store a refresh result unless the grant it came from is gone.

        The write happens only while the stored refresh token is still ``used``:
        after a logout (no record) the answer is None and nothing is written,
        after a new login the newer stored token is returned unchanged.
        """
        outcome: list[Token | None] = []

        def change(stored: Token | None) -> Token | None:
            if stored is None or stored.get(REFRESH_TOKEN) != used:
                outcome.append(stored)
                return stored
            merged = merge(stored, fresh)
            merged[HOST_METADATA] = _metadata(stored, refreshed_at=now, outcome="ok", at=now)
            outcome.append(merged)
            return merged

        await self.update_token(provider, bucket, change)
        return outcome[0] if outcome else None

    async def record_refresh_failure(
        self, provider: str, bucket: str, used: str, code: str, message: str, *, now: float
    ) -> None:
        """Remember a failed refresh for ``credproxy status``, if the grant is still the same."""

        def change(stored: Token | None) -> Token | None:
            if stored is None or stored.get(REFRESH_TOKEN) != used:
                return stored
            updated = dict(stored)
            updated[HOST_METADATA] = _metadata(
                stored, outcome="failed", at=now, code=code, message=message
            )
            return updated

        await self.update_token(provider, bucket, change)

    # --- keys ---------------------------------------------------------------------------

    async def set_key(self, name: str, value: str) -> None:
        async with self.holding(key_lock(name)) as call:
            await call(self.store.set_key(name, value))

    async def remove_key(self, name: str) -> bool:
        async with self.holding(key_lock(name)) as call:
            return await call(self.store.remove_key(name))


async def _release_after(late: asyncio.Future[Any], held: contextlib.AsyncExitStack) -> None:
    """Let go of a lock once the store call that overran under it has ended."""
    try:
        await asyncio.wait([late])
    finally:
        await held.aclose()


def _metadata(stored: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """The record's host metadata with the last refresh outcome replaced."""
    previous = stored.get(HOST_METADATA)
    meta = dict(previous) if isinstance(previous, Mapping) else {}
    refreshed_at = changes.pop("refreshed_at", None)
    if refreshed_at is not None:
        meta["refreshed_at"] = refreshed_at
    meta["last_refresh"] = {k: v for k, v in changes.items() if v is not None}
    return meta


def host_metadata(token: Mapping[str, Any]) -> dict[str, Any]:
    meta = token.get(HOST_METADATA)
    return dict(meta) if isinstance(meta, Mapping) else {}


_PATHS: weakref.WeakKeyDictionary[Any, WritePath] = weakref.WeakKeyDictionary()


def write_path(store: CredentialStore) -> WritePath:
    """The write path of ``store``: one per store object, so everything in this process
    that writes through the same store shares its in-process locks."""
    found = _PATHS.get(store)
    if found is None:
        found = WritePath(store)
        _PATHS[store] = found
    return found
