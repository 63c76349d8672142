"""Where the file store's data key comes from: OS keyring, key file, or passphrase.

The source is chosen once, when a store is created, and recorded in the store
file's header; later opens use the recorded source, so a keyring that is
missing one day never makes the store silently start over with another key.
"auto" means: the Secret Service when it answers, else a 0600 key file, else
a passphrase (environment variable or prompt, scrypt with a stored salt).
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from credproxy.store import crypto
from credproxy.store.base import StoreError
from credproxy.store.secretservice import KeyringUnavailableError, SecretService

KEY_SOURCES: Final = ("auto", "keyring", "keyfile", "passphrase")
KEY_FILE_NAME: Final = "store.key"
MAX_SCRYPT_N: Final = 2**20
MAX_SCRYPT_R: Final = 32
MAX_SCRYPT_P: Final = 16

PassphraseProvider = Callable[[bool], str]
"""Called with ``True`` when the store is new (ask twice), ``False`` to open it."""


@dataclass
class KeySettings:
    source: str = "auto"
    key_file: Path | None = None
    passphrase: PassphraseProvider | None = None
    secret_service: Callable[[], SecretService] = field(default=SecretService)

    def __post_init__(self) -> None:
        if self.source not in KEY_SOURCES:
            raise StoreError(
                f"unknown store key source {self.source!r}; choose one of: {', '.join(KEY_SOURCES)}"
            )

    def key_file_for(self, directory: Path) -> Path:
        return self.key_file if self.key_file is not None else directory / KEY_FILE_NAME


def _keyring_username(store_id: str) -> str:
    return f"store-key/{store_id}"


def create_key(
    settings: KeySettings, directory: Path, store_id: str
) -> tuple[bytes, dict[str, Any]]:
    """A fresh data key for a new store and the header entry that finds it again."""
    source = settings.source
    if source == "auto":
        try:
            settings.secret_service().check()
        except StoreError:
            source = "keyfile"
        else:
            source = "keyring"
    if source == "keyring":
        key = crypto.new_data_key()
        try:
            settings.secret_service().set(
                _keyring_username(store_id), base64.b64encode(key).decode("ascii")
            )
        except KeyringUnavailableError:
            raise KeyringUnavailableError(
                "No keyring available on this machine for the file store's data key; set "
                '[store] key_source = "keyfile" (or CREDPROXY_KEY_SOURCE=keyfile)'
            ) from None
        return key, {"source": "keyring"}
    if source == "keyfile":
        path = settings.key_file_for(directory)
        try:
            return _load_or_create_key_file(path), {"source": "keyfile"}
        except StoreError:
            if settings.source != "auto" or settings.passphrase is None:
                raise
    return _passphrase_key(settings, new=True)


def load_key(settings: KeySettings, directory: Path, store_id: str, info: Any) -> tuple[bytes, str]:
    """The data key of an existing store, per the source recorded in its header."""
    source = info.get("source") if isinstance(info, dict) else None
    if source not in KEY_SOURCES[1:]:
        raise StoreError(f"the store file in {directory} names no usable key source")
    if settings.source not in ("auto", source):
        raise StoreError(
            f"the store in {directory} was created with key source {source!r}, "
            f'not {settings.source!r}; set [store] key_source = "{source}" or choose '
            "another store path"
        )
    if source == "keyring":
        try:
            value = settings.secret_service().get(_keyring_username(store_id))
        except KeyringUnavailableError:
            raise KeyringUnavailableError(
                f"the data key of the store in {directory} is kept in the OS keyring, and no "
                "keyring is reachable here; run where the keyring's D-Bus session is "
                "available (DBUS_SESSION_BUS_ADDRESS), or use another store path"
            ) from None
        if value is None:
            raise StoreError(
                f"the data key of the store in {directory} is missing from the keyring; "
                "without it the stored credentials cannot be decrypted. Restore the keyring, "
                "or move the store directory aside and import or log in again"
            )
        try:
            key = base64.b64decode(value, validate=True)
        except ValueError:
            key = b""
        if len(key) != crypto.DATA_KEY_BYTES:
            raise StoreError(f"the keyring entry holding the data key of {directory} is damaged")
        return key, source
    if source == "keyfile":
        path = settings.key_file_for(directory)
        if not path.exists():
            raise StoreError(
                f"the key file {path} of the store in {directory} is missing; without it the "
                "stored credentials cannot be decrypted. Restore it (or point [store] key_file "
                "at it), or move the store directory aside and import or log in again"
            )
        return _read_key_file(path), source
    key, _ = _passphrase_key(settings, new=False, info=info)
    return key, source


def _passphrase_key(
    settings: KeySettings, *, new: bool, info: dict[str, Any] | None = None
) -> tuple[bytes, dict[str, Any]]:
    if settings.passphrase is None:
        raise StoreError(
            "the store key comes from a passphrase: set CREDPROXY_PASSPHRASE or run in a terminal"
        )
    if info is None:
        info = {
            "source": "passphrase",
            "kdf": "scrypt",
            "salt": base64.b64encode(os.urandom(crypto.SALT_BYTES)).decode("ascii"),
            "n": crypto.SCRYPT_N,
            "r": crypto.SCRYPT_R,
            "p": crypto.SCRYPT_P,
        }
    try:
        salt = base64.b64decode(info["salt"], validate=True)
        n, r, p = int(info["n"]), int(info["r"]), int(info["p"])
    except (KeyError, TypeError, ValueError):
        raise StoreError("the store file's passphrase parameters are damaged") from None
    if (
        info.get("kdf") != "scrypt"
        or len(salt) < 8
        or not 2 <= n <= MAX_SCRYPT_N
        or n & (n - 1)
        or not 1 <= r <= MAX_SCRYPT_R
        or not 1 <= p <= MAX_SCRYPT_P
    ):
        raise StoreError("the store file's passphrase parameters are out of range")
    passphrase = settings.passphrase(new)
    if not passphrase:
        raise StoreError("an empty passphrase cannot protect the store; set a passphrase")
    return crypto.derive_key(passphrase, salt, n, r, p), info


def _read_key_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise StoreError(f"cannot read key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if info.st_uid != os.getuid():
            raise StoreError(f"key file {path} belongs to another user; refusing to use it")
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise StoreError(f"key file {path} is accessible by other users; run: chmod 600 {path}")
        data = handle.read(crypto.DATA_KEY_BYTES + 1)
    if len(data) != crypto.DATA_KEY_BYTES:
        raise StoreError(f"key file {path} is damaged (expected {crypto.DATA_KEY_BYTES} bytes)")
    return data


def _load_or_create_key_file(path: Path) -> bytes:
    """Create the key file atomically (a crash leaves no half key), or read the one there."""
    if path.exists():
        return _read_key_file(path)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create directory {path.parent}: {exc.strerror}") from None
    key = crypto.new_data_key()
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)
        except FileExistsError:
            return _read_key_file(path)
        _fsync_directory(path.parent)
    except OSError as exc:
        raise StoreError(f"cannot create key file {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)
    return key


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
