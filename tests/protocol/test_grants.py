"""Grants decide what a sandbox may touch; the capability table maps tokens to grants."""

from __future__ import annotations

import hmac
import re

import pytest

from credproxy.grants import CapabilityTable, Grant, new_capability_token

SCOPED = Grant(
    grant_id="g1",
    providers=frozenset({"gemini", "qwen:work"}),
    keys=frozenset({"openai"}),
)


def test_full_grant_allows_everything() -> None:
    full = Grant.full()
    assert full.is_full
    assert full.allows_provider("anything")
    assert full.allows_token("anything", "any-bucket")
    assert full.allows_key("any-key")
    assert full.can_save and full.can_remove
    assert full.describe() == "full"


def test_default_grant_allows_nothing() -> None:
    empty = Grant(grant_id="none")
    assert not empty.is_full
    assert not empty.allows_provider("gemini")
    assert not empty.allows_token("gemini")
    assert not empty.allows_key("openai")
    assert not empty.can_save and not empty.can_remove


def test_provider_entry_allows_every_bucket() -> None:
    assert SCOPED.allows_token("gemini")
    assert SCOPED.allows_token("gemini", "work")


def test_provider_bucket_entry_allows_only_that_bucket() -> None:
    assert SCOPED.allows_token("qwen", "work")
    assert not SCOPED.allows_token("qwen")
    assert not SCOPED.allows_token("qwen", "home")


def test_a_bucket_entry_makes_the_provider_visible_in_lists() -> None:
    assert SCOPED.allows_provider("qwen")
    assert SCOPED.allows_provider("gemini")
    assert not SCOPED.allows_provider("anthropic")


def test_provider_names_sharing_a_prefix_are_distinct() -> None:
    assert not SCOPED.allows_provider("gem")
    assert not SCOPED.allows_provider("qwe")
    assert not SCOPED.allows_token("gemini-pro")
    assert not Grant(grant_id="g", providers=frozenset({"qwen:work"})).allows_provider("qwen:w")


def test_keys_are_matched_by_exact_name() -> None:
    assert SCOPED.allows_key("openai")
    assert not SCOPED.allows_key("openai2")
    assert not SCOPED.allows_key("OPENAI")


def test_grants_with_equal_rules_but_different_ids_differ() -> None:
    """Two sandboxes with the same rules are still two identities."""
    assert Grant(grant_id="a") != Grant(grant_id="b")


def test_label_is_not_part_of_equality_or_hash() -> None:
    first = Grant(grant_id="a", label="one")
    second = Grant(grant_id="a", label="two")
    assert first == second
    assert hash(first) == hash(second)


def test_grant_is_immutable() -> None:
    with pytest.raises(AttributeError):
        SCOPED.can_save = True  # type: ignore[misc]


def test_describe_lists_names_sorted_and_flags() -> None:
    grant = Grant(grant_id="g", providers=frozenset({"b", "a:x"}), keys=None, can_save=True)
    assert grant.describe() == "providers=[a:x,b] keys=[*]+save"


def test_capability_token_is_64_lowercase_hex_and_random() -> None:
    tokens = {new_capability_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(re.fullmatch(r"[0-9a-f]{64}", token) for token in tokens)


def test_issued_tokens_map_to_their_own_grants() -> None:
    table = CapabilityTable()
    other = Grant(grant_id="g2")
    first, second = table.issue(SCOPED), table.issue(other)
    assert len(table) == 2
    assert table.lookup(first) is SCOPED
    assert table.lookup(second) is other


def test_a_token_added_by_value_maps_to_its_grant() -> None:
    table = CapabilityTable()
    token = new_capability_token()
    table.add(token, SCOPED)
    assert table.lookup(token) is SCOPED


@pytest.mark.parametrize(
    "presented",
    [None, 1, b"bytes", "", "0" * 64, "\ud800", "x" * 10_000],
)
def test_unknown_or_malformed_tokens_find_nothing(presented: object) -> None:
    table = CapabilityTable()
    table.issue(SCOPED)
    assert table.lookup(presented) is None


def test_near_miss_tokens_find_nothing() -> None:
    table = CapabilityTable()
    token = table.issue(SCOPED)
    assert table.lookup(token.upper()) is None
    assert table.lookup(token + "\n") is None
    assert table.lookup(token[:-1]) is None


@pytest.mark.parametrize("position", [0, 3, 7])
def test_lookup_compares_against_every_entry_wherever_the_match_is(
    position: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timing is the property, but a timed assertion would be flaky; what makes
    the time independent of the token is that every entry is compared in constant
    time, so the test counts the hmac comparisons (a spy, not a stand-in)."""
    table = CapabilityTable()
    tokens = [table.issue(Grant(grant_id=f"g{index}")) for index in range(8)]
    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def counting_compare(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting_compare)
    found = table.lookup(tokens[position])
    assert found is not None and found.grant_id == f"g{position}"
    assert len(calls) == 8
    calls.clear()
    assert table.lookup(new_capability_token()) is None
    assert len(calls) == 8


def test_table_keeps_no_token_in_clear() -> None:
    table = CapabilityTable()
    token = table.issue(SCOPED)
    assert token not in repr(vars(table))
