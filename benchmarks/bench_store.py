"""Store costs: save and get on the file store (key file or keyring-held key), the keyring
store, and get_token through a real daemon with the file store and the memory store.

Run from the repository root: ``.venv/bin/python -m benchmarks.bench_store``.
It starts its own private D-Bus and gnome-keyring (as the tests do) and its own
daemons, and removes everything when done.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from credproxy.store.file import FileStore
from credproxy.store.keyring import KeyringStore
from credproxy.store.keysource import KeySettings
from credproxy.store.secretservice import SecretService

TOKEN: dict[str, Any] = {
    "access_token": "a" * 900,
    "refresh_token": "r" * 200,
    "expiry": 1_900_000_000,
    "token_type": "Bearer",
    "scope": "openid profile email offline_access",
}


PER_CONNECTION = 50


def row(label: str, samples_s: list[float]) -> None:
    samples = sorted(samples_s)
    p50 = statistics.median(samples) * 1e6
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e6
    mean = statistics.fmean(samples) * 1e6
    print(f"  {label:<58} mean {mean:9.1f} us   p50 {p50:9.1f} us   p99 {p99:9.1f} us")


async def timed(action: Callable[[], Awaitable[Any]], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        await action()
        samples.append(time.perf_counter() - start)
    return samples


async def saves(store: FileStore | KeyringStore, count: int) -> list[float]:
    counter = iter(range(1_000_000))

    async def save() -> None:
        await store.save_token("bench", f"hot{next(counter) % 5}", TOKEN)

    return await timed(save, count)


async def file_store_figures(root: Path, label: str, settings: KeySettings) -> None:
    print(f"file store, data key from {label}")
    start = time.perf_counter()
    store = FileStore(root / f"store-{label}", settings)
    print(f"  {'open (create, key set up)':<58} {1e3 * (time.perf_counter() - start):9.1f} ms")
    await store.close()
    start = time.perf_counter()
    store = FileStore(root / f"store-{label}", settings)
    print(f"  {'open (existing store)':<58} {1e3 * (time.perf_counter() - start):9.1f} ms")
    stored = 0
    for size in (10, 100, 1000):
        while stored < size - 1:
            await store.save_token("bench", f"b{stored}", TOKEN)
            stored += 1
        row(f"save_token, {size} credentials in the file (fsync x2)", await saves(store, 60))
        stored = size + 4

    async def get() -> None:
        await store.get_token("bench", "b1")

    row("get_token, cached (one stat)", await timed(get, 20000))
    other = FileStore(root / f"store-{label}", settings)
    changed = 0

    async def get_after_change() -> None:
        nonlocal changed
        changed += 1
        await other.save_token("bench", "b2", {**TOKEN, "access_token": f"x{changed}"})
        start = time.perf_counter()
        await store.get_token("bench", "b1")
        samples_after.append(time.perf_counter() - start)

    samples_after: list[float] = []
    await timed(get_after_change, 50)
    row("get_token after another process's write (reload, 1000 recs)", samples_after)
    await other.close()
    await store.close()


async def keyring_store_figures(root: Path) -> None:
    print("keyring store (gnome-keyring over a private D-Bus)")
    store = KeyringStore.open(SecretService("credproxy-bench"), root / "index.lock")
    row("save_token (item + index update)", await saves(store, 40))

    async def get() -> None:
        await store.get_token("bench", "b1")

    row("get_token (D-Bus round trips, no cache)", await timed(get, 200))


def daemon_figures() -> None:
    from tests.fixtures.daemon import DaemonFactory

    print("get_token through a real daemon (sequential requests, 50 per connection)")
    factory = DaemonFactory()
    try:
        file_daemon = factory(tokens={("bench", "default"): TOKEN}, capability=False)
        memory_daemon = factory(store="memory", capability=False)
        with memory_daemon.client() as client:
            saved = client.request(
                "save_token", {"provider": "bench", "bucket": "default", "token": TOKEN}
            )
            assert saved["ok"] is True, saved
        # The daemon allows bursts of 60 requests per connection (protocol.md, "Limits").
        for label, daemon in (("memory store", memory_daemon), ("file store", file_daemon)) * 2:
            samples = []
            for _ in range(60):
                with daemon.client() as client:
                    for _ in range(PER_CONNECTION):
                        start = time.perf_counter()
                        reply = client.request("get_token", {"provider": "bench"})
                        samples.append(time.perf_counter() - start)
                        assert reply["ok"] is True, reply
            row(f"get_token round trip, {label}", samples)
    finally:
        factory.close()


def main() -> None:
    from tests.fixtures.keyring import start_bus, start_keyring_daemon

    root = Path(tempfile.mkdtemp(prefix="credproxy-bench-"))
    session = start_bus(root / "keyring")
    saved_env = {name: os.environ.get(name) for name in session.env}
    try:
        start_keyring_daemon(session, unlock=True)
        os.environ.update(session.env)
        print(f"credproxy store benchmark ({os.cpu_count()} CPUs, {root})")
        asyncio.run(file_store_figures(root, "keyfile", KeySettings(source="keyfile")))
        asyncio.run(file_store_figures(root, "keyring", KeySettings(source="keyring")))
        asyncio.run(keyring_store_figures(root))
        daemon_figures()
    finally:
        session.stop()
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
