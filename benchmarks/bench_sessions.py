"""Cost of the login session table: per-operation time, sweep time, memory per session.

Run: ``.venv/bin/python benchmarks/bench_sessions.py [--quick]``. Prints a
table. The sweep rows show what the ordered table buys: with 1% of the
sessions expired, a sweep's cost follows the number removed, not the number
alive, so 100,000 and 1,000,000 live sessions sweep in comparable time per
removed session.

Time comes from a fake clock (as in the tests), so expiry is instant and the
figures measure the manager, not the clock.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from credproxy.grants import Grant
from credproxy.sessions import OAuthSessionManager, PeerIdentity

TIMEOUT_S = 600.0
SAMPLE = 100_000
"""Sessions timed for get and remove (a random sample of the live ones)."""
IDLE_SWEEPS = 1_000
"""Sweeps timed when nothing has expired: the GC's usual case."""


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Flow:
    """The smallest flow object: the oauth module's real flows are not the table's cost."""

    __slots__ = ()


@dataclass
class Row:
    live: int
    create_us: float
    get_us: float
    remove_us: float
    expired: int
    sweep_ms: float
    sweep_per_removed_us: float
    sweep_idle_us: float
    full_scan_ms: float


def _manager(clock: FakeClock, capacity: int) -> OAuthSessionManager:
    return OAuthSessionManager(
        TIMEOUT_S,
        clock=clock,
        max_sessions=capacity,
        max_sessions_per_identity=capacity,
        environ={},
    )


def _identities(count: int) -> list[PeerIdentity]:
    grant = Grant(grant_id="bench", providers=frozenset({"gemini"}))
    return [PeerIdentity(uid=1000, pid=pid, grant=grant) for pid in range(count)]


def _create(manager: OAuthSessionManager, identities: Sequence[PeerIdentity], n: int) -> list[str]:
    create = manager.create_session
    count = len(identities)
    return [
        create("gemini", "default", "device_code", Flow(), identities[i % count]) for i in range(n)
    ]


def _per_op_us(elapsed_s: float, ops: int) -> float:
    return elapsed_s / ops * 1e6


def measure(live: int) -> Row:
    """``live`` sessions, 1% of them created a full timeout earlier than the rest."""
    clock = FakeClock()
    manager = _manager(clock, live + 1)
    identities = _identities(64)
    expired_count = live // 100

    started = time.perf_counter()
    old = _create(manager, identities, expired_count)
    clock.now += TIMEOUT_S / 2
    young = _create(manager, identities, live - expired_count)
    create_us = _per_op_us(time.perf_counter() - started, live)

    rng = random.Random(7)
    sample = rng.sample(young, min(SAMPLE, len(young)))
    identity = identities[0]
    # Every session was opened by the same uid and grant; pid takes no part in matching.
    get = manager.get_session
    started = time.perf_counter()
    for session_id in sample:
        get(session_id, identity)
    get_us = _per_op_us(time.perf_counter() - started, len(sample))

    started = time.perf_counter()
    idle = sum(manager.sweep_expired() for _ in range(IDLE_SWEEPS))
    sweep_idle_us = _per_op_us(time.perf_counter() - started, IDLE_SWEEPS)
    assert idle == 0

    clock.now += TIMEOUT_S / 2 + 1
    # For comparison only: what a sweep that examines every live session would pay.
    started = time.perf_counter()
    expired = manager._expired
    naive = sum(1 for s in manager._sessions.values() if expired(s, clock.now))
    full_scan_s = time.perf_counter() - started
    assert naive == expired_count

    started = time.perf_counter()
    removed = manager.sweep_expired()
    sweep_s = time.perf_counter() - started
    assert removed == expired_count, (removed, expired_count)
    assert old[0] not in manager

    remove = manager.remove_session
    started = time.perf_counter()
    for session_id in sample:
        remove(session_id)
    remove_us = _per_op_us(time.perf_counter() - started, len(sample))

    manager.clear_all()
    return Row(
        live=live,
        create_us=create_us,
        get_us=get_us,
        remove_us=remove_us,
        expired=removed,
        sweep_ms=sweep_s * 1e3,
        sweep_per_removed_us=_per_op_us(sweep_s, max(removed, 1)),
        sweep_idle_us=sweep_idle_us,
        full_scan_ms=full_scan_s * 1e3,
    )


def memory_per_session(count: int) -> float:
    """Bytes allocated per open session (session object, id, table entries, a minimal flow)."""
    clock = FakeClock()
    manager = _manager(clock, count + 1)
    identities = _identities(64)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    ids = _create(manager, identities, count)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    # The list of ids is the benchmark's, not the manager's.
    list_bytes = sys.getsizeof(ids)
    manager.clear_all()
    return (after - before - list_bytes) / count


def _table(rows: Sequence[Row], memory: tuple[int, float]) -> str:
    header = (
        "| live sessions | create µs/op | get µs/op | remove µs/op | expired (1%) "
        "| sweep ms | sweep µs/removed | sweep, none expired µs | full scan ms (not used) |"
    )
    lines = [header, "|" + "---|" * 9]
    for row in rows:
        lines.append(
            f"| {row.live:,} | {row.create_us:.2f} | {row.get_us:.2f} | {row.remove_us:.2f} "
            f"| {row.expired:,} | {row.sweep_ms:.1f} | {row.sweep_per_removed_us:.2f} "
            f"| {row.sweep_idle_us:.1f} | {row.full_scan_ms:.1f} |"
        )
    count, per_session = memory
    lines.append("")
    lines.append(f"memory per open session (tracemalloc, {count:,} sessions): {per_session:,.0f} B")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, out: Callable[[str], object] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="10,000 and 100,000 live sessions")
    args = parser.parse_args(argv)
    sizes = (10_000, 100_000) if args.quick else (100_000, 1_000_000)
    memory_count = 10_000 if args.quick else 100_000
    out(f"python {sys.version.split()[0]}, session timeout {TIMEOUT_S:g} s (fake clock)")
    rows = [measure(size) for size in sizes]
    memory = (memory_count, memory_per_session(memory_count))
    out(_table(rows, memory))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
