"""The encrypted file store: round trips, confidentiality, integrity, permissions, key sources."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from filelock import FileLock

from credproxy.store.base import CorruptRecordError, StoreError
from credproxy.store.file import DATA_FILE, LOCK_FILE, WRITE_BATCH, FileStore, document_chunks
from credproxy.store.keysource import KEY_FILE_NAME, KeySettings

WORKER = Path(__file__).with_name("worker.py")

TOKEN = {
    "access_token": "at-7f3c9d1e-access",
    "refresh_token": "rt-2b8e4a6f-refresh",
    "expiry": 1_900_000_000,
    "token_type": "Bearer",
    "scope": "openid offline_access",
    "id_token": "idt-0c5d9e3a-identity",
}


def read_document(store_dir: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((store_dir / DATA_FILE).read_bytes())
    return data


def write_document(store_dir: Path, document: dict[str, object]) -> None:
    (store_dir / DATA_FILE).write_text(json.dumps(document))


def records(store_dir: Path) -> dict[str, str]:
    value = read_document(store_dir)["records"]
    assert isinstance(value, dict)
    return value


async def test_token_round_trip_keeps_every_field_including_refresh_token(
    file_store: FileStore,
) -> None:
    await file_store.save_token("openai", "default", TOKEN)
    assert await file_store.get_token("openai", "default") == TOKEN


async def test_missing_token_and_key_read_as_none(file_store: FileStore) -> None:
    assert await file_store.get_token("openai", "default") is None
    assert await file_store.get_key("nothing") is None


async def test_returned_token_is_a_copy_callers_cannot_corrupt_the_cache(
    file_store: FileStore,
) -> None:
    await file_store.save_token("openai", "default", TOKEN)
    first = await file_store.get_token("openai", "default")
    assert first is not None
    first["access_token"] = "mutated"
    assert await file_store.get_token("openai", "default") == TOKEN


async def test_invalid_names_are_rejected_before_anything_is_written(
    file_store: FileStore, store_dir: Path
) -> None:
    before = (store_dir / DATA_FILE).read_bytes()
    with pytest.raises(ValueError, match="provider name"):
        await file_store.save_token("../etc", "default", TOKEN)
    with pytest.raises(ValueError, match="bucket name"):
        await file_store.save_token("openai", "a/b", TOKEN)
    with pytest.raises(ValueError, match="key name"):
        await file_store.set_key("x" * 65, "v")
    assert (store_dir / DATA_FILE).read_bytes() == before


async def test_credentials_survive_reopening_the_store(store_dir: Path) -> None:
    first = FileStore(store_dir, KeySettings(source="keyfile"))
    await first.save_token("openai", "default", TOKEN)
    await first.set_key("gemini", "g-secret-value")
    await first.close()
    second = FileStore(store_dir, KeySettings(source="keyfile"))
    assert await second.get_token("openai", "default") == TOKEN
    assert await second.get_key("gemini") == "g-secret-value"
    await second.close()


async def test_store_directory_is_0700_and_every_file_0600(
    file_store: FileStore, store_dir: Path
) -> None:
    await file_store.save_token("openai", "default", TOKEN)
    assert stat.S_IMODE(store_dir.stat().st_mode) == 0o700
    names = sorted(entry.name for entry in store_dir.iterdir())
    assert names == sorted([DATA_FILE, LOCK_FILE, KEY_FILE_NAME])
    for entry in store_dir.iterdir():
        assert stat.S_IMODE(entry.stat().st_mode) == 0o600, entry.name


async def test_no_secret_appears_in_plaintext_in_any_store_file(
    file_store: FileStore, store_dir: Path
) -> None:
    await file_store.save_token("openai", "default", TOKEN)
    await file_store.save_token("openai", "second", {**TOKEN, "access_token": "at-second-xyz"})
    await file_store.set_key("anthropic", "sk-ant-5e1f0b7c-key")
    secrets = [
        TOKEN["access_token"],
        TOKEN["refresh_token"],
        TOKEN["id_token"],
        "at-second-xyz",
        "sk-ant-5e1f0b7c-key",
        '"refresh_token"',
        '"access_token"',
        '"value"',
    ]
    for entry in store_dir.iterdir():
        data = entry.read_bytes()
        for secret in secrets:
            assert str(secret).encode() not in data, (entry.name, secret)


async def test_tampered_record_names_the_credential_and_others_stay_readable(
    file_store: FileStore, store_dir: Path
) -> None:
    await file_store.save_token("openai", "default", TOKEN)
    await file_store.save_token("openai", "work", TOKEN)
    await file_store.set_key("gemini", "g-secret")
    document = read_document(store_dir)
    recs = records(store_dir)
    blob = bytearray(base64.b64decode(recs["token/openai/work"]))
    blob[-1] ^= 0x01
    recs["token/openai/work"] = base64.b64encode(bytes(blob)).decode()
    document["records"] = recs
    write_document(store_dir, document)

    with pytest.raises(CorruptRecordError) as caught:
        await file_store.get_token("openai", "work")
    message = str(caught.value)
    assert "openai" in message
    assert "work" in message
    assert "credproxy token rm openai --bucket work" in message
    assert await file_store.get_token("openai", "default") == TOKEN
    assert await file_store.get_key("gemini") == "g-secret"
    assert await file_store.list_buckets("openai") == ["default", "work"]


async def test_record_that_is_not_base64_is_reported_corrupt(
    file_store: FileStore, store_dir: Path
) -> None:
    await file_store.set_key("gemini", "g-secret")
    document = read_document(store_dir)
    document["records"] = {"key/gemini": "***not base64***"}
    write_document(store_dir, document)
    with pytest.raises(CorruptRecordError, match="API key gemini"):
        await file_store.get_key("gemini")


async def test_swapped_records_fail_authentication_instead_of_reading_as_each_other(
    file_store: FileStore, store_dir: Path
) -> None:
    """The identity is associated data: a valid ciphertext under another name is rejected."""
    await file_store.save_token("openai", "default", TOKEN)
    await file_store.save_token("evil", "default", {**TOKEN, "access_token": "attacker"})
    await file_store.set_key("a", "value-a")
    await file_store.set_key("b", "value-b")
    document = read_document(store_dir)
    recs = records(store_dir)
    recs["token/openai/default"], recs["token/evil/default"] = (
        recs["token/evil/default"],
        recs["token/openai/default"],
    )
    recs["key/a"], recs["key/b"] = recs["key/b"], recs["key/a"]
    document["records"] = recs
    write_document(store_dir, document)
    with pytest.raises(CorruptRecordError, match="token openai"):
        await file_store.get_token("openai", "default")
    with pytest.raises(CorruptRecordError, match="API key a"):
        await file_store.get_key("a")


async def test_record_moved_between_stores_sharing_a_key_file_is_rejected(tmp_path: Path) -> None:
    key_file = tmp_path / "shared.key"
    one = FileStore(tmp_path / "one", KeySettings(source="keyfile", key_file=key_file))
    two = FileStore(tmp_path / "two", KeySettings(source="keyfile", key_file=key_file))
    await one.set_key("k", "from-one")
    await two.set_key("k", "from-two")
    document = read_document(tmp_path / "two")
    document["records"] = records(tmp_path / "one")
    write_document(tmp_path / "two", document)
    with pytest.raises(CorruptRecordError):
        await two.get_key("k")
    await one.close()
    await two.close()


async def test_a_file_that_is_not_a_store_fails_with_what_to_do(store_dir: Path) -> None:
    store_dir.mkdir(mode=0o700)
    (store_dir / DATA_FILE).write_text("{ not json")
    with pytest.raises(StoreError, match=r"not a credproxy store file.*move it aside"):
        FileStore(store_dir, KeySettings(source="keyfile"))


async def test_wrong_key_file_does_not_open_the_store(store_dir: Path) -> None:
    store = FileStore(store_dir, KeySettings(source="keyfile"))
    await store.close()
    key_file = store_dir / KEY_FILE_NAME
    key_file.write_bytes(os.urandom(32))
    with pytest.raises(StoreError, match="does not open the store"):
        FileStore(store_dir, KeySettings(source="keyfile"))


async def test_missing_key_file_says_what_to_do(store_dir: Path) -> None:
    store = FileStore(store_dir, KeySettings(source="keyfile"))
    await store.set_key("k", "v-secret")
    await store.close()
    (store_dir / KEY_FILE_NAME).unlink()
    with pytest.raises(StoreError, match=r"key file .* is missing.*Restore it"):
        FileStore(store_dir, KeySettings(source="keyfile"))


async def test_key_file_readable_by_others_is_refused(store_dir: Path) -> None:
    store = FileStore(store_dir, KeySettings(source="keyfile"))
    await store.close()
    (store_dir / KEY_FILE_NAME).chmod(0o644)
    with pytest.raises(StoreError, match="chmod 600"):
        FileStore(store_dir, KeySettings(source="keyfile"))


async def test_damaged_key_file_is_reported(store_dir: Path) -> None:
    store = FileStore(store_dir, KeySettings(source="keyfile"))
    await store.close()
    (store_dir / KEY_FILE_NAME).write_bytes(b"short")
    with pytest.raises(StoreError, match="damaged"):
        FileStore(store_dir, KeySettings(source="keyfile"))


def test_store_directory_open_to_other_users_is_refused(store_dir: Path) -> None:
    store_dir.mkdir(mode=0o755)
    store_dir.chmod(0o755)
    with pytest.raises(StoreError, match="chmod 700"):
        FileStore(store_dir, KeySettings(source="keyfile"))


async def test_key_file_can_live_outside_the_store_directory(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "data.key"
    store = FileStore(tmp_path / "store", KeySettings(source="keyfile", key_file=key_file))
    await store.set_key("k", "v-secret")
    await store.close()
    assert key_file.stat().st_size == 32
    assert not (tmp_path / "store" / KEY_FILE_NAME).exists()
    reopened = FileStore(tmp_path / "store", KeySettings(source="keyfile", key_file=key_file))
    assert await reopened.get_key("k") == "v-secret"
    await reopened.close()


async def test_passphrase_store_opens_only_with_the_same_passphrase(store_dir: Path) -> None:
    asked: list[bool] = []

    def passphrase(new: bool) -> str:
        asked.append(new)
        return "correct horse battery staple"

    store = FileStore(store_dir, KeySettings(source="passphrase", passphrase=passphrase))
    await store.set_key("k", "v-secret")
    await store.close()
    assert asked == [True]
    header = read_document(store_dir)["key"]
    assert isinstance(header, dict)
    assert header["source"] == "passphrase"
    assert header["kdf"] == "scrypt"
    assert len(base64.b64decode(header["salt"])) == 16
    assert not (store_dir / KEY_FILE_NAME).exists()

    reopened = FileStore(store_dir, KeySettings(source="auto", passphrase=passphrase))
    assert await reopened.get_key("k") == "v-secret"
    assert reopened.key_source == "passphrase"
    await reopened.close()
    assert asked == [True, False]
    with pytest.raises(StoreError, match="wrong passphrase"):
        FileStore(store_dir, KeySettings(source="passphrase", passphrase=lambda new: "wrong"))


def test_passphrase_source_without_a_passphrase_says_how_to_give_one(store_dir: Path) -> None:
    with pytest.raises(StoreError, match="CREDPROXY_PASSPHRASE"):
        FileStore(store_dir, KeySettings(source="passphrase"))


async def test_recorded_key_source_wins_and_a_conflicting_setting_is_an_error(
    store_dir: Path,
) -> None:
    store = FileStore(store_dir, KeySettings(source="keyfile"))
    await store.close()
    with pytest.raises(StoreError, match="created with key source 'keyfile'"):
        FileStore(store_dir, KeySettings(source="passphrase", passphrase=lambda new: "p"))
    reopened = FileStore(store_dir, KeySettings(source="auto"))
    assert reopened.key_source == "keyfile"
    await reopened.close()


def test_unknown_key_source_is_rejected() -> None:
    with pytest.raises(StoreError, match="unknown store key source"):
        KeySettings(source="plaintext")


async def test_write_by_another_instance_is_seen_on_the_next_read(store_dir: Path) -> None:
    reader = FileStore(store_dir, KeySettings(source="keyfile"))
    writer = FileStore(store_dir, KeySettings(source="keyfile"))
    await writer.save_token("openai", "default", TOKEN)
    assert await reader.get_token("openai", "default") == TOKEN
    for generation in range(20):
        token = {**TOKEN, "access_token": f"at-{generation}"}
        await writer.save_token("openai", "default", token)
        assert await reader.get_token("openai", "default") == token
    await writer.remove_token("openai", "default")
    assert await reader.get_token("openai", "default") is None
    assert await reader.list_providers() == []
    await reader.close()
    await writer.close()


async def test_write_by_another_process_is_seen_on_the_next_read(file_store: FileStore) -> None:
    await file_store.save_token("proc", "b0", TOKEN)
    assert await file_store.get_token("proc", "b0") == TOKEN
    subprocess.run(
        [sys.executable, str(WORKER), "many", str(file_store.directory), "proc", "2"],
        check=True,
        timeout=60,
    )
    token = await file_store.get_token("proc", "b0")
    assert token is not None
    assert token["access_token"] == "proc-access-0-gen-1"
    assert await file_store.list_buckets("proc") == ["b0", "b1"]


async def test_saves_from_two_instances_interleaved_lose_nothing(store_dir: Path) -> None:
    one = FileStore(store_dir, KeySettings(source="keyfile"))
    two = FileStore(store_dir, KeySettings(source="keyfile"))
    for index in range(10):
        await one.save_token("one", f"b{index}", TOKEN)
        await two.save_token("two", f"b{index}", TOKEN)
    expected = [f"b{index}" for index in range(10)]
    for store in (one, two):
        assert await store.list_buckets("one") == sorted(expected)
        assert await store.list_buckets("two") == sorted(expected)
    await one.close()
    await two.close()


async def test_stale_temp_files_of_dead_writers_are_cleaned_on_the_next_write(
    file_store: FileStore, store_dir: Path
) -> None:
    stale = store_dir / f".{DATA_FILE}.deadbeef.tmp"
    stale.write_bytes(b"half a file")
    await file_store.set_key("k", "v")
    assert not stale.exists()


@contextlib.contextmanager
def lock_held_elsewhere(store_dir: Path) -> Iterator[None]:
    """The store's lock held by another thread's lock object, as another process would."""
    holder = FileLock(store_dir / LOCK_FILE, thread_local=False)
    acquired = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with holder:
            acquired.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert acquired.wait(10)
        yield
    finally:
        release.set()
        thread.join()


async def test_lock_held_too_long_fails_with_what_to_do(store_dir: Path) -> None:
    store = FileStore(store_dir, KeySettings(source="keyfile"), lock_timeout_s=0.2)
    with (
        lock_held_elsewhere(store_dir),
        pytest.raises(StoreError, match="stayed locked by another process"),
    ):
        await store.set_key("k", "v")
    await store.set_key("k", "v")
    assert await store.get_key("k") == "v"
    await store.close()


async def test_unchanged_file_is_not_read_again_and_a_changed_one_is(store_dir: Path) -> None:
    """The hot path: reads of an unchanged file reuse the loaded snapshot (one stat each)."""
    reader = FileStore(store_dir, KeySettings(source="keyfile"))
    writer = FileStore(store_dir, KeySettings(source="keyfile"))
    await writer.save_token("openai", "default", TOKEN)
    await reader.get_token("openai", "default")
    loaded = reader._snapshot
    for _ in range(5):
        assert await reader.get_token("openai", "default") == TOKEN
        assert await reader.list_providers() == ["openai"]
    assert reader._snapshot is loaded
    await writer.set_key("k", "v")
    assert await reader.get_token("openai", "default") == TOKEN
    assert reader._snapshot is not loaded
    assert await reader.get_key("k") == "v"
    await reader.close()
    await writer.close()


async def test_existing_store_opens_and_reads_while_another_process_holds_the_lock(
    store_dir: Path,
) -> None:
    """Opening (and a passphrase prompt) must not wait for, or hold up, a writer."""
    seed = FileStore(store_dir, KeySettings(source="keyfile"))
    await seed.save_token("openai", "default", TOKEN)
    await seed.close()
    with lock_held_elsewhere(store_dir):
        store = FileStore(store_dir, KeySettings(source="keyfile"), lock_timeout_s=0.2)
        assert await store.get_token("openai", "default") == TOKEN
        assert await store.list_providers() == ["openai"]
    await store.close()


async def test_a_save_allocates_a_small_part_of_the_file_not_copies_of_it(
    store_dir: Path,
) -> None:
    """Each save replaces the whole file. Encoding it whole and reading it back
    allocated the file four times over (encoded document, read chunks, joined
    bytes, decoded records); in a daemon with 10,000 credentials (16 MB) the
    freed copies stayed with malloc: RSS 80 MB idle, over 400 MB after a
    minute of saves under load (benchmarks/bench_load.py). Now a save encodes
    and writes a batch of records at a time and installs the records in hand,
    sharing every unchanged one with the previous snapshot."""
    store = FileStore(store_dir, KeySettings(source="keyfile"))
    big = {**TOKEN, "access_token": "a" * 900}
    sealer = store._sealer
    sealed = {
        f"token/p/b{i:04d}": base64.b64encode(
            sealer.seal(f"token/p/b{i:04d}", json.dumps(big).encode())
        ).decode()
        for i in range(2000)
    }
    with store._locked():
        store._write(sealed)
    file_bytes = (store_dir / DATA_FILE).stat().st_size
    before = store._snapshot
    await store.get_token("p", "b0001")
    tracemalloc.start()
    try:
        await store.save_token("p", "b0000", TOKEN)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    after = store._snapshot
    assert after is not before
    assert peak < 0.5 * file_bytes, (peak, file_bytes)
    assert after.records["token/p/b0001"] is before.records["token/p/b0001"]
    assert await store.get_token("p", "b0000") == TOKEN
    assert await store.get_token("p", "b0001") == big
    await store.close()


@pytest.mark.parametrize("count", [0, 1, WRITE_BATCH, WRITE_BATCH + 1, 3 * WRITE_BATCH - 5])
def test_the_file_written_in_pieces_is_byte_for_byte_the_whole_document(count: int) -> None:
    header = {"format": "credproxy-store", "version": 1, "store_id": "s", "key": {}, "check": "c"}
    records = {f"key/k{i:04d}": f"blob-{i}" for i in range(count)}
    whole = msgspec.json.encode({**header, "records": records})
    assert b"".join(document_chunks(header, records)) == whole


async def test_a_reader_meeting_the_file_this_store_is_writing_waits_instead_of_reading_it(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between a write's rename and its install, readers of the same store saw a
    changed file and each read and decoded all of it, in their own threads: in a
    loaded daemon with 10,000 credentials that was several 16 MB reads per save,
    and RSS went past 400 MB. A reader that meets the new file now waits for the
    writer's snapshot. The reader here starts inside the rename; it is given a
    second to read the file itself, which it must not do."""
    store = FileStore(store_dir, KeySettings(source="keyfile"))
    await store.save_token("p", "b", TOKEN)
    loads: list[int] = []
    real_load = store._load

    def counting_load() -> Any:
        loads.append(1)
        return real_load()

    monkeypatch.setattr(store, "_load", counting_load)
    seen: list[object] = []
    reader = threading.Thread(target=lambda: seen.append(store._current()))
    real_replace = os.replace

    def replace_then_read(source: Any, target: Any) -> None:
        real_replace(source, target)
        if target == store.path and not reader.is_alive() and not seen:
            reader.start()
            reader.join(1.0)

    monkeypatch.setattr("credproxy.store.file.os.replace", replace_then_read)
    await store.save_token("p", "b2", TOKEN)
    reader.join()
    assert loads == []
    assert seen == [store._snapshot]
    assert await store.get_token("p", "b2") == TOKEN
    await store.close()
