"""Store tests: every store lives in a pytest tmp dir with an explicit key file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from credproxy.store.file import FileStore
from credproxy.store.keysource import KeySettings


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
async def file_store(store_dir: Path) -> AsyncIterator[FileStore]:
    store = FileStore(store_dir, KeySettings(source="keyfile"))
    yield store
    await store.close()


@pytest.fixture(autouse=True)
def _no_store_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own CREDPROXY_* settings must not reach the tests."""
    for name in (
        "CREDPROXY_STORE_DIR",
        "CREDPROXY_KEY_SOURCE",
        "CREDPROXY_KEY_FILE",
        "CREDPROXY_PASSPHRASE",
        "CREDPROXY_CONFIG",
    ):
        monkeypatch.delenv(name, raising=False)
