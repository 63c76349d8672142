"""A fleet for the tests: real ``credproxy serve`` daemons on one Redis store, each with
its own HOME (so its own data directory, as separate hosts would have), sharing
only the Redis server, the ACL user's password file and the fleet's key file.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from credproxy.settings import Settings
from credproxy.store.factory import open_store
from credproxy.store.redis import RedisStore
from tests.fixtures.daemon import DaemonFactory, DaemonHandle
from tests.fixtures.redis import STORE_USER, RedisServer
from tests.fixtures.settings import settings_of
from tests.oauth.harness import _toml_value

T = TypeVar("T")


class Fleet:
    def __init__(
        self,
        factory: DaemonFactory,
        server: RedisServer,
        prefix: str,
        shared: Path,
        *,
        providers: Mapping[str, Mapping[str, Any]] | None = None,
        **store_extra: Any,
    ) -> None:
        self.factory = factory
        self.server = server
        self.prefix = prefix
        self.key_file = shared / "fleet.key"
        self.providers = dict(providers or {})
        self.store_extra = store_extra
        self.daemons: list[DaemonHandle] = []

    def store_section(self, home: Path) -> dict[str, Any]:
        section: dict[str, Any] = {
            "backend": "redis",
            "url": self.server.url,
            "username": STORE_USER,
            "password_file": str(self.server.password_file()),
            "prefix": self.prefix,
            "key_file": str(self.key_file),
            "path": str(home / "data"),
        }
        section.update(self.store_extra)
        return section

    def config_text(self, home: Path, **store_extra: Any) -> str:
        section = {**self.store_section(home), **store_extra}
        lines = ["[store]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in section.items()]
        for name, table in self.providers.items():
            lines.append(f"[providers.{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        return "\n".join(lines) + "\n"

    def start(self, *args: str, **store_extra: Any) -> DaemonHandle:
        """A daemon of the fleet; ``store_extra`` overrides its ``[store]`` keys (its url)."""
        workdir = self.factory.workdir()
        home = workdir / "home"
        home.mkdir(mode=0o700)
        handle = self.factory(
            *args,
            workdir=workdir,
            config=self.config_text(home, **store_extra),
            env={"HOME": str(home), "XDG_DATA_HOME": str(home / "data")},
        )
        self.daemons.append(handle)
        return handle

    def host_store(self, **extra: Any) -> RedisStore:
        """A store of the fleet opened by the test itself (a host CLI, say)."""
        home = self.factory.workdir()
        section = self.store_section(home)
        section.update(extra)
        store = open_store(None, store_settings(section))
        assert isinstance(store, RedisStore)
        return store

    def run(self, action: Any) -> Any:
        """Run ``action(store)`` on a fresh host store in a thread with its own loop."""

        async def body() -> Any:
            store = self.host_store()
            try:
                return await action(store)
            finally:
                await store.close()

        return run_in_thread(body())


def store_settings(section: Mapping[str, Any]) -> Settings:
    """A ``[store]`` table as the typed settings parse it (unknown keys refused)."""
    return settings_of({"store": dict(section)})


def run_in_thread(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on a loop of its own, so sync tests and async tests both can."""
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coroutine))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]
