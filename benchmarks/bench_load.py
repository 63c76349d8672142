"""Sustained load: 200 connections at full speed on one daemon, small and 10,000-entry stores.

Run: ``nice .venv/bin/python benchmarks/bench_load.py [--quick] [--duration S]
[--credentials N ...] [--processes P] [--connections C] [--json FILE]``.

The daemon is a real ``credproxy serve`` process on the encrypted file store
as deployed (data key in a key file), audit lines appended to a file, with
``--rate-limit`` raised so the 60 requests/s per-connection default does not
cap the measurement, and ``--no-capability`` because all benchmark
connections share one grant and one grant may hold at most 128 connections
(``--auth token`` keeps the token and meets that cap).

The store holds ``N`` credentials: four in five are tokens (about 1.1 KB
of JSON each, refresh token included, at most 200 buckets per provider),
the rest API keys. They are sealed by the file backend and written in one
replacement of its file, then counted through the socket before anything is
measured; saving 10,000 one by one would rewrite the whole file each time.

Client processes (spawned) hold the connections, one real
``AsyncProxyClient`` each, every connection with one request in flight at a
time, looping without pause on a fixed mix (per 1,000 requests): 470
get_token, 350 get_api_key, 80 get_bucket_stats, 60 list_buckets, 39
list_api_keys and 1 save_token to the connection's own bucket, the names
drawn at random from the whole store. Answers are checked (the key's value,
no refresh token), so a wrong answer counts as an error. Before the clients
start, every credential is read once, so the daemon's cache of decrypted
records is full when RSS is first taken.

After the warm-up the window opens: latency per op kind (requests that
started and ended inside it), errors by kind, the daemon's CPU from
``/proc/PID/stat``, its RSS from ``/proc/PID/status`` every second and its
open descriptors at the edges. The run fails (exit 1) on any error, an RSS
at the end more than 10% above the RSS after warm-up, or descriptors not
back to their idle count once the clients are gone.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import json
import multiprocessing
import os
import queue
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, Final, TypeAlias

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._daemon import (
    BENCH_RATE_LIMIT,
    READY_TIMEOUT_S,
    ServeProcess,
    cpu_model,
    file_store_table,
    machine_ticks,
    percentile,
    start_serve,
    write_file_store_config,
)
from credproxy.client import AsyncProxyClient, ProxyClient
from credproxy.client._exceptions import ProxyClientError

MIX: Final = (
    ("get_token", 470),
    ("get_api_key", 350),
    ("get_bucket_stats", 80),
    ("list_buckets", 60),
    ("list_api_keys", 39),
    ("save_token", 1),
)
"""Requests per 1,000 of each kind: reads of one credential dominate, as in a sandbox."""
OPS: Final = tuple(op for op, _ in MIX)
BUCKETS_PER_PROVIDER: Final = 200
"""Under the daemon's 256-bucket cap for a provider that sandboxes may save to."""
TOKEN_SHARE: Final = 0.8
DEFAULT_SIZES: Final = (20, 10_000)
MAX_RSS_GROWTH: Final = 0.10
FD_SETTLE_S: Final = 10.0
CLIENT_TIMEOUT_S: Final = 30.0
ERROR_SAMPLES: Final = 5
MAX_ERRORS_PER_CONNECTION: Final = 100
"""A connection that keeps failing (a daemon gone) stops rather than spin to the end."""

ResultQueue: TypeAlias = "Queue[ClientResult]"


# --- the store's contents ---


@dataclass(frozen=True)
class Layout:
    """Which credentials a store of ``credentials`` entries holds; names are derived, not stored."""

    credentials: int

    @property
    def token_count(self) -> int:
        return max(1, round(self.credentials * TOKEN_SHARE))

    @property
    def key_count(self) -> int:
        return max(1, self.credentials - self.token_count)

    def token_name(self, index: int) -> tuple[str, str]:
        return f"prov{index // BUCKETS_PER_PROVIDER:03d}", f"b{index % BUCKETS_PER_PROVIDER:03d}"

    def key_name(self, index: int) -> str:
        return f"key{index:05d}"

    @property
    def providers(self) -> list[str]:
        count = (self.token_count + BUCKETS_PER_PROVIDER - 1) // BUCKETS_PER_PROVIDER
        return [self.token_name(i * BUCKETS_PER_PROVIDER)[0] for i in range(count)]


def key_value(name: str) -> str:
    return f"sk-load-decoy-{name}-" + "k" * 40


def token_value(provider: str, bucket: str) -> dict[str, Any]:
    """The shape bench_daemon uses: about 1.1 KB of JSON with its refresh token."""
    prefix = f"at-{provider}-{bucket}-"
    return {
        "access_token": prefix + "a" * (900 - len(prefix)),
        "refresh_token": "r" * 200,
        "expiry": 1_900_000_000,
        "token_type": "Bearer",
        "scope": "openid profile email offline_access",
    }


def saved_token(tag: str) -> dict[str, Any]:
    """What a sandbox saves: a new access token; the host keeps the refresh token."""
    return {"access_token": f"at-saved-{tag}", "expiry": 1_900_000_000, "token_type": "Bearer"}


def seed_store(store_dir: Path, layout: Layout) -> None:
    """Every record sealed by the file backend, then its file replaced once.

    The backend's own sealer and writer, so the file is the one ``token
    import`` and ``key set`` produce; one save at a time rewrites the whole
    file (16 MB at 10,000 entries) for each record.
    """
    from credproxy.settings import parse_settings
    from credproxy.store.factory import open_store
    from credproxy.store.file import FileStore
    from credproxy.store.records import key_record_id, token_record_id

    store = open_store("file", parse_settings({"store": file_store_table(store_dir)}))
    assert isinstance(store, FileStore)
    plain: dict[str, Any] = {}
    for index in range(layout.token_count):
        provider, bucket = layout.token_name(index)
        plain[token_record_id(provider, bucket)] = token_value(provider, bucket)
    for index in range(layout.key_count):
        name = layout.key_name(index)
        plain[key_record_id(name)] = {"value": key_value(name)}
    sealer = store._sealer
    records = {
        record_id: base64.b64encode(sealer.seal(record_id, msgspec.json.encode(value))).decode()
        for record_id, value in plain.items()
    }
    with store._locked():
        store._write(records)
    asyncio.run(store.close())


def check_store(daemon: ServeProcess, layout: Layout) -> None:
    """Count what the daemon serves: the seeded store, whole, before any measurement.

    One save first: the file store then keeps the replaced file open for one
    more generation, so the idle descriptor count taken next is the steady one.
    """
    with ProxyClient(str(daemon.socket_path), daemon.token, timeout=CLIENT_TIMEOUT_S) as client:
        provider, bucket = layout.token_name(0)
        client.save_token(provider, saved_token("check"), bucket)
        if client.get_token(provider, bucket)["access_token"] != "at-saved-check":
            raise RuntimeError("the daemon did not serve the token it saved")
        providers = client.list_providers()
        tokens = sum(len(client.list_buckets(p)) for p in providers)
        keys = client.list_api_keys()
        last = layout.key_name(layout.key_count - 1)
        if client.get_api_key(last) != key_value(last):
            raise RuntimeError("the seeded store answered a wrong key value")
    if (len(providers), tokens, len(keys)) != (
        len(layout.providers),
        layout.token_count,
        layout.key_count,
    ):
        raise RuntimeError(
            f"the daemon serves {len(providers)} providers, {tokens} tokens and {len(keys)} "
            f"keys; seeded {len(layout.providers)}, {layout.token_count} and {layout.key_count}"
        )


def read_every_credential(daemon: ServeProcess, layout: Layout) -> None:
    """Fill the daemon's cache of decrypted records before RSS is first taken,
    so growth in the window is memory kept per request, not a cache filling."""
    with ProxyClient(str(daemon.socket_path), daemon.token, timeout=CLIENT_TIMEOUT_S) as client:
        for index in range(layout.token_count):
            client.get_token(*layout.token_name(index))
        for index in range(layout.key_count):
            client.get_api_key(layout.key_name(index))


# --- client processes ---


@dataclass
class ClientResult:
    index: int
    latencies: dict[str, bytes] = field(default_factory=dict)
    """Seconds per op kind, an ``array('d')`` as bytes (pickles small)."""
    errors: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    failure: str | None = None


@dataclass(frozen=True)
class ClientPlan:
    index: int
    socket_path: str
    token: str | None
    connections: int
    first_connection: int
    """Global number of this process's first connection, which picks its own bucket."""
    layout: Layout
    timing: tuple[float, float]


class Tally:
    """What one client process saw inside the window."""

    def __init__(self) -> None:
        self.latencies: dict[str, array.array[float]] = {op: array.array("d") for op in OPS}
        self.errors: Counter[str] = Counter()
        self.samples: list[str] = []

    def error(self, op: str, kind: str, detail: str) -> None:
        self.errors[f"{op}: {kind}"] += 1
        if len(self.samples) < ERROR_SAMPLES:
            self.samples.append(f"{op}: {kind}: {detail[:200]}")


def _operation(
    client: AsyncProxyClient, op: str, layout: Layout, rng: random.Random, own: tuple[str, str]
) -> Callable[[], Any]:
    """One request of kind ``op`` and a check of its answer (a wrong one raises)."""
    if op == "get_api_key":
        name = layout.key_name(rng.randrange(layout.key_count))

        async def get_key() -> None:
            if await client.get_api_key(name) != key_value(name):
                raise ValueError(f"wrong value for key {name}")

        return get_key
    if op in ("get_token", "get_bucket_stats"):
        provider, bucket = layout.token_name(rng.randrange(layout.token_count))

        async def get_token() -> None:
            if op == "get_bucket_stats":
                await client.get_bucket_stats(provider, bucket)
                return
            token = await client.get_token(provider, bucket)
            if "refresh_token" in token or not isinstance(token.get("access_token"), str):
                raise ValueError(f"a malformed token for {provider}/{bucket}")

        return get_token
    if op == "list_buckets":
        provider = rng.choice(layout.providers)
        return lambda: client.list_buckets(provider)
    if op == "list_api_keys":
        return client.list_api_keys
    token = saved_token(f"{rng.getrandbits(64):016x}")
    return lambda: client.save_token(own[0], token, own[1])


async def _connection_loop(
    client: AsyncProxyClient,
    plan: ClientPlan,
    number: int,
    window: tuple[float, float],
    tally: Tally,
) -> None:
    rng = random.Random(number)
    schedule = [op for op, weight in MIX for _ in range(weight)]
    rng.shuffle(schedule)
    own = plan.layout.token_name(number % plan.layout.token_count)
    start, end = window
    clock = time.perf_counter
    turn = rng.randrange(len(schedule))
    failures = 0
    while True:
        op = schedule[turn % len(schedule)]
        turn += 1
        call = _operation(client, op, plan.layout, rng, own)
        began = clock()
        if began >= end:
            return
        failure: tuple[str, str] | None = None
        try:
            await call()
        except ProxyClientError as exc:
            failure = (exc.code, exc.message)
        except Exception as exc:
            failure = (type(exc).__name__, str(exc))
        ended = clock()
        if failure is not None:
            tally.error(op, *failure)  # in the warm-up too: no request may fail
            failures += 1
            if failures >= MAX_ERRORS_PER_CONNECTION:
                return
        elif began >= start and ended <= end:
            tally.latencies[op].append(ended - began)


async def _client_run(plan: ClientPlan, barrier: Barrier) -> ClientResult:
    clients = [
        AsyncProxyClient(plan.socket_path, plan.token, timeout=CLIENT_TIMEOUT_S)
        for _ in range(plan.connections)
    ]
    try:
        # The first request opens each connection; all are open before the clock starts.
        first = plan.layout.key_name(0)
        await asyncio.gather(*(client.get_api_key(first) for client in clients))
        await asyncio.to_thread(barrier.wait, READY_TIMEOUT_S)
        warmup, duration = plan.timing
        now = time.perf_counter()
        window = (now + warmup, now + warmup + duration)
        tally = Tally()
        await asyncio.gather(
            *(
                _connection_loop(client, plan, plan.first_connection + n, window, tally)
                for n, client in enumerate(clients)
            )
        )
    finally:
        await asyncio.gather(*(client.aclose() for client in clients), return_exceptions=True)
    return ClientResult(
        plan.index,
        {op: values.tobytes() for op, values in tally.latencies.items()},
        dict(tally.errors),
        tally.samples,
    )


def _client_main(plan: ClientPlan, barrier: Barrier, results: ResultQueue) -> None:
    try:
        result = asyncio.run(_client_run(plan, barrier))
    except BaseException:
        barrier.abort()
        result = ClientResult(plan.index, failure=traceback.format_exc())
    results.put(result)


# --- one run: a daemon, its store, the clients, the readings ---


@dataclass
class OpFigures:
    op: str
    requests: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int


@dataclass
class RunFigures:
    credentials: int
    tokens: int
    keys: int
    store_file_mb: float
    connections: int
    processes: int
    duration_s: float
    requests: int
    throughput: float
    errors: dict[str, int]
    error_samples: list[str]
    ops: list[OpFigures]
    daemon_cpu_share: float
    """Of one core, over the window."""
    daemon_cpu_us_per_request: float
    machine_busy: float
    rss_kib_idle: int
    rss_kib_start: int
    rss_kib_end: int
    rss_kib_max: int
    rss_kib_after: int
    rss_samples_kib: list[int]
    fds_idle: int
    fds_start: int
    fds_end: int
    fds_after: int
    audit_mb: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    problems: list[str] = field(default_factory=list)

    @property
    def rss_growth(self) -> float:
        return self.rss_kib_end / self.rss_kib_start - 1.0


class Sampler:
    """The daemon's RSS once a second, on the parent's clock."""

    def __init__(self, daemon: ServeProcess) -> None:
        self.daemon = daemon
        self.samples: list[int] = []
        self._next = time.monotonic()

    def sleep_until(self, deadline: float) -> None:
        while (now := time.monotonic()) < deadline:
            if now >= self._next:
                self.samples.append(self.daemon.rss_kib())
                self._next += 1.0
            time.sleep(max(0.0, min(self._next, deadline) - time.monotonic()))


def _wait_for_fds(daemon: ServeProcess, idle: int) -> int:
    """Closed connections leave the daemon on its next loop turns; give them a moment."""
    deadline = time.monotonic() + FD_SETTLE_S
    while (fds := daemon.open_fds()) > idle and time.monotonic() < deadline:
        time.sleep(0.2)
    return fds


def _first_failure(results: ResultQueue, count: int) -> str:
    """Why the clients did not all get connected, from the first that says."""
    for _ in range(count):
        try:
            result = results.get(timeout=READY_TIMEOUT_S)
        except queue.Empty:
            break
        if result.failure is not None:
            return "a client process failed:\n" + result.failure
    return "the client processes did not all connect in time"


def run_load(
    ctx: multiprocessing.context.SpawnContext,
    workdir: Path,
    layout: Layout,
    *,
    processes: int,
    connections: int,
    timing: tuple[float, float],
    auth: str,
    out: Callable[[str], object],
) -> RunFigures:
    warmup, duration = timing
    store_dir = workdir / "store"
    started = time.monotonic()
    seed_store(store_dir, layout)
    store_mb = (store_dir / "credentials.json").stat().st_size / 1e6
    config = workdir / "config.toml"
    write_file_store_config(config, store_dir)
    audit_path = workdir / "audit.log"
    options = ["--audit-log", str(audit_path)]
    if auth == "none":
        options.append("--no-capability")
    daemon = start_serve(workdir, config, options)
    try:
        check_store(daemon, layout)
        read_every_credential(daemon, layout)
        out(
            f"  {layout.credentials:,} credentials ({layout.token_count:,} tokens, "
            f"{layout.key_count:,} keys, store file {store_mb:.1f} MB) seeded, counted "
            f"and each read once through the socket in {time.monotonic() - started:.1f} s"
        )
        time.sleep(1.0)
        rss_idle, fds_idle = daemon.rss_kib(), daemon.open_fds()
        barrier = ctx.Barrier(processes + 1)
        results: ResultQueue = ctx.Queue()
        share, extra = divmod(connections, processes)
        plans, first = [], 0
        for index in range(processes):
            count = share + (1 if index < extra else 0)
            plans.append(
                ClientPlan(
                    index, str(daemon.socket_path), daemon.token, count, first, layout, timing
                )
            )
            first += count
        workers = [
            ctx.Process(target=_client_main, args=(plan, barrier, results), name=f"load-{i}")
            for i, plan in enumerate(plans)
        ]
        for worker in workers:
            worker.start()
        try:
            try:
                barrier.wait(timeout=READY_TIMEOUT_S * 2)
            except threading.BrokenBarrierError:
                raise RuntimeError(_first_failure(results, len(plans))) from None
            opened = time.monotonic()
            sampler = Sampler(daemon)
            sampler.sleep_until(opened + warmup)
            load_before = os.getloadavg()
            rss_start, fds_start = daemon.rss_kib(), daemon.open_fds()
            cpu_before, machine_before = daemon.cpu_ticks(), machine_ticks()
            sampler.samples = [rss_start]
            sampler.sleep_until(opened + warmup + duration)
            cpu_after, machine_after = daemon.cpu_ticks(), machine_ticks()
            rss_end, fds_end = daemon.rss_kib(), daemon.open_fds()
            load_after = os.getloadavg()
            collected = [results.get(timeout=READY_TIMEOUT_S + CLIENT_TIMEOUT_S) for _ in plans]
        finally:
            for worker in workers:
                worker.join(READY_TIMEOUT_S)
                if worker.is_alive():
                    worker.kill()
                    worker.join()
        failures = [r.failure for r in collected if r.failure is not None]
        if failures:
            raise RuntimeError("a client process failed:\n" + failures[0])
        fds_after = _wait_for_fds(daemon, fds_idle)
        rss_after = daemon.rss_kib()
        if daemon.process.poll() is not None:
            raise RuntimeError(f"the daemon exited with {daemon.process.returncode}")
        check_store(daemon, layout)
    finally:
        daemon.stop()
    ops: list[OpFigures] = []
    errors: Counter[str] = Counter()
    samples: list[str] = []
    total = 0
    for result in collected:
        errors.update(result.errors)
        samples.extend(result.samples)
    for op in OPS:
        values = array.array("d")
        for result in collected:
            values.frombytes(result.latencies[op])
        ordered = sorted(values)
        total += len(ordered)
        op_errors = sum(n for kind, n in errors.items() if kind.startswith(f"{op}:"))
        if ordered:
            ops.append(
                OpFigures(
                    op,
                    len(ordered),
                    percentile(ordered, 0.50) * 1e3,
                    percentile(ordered, 0.99) * 1e3,
                    ordered[-1] * 1e3,
                    op_errors,
                )
            )
        else:
            ops.append(OpFigures(op, 0, 0.0, 0.0, 0.0, op_errors))
    hz = os.sysconf("SC_CLK_TCK")
    cpu_s = (cpu_after - cpu_before) / hz
    busy = (machine_after[0] - machine_before[0]) / max(machine_after[1] - machine_before[1], 1)
    figures = RunFigures(
        credentials=layout.credentials,
        tokens=layout.token_count,
        keys=layout.key_count,
        store_file_mb=round(store_mb, 1),
        connections=connections,
        processes=processes,
        duration_s=duration,
        requests=total,
        throughput=total / duration,
        errors=dict(errors),
        error_samples=samples[:ERROR_SAMPLES],
        ops=ops,
        daemon_cpu_share=cpu_s / duration,
        daemon_cpu_us_per_request=cpu_s / max(total, 1) * 1e6,
        machine_busy=busy,
        rss_kib_idle=rss_idle,
        rss_kib_start=rss_start,
        rss_kib_end=rss_end,
        rss_kib_max=max([*sampler.samples, rss_end]),
        rss_kib_after=rss_after,
        rss_samples_kib=sampler.samples,
        fds_idle=fds_idle,
        fds_start=fds_start,
        fds_end=fds_end,
        fds_after=fds_after,
        audit_mb=sum(p.stat().st_size for p in workdir.glob("audit.log*")) / 1e6,
        load_before=load_before,
        load_after=load_after,
    )
    judge(figures)
    return figures


def judge(figures: RunFigures) -> None:
    """The acceptance of issue 9's load item, as problems named in the report."""
    if figures.errors:
        figures.problems.append(f"{sum(figures.errors.values())} requests failed")
    if figures.requests == 0:
        figures.problems.append("no request completed inside the window")
    if figures.rss_growth > MAX_RSS_GROWTH:
        figures.problems.append(
            f"daemon RSS grew {figures.rss_growth:.1%} over the window "
            f"({figures.rss_kib_start:,} -> {figures.rss_kib_end:,} KiB)"
        )
    if figures.fds_after > figures.fds_idle:
        figures.problems.append(
            f"the daemon holds {figures.fds_after} descriptors after the clients left, "
            f"{figures.fds_idle} before they came"
        )


# --- report ---


def _ops_table(runs: Sequence[RunFigures]) -> str:
    lines = [
        "| credentials | op | requests | requests/s | p50 ms | p99 ms | max ms | errors |",
        "|" + "---|" * 8,
    ]
    for run in runs:
        for op in run.ops:
            lines.append(
                f"| {run.credentials:,} | {op.op} | {op.requests:,} "
                f"| {op.requests / run.duration_s:,.0f} | {op.p50_ms:.2f} | {op.p99_ms:.2f} "
                f"| {op.max_ms:.1f} | {op.errors} |"
            )
    return "\n".join(lines)


def _summary_table(runs: Sequence[RunFigures]) -> str:
    rows: list[tuple[str, Callable[[RunFigures], str]]] = [
        ("store file", lambda r: f"{r.store_file_mb:.1f} MB"),
        ("requests in the window", lambda r: f"{r.requests:,} in {r.duration_s:g} s"),
        ("throughput", lambda r: f"{r.throughput:,.0f} requests/s"),
        ("errors", lambda r: str(sum(r.errors.values()))),
        (
            "daemon CPU",
            lambda r: (
                f"{r.daemon_cpu_share:.0%} of one core, "
                f"{r.daemon_cpu_us_per_request:.0f} µs per request"
            ),
        ),
        ("machine busy (all CPUs, all processes)", lambda r: f"{r.machine_busy:.0%}"),
        (
            "daemon RSS: idle / after warm-up / end / max",
            lambda r: (
                f"{r.rss_kib_idle:,} / {r.rss_kib_start:,} / {r.rss_kib_end:,} "
                f"/ {r.rss_kib_max:,} KiB"
            ),
        ),
        ("RSS end vs after warm-up", lambda r: f"{r.rss_growth:+.1%}"),
        ("RSS once the clients left", lambda r: f"{r.rss_kib_after:,} KiB"),
        (
            "daemon fds: idle / after warm-up / end / clients gone",
            lambda r: f"{r.fds_idle} / {r.fds_start} / {r.fds_end} / {r.fds_after}",
        ),
        ("audit log written", lambda r: f"{r.audit_mb:.0f} MB"),
        (
            "load average at window start / end",
            lambda r: f"{r.load_before[0]:.2f} / {r.load_after[0]:.2f}",
        ),
    ]
    header = "| figure | " + " | ".join(f"{r.credentials:,} credentials" for r in runs) + " |"
    lines = [header, "|" + "---|" * (len(runs) + 1)]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in runs) + " |")
    return "\n".join(lines)


def _rss_trace(run: RunFigures) -> str:
    every = max(1, len(run.rss_samples_kib) // 12)
    points = run.rss_samples_kib[::every]
    return f"RSS every {every} s, {run.credentials:,} credentials (KiB): " + ", ".join(
        f"{p:,}" for p in points
    )


def main(argv: Sequence[str] | None = None, out: Callable[[str], object] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 s windows after 1 s warm-up")
    parser.add_argument("--duration", type=float, default=None, help="measured seconds (60)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before (10)")
    parser.add_argument(
        "--credentials",
        type=int,
        action="append",
        help=f"store size, repeatable (default: {' and '.join(map(str, DEFAULT_SIZES))})",
    )
    parser.add_argument("--processes", type=int, default=4, help="client processes (4)")
    parser.add_argument(
        "--connections", type=int, default=200, help="connections over all processes (200)"
    )
    parser.add_argument(
        "--auth",
        choices=("none", "token"),
        default="none",
        help="none: serve --no-capability (default; one grant holds at most 128 "
        "connections); token: the full-access capability token",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    duration = args.duration or (3.0 if args.quick else 60.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 10.0)
    sizes = args.credentials or list(DEFAULT_SIZES)
    if args.processes < 1 or args.connections < args.processes or min(sizes) < 2:
        parser.error("need at least one process, a connection per process, two credentials")
    ctx = multiprocessing.get_context("spawn")
    load = os.getloadavg()
    out(
        f"{os.cpu_count()} CPUs ({cpu_model()}), python {sys.version.split()[0]}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, nice {os.nice(0)}"
    )
    out(
        f"{args.connections} connections from {args.processes} client processes, one request "
        f"in flight each; {duration:g} s after {warmup:g} s warm-up; file store (key file), "
        f"audit to a file, daemon --rate-limit {BENCH_RATE_LIMIT}"
        + (" --no-capability" if args.auth == "none" else ", capability token")
    )
    runs: list[RunFigures] = []
    for size in sizes:
        workdir = Path(tempfile.mkdtemp(prefix="cpl-", dir="/tmp"))
        try:
            run = run_load(
                ctx,
                workdir,
                Layout(size),
                processes=args.processes,
                connections=args.connections,
                timing=(warmup, duration),
                auth=args.auth,
                out=out,
            )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        runs.append(run)
        out(f"  measured {size:,} credentials: {run.throughput:,.0f} requests/s")
    out("")
    out(_summary_table(runs))
    out("")
    out(_ops_table(runs))
    out("")
    for run in runs:
        out(_rss_trace(run))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=2) + "\n")
    problems = [f"{r.credentials:,} credentials: {p}" for r in runs for p in r.problems]
    for run in runs:
        for sample in run.error_samples:
            out(f"error sample ({run.credentials:,} credentials): {sample}")
    if problems:
        out("")
        out("FAILED: " + "; ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
