"""Stopping an embedded ``Daemon`` ends even when its OAuth runtime will not close."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest

from credproxy.audit import AuditLog
from credproxy.server.app import Daemon
from credproxy.server.context import ServerState
from credproxy.store.memory import MemoryStore

if TYPE_CHECKING:
    from credproxy.oauth.runtime import OAuthRuntime


class _StuckExtension:
    """A fake: no real subsystem can be made to hang on close at will. Its background
    task ignores cancellation until released, as a buggy login flow could."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.running = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        self.running.set()
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                continue

    async def aclose(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.shield(self.task)


async def test_stop_gives_up_on_an_extension_that_never_closes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stuck = _StuckExtension()
    # Stands in for the OAuth runtime, the subsystem the daemon closes last.
    state = ServerState(MemoryStore(), oauth=cast("OAuthRuntime", stuck))
    audit = AuditLog.to_file(tmp_path / "audit.log")
    socket_dir = Path(tempfile.mkdtemp(prefix="cps-", dir="/tmp"))
    daemon = Daemon(
        state,
        capabilities=None,
        socket_path=socket_dir / "s.sock",
        audit=audit,
        extension_close_timeout_s=0.05,
    )
    try:
        await daemon.start()
        await stuck.running.wait()
        with caplog.at_level(logging.ERROR, logger="credproxy.server"):
            # The outer bound only turns a regression into a failure instead of a hang.
            async with asyncio.timeout(30):
                await daemon.stop(grace_s=0.05)
        assert "closing the OAuth runtime did not finish" in caplog.text
        assert not (socket_dir / "s.sock").exists()
    finally:
        stuck.release.set()
        if stuck.task is not None:
            await stuck.task
        audit.close()
        shutil.rmtree(socket_dir, ignore_errors=True)
