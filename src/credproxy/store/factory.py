"""Choosing a backend: always explicit, never left to ``keyring``'s own guess."""

from __future__ import annotations

from typing import Any, Final

from credproxy.store.base import CredentialStore, StoreError
from credproxy.store.memory import MemoryStore

BACKENDS: Final = ("memory",)


def open_store(backend: str | None, config: dict[str, Any]) -> CredentialStore:
    """Open the backend named on the command line, else in ``[store]`` of the config."""
    section = config.get("store", {})
    name = backend or section.get("backend") or "memory"
    if name == "memory":
        return MemoryStore()
    raise StoreError(f"unknown store backend {name!r}; choose one of: {', '.join(BACKENDS)}")
