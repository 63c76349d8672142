"""Separate processes that write to a file store, driven by the crash, concurrency and disk tests.

Usage: python worker.py MODE STORE_DIR ARGS...
  many STORE_DIR PREFIX COUNT [START_FILE]
      open the store, print "ready", wait until START_FILE exists (so two
      workers overlap), save COUNT tokens (provider PREFIX, buckets b0..), set
      one key per token, then print "<first save ns> <last save ns>".
  zygote STORE_DIR COUNT
      a pre-loaded parent that forks writers cheaply. For each stdin line
      "<saves> <delay_us> <generation>" it forks a child that saves COUNT
      tokens and one key round after round from that generation on, reporting
      each completed save on a pipe; after <saves> completed saves it waits
      delay_us more, SIGKILLs the child, reaps it and prints "killed <signal>".
      Counting saves (not time) puts the kill at the same point of the write
      sequence however loaded the machine is.
  diskfull STORE_DIR
      save a small token, then try a value far larger than the filesystem;
      print a JSON report of what happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

from credproxy.store.base import StoreError
from credproxy.store.file import FileStore
from credproxy.store.keysource import KeySettings


def token_value(prefix: str, index: int, generation: int) -> dict[str, object]:
    return {
        "access_token": f"{prefix}-access-{index}-gen-{generation}",
        "refresh_token": f"{prefix}-refresh-{index}-gen-{generation}",
        "expiry": 1_900_000_000 + generation,
        "token_type": "Bearer",
        "generation": generation,
    }


def open_store(directory: str) -> FileStore:
    return FileStore(Path(directory), KeySettings(source="keyfile"), lock_timeout_s=60)


async def many(directory: str, prefix: str, count: int, start_file: str | None) -> None:
    store = open_store(directory)
    print("ready", flush=True)
    if start_file:
        while not os.path.exists(start_file):
            await asyncio.sleep(0.001)
    first = time.time_ns()
    for index in range(count):
        await store.save_token(prefix, f"b{index}", token_value(prefix, index, 1))
        await store.set_key(f"{prefix}-{index}", f"{prefix}-key-{index}")
    last = time.time_ns()
    await store.close()
    print(first, last, flush=True)


async def write_forever(directory: str, count: int, generation: int, progress: int) -> None:
    store = open_store(directory)
    while True:
        for index in range(count):
            await store.save_token("crash", f"b{index}", token_value("crash", index, generation))
            os.write(progress, b".")
        await store.set_key("crash-key", f"crash-key-gen-{generation}")
        os.write(progress, b".")
        generation += 1


def zygote(directory: str, count: int) -> None:
    for line in sys.stdin:
        saves, delay_us, generation = (int(part) for part in line.split())
        progress_read, progress_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(progress_read)
                asyncio.run(write_forever(directory, count, generation, progress_write))
            finally:
                os._exit(1)
        os.close(progress_write)
        completed = 0
        while completed < saves:
            chunk = os.read(progress_read, saves - completed)
            if not chunk:
                break
            completed += len(chunk)
        time.sleep(delay_us / 1_000_000)
        os.kill(pid, signal.SIGKILL)
        os.close(progress_read)
        _, status = os.waitpid(pid, 0)
        print(f"killed {os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1}", flush=True)


async def diskfull(directory: str) -> None:
    report: dict[str, object] = {}
    store = open_store(directory)
    small = token_value("disk", 0, 1)
    await store.save_token("disk", "default", small)
    try:
        await store.set_key("huge", "x" * 512 * 1024)
    except StoreError as exc:
        report["error"] = str(exc)
    else:
        report["error"] = None
    report["temp_files"] = sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))
    report["small_in_same_process"] = await store.get_token("disk", "default") == small
    report["huge_present"] = await store.get_key("huge") is not None
    await store.close()
    reopened = open_store(directory)
    report["small_after_reopen"] = await reopened.get_token("disk", "default") == small
    newer = token_value("disk", 0, 2)
    await reopened.save_token("disk", "default", newer)
    report["save_after_failure"] = await reopened.get_token("disk", "default") == newer
    await reopened.close()
    print(json.dumps(report), flush=True)


def main(argv: list[str]) -> None:
    mode, directory, *rest = argv
    if mode == "many":
        prefix, count = rest[0], int(rest[1])
        asyncio.run(many(directory, prefix, count, rest[2] if len(rest) > 2 else None))
    elif mode == "zygote":
        zygote(directory, int(rest[0]))
    elif mode == "diskfull":
        asyncio.run(diskfull(directory))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
