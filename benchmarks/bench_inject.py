"""Injection proxy costs: latency added per request and requests/s, against a direct call.

Run from the repository root: ``.venv/bin/python -m benchmarks.bench_inject``.
The upstream (a plain aiohttp server on loopback), the proxy (``InjectProxy``
over a memory store, as ``credproxy run`` serves it) and the in-sandbox relay
each run in a process of their own; this process is the client. Three paths
are measured with one keep-alive client:

- direct: client -> upstream
- proxy: client -> proxy (TCP) -> upstream (``--sandbox none``)
- relay: client -> relay (TCP) -> proxy (Unix socket) -> upstream (bwrap)
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import time
from multiprocessing.queues import Queue
from typing import Any

import aiohttp
from aiohttp import web

SECRET = "sk-bench-" + "Ab3Cd5Ef7Gh9Jk2Lm4Np6Qr8St1Uv3Wx5Yz7aB9cD2eF4gH6iJ8kL"
SMALL_BODY = b'{"id":"msg_1","type":"message","content":[{"type":"text","text":"hi"}]}'
LARGE_BODY = b"x" * (1 << 20)
SEQUENTIAL = 1000
CONCURRENCY = 32
THROUGHPUT_REQUESTS = 2000


def _upstream(queue: Queue[Any]) -> None:
    async def small(request: web.Request) -> web.Response:
        return web.Response(body=SMALL_BODY, content_type="application/json")

    async def large(request: web.Request) -> web.Response:
        return web.Response(body=LARGE_BODY)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/v1/small", small)
        app.router.add_get("/v1/large", large)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        queue.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


def _proxy(queue: Queue[Any], upstream_port: int, unix_path: str) -> None:
    from credproxy.inject.proxy import InjectProxy, serve
    from credproxy.inject.routes import RouteConfig, parse_routes
    from credproxy.inject.secrets import StoreSecrets
    from credproxy.inject.standin import make_stand_in
    from credproxy.store.memory import MemoryStore

    async def main() -> None:
        store = MemoryStore()
        await store.set_key("bench", SECRET)
        route = RouteConfig(
            upstream=f"http://127.0.0.1:{upstream_port}",
            key="bench",
            header="x-api-key",
            allow_private=True,
        )
        routes = parse_routes({"bench": route})
        stand_in = make_stand_in(SECRET)
        proxy = InjectProxy(
            {"bench": routes["bench"]}, {"bench": stand_in}, StoreSecrets(store, None)
        )
        await proxy.start()
        _, tcp = await serve(proxy.handle_reverse, host="127.0.0.1")
        await serve(proxy.handle_reverse, unix_path=unix_path)
        queue.put((tcp.sockets[0].getsockname()[1], stand_in))
        await asyncio.Event().wait()

    asyncio.run(main())


def _relay(port: int, unix_path: str) -> None:
    from credproxy.inject.relay import main

    os.setpgrp()  # so the benchmark can end the relay and its command together
    sys.exit(main(["--listen", f"{port}={unix_path}", "--", "sleep", "3600"]))


async def _sequential(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], count: int
) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        async with session.get(url, headers=headers) as response:
            await response.read()
        samples.append(time.perf_counter() - start)
    return samples


async def _throughput(url: str, headers: dict[str, str]) -> float:
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        remaining = THROUGHPUT_REQUESTS

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with session.get(url, headers=headers) as response:
                    await response.read()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return THROUGHPUT_REQUESTS / (time.perf_counter() - start)


def _quantiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p50 = statistics.median(ordered) * 1e3
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3
    return p50, p99


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (load-independent)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _cpu_per_request(url: str, headers: dict[str, str], pids: dict[str, int]) -> None:
    """CPU the proxy (and relay) spend per small request: the machine's load does not
    inflate this the way it inflates wall-clock latency on a shared host."""
    count = SEQUENTIAL * 2
    before = {name: _cpu_s(pid) for name, pid in pids.items()}
    async with aiohttp.ClientSession() as session:
        await _sequential(session, url, headers, count)
    for name, pid in pids.items():
        used = (_cpu_s(pid) - before[name]) / count * 1e3
        print(f"  {name:<7} {used:7.3f} ms CPU per request")


async def _measure(bases: dict[str, str], stand_in: str, pids: dict[str, int]) -> None:
    headers = {"x-api-key": stand_in}
    print(f"CPU per small GET through the relay path ({SEQUENTIAL * 2} requests):")
    await _cpu_per_request(bases["relay"] + "/v1/small", headers, pids)
    print(f"sequential keep-alive GET, {SEQUENTIAL} requests each (ms):")
    results: dict[str, tuple[float, float]] = {}
    for path, label in (("/v1/small", "small (72 B)"), ("/v1/large", "large (1 MiB)")):
        count = SEQUENTIAL if path == "/v1/small" else SEQUENTIAL // 10
        for name, base in bases.items():
            async with aiohttp.ClientSession() as session:
                await _sequential(session, base + path, headers, 50)
                samples = await _sequential(session, base + path, headers, count)
            results[f"{name} {label}"] = _quantiles(samples)
        direct = results[f"direct {label}"]
        for name in bases:
            p50, p99 = results[f"{name} {label}"]
            extra = (
                ""
                if name == "direct"
                else (f"   added p50 {p50 - direct[0]:6.3f}   added p99 {p99 - direct[1]:6.3f}")
            )
            print(f"  {name:<7} {label:<14} p50 {p50:7.3f}   p99 {p99:7.3f}{extra}")
    print(f"throughput, small GET, {CONCURRENCY} concurrent keep-alive connections (req/s):")
    for name, base in bases.items():
        rate = await _throughput(base + "/v1/small", headers)
        print(f"  {name:<7} {rate:9.0f}")


def main() -> None:
    context = multiprocessing.get_context("spawn")
    queue: Queue[Any] = context.Queue()
    workdir = tempfile.mkdtemp(prefix="cp-bench-")
    unix_path = os.path.join(workdir, "http.sock")
    relay_port = 18580
    children = []
    try:
        upstream = context.Process(target=_upstream, args=(queue,), daemon=True)
        upstream.start()
        children.append(upstream)
        upstream_port = queue.get(timeout=30)
        proxy = context.Process(target=_proxy, args=(queue, upstream_port, unix_path), daemon=True)
        proxy.start()
        children.append(proxy)
        proxy_port, stand_in = queue.get(timeout=30)
        relay = context.Process(target=_relay, args=(relay_port, unix_path), daemon=True)
        relay.start()
        children.append(relay)
        time.sleep(1.0)
        bases = {
            "direct": f"http://127.0.0.1:{upstream_port}",
            "proxy": f"http://127.0.0.1:{proxy_port}/bench",
            "relay": f"http://127.0.0.1:{relay_port}/bench",
        }
        print(
            f"python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}, {os.cpu_count()} CPUs"
        )
        pids = {"upstream": upstream.pid, "proxy": proxy.pid, "relay": relay.pid}
        asyncio.run(_measure(bases, stand_in, {k: v for k, v in pids.items() if v is not None}))
    finally:
        for child in children:
            if child.pid is not None and child.is_alive():
                if child is children[-1] and len(children) == 3:
                    # The relay, like inside a sandbox, leaves signals to its command's group.
                    os.killpg(child.pid, signal.SIGKILL)
                else:
                    os.kill(child.pid, signal.SIGTERM)
            child.join(timeout=5)
        for name in os.listdir(workdir):
            os.unlink(os.path.join(workdir, name))
        os.rmdir(workdir)


if __name__ == "__main__":
    main()
