"""get_token throughput and latency through a real daemon, beside a bare framing server.

Run: ``.venv/bin/python benchmarks/bench_daemon.py [--quick] [--duration S] [--clients N]``.

The daemon is a real ``credproxy serve`` process (memory store seeded over
the socket with one token, a capability token, audit lines appended to a
file) with ``--rate-limit`` raised so the 60 requests/s default does not cap
the measurement. Several client processes hammer it with ``get_token``, with 1
and with 16 requests in flight each, through the real ``AsyncProxyClient``
and through a raw client that writes pre-encoded frames (to separate the
client library's own cost).

The bare server, started from this file, is the floor for the stack: an
asyncio Unix-socket server that decodes each frame with the project's
``FrameDecoder`` and answers with the daemon's own response bytes for that
request id (captured from the daemon at start and checked byte for byte), with
no peer check, grant, store, task per request, rate limit or audit. The
daemon/bare ratios say what the daemon's work costs on top of framing.

Server CPU is read from ``/proc/PID/stat`` over the measured window, so the
cost per request is shown even where the clients, not the server, ran out of
CPU (on a 2-core machine the client processes share the cores with it).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import multiprocessing
import os
import pstats
import shutil
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any, Final, TypeAlias

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._daemon import (
    BENCH_RATE_LIMIT,
    READY_TIMEOUT_S,
    ServeProcess,
    cpu_model,
    cpu_ticks,
    machine_ticks,
    percentile,
    seed_file_store,
    start_serve,
    write_file_store_config,
)
from credproxy.protocol.framing import FrameDecoder, encode_frame

PROVIDER: Final = "bench"
BUCKET: Final = "default"
TOKEN: Final[dict[str, Any]] = {
    "access_token": "a" * 900,
    "refresh_token": "r" * 200,
    "expiry": 1_900_000_000,
    "token_type": "Bearer",
    "scope": "openid profile email offline_access",
}
"""The shape bench_store uses: about 1.1 KB of JSON, the refresh token stripped on the way out."""

DEPTHS: Final = (1, 16)
SENTINEL_ID: Final = "00000000-0000-4000-8000-000000000000"
"""As long as the real client's uuid4 ids, so the captured response has their size."""
MAX_ERRORS: Final = 100
_HEADER: Final = struct.Struct(">I")
_READ: Final = 65_536

ResultQueue: TypeAlias = "Queue[tuple[int, int, int, bytes]]"


# --- a blocking raw exchange, used for seeding and capturing the response bytes ---


def _recv_exact(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError("the server closed the connection")
        data += chunk
    return bytes(data)


def _recv_frame(sock: socket.socket) -> bytes:
    """One whole frame, header included, exactly as it came off the socket."""
    header = _recv_exact(sock, _HEADER.size)
    (length,) = _HEADER.unpack(header)
    return header + _recv_exact(sock, length)


def _handshake_frame(token: str | None) -> bytes:
    payload: dict[str, Any] = {"minVersion": 1, "maxVersion": 2}
    if token is not None:
        payload["capabilityToken"] = token
    return encode_frame({"v": 2, "op": "handshake", "payload": payload})


def _get_token_frame(request_id: str) -> bytes:
    return encode_frame(
        {
            "v": 2,
            "id": request_id,
            "op": "get_token",
            "payload": {"provider": PROVIDER, "bucket": BUCKET},
        }
    )


@dataclass(frozen=True)
class Captured:
    handshake: bytes
    response: bytes


def _exchange(path: Path, token: str | None, frames: Sequence[bytes]) -> Captured:
    """Handshake, then each frame in turn; returns the handshake answer and the last answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(15.0)
        sock.connect(os.fsencode(path))
        sock.sendall(_handshake_frame(token))
        handshake = _recv_frame(sock)
        response = b""
        for frame in frames:
            sock.sendall(frame)
            response = _recv_frame(sock)
            body = json.loads(response[_HEADER.size :])
            if body.get("ok") is not True:
                raise RuntimeError(f"the server refused a benchmark request: {body}")
        return Captured(handshake, response)


# --- the daemon under test ---


@dataclass
class Daemon:
    serve: ServeProcess
    token: str
    audit_path: Path | None
    profile_path: Path | None

    @property
    def socket_path(self) -> Path:
        return self.serve.socket_path


def start_daemon(workdir: Path, *, store: str, audit: str, profile: bool) -> Daemon:
    """``credproxy serve`` with a capability token, seeded with ``TOKEN``."""
    config = workdir / "config.toml"
    options: list[str] = []
    if store == "file":
        store_dir = workdir / "store"
        seed_file_store(store_dir, {(PROVIDER, BUCKET): TOKEN})
        write_file_store_config(config, store_dir)
    else:
        config.write_text("")
        options += ["--store", store]
    profile_path = workdir / "daemon.prof" if profile else None
    python_options = ["-m", "cProfile", "-o", str(profile_path)] if profile_path else []
    audit_path = workdir / "audit.log" if audit == "file" else None
    if audit_path is not None:
        options += ["--audit-log", str(audit_path)]
    serve = start_serve(
        workdir,
        config,
        options,
        python_options=python_options,
        keep_stderr=audit_path is not None,
    )
    daemon = Daemon(serve, serve.capability_token, audit_path, profile_path)
    if store != "file":
        # The same token, saved through the socket as a host tool would; the
        # daemon keeps the refresh token and strips it from every answer.
        save = encode_frame(
            {
                "v": 2,
                "id": "seed",
                "op": "save_token",
                "payload": {"provider": PROVIDER, "bucket": BUCKET, "token": TOKEN},
            },
            allow_refresh_token=True,
        )
        _exchange(daemon.socket_path, daemon.token, [save])
    return daemon


# --- the bare server: framing and canned answers only ---


def _bare_main(path: str, handshake: bytes, prefix: bytes, suffix: bytes, ready: Event) -> None:
    asyncio.run(_bare_serve(path, handshake, prefix, suffix, ready))


async def _bare_serve(
    path: str, handshake: bytes, prefix: bytes, suffix: bytes, ready: Event
) -> None:
    encode_id = msgspec.json.Encoder().encode
    pack = _HEADER.pack

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        greeted = False
        try:
            while data := await reader.read(_READ):
                out = []
                for frame in decoder.feed(data):
                    if not greeted:
                        out.append(handshake)
                        greeted = True
                        continue
                    body = prefix + encode_id(frame["id"]) + suffix
                    out.append(pack(len(body)) + body)
                writer.write(b"".join(out))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(handle, path=path)
    ready.set()
    async with server:
        await server.serve_forever()


def start_bare(
    ctx: multiprocessing.context.SpawnContext, path: Path, captured: Captured
) -> SpawnProcess:
    body = captured.response[_HEADER.size :]
    quoted = json.dumps(SENTINEL_ID).encode()
    if body.count(quoted) != 1:
        raise RuntimeError("the captured response does not carry the request id exactly once")
    prefix, suffix = body.split(quoted)
    ready = ctx.Event()
    process = ctx.Process(
        target=_bare_main,
        args=(str(path), captured.handshake, prefix, suffix, ready),
        name="bare-server",
        daemon=True,
    )
    process.start()
    if not ready.wait(READY_TIMEOUT_S):
        process.kill()
        raise RuntimeError("the bare server did not start")
    return process


# --- client processes ---


class RawConnection:
    """Pre-encoded requests, answers matched by id: the wire with no client library."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._waiters: dict[str, asyncio.Future[bool]] = {}
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: str, token: str) -> RawConnection:
        reader, writer = await asyncio.open_unix_connection(path, limit=_READ)
        writer.write(_handshake_frame(token))
        header = await reader.readexactly(_HEADER.size)
        answer = json.loads(await reader.readexactly(_HEADER.unpack(header)[0]))
        if answer.get("ok") is not True:
            raise RuntimeError(f"handshake refused: {answer}")
        conn = cls(reader, writer)
        conn._task = asyncio.create_task(conn._read_loop())
        return conn

    async def _read_loop(self) -> None:
        decoder = FrameDecoder()
        with contextlib.suppress(ConnectionError, OSError):
            while data := await self._reader.read(_READ):
                for frame in decoder.feed(data):
                    request_id = frame.get("id")
                    if not isinstance(request_id, str):
                        continue
                    future = self._waiters.pop(request_id, None)
                    if future is not None and not future.done():
                        future.set_result(frame.get("ok") is True)
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(ConnectionError("the server closed the connection"))

    def caller(self, request_id: str) -> Callable[[], Awaitable[bool]]:
        frame = _get_token_frame(request_id)
        loop = asyncio.get_running_loop()

        async def call() -> bool:
            future: asyncio.Future[bool] = loop.create_future()
            self._waiters[request_id] = future
            self._writer.write(frame)
            return await future

        return call

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


async def _worker(
    call: Callable[[], Awaitable[bool]], window: tuple[float, float], latencies: list[float]
) -> int:
    """Call until the window ends; record requests that started and ended inside it."""
    start, end = window
    errors = 0
    clock = time.perf_counter
    while errors <= MAX_ERRORS:
        began = clock()
        if began >= end:
            break
        try:
            ok = await call()
        except Exception:
            ok = False
        ended = clock()
        if began >= start and ended <= end:
            if ok:
                latencies.append(ended - began)
            else:
                errors += 1
    return errors


async def _client_run(
    kind: str,
    path: str,
    token: str,
    depth: int,
    timing: tuple[float, float],
    *,
    barrier: Barrier,
) -> tuple[int, bytes]:
    from credproxy.client import AsyncProxyClient

    warmup, duration = timing
    latencies: list[float] = []
    calls: list[Callable[[], Awaitable[bool]]]
    closer: Callable[[], Awaitable[None]]
    if kind == "client":
        client = AsyncProxyClient(path, token)

        async def get() -> bool:
            await client.get_token(PROVIDER)
            return True

        await client.get_token(PROVIDER)
        calls = [get] * depth
        closer = client.aclose
    else:
        raw = await RawConnection.open(path, token)
        pid = os.getpid()
        calls = [raw.caller(f"raw-{pid:010d}-{slot:04d}".ljust(36, "0")) for slot in range(depth)]
        closer = raw.aclose
    barrier.wait()
    start = time.perf_counter() + warmup
    window = (start, start + duration)
    errors = await asyncio.gather(*(_worker(call, window, latencies) for call in calls))
    await closer()
    return sum(errors), array.array("d", latencies).tobytes()


def _client_main(  # noqa: PLR0917  (a process target takes positional arguments)
    index: int,
    kind: str,
    path: str,
    token: str,
    depth: int,
    timing: tuple[float, float],
    barrier: Barrier,
    results: ResultQueue,
) -> None:
    try:
        errors, latencies = asyncio.run(
            _client_run(kind, path, token, depth, timing, barrier=barrier)
        )
    except BaseException:
        barrier.abort()
        results.put((index, -1, 0, b""))
        raise
    results.put((index, errors, len(latencies) // 8, latencies))


# --- measurement ---


@dataclass(frozen=True)
class Cell:
    target: str
    kind: str
    depth: int
    clients: int
    requests: int
    errors: int
    rate: float
    p50_us: float
    p99_us: float
    server_cpu: float
    """Share of one core the server process used in the window."""
    server_cpu_us: float
    """Server CPU time per request."""
    machine_busy: float


def measure(  # noqa: PLR0917
    ctx: multiprocessing.context.SpawnContext,
    target: str,
    server: tuple[Path, int],
    token: str,
    kind: str,
    depth: int,
    clients: int,
    timing: tuple[float, float],
) -> Cell:
    path, server_pid = server
    warmup, duration = timing
    barrier = ctx.Barrier(clients + 1)
    results: ResultQueue = ctx.Queue()
    processes = [
        ctx.Process(
            target=_client_main,
            args=(index, kind, str(path), token, depth, timing, barrier, results),
            name=f"client-{index}",
        )
        for index in range(clients)
    ]
    for process in processes:
        process.start()
    try:
        barrier.wait(timeout=READY_TIMEOUT_S)
        time.sleep(warmup)
        cpu_before, machine_before = cpu_ticks(server_pid), machine_ticks()
        time.sleep(duration)
        cpu_after, machine_after = cpu_ticks(server_pid), machine_ticks()
        collected = [results.get(timeout=READY_TIMEOUT_S + duration) for _ in processes]
    finally:
        for process in processes:
            process.join(10.0)
            if process.is_alive():
                process.kill()
                process.join()
    if any(errors < 0 for _, errors, _, _ in collected):
        raise RuntimeError("a client process failed; see its traceback above")
    latencies: list[float] = []
    for _, _, _, blob in collected:
        latencies.extend(array.array("d", blob))
    latencies.sort()
    if not latencies:
        raise RuntimeError(f"no request completed against the {target}")
    hz = os.sysconf("SC_CLK_TCK")
    server_s = (cpu_after - cpu_before) / hz
    busy = (machine_after[0] - machine_before[0]) / max(machine_after[1] - machine_before[1], 1)
    return Cell(
        target=target,
        kind=kind,
        depth=depth,
        clients=clients,
        requests=len(latencies),
        errors=sum(errors for _, errors, _, _ in collected),
        rate=len(latencies) / duration,
        p50_us=percentile(latencies, 0.50) * 1e6,
        p99_us=percentile(latencies, 0.99) * 1e6,
        server_cpu=server_s / duration,
        server_cpu_us=server_s / len(latencies) * 1e6,
        machine_busy=busy,
    )


# --- report ---


def _results_table(cells: Sequence[Cell]) -> str:
    lines = [
        "| server | client | in flight per client | requests/s | p50 µs | p99 µs "
        "| server CPU (one core = 100%) | server CPU µs/request | machine busy | errors |",
        "|" + "---|" * 10,
    ]
    for c in cells:
        lines.append(
            f"| {c.target} | {c.kind} | {c.depth} | {c.rate:,.0f} | {c.p50_us:,.0f} "
            f"| {c.p99_us:,.0f} | {c.server_cpu:.0%} | {c.server_cpu_us:.1f} "
            f"| {c.machine_busy:.0%} | {c.errors} |"
        )
    return "\n".join(lines)


def _ratio_table(cells: Sequence[Cell]) -> str:
    lines = [
        "| client | in flight per client | throughput daemon/bare | p50 daemon/bare "
        "| p99 daemon/bare | server CPU per request daemon/bare |",
        "|" + "---|" * 6,
    ]
    by_key = {(c.target, c.kind, c.depth): c for c in cells}
    for c in cells:
        if c.target != "daemon" or ("bare", c.kind, c.depth) not in by_key:
            continue
        bare = by_key["bare", c.kind, c.depth]
        lines.append(
            f"| {c.kind} | {c.depth} | {c.rate / bare.rate:.2f} | {c.p50_us / bare.p50_us:.1f} "
            f"| {c.p99_us / bare.p99_us:.1f} | {c.server_cpu_us / bare.server_cpu_us:.1f} |"
        )
    return "\n".join(lines)


PROFILE_PARTS: Final = (
    (
        "reading: data_received, from the bytes to the answers queued",
        "connection.py",
        "data_received",
    ),
    ("  sans-IO core: decode, envelope, payload schema, limits", "server.py", "receive_data"),
    ("    frame decode (msgspec)", "framing.py", "next_frame"),
    ("    payload schema (msgspec.convert)", "messages.py", "parse_request"),
    ("  starting the op (context, handler's first step inline)", "connection.py", "_start"),
    ("    get_token handler (grant check, store, sanitize)", "handlers.py", "get_token"),
    ("      memory store get_token (decode a copy)", "memory.py", "get_token"),
    ("    audit and answer (_finish)", "connection.py", "_finish"),
    ("      audit event (struct, names, encode, batch)", "connection.py", "_audit"),
    ("      answer encoding (encode_frame)", "framing.py", "encode_frame"),
    ("  the turn's one write (_flush)", "connection.py", "_flush"),
    ("    socket send, one per loop turn", "~", "<method 'send' of '_socket.socket' objects>"),
    ("audit hand-over to the writer thread", "audit.py", "_hand_over"),
)
"""Functions whose cumulative time says where a request's time goes (they nest as indented)."""


def _print_profile(path: Path, out: Callable[[str], object]) -> None:
    """Shares of the daemon's busy time: the time it spent waiting in epoll is left out."""
    stats: dict[tuple[str, int, str], tuple[Any, ...]]
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    idle = sum(v[2] for (_, _, name), v in stats.items() if "poll' of 'select.epoll" in name)
    total = sum(v[2] for v in stats.values())
    busy = total - idle
    out(
        f"daemon profile (cProfile): {busy:.1f} s busy, {idle:.1f} s waiting in epoll; "
        "shares of busy time"
    )
    out("| part | cumulative % |")
    out("|---|---|")
    for label, filename, function in PROFILE_PARTS:
        cumulative = sum(
            v[3] for (f, _, n), v in stats.items() if f.endswith(filename) and n == function
        )
        out(f"| {label} | {cumulative / busy:.1%} |")
    rows = [
        (v[2], v[3], f"{Path(f).name}:{line}({n})")
        for (f, line, n), v in stats.items()
        if "poll' of 'select.epoll" not in n
    ]
    out("")
    out("| function (top 20 by own time) | own % | cumulative % |")
    out("|---|---|---|")
    for tottime, cumtime, label in sorted(rows, reverse=True)[:20]:
        out(f"| {label} | {tottime / busy:.1%} | {cumtime / busy:.1%} |")


def main(argv: Sequence[str] | None = None, out: Callable[[str], object] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 s windows, 0.3 s warm-up")
    parser.add_argument("--duration", type=float, default=None, help="seconds per cell (5)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before each (1)")
    parser.add_argument("--clients", type=int, default=4, help="client processes (4)")
    parser.add_argument(
        "--client", choices=("both", "client", "raw"), default="both", help="client kinds"
    )
    parser.add_argument("--store", choices=("memory", "file"), default="memory")
    parser.add_argument(
        "--audit",
        choices=("file", "discard"),
        default="file",
        help="audit lines to a file (as deployed) or to stderr sent to /dev/null",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the daemon under cProfile and print where its time went "
        "(slows the daemon; do not compare its figures)",
    )
    args = parser.parse_args(argv)
    duration = args.duration or (1.0 if args.quick else 5.0)
    warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 1.0)
    kinds = ("client", "raw") if args.client == "both" else (args.client,)
    ctx = multiprocessing.get_context("spawn")

    load = os.getloadavg()
    out(
        f"{os.cpu_count()} CPUs ({cpu_model()}), python {sys.version.split()[0]}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    out(
        f"{args.clients} client processes, {duration:g} s per cell after {warmup:g} s warm-up, "
        f"{args.store} store, audit {args.audit}, daemon --rate-limit {BENCH_RATE_LIMIT}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="cpb-", dir="/tmp"))
    daemon: Daemon | None = None
    bare: SpawnProcess | None = None
    try:
        daemon = start_daemon(workdir, store=args.store, audit=args.audit, profile=args.profile)
        captured = _exchange(daemon.socket_path, daemon.token, [_get_token_frame(SENTINEL_ID)])
        bare_path = workdir / "bare.sock"
        bare = start_bare(ctx, bare_path, captured)
        check = _exchange(bare_path, None, [_get_token_frame(SENTINEL_ID)])
        if check != captured:
            raise RuntimeError("the bare server's bytes differ from the daemon's")
        out(f"get_token response frame: {len(captured.response)} bytes from both servers")
        assert bare.pid is not None
        servers = {
            "daemon": (daemon.socket_path, daemon.serve.pid),
            "bare": (bare_path, bare.pid),
        }
        cells = []
        for depth in DEPTHS:
            for kind in kinds:
                for target in ("daemon", "bare"):
                    cell = measure(
                        ctx,
                        target,
                        servers[target],
                        daemon.token,
                        kind,
                        depth,
                        args.clients,
                        (warmup, duration),
                    )
                    cells.append(cell)
                    out(f"  measured {target} / {kind} / {depth} in flight: {cell.rate:,.0f}/s")
        load = os.getloadavg()
        out(f"load average after the run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        out("")
        out(_results_table(cells))
        out("")
        out(_ratio_table(cells))
        served = sum(c.requests for c in cells if c.target == "daemon")
        if daemon.audit_path is not None:
            with daemon.audit_path.open("rb") as audit:
                lines = sum(1 for _ in audit)
            out("")
            out(
                f"audit file: {lines:,} lines, {daemon.audit_path.stat().st_size / 1e6:.1f} MB "
                f"(the daemon answered {served:,} requests inside the measured windows, "
                "more in warm-ups)"
            )
        daemon.serve.stop()
        if daemon.profile_path is not None:
            out("")
            _print_profile(daemon.profile_path, out)
    finally:
        if bare is not None:
            bare.terminate()
            bare.join(10.0)
        if daemon is not None:
            daemon.serve.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
