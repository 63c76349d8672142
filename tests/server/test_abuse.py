"""A daemon under sustained abuse keeps serving and does not grow.

Each round opens hundreds of hostile connections against one real daemon
process: large partial frames left hanging, oversize headers, garbage,
requests before the handshake, and full in-flight tables abandoned
mid-request. (Failed handshakes are left out: the daemon throttles them on
purpose, which other tests pin.) A leak of
any per-connection buffer or task (a 60 KiB partial frame each) would add tens
of MiB per round; the test measures the daemon's resident memory after a
warm-up round and after three more, and bounds the growth well below that.
"""

from __future__ import annotations

import random
import socket
import struct
from pathlib import Path

from tests.fixtures.daemon import DaemonFactory, DaemonHandle, RawClient

CONNECTIONS_PER_ROUND = 500
PARTIAL_BODY = 60_000
GROWTH_LIMIT_KIB = 6 * 1024


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


def _abuse_once(daemon: DaemonHandle, rng: random.Random, index: int) -> None:
    kind = index % 5
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(daemon.socket_path))
    try:
        if kind == 0:
            with daemon.client() as raw:
                raw.send_raw(struct.pack(">I", PARTIAL_BODY + 10) + b"{" + b"x" * PARTIAL_BODY)
        elif kind == 1:
            sock.sendall(struct.pack(">I", 0x7FFFFFFF))
        elif kind == 2:
            sock.sendall(rng.randbytes(rng.randint(1, 4096)))
        elif kind == 3:
            with RawClient(daemon.socket_path) as raw:
                raw.send({"v": 2, "id": "early", "op": "get_token", "payload": {}})
                raw.wait_closed()
        else:
            with daemon.client() as raw:
                for _ in range(16):
                    raw.send_request("get_token", {"provider": "anthropic"})
    except OSError:
        pass
    finally:
        sock.close()


def _round(daemon: DaemonHandle, rng: random.Random) -> None:
    for index in range(CONNECTIONS_PER_ROUND):
        _abuse_once(daemon, rng, index)
    with daemon.client() as check:
        assert check.request("get_token", {"provider": "anthropic"})["ok"] is True


def test_daemon_memory_stays_flat_under_repeated_hostile_connections(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon(
        "--rate-limit",
        "100000",
        tokens={
            ("anthropic", "default"): {
                "access_token": "at-abuse",
                "expiry": 1_900_000_000,
                "token_type": "Bearer",
            }
        },
    )
    rng = random.Random(1234)
    _round(daemon, rng)
    baseline = _rss_kib(daemon.pid)
    for _ in range(3):
        _round(daemon, rng)
    grown = _rss_kib(daemon.pid) - baseline
    assert daemon.process.poll() is None
    assert grown < GROWTH_LIMIT_KIB, f"daemon grew by {grown} KiB over three rounds"
