"""Cold and warm start of ``credproxy token get`` inside a "sandbox" (socket + fd 3).

Run: ``.venv/bin/python benchmarks/bench_startup.py [--runs N] [--cold-runs N] [--src DIR]``.

A real ``credproxy serve`` runs on an encrypted file store holding one
token; each measured run is a new process doing what the console script
does (``from credproxy.cli import main; main()``) with argv ``credproxy token
get bench``, the socket in the environment and the capability token on fd 3,
so the figure is the whole command: interpreter start, imports, connect,
handshake, one request, exit.

- **warm**: the page cache holds everything (the usual case).
- **cold**: before each run the page cache is dropped (``sync`` then
  ``3 > /proc/sys/vm/drop_caches``), so every module file is read from disk
  again. Needs root; as another user the cold rows are left out and the
  output says so.
- ``python -c pass`` runs the same way as the floor: the interpreter alone.
- ``-X importtime`` of one warm run lists what the command imports, by
  cumulative time.

``--src DIR`` runs another checkout's ``src`` (e.g. the main branch's, from
``git archive main | tar -x -C DIR``) with this interpreter, to compare.

Both trees are measured with their bytecode cached, as an installed package
has it (pip compiles at install): the tree is byte-compiled first, and
``PYTHONDONTWRITEBYTECODE`` is not passed on. Without that every run would
compile each credproxy module from source, some 25 ms of CPU that no user pays.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENTRY = (
    "import sys; from credproxy.console import main; sys.argv[0] = 'credproxy'; sys.exit(main())"
)
OLD_ENTRY = ENTRY.replace("credproxy.console", "credproxy.cli")
"""The console script of a tree from before ``credproxy.console`` existed."""
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    socket_path: str
    token_file: str


def entry_of(src: Path | None) -> str:
    tree = src if src is not None else ROOT / "src"
    return ENTRY if (tree / "credproxy" / "console.py").exists() else OLD_ENTRY


def base_env(workdir: Path, src: Path | None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CREDPROXY_", "LLXPRT_")) and k != "PYTHONDONTWRITEBYTECODE"
    }
    env.update(
        HOME=str(workdir),
        XDG_DATA_HOME=str(workdir / "data"),
        XDG_CONFIG_HOME=str(workdir / "config"),
        XDG_RUNTIME_DIR=str(workdir),
        CREDPROXY_KEY_SOURCE="keyfile",
    )
    if src is not None:
        env["PYTHONPATH"] = str(src)
    return env


@contextmanager
def running_daemon(workdir: Path, env: dict[str, str], entry: str) -> Iterator[Daemon]:
    token = workdir / "token.json"
    token.write_text(json.dumps({"access_token": "bench-access", "expiry": time.time() + 86_400}))
    subprocess.run(
        [sys.executable, "-c", entry, "token", "import", "bench", "--file", str(token)],
        env=env,
        check=True,
        capture_output=True,
    )
    process = subprocess.Popen(
        [sys.executable, "-c", entry, "serve", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        if not ready:
            raise SystemExit("the daemon did not start within 30 s")
        announced = json.loads(process.stdout.readline())
        yield Daemon(process, announced["socket"], announced["capability_file"])
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)


def drop_page_cache() -> None:
    os.sync()
    DROP_CACHES.write_text("3\n")


@dataclass
class Sample:
    wall_ms: float
    cpu_ms: float
    """user + system time of the process: less swayed than wall time by other load."""


def timed_run(command: Sequence[str], env: dict[str, str], token_file: str | None) -> Sample:
    """Start to exit of one process; the token goes over a descriptor as with 3<FILE
    (its number named in LLXPRT_CAPABILITY_FD, as the client allows)."""
    token_fd = os.open(token_file, os.O_RDONLY) if token_file else None
    if token_fd is not None:
        env = {**env, "LLXPRT_CAPABILITY_FD": str(token_fd)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        started = time.perf_counter()
        done = subprocess.run(
            command,
            env=env,
            pass_fds=() if token_fd is None else (token_fd,),
            capture_output=True,
            check=False,
        )
        elapsed = time.perf_counter() - started
    finally:
        if token_fd is not None:
            os.close(token_fd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{command} failed: {done.stderr.decode(errors='replace')}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Sample(wall_ms=elapsed * 1000, cpu_ms=cpu * 1000)


def summary(samples: list[Sample]) -> dict[str, float]:
    wall = sorted(sample.wall_ms for sample in samples)
    cpu = sorted(sample.cpu_ms for sample in samples)
    return {
        "runs": len(wall),
        "wall_median_ms": round(statistics.median(wall), 1),
        "wall_min_ms": round(wall[0], 1),
        "wall_p90_ms": round(wall[int(0.9 * (len(wall) - 1))], 1),
        "cpu_median_ms": round(statistics.median(cpu), 1),
    }


def import_profile(env: dict[str, str], token_file: str, command: list[str]) -> list[str]:
    token_fd = os.open(token_file, os.O_RDONLY)
    try:
        done = subprocess.run(
            [sys.executable, "-X", "importtime", *command[1:]],
            env={**env, "LLXPRT_CAPABILITY_FD": str(token_fd)},
            pass_fds=(token_fd,),
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        os.close(token_fd)
    rows: list[tuple[int, str]] = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split(":", 1)[1].split("|")
        if not name.startswith("  "):  # top-level imports only: their cumulative adds up
            rows.append((int(cumulative), name.strip()))
    modules = len([line for line in done.stderr.splitlines() if line.startswith("import time:")])
    total = sum(us for us, _ in rows)
    top = sorted(rows, reverse=True)[:8]
    return [f"{modules} modules, {total / 1000:.1f} ms of imports"] + [
        f"  {us / 1000:6.1f} ms  {name}" for us, name in top
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=30, help="warm runs (default 30)")
    parser.add_argument("--cold-runs", type=int, default=10, help="cold runs (default 10)")
    parser.add_argument("--src", type=Path, help="run this source tree instead of the installed")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    tree = args.src if args.src is not None else ROOT / "src"
    if not compileall.compile_dir(tree / "credproxy", quiet=1):
        raise SystemExit(f"could not byte-compile {tree / 'credproxy'}")
    workdir = Path(tempfile.mkdtemp(prefix="cpbs-", dir="/tmp"))
    try:
        env = base_env(workdir, args.src)
        entry = entry_of(args.src)
        with running_daemon(workdir, env, entry) as daemon:
            sandbox = {
                **env,
                "LLXPRT_CREDENTIAL_SOCKET": daemon.socket_path,
            }
            command = [sys.executable, "-c", entry, "token", "get", "bench"]
            floor = [sys.executable, "-c", "pass"]
            for _ in range(3):  # fill the page cache
                timed_run(command, sandbox, daemon.token_file)
            results: dict[str, Any] = {
                "warm": summary(
                    [timed_run(command, sandbox, daemon.token_file) for _ in range(args.runs)]
                ),
                "warm_python_floor": summary([timed_run(floor, env, None) for _ in range(10)]),
            }
            if os.geteuid() == 0 and DROP_CACHES.exists():
                cold: list[Sample] = []
                cold_floor: list[Sample] = []
                for _ in range(args.cold_runs):
                    drop_page_cache()
                    cold.append(timed_run(command, sandbox, daemon.token_file))
                    drop_page_cache()
                    cold_floor.append(timed_run(floor, env, None))
                results["cold"] = summary(cold)
                results["cold_python_floor"] = summary(cold_floor)
            else:
                results["cold"] = "skipped: dropping the page cache needs root"
            results["imports"] = import_profile(sandbox, daemon.token_file, command)
            results["load_average"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name in ("warm", "warm_python_floor", "cold", "cold_python_floor"):
        if name in results:
            print(f"{name:<18} {results[name]}")
    print("imports of one warm run:", *results["imports"], sep="\n")
    print(f"load average {results['load_average']}")


if __name__ == "__main__":
    main()
