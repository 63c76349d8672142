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
from credproxy.store.writepath import (
    RecordLocks,
    StoreTimeoutError,
    WritePath,
    token_lock,
    write_path,
)
from tests.fixtures.hanging_store import HangingStore

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


# --- a store that stops answering -----------------------------------------------------

BOUND_S = 0.2
"""The store bound in these tests: how soon a hung call fails, not a speed expected."""
NEVER_S = 30.0
"""Only so that a regression fails the test instead of hanging the suite."""


async def test_a_login_save_into_a_store_that_never_answers_fails_with_a_clear_error() -> None:
    """A login finishing in the background has no request timeout around it."""
    store = HangingStore("get_token")
    writes = WritePath(store, store_timeout_s=BOUND_S)
    async with asyncio.timeout(NEVER_S):
        with pytest.raises(StoreTimeoutError) as caught:
            await writes.save_login("p", "b", dict(TOKEN))
    assert "did not answer within 0.2 s" in str(caught.value)
    assert "r-1" not in str(caught.value)
    store.answer.set()


async def test_a_save_that_overran_its_bound_keeps_the_record_locked_until_its_late_write() -> None:
    """The late write still lands under the lock: the next writer merges onto it
    instead of having it overwrite its own update afterwards."""
    store = HangingStore("save_token")
    writes = WritePath(store, store_timeout_s=BOUND_S)
    async with asyncio.timeout(NEVER_S):
        with pytest.raises(StoreTimeoutError):
            await writes.save_login("p", "b", dict(TOKEN))
        store.hang.clear()  # the store works again, but the first save is still stuck
        second = asyncio.create_task(
            writes.update_token("p", "b", lambda t: {**(t or {}), "note": "second"})
        )
        for _ in range(20):
            await asyncio.sleep(0)
        assert not second.done(), "the record was unlocked while a write to it was under way"
        store.answer.set()
        await second
    stored = await store.get_token("p", "b")
    assert stored == {**TOKEN, "note": "second"}


async def test_a_read_for_a_refresh_waits_for_a_late_write_of_the_record() -> None:
    store = HangingStore("save_token")
    writes = WritePath(store, store_timeout_s=BOUND_S)
    async with asyncio.timeout(NEVER_S):
        with pytest.raises(StoreTimeoutError):
            await writes.save_login("p", "b", dict(TOKEN))
        read = asyncio.create_task(writes.read_token_locked("p", "b"))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not read.done()
        store.answer.set()
        assert await read == TOKEN
