"""Where the host keeps secrets: token and key stores behind small protocols."""

from credproxy.store.base import (
    CorruptRecordError,
    CredentialStore,
    KeyStore,
    StoreError,
    TokenStore,
    validate_name,
)
from credproxy.store.memory import MemoryStore

__all__ = [
    "CorruptRecordError",
    "CredentialStore",
    "KeyStore",
    "MemoryStore",
    "StoreError",
    "TokenStore",
    "validate_name",
]
