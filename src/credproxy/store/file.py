"""The encrypted file store: the default backend, one JSON file of sealed records.

Layout of the store directory (0700):
  credentials.json  header (store id, key source, key check) and one
                    AES-256-GCM record per credential, keyed by its identity
                    (``token/<provider>/<bucket>`` or ``key/<name>``), which is
                    also the record's associated data.
  credentials.lock  the cross-process lock every replacement of the file holds.
  locks/            one lock file per credential, held by ``store.writepath``
                    for each read-merge-write of that credential.
  store.key         the data key, when the key source is a key file.

Writes replace the file atomically (temp file in the same directory, fsync,
rename, fsync of the directory), so a reader or a crash sees the old file or
the new one, never a mix. Reads take no lock: the file is re-read only when
``stat`` says it changed, and this process keeps the file it loaded open so
its inode cannot be reused by a newer file; a write by any process is seen on
the next read. Records are decrypted lazily and cached by ciphertext.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import os
import secrets
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
from filelock import FileLock, Timeout

from credproxy.store.base import StoreError
from credproxy.store.keysource import KeySettings
from credproxy.store.records import RecordStore, corrupt
from credproxy.store.sealing import Sealer, decode_value, new_sealer, open_sealer

DATA_FILE: Final = "credentials.json"
LOCK_FILE: Final = "credentials.lock"
FORMAT: Final = "credproxy-store"
FORMAT_VERSION: Final = 1
TEMP_PREFIX: Final = f".{DATA_FILE}."
TEMP_SUFFIX: Final = ".tmp"
DEFAULT_LOCK_TIMEOUT_S: Final = 10.0
WRITE_BATCH: Final = 256
"""Records encoded per piece of a write: about 400 KB of file, whatever the store's size."""


_Signature = tuple[int, int, int, int]


@dataclass
class _Snapshot:
    """One loaded version of the file; replaced whole, never edited in place."""

    signature: _Signature | None
    records: dict[str, Any]
    fd: int | None = None
    plain: dict[str, tuple[Any, bytes]] = field(default_factory=dict)


def _signature(info: os.stat_result) -> _Signature:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


class FileStore(RecordStore):
    """A ``CredentialStore`` in one encrypted file; safe to share between processes."""

    def __init__(
        self,
        directory: Path,
        key_settings: KeySettings | None = None,
        *,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / DATA_FILE
        self._settings = key_settings or KeySettings()
        self._lock_timeout_s = lock_timeout_s
        self._write_lock = threading.Lock()
        self._install_lock = threading.Lock()
        self._reload_lock = threading.RLock()
        """Held to read the file anew and by a write from its rename to its
        install, so concurrent readers load a changed file once, and none
        loads the file this process just wrote."""
        self._retired_fd: int | None = None
        self._header: dict[str, Any] = {}
        self._snapshot = _Snapshot(signature=None, records={})
        self._prepare_directory()
        self._file_lock = FileLock(self.directory / LOCK_FILE, timeout=lock_timeout_s, mode=0o600)
        self._sealer = Sealer(store_id="")
        self.key_source = ""
        # An existing store opens without the lock (writes replace the file
        # atomically), so a passphrase prompt never holds up other processes.
        if self._load().signature is None:
            with self._locked():
                if self._load().signature is None:
                    self._create()
                    return
        self._open_existing()

    @property
    def record_lock_directory(self) -> Path:
        """Where ``store.writepath`` keeps the per-credential lock files."""
        return self.directory / "locks"

    # --- setup -----------------------------------------------------------------

    def _prepare_directory(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = os.stat(self.directory)
        except OSError as exc:
            raise StoreError(
                f"cannot create the store directory {self.directory}: {exc.strerror}; "
                "set [store] path or CREDPROXY_STORE_DIR to a writable directory"
            ) from None
        if info.st_uid != os.getuid():
            raise StoreError(
                f"store directory {self.directory} belongs to another user; "
                "choose another [store] path"
            )
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise StoreError(
                f"store directory {self.directory} is accessible by other users; "
                f"run: chmod 700 {self.directory}"
            )

    def _open_existing(self) -> None:
        self._sealer = open_sealer(
            self._settings,
            self.directory,
            self._header,
            where=f"the store in {self.directory}",
            header_name=f"store file {self.path}",
            sealed_records=self._sealed_records,
        )
        self.key_source = self._sealer.key_source

    def _sealed_records(self) -> Iterator[tuple[str, bytes | None]]:
        for record_id, encoded in self._snapshot.records.items():
            try:
                yield record_id, base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError, TypeError):
                yield record_id, None

    def _create(self) -> None:
        self._sealer = new_sealer(self._settings, self.directory)
        self.key_source = self._sealer.key_source
        self._write({})

    # --- reading ---------------------------------------------------------------

    def _current(self) -> _Snapshot:
        """The snapshot matching the file on disk now; costs one ``stat`` when unchanged."""
        snapshot = self._snapshot
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            if snapshot.signature is None:
                return snapshot
            return self._load()
        except OSError as exc:
            raise StoreError(f"cannot read the store file {self.path}: {exc.strerror}") from None
        if _signature(info) == snapshot.signature:
            return snapshot
        with self._reload_lock:
            if self._snapshot is not snapshot:
                return self._current()
            return self._load()

    def _load(self) -> _Snapshot:
        previous = self._snapshot
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            snapshot = _Snapshot(signature=None, records={})
            self._install(snapshot, {})
            return snapshot
        except OSError as exc:
            raise StoreError(f"cannot open the store file {self.path}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            header = _parse(b"".join(chunks), self.path)
        except BaseException:
            os.close(fd)
            raise
        records = header.pop("records")
        snapshot = _Snapshot(signature=_signature(info), records=records, fd=fd)
        _keep_plaintexts(previous, snapshot)
        self._install(snapshot, header)
        return snapshot

    def _install(self, snapshot: _Snapshot, header: dict[str, Any]) -> None:
        # The previous snapshot's file stays open one generation longer, so a
        # reader comparing against it never meets its inode reused by a newer file.
        with self._install_lock:
            retired, self._retired_fd = self._retired_fd, self._snapshot.fd
            self._header = header
            self._snapshot = snapshot
        if retired is not None:
            with contextlib.suppress(OSError):
                os.close(retired)

    def _plaintext(self, snapshot: _Snapshot, record_id: str) -> bytes | None:
        blob = snapshot.records.get(record_id)
        if blob is None:
            return None
        cached = snapshot.plain.get(record_id)
        if cached is not None and cached[0] == blob:
            return cached[1]
        try:
            raw = base64.b64decode(blob, validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise corrupt(
                record_id, "is damaged or was tampered with and cannot be decrypted"
            ) from None
        plain = self._sealer.unseal(record_id, raw)
        snapshot.plain[record_id] = (blob, plain)
        return plain

    async def _fresh(self) -> _Snapshot:
        """The current snapshot; a changed file is re-read off the event loop."""
        snapshot = self._snapshot
        try:
            unchanged = _signature(os.stat(self.path)) == snapshot.signature
        except OSError:
            unchanged = False
        if unchanged:
            return snapshot
        return await asyncio.to_thread(self._current)

    async def _load_record(self, record_id: str) -> Any:
        snapshot = await self._fresh()
        plain = self._plaintext(snapshot, record_id)
        if plain is None:
            return None
        return decode_value(record_id, plain)

    async def _record_ids(self) -> list[str]:
        return list((await self._fresh()).records)

    # --- writing ---------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._write_lock:
            try:
                self._file_lock.acquire()
            except Timeout:
                raise StoreError(
                    f"the store in {self.directory} stayed locked by another process for "
                    f"{self._lock_timeout_s:g} s; retry, or find the process holding "
                    f"{self.directory / LOCK_FILE}"
                ) from None
            try:
                yield
            finally:
                self._file_lock.release()

    def _mutate(self, record_id: str, value: Any) -> bool:
        """Read-modify-write under the lock; ``value`` None removes. True if it changed."""
        with self._locked():
            snapshot = self._current()
            records = dict(snapshot.records)
            if value is None:
                if records.pop(record_id, None) is None:
                    return False
                plain = None
            else:
                plain = msgspec.json.encode(value)
                records[record_id] = base64.b64encode(self._sealer.seal(record_id, plain)).decode(
                    "ascii"
                )
            self._write(records, record_id, plain)
            return True

    def _write(
        self, records: dict[str, Any], changed: str | None = None, plain: bytes | None = None
    ) -> None:
        """Replace the file with ``records`` and make them the current snapshot.

        Memory per save stays small beside the file: the document is encoded
        and written a batch of records at a time, and the snapshot is the
        records in hand, not the file read back. Encoding it whole and reading
        it back allocated the file four times per save; at 10,000 credentials
        (16 MB) the daemon's RSS went from 80 MB idle to over 400 MB after a
        minute of saves under load, memory malloc kept after it was freed.
        The file stays open as the snapshot's, exactly as after a read.
        """
        header: dict[str, Any] = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "store_id": self._sealer.store_id,
            "key": self._sealer.key_info,
            "check": self._sealer.check,
        }
        ordered = dict(sorted(records.items()))
        self._remove_stale_temps()
        temp = self.directory / f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"
        kept: int | None = None
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                for chunk in document_chunks(header, ordered):
                    view = memoryview(chunk)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            kept = os.open(temp, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            info = os.fstat(kept)
        except OSError as exc:
            raise self._abandon(temp, kept, exc) from None
        snapshot = _Snapshot(signature=_signature(info), records=ordered, fd=kept)
        _keep_plaintexts(self._snapshot, snapshot)
        if changed is not None and plain is not None and changed in ordered:
            snapshot.plain[changed] = (ordered[changed], plain)
        # A reader of this process that sees the new file before it is
        # installed waits for it here instead of reading it back itself.
        with self._reload_lock:
            try:
                os.replace(temp, self.path)
                dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            except OSError as exc:
                raise self._abandon(temp, kept, exc) from None
            self._install(snapshot, header)

    def _abandon(self, temp: Path, kept: int | None, exc: OSError) -> StoreError:
        """Undo a write that failed; the error to raise."""
        if kept is not None:
            os.close(kept)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        return _write_error(self.directory, exc)

    def _remove_stale_temps(self) -> None:
        """Temp files seen while holding the lock belong to writers that died."""
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.directory):
                if entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(TEMP_SUFFIX):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    async def _store_record(self, record_id: str, value: dict[str, Any] | None) -> bool:
        return await asyncio.to_thread(self._mutate, record_id, value)

    async def close(self) -> None:
        for fd in (self._snapshot.fd, self._retired_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._retired_fd = None
        self._snapshot = _Snapshot(signature=None, records={})


def document_chunks(header: dict[str, Any], records: dict[str, Any]) -> Iterator[bytes]:
    """``{**header, "records": records}`` encoded as msgspec encodes it whole, in pieces
    of ``WRITE_BATCH`` records."""
    yield msgspec.json.encode(header)[:-1] + b',"records":{'
    items = list(records.items())
    for start in range(0, len(items), WRITE_BATCH):
        if start:
            yield b","
        yield msgspec.json.encode(dict(items[start : start + WRITE_BATCH]))[1:-1]
    yield b"}}"


def _keep_plaintexts(previous: _Snapshot, snapshot: _Snapshot) -> None:
    """Carry over decrypted records whose ciphertext did not change."""
    for record_id, blob in snapshot.records.items():
        cached = previous.plain.get(record_id)
        if cached is not None and cached[0] == blob:
            snapshot.plain[record_id] = cached


def _parse(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        document = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        document = None
    if (
        not isinstance(document, dict)
        or document.get("format") != FORMAT
        or not isinstance(document.get("records"), dict)
    ):
        raise StoreError(
            f"{path} is not a credproxy store file (damaged or foreign); move it aside and "
            "import or log in again"
        )
    if document.get("version") != FORMAT_VERSION:
        raise StoreError(
            f"{path} has store format version {document.get('version')!r}; this credproxy "
            f"reads version {FORMAT_VERSION}. Upgrade credproxy"
        )
    return dict(document)


def _write_error(directory: Path, exc: OSError) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(
            f"cannot save to the store in {directory}: no space left on the device; "
            "free some space and retry (the previous contents are intact)"
        )
    return StoreError(
        f"cannot save to the store in {directory}: {exc.strerror}; the previous contents are intact"
    )
