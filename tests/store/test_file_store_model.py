"""The file store against a plain dict: random operations through two store instances
(separate caches, one file) must always read back exactly what the model holds."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from credproxy.store.file import FileStore
from credproxy.store.keysource import KeySettings

names = st.sampled_from(["a", "b", "c-d", "e.f@g"])
instances = st.integers(min_value=0, max_value=1)
tokens = st.fixed_dictionaries(
    {
        "access_token": st.text(min_size=1, max_size=20),
        "expiry": st.integers(min_value=0, max_value=2**40),
        "token_type": st.just("Bearer"),
    },
    optional={
        "refresh_token": st.text(max_size=20),
        "scope": st.none() | st.text(max_size=10),
        "nested": st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    },
)


class TwoInstancesOneFile(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="credproxy-model-"))
        self.stores = [
            FileStore(self.root / "store", KeySettings(source="keyfile")) for _ in range(2)
        ]
        self.tokens: dict[tuple[str, str], dict[str, Any]] = {}
        self.keys: dict[str, str] = {}

    @rule(which=instances, provider=names, bucket=names, token=tokens)
    def save_token(self, which: int, provider: str, bucket: str, token: dict[str, Any]) -> None:
        asyncio.run(self.stores[which].save_token(provider, bucket, token))
        self.tokens[(provider, bucket)] = token

    @rule(which=instances, provider=names, bucket=names)
    def remove_token(self, which: int, provider: str, bucket: str) -> None:
        removed = asyncio.run(self.stores[which].remove_token(provider, bucket))
        assert removed == ((provider, bucket) in self.tokens)
        self.tokens.pop((provider, bucket), None)

    @rule(which=instances, name=names, value=st.text(min_size=1, max_size=30))
    def set_key(self, which: int, name: str, value: str) -> None:
        asyncio.run(self.stores[which].set_key(name, value))
        self.keys[name] = value

    @rule(which=instances, name=names)
    def remove_key(self, which: int, name: str) -> None:
        removed = asyncio.run(self.stores[which].remove_key(name))
        assert removed == (name in self.keys)
        self.keys.pop(name, None)

    @invariant()
    def both_instances_read_exactly_the_model(self) -> None:
        async def check(store: FileStore) -> None:
            providers = sorted({provider for provider, _ in self.tokens})
            assert await store.list_providers() == providers
            for provider in providers:
                expected = sorted(b for p, b in self.tokens if p == provider)
                assert await store.list_buckets(provider) == expected
            for (provider, bucket), token in self.tokens.items():
                assert await store.get_token(provider, bucket) == token
            assert await store.list_keys() == sorted(self.keys)
            for name, value in self.keys.items():
                assert await store.get_key(name) == value

        for store in self.stores:
            asyncio.run(check(store))

    def teardown(self) -> None:
        for store in self.stores:
            asyncio.run(store.close())
        shutil.rmtree(self.root, ignore_errors=True)


TwoInstancesOneFile.TestCase.settings = settings(
    max_examples=20, stateful_step_count=15, deadline=None
)
test_file_store_matches_a_dict_model = TwoInstancesOneFile.TestCase
