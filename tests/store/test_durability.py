"""Crash safety, concurrent writers in separate processes, and a full disk, all for real."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from credproxy.store.file import FileStore
from credproxy.store.keysource import KeySettings
from tests.store.worker import token_value

WORKER = Path(__file__).with_name("worker.py")
CRASH_TOKENS = 6
CRASH_ITERATIONS = 300


def open_store(directory: Path) -> FileStore:
    return FileStore(directory, KeySettings(source="keyfile"))


async def read_generations(directory: Path) -> tuple[list[int], int]:
    """Each token's generation (checking the whole value) and the key's; fails on loss or damage."""
    store = open_store(directory)
    try:
        generations = []
        for index in range(CRASH_TOKENS):
            token = await store.get_token("crash", f"b{index}")
            assert token is not None, f"token b{index} is missing"
            generation = token["generation"]
            assert token == token_value("crash", index, generation)
            generations.append(generation)
        key = await store.get_key("crash-key")
        assert key is not None, "the key is missing"
        key_generation = int(key.rsplit("-", 1)[1])
        assert key == f"crash-key-gen-{key_generation}"
    finally:
        await store.close()
    return generations, key_generation


async def test_sigkill_at_any_point_leaves_every_credential_old_or_new(tmp_path: Path) -> None:
    """A writer is SIGKILLed at random points hundreds of times; nothing is ever lost or torn.

    Writers are forked from a pre-loaded parent (worker.py zygote) so each of the
    hundreds of iterations costs milliseconds, not an interpreter start.
    """
    directory = tmp_path / "store"
    seed = open_store(directory)
    for index in range(CRASH_TOKENS):
        await seed.save_token("crash", f"b{index}", token_value("crash", index, 0))
    await seed.set_key("crash-key", "crash-key-gen-0")
    await seed.close()

    zygote = subprocess.Popen(
        [sys.executable, str(WORKER), "zygote", str(directory), str(CRASH_TOKENS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert zygote.stdin is not None
    assert zygote.stdout is not None
    rng = random.Random(1441)
    previous = [0] * CRASH_TOKENS
    previous_key = 0
    iterations_with_progress = 0
    iterations_that_saved = 0
    mid_round_states = 0
    try:
        for _ in range(CRASH_ITERATIONS):
            start = max(*previous, previous_key) + 1
            saves = rng.randrange(0, 2 * (CRASH_TOKENS + 1))
            iterations_that_saved += saves > 0
            zygote.stdin.write(f"{saves} {rng.randrange(0, 4_000)} {start}\n")
            zygote.stdin.flush()
            assert zygote.stdout.readline().strip() == "killed 9"
            generations, key_generation = await read_generations(directory)
            for index, generation in enumerate(generations):
                assert generation >= previous[index], "a saved token went back in time"
            assert key_generation >= previous_key
            # One writer saves b0..bN-1 in order: a crash leaves a prefix newer.
            assert generations == sorted(generations, reverse=True)
            if generations != previous or key_generation != previous_key:
                iterations_with_progress += 1
            if len(set(generations)) > 1:
                mid_round_states += 1
            previous, previous_key = generations, key_generation
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=30)
    # Every kill after a completed save shows progress, and kills mid-round were
    # observed: the kills really interrupted a stream of writes.
    assert iterations_with_progress >= iterations_that_saved
    assert mid_round_states > CRASH_ITERATIONS // 10
    leftovers = [p for p in directory.iterdir() if p.name.endswith(".tmp")]
    for path in leftovers:
        assert path.stat().st_mode & 0o077 == 0


async def test_two_processes_saving_concurrently_lose_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    open_store(directory)
    start_file = tmp_path / "go"
    count = 150
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                "many",
                str(directory),
                prefix,
                str(count),
                str(start_file),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for prefix in ("alpha", "beta")
    ]
    for worker in workers:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready"
    start_file.touch()
    spans = []
    for worker in workers:
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0
        first, last = (int(part) for part in out.split())
        spans.append((first, last))
    # The two writers really overlapped in time (otherwise this proves nothing).
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]

    store = open_store(directory)
    expected = sorted(f"b{index}" for index in range(count))
    assert await store.list_providers() == ["alpha", "beta"]
    for prefix in ("alpha", "beta"):
        assert await store.list_buckets(prefix) == expected
        for index in range(count):
            assert await store.get_token(prefix, f"b{index}") == token_value(prefix, index, 1)
            assert await store.get_key(f"{prefix}-{index}") == f"{prefix}-key-{index}"
    assert len(await store.list_keys()) == 2 * count
    await store.close()


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[list[str]]:
    """A 64 KiB tmpfs; yields the command that runs the disk worker on it.

    As root the test mounts it directly. Where that is not allowed (no root,
    or a container without CAP_SYS_ADMIN) the worker runs in a private mount
    namespace instead (``unshare --mount --map-root-user``).
    """
    mount_point = tmp_path / "small"
    mount_point.mkdir(mode=0o700)
    store = mount_point / "store"
    options = "size=64k,mode=0700"
    if os.geteuid() == 0:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
            capture_output=True,
            check=False,
        )
        if mounted.returncode == 0:
            try:
                yield [sys.executable, str(WORKER), "diskfull", str(store)]
            finally:
                subprocess.run(["umount", str(mount_point)], check=True)
            return
    if shutil.which("unshare") is None:
        pytest.fail("a full-disk test needs mount (as root) or util-linux unshare")
    script = (
        f'mount -t tmpfs -o {options} tmpfs "{mount_point}" && '
        f'exec "{sys.executable}" "{WORKER}" diskfull "{store}"'
    )
    yield ["unshare", "--mount", "--map-root-user", "sh", "-c", script]


def test_full_disk_fails_with_a_clear_error_and_keeps_the_previous_contents(
    small_filesystem: list[str],
) -> None:
    result = subprocess.run(
        small_filesystem, check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["error"] is not None, "a value larger than the filesystem was accepted"
    assert "no space left on the device" in report["error"]
    assert "previous contents are intact" in report["error"]
    assert report["temp_files"] == [], "the failed write left its temp file behind"
    assert report["huge_present"] is False
    assert report["small_in_same_process"] is True
    assert report["small_after_reopen"] is True
    assert report["save_after_failure"] is True
