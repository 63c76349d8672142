"""Record sealing for the encrypted file store: AES-256-GCM (NIST SP 800-38D) and scrypt (RFC 7914).

Each record is sealed with the credential's identity as associated data, so a
record copied over another one fails authentication instead of decrypting as
the wrong credential.
"""

from __future__ import annotations

import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

DATA_KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
SALT_BYTES: Final = 16
AAD_PREFIX: Final = b"credproxy-store/v1\x00"

# RFC 7914 parameters: 2**15 * 8 * 128 bytes = 32 MiB and about 0.1 s here,
# paid once when the store opens.
SCRYPT_N: Final = 2**15
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1


class SealError(Exception):
    """Authentication failed: wrong key, damaged bytes, or a record moved from elsewhere."""


def new_data_key() -> bytes:
    return os.urandom(DATA_KEY_BYTES)


def associated_data(store_id: str, record_id: str) -> bytes:
    return AAD_PREFIX + store_id.encode("ascii") + b"\x00" + record_id.encode("utf-8")


def seal(key: bytes, aad: bytes, plaintext: bytes) -> bytes:
    """Random 96-bit nonce, then ciphertext (SP 800-38D allows 2**32 such seals per key)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, aad: bytes, blob: bytes) -> bytes:
    if len(blob) < NONCE_BYTES + 16:
        raise SealError("record too short")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise SealError("authentication failed") from None


def derive_key(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=DATA_KEY_BYTES, n=n, r=r, p=p).derive(
        passphrase.encode("utf-8")
    )
