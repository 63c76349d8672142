"""The one write path: per-credential locks across processes, released when a holder dies."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from credproxy.store.base import StoreError
from credproxy.store.file import FileStore
from credproxy.store.keysource import KeySettings
from credproxy.store.memory import MemoryStore
from credproxy.store.writepath import RecordLocks, WritePath, token_lock, write_path

TOKEN: dict[str, Any] = {
    "access_token": "a",
    "expiry": 1_900_000_000,
    "token_type": "Bearer",
    "refresh_token": "r-1",
}

HOLDER = """
import asyncio, sys
from pathlib import Path
from credproxy.store.writepath import RecordLocks, token_lock

async def main():
    async with RecordLocks(Path(sys.argv[1])).hold(token_lock("p", "b")):
        print("held", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


def _file_store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store", KeySettings(source="keyfile"))


async def test_a_record_locked_by_another_process_waits_and_is_free_once_that_process_dies(
    tmp_path: Path,
) -> None:
    store = _file_store(tmp_path)
    await store.save_token("p", "b", dict(TOKEN))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(store.record_lock_directory)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        impatient = WritePath(store, RecordLocks(store.record_lock_directory, timeout_s=0.2))
        with pytest.raises(StoreError, match="stayed locked by another credproxy process"):
            await impatient.remove_token("p", "b")
        assert await store.get_token("p", "b") == TOKEN
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert await impatient.remove_token("p", "b") is True
        assert await store.get_token("p", "b") is None
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
        await store.close()


async def test_lock_files_live_beside_the_store_one_per_credential(tmp_path: Path) -> None:
    store = _file_store(tmp_path)
    await write_path(store).save_login("p", "b", dict(TOKEN))
    await write_path(store).set_key("k", "v")
    names = sorted(path.name for path in store.record_lock_directory.iterdir())
    assert names == ["key,k.lock", "token,p,b.lock"]
    assert (store.record_lock_directory.stat().st_mode & 0o777) == 0o700
    await store.close()


async def test_in_process_writers_of_one_record_never_lose_a_field() -> None:
    """The memory store has no lock files: the in-process lock alone serializes."""
    store = MemoryStore()
    writes = write_path(store)
    await writes.save_login("p", "b", dict(TOKEN))

    async def save(index: int) -> None:
        await writes.save_from_sandbox(
            "p", "b", {"access_token": "a", "expiry": 1, "token_type": "B", f"f{index}": index},
            max_buckets=8,
        )  # fmt: skip

    await asyncio.gather(*(save(i) for i in range(50)))
    stored = await store.get_token("p", "b")
    assert stored is not None
    assert all(stored[f"f{i}"] == i for i in range(50))
    assert stored["refresh_token"] == "r-1"
    assert token_lock("p", "b") == "token,p,b"


async def test_a_refresh_result_is_dropped_after_a_logout_or_a_new_login() -> None:
    store = MemoryStore()
    writes = write_path(store)
    fresh = {"access_token": "new", "expiry": 2, "token_type": "Bearer", "refresh_token": "r-2"}
    assert await writes.apply_refresh("p", "b", "r-1", fresh, now=1.0) is None
    assert await store.get_token("p", "b") is None
    await writes.save_login("p", "b", {**TOKEN, "refresh_token": "r-login"})
    kept = await writes.apply_refresh("p", "b", "r-1", fresh, now=1.0)
    assert kept is not None and kept["refresh_token"] == "r-login"
    assert (await store.get_token("p", "b")) == kept
