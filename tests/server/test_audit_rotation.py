"""The audit log rotates by size, keeps a bounded number of files, and loses no line."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from credproxy.audit import AuditEvent, AuditLog, AuditLogError


def _lines(directory: Path) -> list[dict[str, object]]:
    events = []
    for path in sorted(directory.iterdir()):
        for line in path.read_text(encoding="utf-8").splitlines():
            assert line.startswith("audit ")
            events.append(json.loads(line[len("audit ") :]))
    return events


def test_rotation_keeps_every_line_of_the_retained_files_and_bounds_their_number(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog.to_file(path, max_bytes=4096, keep=3)
    for index in range(400):
        log.record(AuditEvent.build(op="get_token", outcome="ok", peer_pid=index, ts=1.0))
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit.log", "audit.log.1", "audit.log.2", "audit.log.3"]
    for name in names:
        size = (tmp_path / name).stat().st_size
        assert size <= 4096
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    pids = sorted(int(str(e["peer_pid"])) for e in _lines(tmp_path))
    # The retained files hold the newest lines without a gap: nothing between
    # the oldest kept line and the last one went missing at a rotation.
    assert pids == list(range(pids[0], 400))
    assert pids[0] > 0, "the oldest files beyond the three kept are gone"


def test_a_batch_is_never_split_across_files_and_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog.to_file(path, max_bytes=2000, keep=50)
    for index in range(500):
        log.record(AuditEvent.build(op="get_token", outcome="ok", peer_pid=index, ts=1.0))
    log.close()
    pids = sorted(int(str(e["peer_pid"])) for e in _lines(tmp_path))
    assert pids == list(range(500))


def test_rotation_needs_at_least_one_kept_file(tmp_path: Path) -> None:
    with pytest.raises(AuditLogError, match="at least one"):
        AuditLog.to_file(tmp_path / "audit.log", keep=0)


def test_an_existing_log_is_appended_to_and_its_size_counts(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text("audit {}\n" * 500, encoding="utf-8")
    os.chmod(path, 0o600)
    log = AuditLog.to_file(path, max_bytes=4000, keep=1)
    log.record(AuditEvent.build(op="get_token", outcome="ok", ts=1.0))
    log.close()
    assert (tmp_path / "audit.log.1").read_text(encoding="utf-8") == "audit {}\n" * 500
    assert '"op":"get_token"' in path.read_text(encoding="utf-8")


async def test_a_sink_that_cannot_keep_up_makes_the_daemon_refuse_and_count(
    tmp_path: Path,
) -> None:
    """A disk that stalls cannot be produced on demand, so the writer thread's
    write is held by a gate (a stand-in for the stalled disk). The daemon must
    not serve what it cannot record: it refuses, counts the refusals, and says
    so in the log once the writer catches up."""
    import asyncio
    import shutil
    import tempfile
    import threading

    from credproxy.protocol.framing import FrameDecoder, encode_frame
    from credproxy.server.app import Daemon
    from credproxy.server.context import ServerState
    from credproxy.store.memory import MemoryStore

    path = tmp_path / "audit.log"
    log = AuditLog.to_file(path, max_backlog_bytes=1)
    writer = log._writer
    assert writer is not None
    gate = threading.Event()
    real_write = writer._write

    def stalled_write(data: bytes) -> None:
        gate.wait()
        real_write(data)

    writer._write = stalled_write  # type: ignore[method-assign]
    directory = Path(tempfile.mkdtemp(prefix="cpk-", dir="/tmp"))
    daemon = Daemon(
        ServerState(MemoryStore()),
        capabilities=None,
        socket_path=directory / "k.sock",
        audit=log,
    )
    await daemon.start()
    try:
        reader, stream = await asyncio.open_unix_connection(daemon.socket_path)
        decoder = FrameDecoder()

        async def roundtrip(message: dict[str, object]) -> dict[str, object]:
            stream.write(encode_frame(message))
            while True:
                frames = decoder.feed(await reader.read(65_536))
                if frames:
                    return frames[0]

        hello = {"v": 2, "op": "handshake", "payload": {}}
        assert (await roundtrip(hello))["ok"] is True
        while writer.backlog == 0:  # the handshake's line reaches the stalled writer
            await asyncio.sleep(0.01)
        refused = [
            await roundtrip({"v": 2, "id": str(i), "op": "list_providers", "payload": {}})
            for i in range(3)
        ]
        for reply in refused:
            assert reply["code"] == "INTERNAL_ERROR"
            assert "audit log is behind" in str(reply["error"])
        gate.set()
        while writer.backlog:
            await asyncio.sleep(0.01)
        served = await roundtrip({"v": 2, "id": "after", "op": "list_providers", "payload": {}})
        assert served["ok"] is True
        stream.close()
    finally:
        gate.set()
        await daemon.stop(0.1)
        log.close()
        shutil.rmtree(directory, ignore_errors=True)
    events = _lines(tmp_path)
    behind = [e for e in events if e.get("op") == "audit"]
    assert behind == [{"ts": behind[0]["ts"], "op": "audit", "outcome": "BEHIND", "refused": 3}]
    assert [e["op"] for e in events if e.get("op") != "audit"] == ["handshake", "list_providers"]
