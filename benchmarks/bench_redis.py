"""The Redis store through real daemons: get_token on a cache hit and miss (against the
file store), and refresh throughput of a fleet of daemons on one Redis store.

Run: ``.venv/bin/python benchmarks/bench_redis.py [--quick] [--skip-refresh]``.

Needs what ``scripts/setup --test`` installs (redis-server, and for the refresh
part Node with the test OAuth server); it starts its own redis-server (with the
test suite's fixture: Unix socket, TCP, ACL user, append-only file fsynced on
every write) and its own ``credproxy serve`` processes.

- **get_token**: one daemon per backend, ``N`` tokens of the 1.1 KB shape the
  other benchmarks use, each in its own bucket, seeded by the host through the
  backend itself. One client connection asks for each bucket once (a miss: the
  daemon has not read it yet; on Redis a round trip and a decryption, on the
  file store a decryption of the already loaded file), then for each bucket
  again (a hit: served from the daemon's memory). Latency per request as the
  client sees it (one request in flight), so it includes the socket and framing.
- **refresh**: ``D`` daemons (10) on one Redis store, ``B`` buckets each holding
  a real, expired token of the test OAuth server (rotating refresh tokens);
  every daemon gets one client per bucket, all asking ``refresh_token`` at once.
  Reported: wall time until every client has its answer, refreshes per second
  (``B`` / wall time), the provider's refresh grants (must be ``B``) and whether
  every client of a bucket got the same access token.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.daemon import DaemonFactory, DaemonHandle, RawClient
from tests.fixtures.redis import STORE_USER, RedisServer, new_redis_server
from tests.oauth.harness import _toml_value
from tests.store.redis_fleet import run_in_thread, store_settings

from credproxy.store.base import CredentialStore
from credproxy.store.factory import open_store

PROVIDER: Final = "bench"
TOKEN: Final[dict[str, Any]] = {
    "access_token": "a" * 900,
    "refresh_token": "r" * 200,
    "expiry": 4_000_000_000,
    "token_type": "Bearer",
    "scope": "openid profile email offline_access",
}


def redis_section(
    server: RedisServer, home: Path, prefix: str = "credproxy-bench"
) -> dict[str, Any]:
    return {
        "backend": "redis",
        "url": server.url,
        "username": STORE_USER,
        "password_file": str(server.password_file()),
        "prefix": prefix,
        "path": str(home / "data"),
        "key_file": str(home.parent / "fleet.key"),
    }


def file_section(directory: Path) -> dict[str, Any]:
    return {"backend": "file", "path": str(directory), "key_source": "keyfile"}


def toml(section: dict[str, Any], providers: dict[str, dict[str, Any]] | None = None) -> str:
    lines = ["[store]"] + [f"{k} = {_toml_value(v)}" for k, v in section.items()]
    for name, table in (providers or {}).items():
        lines.append(f"[providers.{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def on_store(section: dict[str, Any], action: Callable[[CredentialStore], Any]) -> Any:
    async def body() -> Any:
        store = open_store(None, store_settings(section))
        try:
            return await action(store)
        finally:
            await store.close()

    return run_in_thread(body())


def seed(section: dict[str, Any], buckets: int) -> None:
    async def action(store: CredentialStore) -> None:
        for i in range(buckets):
            await store.save_token(PROVIDER, f"b{i}", TOKEN)

    on_store(section, action)


def latencies(daemon: DaemonHandle, buckets: int) -> list[float]:
    found = []
    with RawClient(daemon.socket_path) as client:
        assert client.handshake(daemon.capability_token)["ok"]
        for i in range(buckets):
            started = time.perf_counter()
            reply = client.request("get_token", {"provider": PROVIDER, "bucket": f"b{i}"})
            found.append(time.perf_counter() - started)
            assert reply.get("ok"), reply
    return found


def describe(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered) * 1e6
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6
    rate = len(ordered) / sum(ordered)
    return f"| {name} | {p50:,.0f} | {p99:,.0f} | {rate:,.0f} |"


def bench_get_token(factory: DaemonFactory, server: RedisServer, buckets: int) -> list[str]:
    rows = ["| backend, read | p50 µs | p99 µs | requests/s (1 in flight) |", "|---|---|---|---|"]
    for run, backend in enumerate(("redis", "file", "redis", "file")):
        workdir = factory.workdir()
        home = workdir / "home"
        home.mkdir(mode=0o700)
        section = (
            file_section(workdir / "store")
            if backend == "file"
            else redis_section(server, home, prefix=f"credproxy-bench-{os.getpid()}-{run}")
        )
        seed(section, buckets)
        daemon = factory(
            "--allow", PROVIDER, "--rate-limit", "1000000", workdir=workdir, config=toml(section)
        )
        miss = latencies(daemon, buckets)
        hit = latencies(daemon, buckets)
        rows.append(describe(f"{backend}, miss (first read)", miss))
        rows.append(describe(f"{backend}, hit (cached)", hit))
    return rows


def bench_refresh(
    factory: DaemonFactory, server: RedisServer, daemons: int, buckets: int
) -> list[str]:
    from tests.fixtures.oidc import _start, _stop
    from tests.oauth.browser import HeadlessUser

    oidc = _start({})
    try:
        shared = factory.workdir()
        providers = {"acme": oidc.provider_table("pkce_redirect")}
        prefix = f"credproxy-refresh-{uuid.uuid4().hex[:12]}"
        fleet = []
        for _ in range(daemons):
            workdir = factory.workdir()
            home = workdir / "home"
            home.mkdir(mode=0o700)
            section = redis_section(server, home, prefix=prefix)
            section["key_file"] = str(shared / "fleet.key")
            fleet.append(
                factory(
                    "--allow",
                    "acme",
                    "--rate-limit",
                    "1000000",
                    workdir=workdir,
                    config=toml(section, providers),
                    env={"HOME": str(home)},
                )
            )
        from credproxy.client import ProxyClient

        with ProxyClient(str(fleet[0].socket_path), fleet[0].capability_token) as client:
            for i in range(buckets):
                started = client.oauth_initiate("acme", f"b{i}")
                with HeadlessUser() as user:
                    code = user.copy_code(started["auth_url"], oidc.oob_uri)
                client.oauth_exchange(started["session_id"], code)
        host = redis_section(server, shared / "host", prefix=prefix)
        host["key_file"] = str(shared / "fleet.key")

        async def expire(store: CredentialStore) -> None:
            for i in range(buckets):
                token = await store.get_token("acme", f"b{i}")
                assert token is not None
                token["expiry"] = 1
                await store.save_token("acme", f"b{i}", token)

        on_store(host, expire)
        before = oidc.token_requests().get("refresh_token", 0)
        barrier = threading.Barrier(daemons * buckets)
        answers: dict[int, set[str]] = {i: set() for i in range(buckets)}
        errors: list[str] = []

        def ask(daemon: DaemonHandle, bucket: int) -> None:
            with ProxyClient(str(daemon.socket_path), daemon.capability_token) as client:
                barrier.wait(60)
                try:
                    answers[bucket].add(client.refresh_token("acme", f"b{bucket}")["access_token"])
                except Exception as exc:
                    errors.append(type(exc).__name__)

        threads = [threading.Thread(target=ask, args=(d, i)) for d in fleet for i in range(buckets)]
        for thread in threads:
            thread.start()
        began = time.perf_counter()
        for thread in threads:
            thread.join(120)
        wall = time.perf_counter() - began
        grants = oidc.token_requests().get("refresh_token", 0) - before
        same = all(len(v) == 1 for v in answers.values())
        return [
            "| daemons | credentials | clients | wall s | refreshes/s | refresh grants "
            "| same token per credential | errors |",
            "|---|---|---|---|---|---|---|---|",
            f"| {daemons} | {buckets} | {daemons * buckets} | {wall:.2f} | {buckets / wall:.1f} "
            f"| {grants} | {'yes' if same else 'NO'} | {len(errors)} |",
        ]
    finally:
        _stop(oidc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer buckets")
    parser.add_argument("--buckets", type=int, default=1000, help="tokens read (default 1000)")
    parser.add_argument("--daemons", type=int, default=10)
    parser.add_argument("--refresh-buckets", type=int, default=20)
    parser.add_argument("--skip-refresh", action="store_true")
    args = parser.parse_args()
    buckets = 200 if args.quick else args.buckets
    server = new_redis_server()
    factory = DaemonFactory()
    try:
        print(f"load average at start: {os.getloadavg()[0]:.2f}")
        for row in bench_get_token(factory, server, buckets):
            print(row)
        if not args.skip_refresh:
            refresh_buckets = 5 if args.quick else args.refresh_buckets
            print()
            for row in bench_refresh(factory, server, args.daemons, refresh_buckets):
                print(row)
        print(f"load average at end: {os.getloadavg()[0]:.2f}")
    finally:
        factory.close()
        server.stop()


if __name__ == "__main__":
    main()
