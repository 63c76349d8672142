"""Importing LLxprt's plaintext token and key files into a real file store."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credproxy.migrate import (
    MigrationError,
    import_llxprt,
    key_name_from_file_name,
    normalize_token,
    split_token_file_name,
)
from credproxy.store.file import FileStore

KNOWN = {"anthropic", "codex", "gemini", "qwen"}


def llxprt_token(**overrides: Any) -> dict[str, Any]:
    token: dict[str, Any] = {
        "access_token": "llx-access-61b0",
        "refresh_token": "llx-refresh-5d7e",
        "expiry": 1_900_000_000,
        "token_type": "Bearer",
        "scope": None,
    }
    token.update(overrides)
    return token


def write_json(path: Path, value: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


# --- file names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("gemini", ("gemini", "default")),
        ("gemini-work", ("gemini", "work")),
        ("gemini-work-2", ("gemini", "work-2")),
        ("qwen-a@b.c", ("qwen", "a@b.c")),
        ("openrouter", ("openrouter", "default")),
        ("my-provider", ("my-provider", "default")),
        ("my-provider-team-a", ("my-provider", "team-a")),
    ],
)
def test_token_file_names_split_after_the_longest_known_provider(
    stem: str, expected: tuple[str, str]
) -> None:
    assert split_token_file_name(stem, KNOWN | {"my", "my-provider"}) == expected


def test_unknown_provider_with_a_dash_is_ambiguous_and_asks_for_provider() -> None:
    with pytest.raises(MigrationError, match="--provider"):
        split_token_file_name("acme-corp-work", KNOWN)


def test_token_file_name_with_invalid_characters_is_refused() -> None:
    with pytest.raises(MigrationError, match="not a valid"):
        split_token_file_name("gemini-bad bucket", KNOWN)


@pytest.mark.parametrize(
    ("file_name", "expected"),
    [
        (".xai_key", "xai"),
        (".synthetic2_key", "synthetic2"),
        ("openai.key", "openai"),
        ("anthropic", "anthropic"),
        (".hidden", "hidden"),
        ("_key", "_key"),
    ],
)
def test_key_file_names_map_to_key_names(file_name: str, expected: str) -> None:
    assert key_name_from_file_name(file_name) == expected


def test_key_file_name_that_is_no_valid_name_is_refused() -> None:
    with pytest.raises(MigrationError, match="not a valid key name"):
        key_name_from_file_name("my key")


# --- token shapes ------------------------------------------------------------------------


def test_llxprt_token_shape_is_kept_as_it_is() -> None:
    token = llxprt_token(resource_url="portal.qwen.ai", account_id="acct")
    assert normalize_token(token) == {**token, "scope": None}


@pytest.mark.parametrize(
    "fields",
    [
        {"expiry": 1_900_000_000_000},
        {"expires_at": 1_900_000_000},
        {"expires_at": 1_900_000_000_000},
        {"expires_at": "2030-03-17T17:46:40Z"},
        {"expiry_date": 1_900_000_000_000},
    ],
)
def test_expiry_in_other_units_and_fields_becomes_unix_seconds(fields: dict[str, Any]) -> None:
    raw = {"access_token": "a", "token_type": "Bearer", **fields}
    token = normalize_token(raw)
    assert token["expiry"] == 1_900_000_000
    assert not {"expires_at", "expiry_date"} & set(token)


def test_expires_in_counts_from_when_the_file_was_written() -> None:
    token = normalize_token({"access_token": "a", "expires_in": 3600}, issued_at=1_000_000)
    assert token["expiry"] == 1_003_600
    assert token["token_type"] == "Bearer"
    assert "expires_in" not in token


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([1, 2], "JSON object"),
        ({"access_token": "a"}, "no expiry"),
        ({"access_token": "a", "expiry": "soon"}, "expiry"),
        ({"access_token": "a", "expires_in": "1h"}, "expires_in"),
        ({"access_token": "a", "expires_in": float("inf")}, "expires_in"),
        ({"access_token": "a", "expiry": float("nan")}, "expiry"),
        ({"access_token": "", "expiry": 5}, "access_token"),
        ({"access_token": "a", "expiry": 5, "refresh_token": 7}, "refresh_token"),
    ],
)
def test_unusable_token_is_refused_naming_the_field(raw: Any, message: str) -> None:
    with pytest.raises(MigrationError, match=message):
        normalize_token(raw)


# --- the import against a real store --------------------------------------------------------


@pytest.fixture
def llxprt_home(tmp_path: Path) -> Path:
    root = tmp_path / "llxprt"
    write_json(root / "oauth" / "gemini.json", llxprt_token())
    write_json(root / "oauth" / "codex-work.json", llxprt_token(access_token="codex-at"))
    write_json(root / "oauth" / "acme-corp-team.json", llxprt_token())
    (root / "oauth" / "gemini-refresh.lock").write_text('{"pid": 1, "timestamp": 0}')
    (root / "oauth" / "qwen.json.tmp-123-abc").write_text("{half")
    (root / "keys").mkdir()
    (root / "keys" / ".xai_key").write_text("xai-secret-key\n")
    (root / "keys" / "notes").write_text("not a key at all")
    return root


def statuses(items: list[Any]) -> dict[str, str]:
    return {f"{item.kind}:{item.name or Path(item.source).name}": item.status for item in items}


async def test_dry_run_reports_and_changes_nothing(
    file_store: FileStore, llxprt_home: Path
) -> None:
    before = sorted(p.name for p in (llxprt_home / "oauth").iterdir())
    items = await import_llxprt(file_store, llxprt_home, dry_run=True, delete_originals=True)
    assert statuses(items) == {
        "token:acme-corp-team.json": "skipped",
        "token:codex/work": "would import",
        "token:gemini/default": "would import",
        "key:xai": "would import",
        "key:notes": "skipped",
    }
    assert await file_store.list_providers() == []
    assert await file_store.list_keys() == []
    assert sorted(p.name for p in (llxprt_home / "oauth").iterdir()) == before


async def test_import_copies_tokens_with_refresh_tokens_and_keys(
    file_store: FileStore, llxprt_home: Path
) -> None:
    items = await import_llxprt(file_store, llxprt_home, known_providers={"acme-corp"})
    assert statuses(items)["token:acme-corp/team"] == "imported"
    assert await file_store.get_token("gemini", "default") == llxprt_token()
    codex = await file_store.get_token("codex", "work")
    assert codex is not None
    assert codex["access_token"] == "codex-at"
    assert codex["refresh_token"] == "llx-refresh-5d7e"
    assert await file_store.get_key("xai") == "xai-secret-key"
    assert (llxprt_home / "oauth" / "gemini.json").exists(), "originals kept by default"
    skipped = [item for item in items if item.status == "skipped"]
    assert [Path(item.source).name for item in skipped] == ["notes"]
    for item in items:
        assert "llx-access" not in json.dumps(item.as_dict())
        assert "xai-secret" not in json.dumps(item.as_dict())


async def test_delete_originals_removes_only_what_reached_the_store(
    file_store: FileStore, llxprt_home: Path
) -> None:
    await import_llxprt(file_store, llxprt_home, delete_originals=True)
    remaining = sorted(p.name for p in (llxprt_home / "oauth").iterdir())
    assert remaining == ["acme-corp-team.json", "gemini-refresh.lock", "qwen.json.tmp-123-abc"]
    assert sorted(p.name for p in (llxprt_home / "keys").iterdir()) == ["notes"]


async def test_credentials_already_in_the_store_are_kept_unless_overwrite(
    file_store: FileStore, llxprt_home: Path
) -> None:
    newer = llxprt_token(access_token="refreshed-by-daemon", refresh_token="rotated")
    await file_store.save_token("gemini", "default", newer)
    await file_store.save_token("codex", "work", llxprt_token(access_token="codex-at"))
    items = await import_llxprt(file_store, llxprt_home, delete_originals=True)
    by_name = {item.name: item for item in items}
    assert by_name["gemini/default"].status == "already present"
    assert "different value" in by_name["gemini/default"].detail
    assert by_name["gemini/default"].removed_original is False
    assert (llxprt_home / "oauth" / "gemini.json").exists()
    assert by_name["codex/work"].status == "already present"
    assert by_name["codex/work"].removed_original is True
    assert await file_store.get_token("gemini", "default") == newer

    items = await import_llxprt(file_store, llxprt_home, overwrite=True)
    assert {item.name: item.status for item in items}["gemini/default"] == "imported"
    assert await file_store.get_token("gemini", "default") == llxprt_token()


async def test_symlinked_source_file_is_skipped_not_followed(
    file_store: FileStore, tmp_path: Path
) -> None:
    root = tmp_path / "llxprt"
    target = write_json(tmp_path / "elsewhere.json", llxprt_token())
    (root / "oauth").mkdir(parents=True)
    os.symlink(target, root / "oauth" / "gemini.json")
    items = await import_llxprt(file_store, root)
    assert [item.status for item in items] == ["skipped"]
    assert "symbolic link" in items[0].detail
    assert await file_store.list_providers() == []


async def test_missing_llxprt_directory_imports_nothing(
    file_store: FileStore, tmp_path: Path
) -> None:
    assert await import_llxprt(file_store, tmp_path / "absent") == []


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
token_like = st.dictionaries(
    st.sampled_from(
        [
            "access_token",
            "refresh_token",
            "expiry",
            "expires_at",
            "expiry_date",
            "expires_in",
            "token_type",
            "scope",
        ]
    ),
    json_scalars,
    max_size=8,
)


@given(raw=token_like | json_scalars)
def test_any_json_either_normalizes_to_a_valid_token_or_is_refused_cleanly(raw: Any) -> None:
    try:
        token = normalize_token(raw, issued_at=1_000_000)
    except MigrationError:
        return
    assert isinstance(token["access_token"], str) and token["access_token"]
    assert isinstance(token["expiry"], int | float) and token["expiry"] >= 0
    assert not {"expires_at", "expiry_date", "expires_in"} & set(token)
