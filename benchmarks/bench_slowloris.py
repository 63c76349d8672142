"""Fresh clients against a daemon whose places are held by stalled partial frames.

Run: ``nice .venv/bin/python benchmarks/bench_slowloris.py [--hostile 1000] [--fresh 200]``.

The daemon is a real ``credproxy serve`` process (memory store seeded with one
token, one capability token, audit lines to a file), started as
``bench_daemon`` starts it. A hostile process keeps ``--hostile`` connections
going at once with that same token, as the attack in issue 9 did: each
handshakes, sends the first bytes of a request and stops; when the daemon
closes it (a newcomer took its place, or the 5 s partial-frame timeout ran
out) or refuses it, it opens again after ``--reopen-delay`` seconds. The
daemon holds at most 256 connections and 128 per grant, so most of the
hostile connections are always being refused or reopened: the figure for
them is how many places they held. Once they have held their places past
the stall time, ``--fresh`` honest clients (``ProxyClient``, ``--workers`` at
a time) each connect, handshake and ask for the token once, as a sandbox
that just started does; each is served or fails after its 30 s timeout.

Reported: fresh clients served and failed (with the reasons), p50/p99/max of
their whole call (connect, handshake, request), hostile places held (as the
hostile process counts them: a close it has not read yet still counts), the
daemon's open sockets (from ``/proc``: what it really holds), daemon RSS
after warm-up and at its peak, and daemon CPU over the fresh phase.
With ``PYTHONPATH=DIR/src`` the daemon runs another checkout's code (how the
before-figures were taken).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._daemon import cpu_ticks  # noqa: E402
from benchmarks.bench_daemon import (  # noqa: E402
    BUCKET,
    PROVIDER,
    Daemon,
    _handshake_frame,
    start_daemon,
)
from credproxy.client import ProxyClient  # noqa: E402
from credproxy.protocol.framing import FrameDecoder  # noqa: E402

PARTIAL_REQUEST: Final = struct.pack(">I", 200) + b'{"v":2,"id":"slow","op":'
"""A header announcing 200 bytes, then 24 of them: a request that never finishes."""
STALL_WAIT_S: Final = 3.0
"""Waited once the hostile connections are going, past the daemon's 2 s stall time."""
WARMUP_CLIENTS: Final = 20
FRESH_TIMEOUT_S: Final = 30.0


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _sockets(pid: int) -> int:
    """Sockets the daemon has open: its connections, plus its listening socket
    and any socket of its own (a few, the same before and after)."""
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                count += 1
    return count


class _Counters:
    """Shared between the hostile process and the bench: plain integers."""

    def __init__(self, ctx: multiprocessing.context.SpawnContext) -> None:
        self.held: Synchronized[int] = ctx.Value("i", 0)
        self.opened: Synchronized[int] = ctx.Value("i", 0)
        self.closed: Synchronized[int] = ctx.Value("i", 0)
        self.refused: Synchronized[int] = ctx.Value("i", 0)
        self.stop = ctx.Event()


async def _hostile_connection(path: str, token: str, delay: float, counters: _Counters) -> None:
    handshake = _handshake_frame(token)
    while not counters.stop.is_set():
        writer = None
        held = False
        try:
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(handshake)
            decoder = FrameDecoder()
            frames: list[dict[str, Any]] = []
            while not frames:
                data = await reader.read(65_536)
                if not data:
                    break
                frames = decoder.feed(data)
            if not frames or frames[0].get("ok") is not True:
                with counters.refused.get_lock():
                    counters.refused.value += 1
            else:
                writer.write(PARTIAL_REQUEST)
                with counters.held.get_lock():
                    counters.held.value += 1
                    counters.opened.value += 1
                held = True
                while await reader.read(65_536):
                    pass
                with counters.closed.get_lock():
                    counters.closed.value += 1
        except (OSError, EOFError):
            with counters.refused.get_lock():
                counters.refused.value += 1
        finally:
            if held:
                with counters.held.get_lock():
                    counters.held.value -= 1
            if writer is not None:
                writer.close()
        await asyncio.sleep(delay)


async def _hostile(path: str, token: str, count: int, delay: float, counters: _Counters) -> None:
    tasks = [
        asyncio.create_task(_hostile_connection(path, token, delay, counters)) for _ in range(count)
    ]
    while not counters.stop.is_set():
        await asyncio.sleep(0.1)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _hostile_main(path: str, token: str, count: int, delay: float, counters: _Counters) -> None:
    asyncio.run(_hostile(path, token, count, delay, counters))


def _fresh_client(path: str, token: str) -> tuple[float, str | None]:
    began = time.perf_counter()
    try:
        with ProxyClient(path, token, timeout=FRESH_TIMEOUT_S) as client:
            client.get_token(PROVIDER, BUCKET)
    except Exception as exc:
        return time.perf_counter() - began, type(exc).__name__
    return time.perf_counter() - began, None


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def measure(daemon: Daemon, hostile: int, fresh: int, workers: int, delay: float) -> dict[str, Any]:
    path, token, pid = str(daemon.socket_path), daemon.token, daemon.serve.pid
    for _ in range(WARMUP_CLIENTS):
        _fresh_client(path, token)
    rss_warm = _rss_kib(pid)
    sockets_idle = _sockets(pid)
    ctx = multiprocessing.get_context("spawn")
    counters = _Counters(ctx)
    process = ctx.Process(
        target=_hostile_main, args=(path, token, hostile, delay, counters), name="hostile"
    )
    process.start()
    try:
        time.sleep(STALL_WAIT_S)
        held_before = counters.held.value
        sockets_before = _sockets(pid)
        peak = [_rss_kib(pid)]
        sockets = [sockets_before]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.25):
                with contextlib.suppress(OSError):
                    peak.append(_rss_kib(pid))
                    sockets.append(_sockets(pid))

        sampler = threading.Thread(target=sample)
        sampler.start()
        cpu_before, wall_before = cpu_ticks(pid), time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(lambda _: _fresh_client(path, token), range(fresh)))
        cpu_after, wall_after = cpu_ticks(pid), time.monotonic()
        sampling.set()
        sampler.join()
        held_after = counters.held.value
    finally:
        counters.stop.set()
        process.join(30.0)
        if process.is_alive():
            process.kill()
            process.join()
    durations = sorted(d for d, error in results if error is None)
    errors: dict[str, int] = {}
    for _, error in results:
        if error is not None:
            errors[error] = errors.get(error, 0) + 1
    wall = wall_after - wall_before
    return {
        "hostile_connections": hostile,
        "hostile_held_before": held_before,
        "hostile_held_after": held_after,
        "hostile_opened": counters.opened.value,
        "hostile_closed_by_daemon": counters.closed.value,
        "hostile_refused": counters.refused.value,
        "daemon_sockets_idle": sockets_idle,
        "daemon_sockets_before_fresh": sockets_before,
        "daemon_sockets_peak": max(sockets),
        "fresh": fresh,
        "served": len(durations),
        "failed": errors,
        "p50_ms": round(_percentile(durations, 0.50) * 1000, 1),
        "p99_ms": round(_percentile(durations, 0.99) * 1000, 1),
        "max_ms": round((durations[-1] if durations else 0.0) * 1000, 1),
        "fresh_phase_s": round(wall, 1),
        "daemon_cpu_percent": round(100.0 * (cpu_after - cpu_before) / _hz() / wall, 1),
        "rss_warm_kib": rss_warm,
        "rss_peak_kib": max(peak),
    }


def _hz() -> int:
    return os.sysconf("SC_CLK_TCK")


def main(argv: Sequence[str] | None = None, out: Callable[[str], object] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hostile", type=int, default=1000, help="hostile connections (1000)")
    parser.add_argument("--fresh", type=int, default=200, help="fresh honest clients (200)")
    parser.add_argument("--workers", type=int, default=8, help="fresh clients at a time (8)")
    parser.add_argument(
        "--reopen-delay",
        type=float,
        default=0.1,
        help="seconds a hostile connection waits before opening again (0.1)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="cps-", dir="/tmp"))
    daemon = start_daemon(workdir, store="memory", audit="file", profile=False)
    try:
        figures = measure(daemon, args.hostile, args.fresh, args.workers, args.reopen_delay)
    finally:
        daemon.serve.stop()
    figures["load_average_at_start"] = [round(value, 2) for value in load]
    if args.json:
        out(json.dumps(figures))
        return 0
    out(f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}, load average {load[0]:.2f}")
    out(
        f"{args.hostile} hostile connections held {figures['hostile_held_before']} places "
        f"before and {figures['hostile_held_after']} after the fresh clients; the daemon "
        f"closed {figures['hostile_closed_by_daemon']} of them and refused "
        f"{figures['hostile_refused']} attempts"
    )
    out(
        f"daemon sockets: {figures['daemon_sockets_idle']} idle, "
        f"{figures['daemon_sockets_before_fresh']} before the fresh clients, "
        f"{figures['daemon_sockets_peak']} at the peak"
    )
    out(
        f"fresh clients: {figures['served']} of {args.fresh} served, failed: "
        f"{figures['failed'] or 'none'}; p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, "
        f"max {figures['max_ms']} ms over {figures['fresh_phase_s']} s"
    )
    out(
        f"daemon: RSS {figures['rss_warm_kib']} KiB after warm-up, peak "
        f"{figures['rss_peak_kib']} KiB; CPU {figures['daemon_cpu_percent']}% of one core"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
