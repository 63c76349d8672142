"""Daemons on different hosts (HOMEs) sharing one Redis store, over real sockets.

What one daemon saves another serves; a logout on one reaches all within a
second; Redis holds only ciphertext; and with Redis stopped under load every
client gets an answer (the cached token, or "store unreachable") within the
15 s host limit, the daemons recover by themselves when Redis is back, and no
acknowledged save is lost.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from credproxy.store.redis import RedisStore
from tests.fixtures.daemon import DaemonFactory, DaemonHandle, RawClient
from tests.fixtures.redis import RedisServer
from tests.store.redis_fleet import Fleet

ACCESS = "fleet-canary-access-93c1"
REFRESH = "fleet-canary-refresh-4e7a"
API_KEY = "fleet-canary-key-0b5d"
FUTURE = 4_000_000_000


def seeded(access: str = ACCESS, refresh: str = REFRESH) -> dict[str, Any]:
    return {
        "access_token": access,
        "refresh_token": refresh,
        "expiry": FUTURE,
        "token_type": "Bearer",
    }


async def _seed(store: RedisStore) -> None:
    await store.save_token("acme", "default", seeded())
    await store.set_key("openai", API_KEY)


def _read(client: RawClient) -> str | None:
    reply = client.request("get_token", {"provider": "acme"})
    if reply.get("ok"):
        value: str = reply["data"]["access_token"]
        return value
    assert reply["code"] == "NOT_FOUND", reply
    return None


def _access(daemon: DaemonHandle) -> str | None:
    with daemon.client() as client:
        return _read(client)


def _until_all_see(clients: list[RawClient], expected: str | None, within: float) -> None:
    """Poll over open connections (no connect or handshake in the loop), one deadline
    for all, counted from the moment the change was acknowledged."""
    deadline = time.monotonic() + within
    for client in clients:
        while (seen := _read(client)) != expected:
            assert time.monotonic() < deadline, f"still {seen!r}, wanted {expected!r}"
            time.sleep(0.005)


def test_a_token_saved_through_one_daemon_is_served_by_another(
    credproxy_daemon: DaemonFactory, redis_server: RedisServer, redis_prefix: str, tmp_path: Path
) -> None:
    fleet = Fleet(credproxy_daemon, redis_server, redis_prefix, tmp_path)
    fleet.run(_seed)
    writer = fleet.start("--allow", "acme", "--allow-save")
    reader = fleet.start("--allow", "acme", "--allow-key", "openai")
    with reader.client() as watcher, writer.client() as client:
        assert _read(watcher) == ACCESS
        token = {"access_token": "saved-on-writer", "expiry": FUTURE, "token_type": "Bearer"}
        reply = client.request("save_token", {"provider": "acme", "token": token})
        assert reply["ok"], reply
        _until_all_see([watcher], "saved-on-writer", within=1.0)
        assert watcher.request("get_api_key", {"name": "openai"})["data"] == {"key": API_KEY}
    stored = fleet.run(lambda store: store.get_token("acme", "default"))
    assert stored["refresh_token"] == REFRESH  # the sandbox's save kept the host's


def test_daemons_reaching_redis_over_tls_and_a_unix_socket_share_one_store(
    credproxy_daemon: DaemonFactory, redis_server: RedisServer, redis_prefix: str, tmp_path: Path
) -> None:
    fleet = Fleet(credproxy_daemon, redis_server, redis_prefix, tmp_path)
    fleet.run(_seed)
    over_tls = fleet.start(
        "--allow", "acme", "--allow-save",
        url=redis_server.tls_url, tls_ca_file=str(redis_server.ca_file),
    )  # fmt: skip
    local = fleet.start("--allow", "acme", url=redis_server.unix_url)
    with over_tls.client() as client, local.client() as watcher:
        assert _read(watcher) == ACCESS
        token = {"access_token": "saved-over-tls", "expiry": FUTURE, "token_type": "Bearer"}
        assert client.request("save_token", {"provider": "acme", "token": token})["ok"]
        _until_all_see([watcher], "saved-over-tls", within=1.0)


def test_a_logout_on_one_daemon_is_seen_by_all_within_a_second(
    credproxy_daemon: DaemonFactory, redis_server: RedisServer, redis_prefix: str, tmp_path: Path
) -> None:
    fleet = Fleet(credproxy_daemon, redis_server, redis_prefix, tmp_path)
    fleet.run(_seed)
    daemons = [fleet.start("--allow", "acme", "--allow-remove") for _ in range(3)]
    clients = [daemon.client() for daemon in daemons]
    try:
        for client in clients:
            assert _read(client) == ACCESS  # each daemon has it cached now
        assert clients[0].request("remove_token", {"provider": "acme"})["ok"]
        _until_all_see(clients[1:], None, within=1.0)
    finally:
        for client in clients:
            client.close()
    assert fleet.run(lambda store: store.get_token("acme", "default")) is None


def test_redis_holds_no_plaintext_secret_after_a_fleet_used_it(
    credproxy_daemon: DaemonFactory, redis_server: RedisServer, redis_prefix: str, tmp_path: Path
) -> None:
    fleet = Fleet(credproxy_daemon, redis_server, redis_prefix, tmp_path)
    fleet.run(_seed)
    daemon = fleet.start("--allow", "acme", "--allow-save", "--allow-key", "openai")
    with daemon.client() as client:
        token = {"access_token": ACCESS + "-saved", "expiry": FUTURE, "token_type": "Bearer"}
        assert client.request("save_token", {"provider": "acme", "token": token})["ok"]
        assert client.request("get_api_key", {"name": "openai"})["ok"]
    everything = b"\n".join(redis_server.all_bytes(redis_prefix))
    assert f"{redis_prefix}:rec:token/acme/default".encode() in everything
    for canary in (ACCESS, REFRESH, API_KEY):
        assert canary.encode() not in everything


def test_redis_stopped_under_load_answers_promptly_and_loses_no_acknowledged_save(
    credproxy_daemon: DaemonFactory, private_redis: RedisServer, redis_prefix: str, tmp_path: Path
) -> None:
    fleet = Fleet(credproxy_daemon, private_redis, redis_prefix, tmp_path, timeout_s=2.0)
    fleet.run(_seed)
    daemons = [fleet.start("--allow", "acme", "--allow-save") for _ in range(3)]
    for daemon in daemons:
        assert _access(daemon) == ACCESS
    stop = threading.Event()
    acknowledged: dict[str, int] = {}
    answers: list[tuple[str, float, dict[str, Any]]] = []
    lock = threading.Lock()

    def saver(daemon: DaemonHandle, bucket: str) -> None:
        n = 0
        with RawClient(daemon.socket_path, timeout=20.0) as client:
            client.handshake(daemon.capability_token)
            while not stop.is_set():
                n += 1
                token = {"access_token": f"{bucket}-{n}", "expiry": FUTURE, "token_type": "Bearer"}
                started = time.monotonic()
                reply = client.request(
                    "save_token", {"provider": "acme", "bucket": bucket, "token": token}
                )
                with lock:
                    answers.append((bucket, time.monotonic() - started, reply))
                    if reply.get("ok"):
                        acknowledged[bucket] = n
                time.sleep(0.02)

    def reader(daemon: DaemonHandle) -> None:
        with RawClient(daemon.socket_path, timeout=20.0) as client:
            client.handshake(daemon.capability_token)
            while not stop.is_set():
                started = time.monotonic()
                reply = client.request("get_token", {"provider": "acme"})
                with lock:
                    answers.append(("get", time.monotonic() - started, reply))
                time.sleep(0.02)

    threads = [threading.Thread(target=saver, args=(d, f"b{i}")) for i, d in enumerate(daemons)] + [
        threading.Thread(target=reader, args=(d,)) for d in daemons
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        private_redis.stop()
        time.sleep(3.0)
        with lock:
            during = len(answers)
        private_redis.start()
        deadline = time.monotonic() + 30.0
        while True:  # every daemon's saves succeed again by themselves
            time.sleep(0.2)
            with lock:
                recent = answers[during:]
            recovered = {kind for kind, _, r in recent if kind != "get" and r.get("ok")}
            if recovered == {"b0", "b1", "b2"}:
                break
            assert time.monotonic() < deadline, "the daemons did not recover"
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    outage = [a for a in answers if not a[2].get("ok")]
    assert outage, "no request met the outage"
    for _, elapsed, reply in answers:
        assert elapsed < 15.0
        if not reply.get("ok"):
            assert reply["code"] == "INTERNAL_ERROR"
            assert reply["error"] == "the host's credential store is unreachable; retry shortly"
    gets = [r for kind, _, r in answers if kind == "get"]
    assert all(r["data"]["access_token"] == ACCESS for r in gets if r.get("ok"))

    async def stored(store: RedisStore) -> dict[str, int]:
        found = {}
        for bucket in acknowledged:
            token = await store.get_token("acme", bucket)
            assert token is not None
            found[bucket] = int(token["access_token"].rsplit("-", 1)[1])
        return found

    final = fleet.run(stored)
    for bucket, n in acknowledged.items():
        assert final[bucket] >= n, (bucket, final[bucket], n)
