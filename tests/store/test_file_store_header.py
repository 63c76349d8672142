"""A damaged store header is told apart from a wrong key wherever the format allows.

Flipping one character of the header's ``check`` field used to be blamed on
the key ("the data key ... does not open the store (a wrong passphrase ...)").
What the format can tell: a check that is not base64 or not a sealed check's
length is damage; a well-formed check that fails while the key opens a stored
record is damage too; only a failing check in an empty store is undecided.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from credproxy.store.base import StoreError
from credproxy.store.file import DATA_FILE, FileStore
from credproxy.store.keysource import KEY_FILE_NAME, KeySettings

KEYFILE = KeySettings(source="keyfile")


def edit_check(store_dir: Path, change: str) -> None:
    path = store_dir / DATA_FILE
    document = json.loads(path.read_bytes())
    check: str = document["check"]
    if change == "flip":
        # One base64 character for another: still valid base64 of the same length.
        document["check"] = check[:5] + ("A" if check[5] != "A" else "B") + check[6:]
    elif change == "not base64":
        document["check"] = "%" + check[1:]
    elif change == "truncated":
        document["check"] = check[:-8]
    path.write_text(json.dumps(document))


async def new_store(store_dir: Path, *, with_record: bool) -> None:
    store = FileStore(store_dir, KEYFILE)
    if with_record:
        await store.set_key("openai", "sk-header-test-value")
    await store.close()


@pytest.mark.parametrize("change", ["not base64", "truncated"])
async def test_a_malformed_check_is_reported_as_damage_not_a_wrong_key(
    tmp_path: Path, change: str
) -> None:
    store_dir = tmp_path / "store"
    await new_store(store_dir, with_record=False)
    edit_check(store_dir, change)
    with pytest.raises(StoreError) as caught:
        FileStore(store_dir, KEYFILE)
    message = str(caught.value)
    assert "has a damaged header" in message
    assert "which no key can cause" in message
    assert "wrong passphrase" not in message


async def test_a_flipped_check_with_a_record_the_key_opens_is_damage(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    await new_store(store_dir, with_record=True)
    edit_check(store_dir, "flip")
    with pytest.raises(StoreError) as caught:
        FileStore(store_dir, KEYFILE)
    message = str(caught.value)
    assert "has a damaged header" in message
    assert "opens the stored records, so the key is right" in message
    assert "wrong passphrase" not in message
    assert "sk-header-test-value" not in message


async def test_a_flipped_check_in_an_empty_store_names_both_causes(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    await new_store(store_dir, with_record=False)
    edit_check(store_dir, "flip")
    with pytest.raises(StoreError) as caught:
        FileStore(store_dir, KEYFILE)
    message = str(caught.value)
    assert "wrong passphrase" in message
    assert "damaged key check: the store holds no record to tell the two apart" in message


async def test_a_wrong_key_with_records_is_still_called_a_wrong_key(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    await new_store(store_dir, with_record=True)
    (store_dir / KEY_FILE_NAME).write_bytes(os.urandom(32))
    with pytest.raises(StoreError) as caught:
        FileStore(store_dir, KEYFILE)
    message = str(caught.value)
    assert "does not open the store" in message
    assert "no stored record opens with it either" in message
    assert "damaged header" not in message
