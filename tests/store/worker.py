"""A separate process that writes to a file store; driven by the crash and concurrency tests.

Usage: python worker.py STORE_DIR MODE ARGS...
  loop PREFIX COUNT        save tokens PREFIX-0..COUNT-1 in rounds forever, printing
                           "round N" after each complete round (killed by the test)
  many PREFIX COUNT        save COUNT tokens once, each to its own bucket, then exit
  keys PREFIX COUNT        set COUNT API keys once, then exit
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

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


async def main(argv: list[str]) -> None:
    directory, mode, prefix, count_text = argv
    count = int(count_text)
    store = FileStore(Path(directory), KeySettings(source="keyfile"), lock_timeout_s=30)
    if mode == "loop":
        generation = 1
        while True:
            for index in range(count):
                await store.save_token(prefix, f"b{index}", token_value(prefix, index, generation))
            print(f"round {generation}", flush=True)
            generation += 1
    elif mode == "many":
        for index in range(count):
            await store.save_token(prefix, f"b{index}", token_value(prefix, index, 1))
    elif mode == "keys":
        for index in range(count):
            await store.set_key(f"{prefix}-{index}", f"{prefix}-secret-{index}")
    else:
        raise SystemExit(f"unknown mode {mode}")
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
