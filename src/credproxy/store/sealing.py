"""One store's record sealing: its id, its data key, and the key check in its header.

Shared by the encrypted file store and the Redis store, so a record sealed by
either has the same format (``crypto.seal``: nonce, AES-256-GCM ciphertext and
tag) and the same associated data (store id plus the record's identity,
``token/<provider>/<bucket>`` or ``key/<name>``). The header of either store
holds the store id, where the data key comes from (``keysource``), and a
sealed check record that tells a wrong key from a damaged record.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from credproxy.store import crypto
from credproxy.store.base import CorruptRecordError, StoreError
from credproxy.store.keysource import KeySettings, create_key, load_key
from credproxy.store.records import corrupt

CHECK_RECORD: Final = "check"
CHECK_PLAINTEXT: Final = b"credproxy data key check"
SEALED_CHECK_BYTES: Final = crypto.NONCE_BYTES + len(CHECK_PLAINTEXT) + 16  # nonce, text, tag
SOURCE_NAMES: Final = {"keyfile": "key file", "keyring": "keyring", "passphrase": "passphrase"}

_STORE_ID_RE: Final = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Sealer:
    """Seals and opens the records of one store."""

    store_id: str
    key: bytes = b""
    key_info: Any = None
    key_source: str = ""
    check: str = ""
    """The base64 sealed check record, as kept in the store's header."""

    def seal(self, record_id: str, plain: bytes) -> bytes:
        return crypto.seal(self.key, crypto.associated_data(self.store_id, record_id), plain)

    def unseal(self, record_id: str, blob: bytes) -> bytes:
        try:
            return crypto.unseal(self.key, crypto.associated_data(self.store_id, record_id), blob)
        except crypto.SealError:
            raise corrupt(
                record_id, "is damaged or was tampered with and cannot be decrypted"
            ) from None


def decode_value(record_id: str, plain: bytes) -> Any:
    try:
        return msgspec.json.decode(plain)
    except msgspec.DecodeError:
        raise corrupt(record_id, "is not valid JSON") from None


def new_sealer(settings: KeySettings, key_directory: Path) -> Sealer:
    """A fresh store id and data key (from ``settings``), and the check record sealed with it."""
    store_id = secrets.token_hex(16)
    key, key_info = create_key(settings, key_directory, store_id)
    check = base64.b64encode(
        crypto.seal(key, crypto.associated_data(store_id, CHECK_RECORD), CHECK_PLAINTEXT)
    ).decode("ascii")
    return Sealer(store_id, key, key_info, key_info["source"], check)


def open_sealer(
    settings: KeySettings,
    key_directory: Path,
    header: dict[str, Any],
    *,
    where: str,
    header_name: str,
    sealed_records: Callable[[], Iterable[tuple[str, bytes | None]]],
) -> Sealer:
    """The sealer of an existing store from its header; a key that does not open the
    check record is refused, naming its source. ``where`` names the store for the user
    ("the store in DIR"), ``header_name`` the thing whose header it is ("store file
    PATH"); ``sealed_records`` yields the stored records (record id, sealed bytes, or
    None when unreadable) for telling a damaged check from a wrong key."""
    store_id = header.get("store_id")
    if not isinstance(store_id, str) or not _STORE_ID_RE.fullmatch(store_id):
        raise StoreError(f"{header_name} has a damaged header (store_id)")
    key, source = load_key(settings, key_directory, store_id, header.get("key"))
    check = header.get("check")
    check = check if isinstance(check, str) else ""
    sealer = Sealer(store_id, key, header["key"], source, check)
    try:
        crypto.unseal(
            key,
            crypto.associated_data(store_id, CHECK_RECORD),
            base64.b64decode(check, validate=True),
        )
    except (crypto.SealError, binascii.Error, ValueError):
        raise _check_failure(sealer, where, header_name, sealed_records) from None
    return sealer


def _check_failure(
    sealer: Sealer,
    where: str,
    header_name: str,
    sealed_records: Callable[[], Iterable[tuple[str, bytes | None]]],
) -> StoreError:
    """Tell a damaged key check from a wrong key, as far as the format can.

    A check that is not base64, or not the length of a sealed check, was
    damaged: no key makes it so. A well-formed check whose GCM tag fails
    means a wrong key or damaged bytes, which GCM cannot tell apart; but if
    the same key opens a stored record, the key is right and the check is
    what broke. Only an empty store leaves the two undecided.
    """
    source = SOURCE_NAMES.get(sealer.key_source, sealer.key_source)
    try:
        blob = base64.b64decode(sealer.check, validate=True)
    except (binascii.Error, ValueError):
        blob = b""
    if len(blob) != SEALED_CHECK_BYTES:
        return StoreError(
            f"{header_name} has a damaged header: its key check is not "
            f"{SEALED_CHECK_BYTES} base64-encoded bytes, which no key can cause; the "
            "credentials may be intact: restore it from a backup, or keep it and "
            "ask for help rather than overwriting it"
        )
    seen_any = False
    for record_id, sealed in sealed_records():
        seen_any = True
        if sealed is None:
            continue
        try:
            sealer.unseal(record_id, sealed)
        except CorruptRecordError:
            continue
        return StoreError(
            f"{header_name} has a damaged header: its key check fails, yet the "
            f"data key from the {source} opens the stored records, so the key is right; "
            "the credentials are intact: restore it from a backup, or keep it and "
            "ask for help rather than overwriting it"
        )
    reason = (
        "no stored record opens with it either"
        if seen_any
        else "the store holds no record to tell the two apart"
    )
    return StoreError(
        f"the data key from the {source} does not open {where}: a "
        "wrong passphrase, or a key file or keyring entry of another store (or a damaged "
        f"key check: {reason}); use the right key, or choose another store"
    )
