"""A real ``credproxy serve`` for the benchmarks: seeding, start-up, /proc readings, stop.

bench_daemon, bench_load and fuzz all measure the daemon as a user runs it,
in its own process on a Unix socket, so they share how it is started: an
environment without the caller's credproxy and LLxprt variables, the JSON
ready line read with a deadline, and the per-connection rate limit raised
(``--rate-limit``) so its 60 requests/s default does not cap what is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
SRC_DIR: Final = ROOT / "src"
BENCH_RATE_LIMIT: Final = "1000000"
"""The daemon's ``--rate-limit`` in every benchmark: far above what one connection reaches."""
READY_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 30.0


def daemon_env() -> dict[str, str]:
    """This environment without settings that would point the daemon elsewhere."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CREDPROXY_", "LLXPRT_")) and k != "XDG_RUNTIME_DIR"
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC_DIR), env.get("PYTHONPATH")]))
    return env


def file_store_table(store_dir: Path) -> dict[str, str]:
    """The encrypted file store as deployed, with its data key in a key file."""
    return {"backend": "file", "path": str(store_dir), "key_source": "keyfile"}


def write_file_store_config(config: Path, store_dir: Path) -> None:
    table = file_store_table(store_dir)
    config.write_text("[store]\n" + "".join(f'{k} = "{v}"\n' for k, v in table.items()))


def seed_file_store(
    store_dir: Path,
    tokens: Mapping[tuple[str, str], Mapping[str, Any]],
    keys: Mapping[str, str] = {},
) -> None:
    """Save through the file backend itself, as the host commands do."""
    from credproxy.settings import parse_settings
    from credproxy.store.factory import open_store

    async def seed() -> None:
        store = open_store("file", parse_settings({"store": file_store_table(store_dir)}))
        try:
            for (provider, bucket), token in tokens.items():
                await store.save_token(provider, bucket, dict(token))
            for name, value in keys.items():
                await store.set_key(name, value)
        finally:
            await store.close()

    asyncio.run(seed())


def wait_ready(process: subprocess.Popen[bytes], stderr_path: Path) -> dict[str, Any]:
    """The daemon's JSON ready line; its stderr in the error when it never comes."""
    assert process.stdout is not None
    until = time.monotonic() + READY_TIMEOUT_S
    buffer = b""
    while b"\n" not in buffer:
        remaining = until - time.monotonic()
        readable, _, _ = select.select([process.stdout], [], [], max(remaining, 0.0))
        chunk = os.read(process.stdout.fileno(), 4096) if readable else b""
        if not chunk:
            process.kill()
            process.wait()
            detail = stderr_path.read_text() if stderr_path.exists() else ""
            raise RuntimeError(f"the daemon did not start: {detail}")
        buffer += chunk
    ready: dict[str, Any] = json.loads(buffer.split(b"\n", 1)[0])
    return ready


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid``, in clock ticks (``proc(5)``, fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from ``/proc/stat``."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The value at ``fraction`` of an ascending list (nearest rank, no interpolation)."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


@dataclass
class ServeProcess:
    """A running ``credproxy serve`` and what it announced."""

    process: subprocess.Popen[bytes]
    socket_path: Path
    token: str | None
    """The full-access capability token; None under ``--no-capability``."""
    stderr_path: Path
    workdir: Path

    @property
    def capability_token(self) -> str:
        if self.token is None:
            raise RuntimeError("this daemon was started without capability tokens")
        return self.token

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_ticks(self) -> int:
        return cpu_ticks(self.pid)

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stderr_bytes(self) -> int:
        try:
            return self.stderr_path.stat().st_size
        except OSError:
            return 0

    def audit_bytes(self) -> int:
        """The audit file and its rotated copies, where ``--audit-log`` is in the workdir."""
        return sum(path.stat().st_size for path in self.workdir.glob("audit.log*"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_serve(
    workdir: Path,
    config: Path,
    options: Sequence[str] = (),
    *,
    python_options: Sequence[str] = (),
    keep_stderr: bool = True,
) -> ServeProcess:
    """``credproxy serve --json`` on ``workdir/d.sock`` with ``--rate-limit`` raised.

    ``options`` go after ``serve``; ``python_options`` before ``-m credproxy``
    (e.g. a profiler). stderr is appended to ``workdir/daemon.stderr``, or
    dropped when ``keep_stderr`` is false (audit lines on stderr cost a write each).
    """
    command = [sys.executable, *python_options, "-m", "credproxy", "serve", "--json"]
    command += ["--config", str(config), "--socket", str(workdir / "d.sock")]
    command += ["--rate-limit", BENCH_RATE_LIMIT, *options]
    stderr_path = workdir / "daemon.stderr"
    with stderr_path.open("ab") as stderr:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr if keep_stderr else subprocess.DEVNULL,
            env=daemon_env(),
            cwd=workdir,
        )
    ready = wait_ready(process, stderr_path)
    token_file = ready.get("capability_file")
    token = Path(token_file).read_text().strip() if token_file else None
    return ServeProcess(process, Path(ready["socket"]), token, stderr_path, workdir)
