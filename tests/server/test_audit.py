"""The audit trail and the daemon's logs never carry a secret, and say what happened."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from credproxy.audit import AuditEvent, AuditLog, SecretScrubber
from credproxy.protocol.framing import FrameDecoder, encode_frame
from credproxy.protocol.messages import GET_TOKEN, LIST_PROVIDERS, Empty, ProviderBucket
from credproxy.server.app import Daemon
from credproxy.server.context import RequestContext, ServerState
from credproxy.server.handlers import HANDLERS
from credproxy.store.memory import MemoryStore
from tests.fixtures.daemon import DaemonFactory, DaemonHandle, RawClient
from tests.server.material import KEY_SECRETS, SEEDED_TOKENS, all_secrets

WRONG_CAPABILITY = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7"


def _exercise(daemon: DaemonHandle) -> None:
    """Successes and failures of every kind, each carrying secrets in or out."""
    with RawClient(daemon.socket_path) as intruder:
        assert intruder.handshake(WRONG_CAPABILITY)["code"] == "UNAUTHORIZED"
    with daemon.client() as client:
        for provider, bucket in SEEDED_TOKENS:
            assert client.request("get_token", {"provider": provider, "bucket": bucket})["ok"]
        for name in KEY_SECRETS:
            assert client.request("get_api_key", {"name": name})["ok"]
        planted = {
            "access_token": "access-SECRET-planted-77",
            "expiry": 3,
            "token_type": "Bearer",
            "refresh_token": "refresh-SECRET-planted-77",
        }
        assert client.request("save_token", {"provider": "qwen", "token": planted})["ok"]
        bad = dict(planted, expiry="never")
        assert client.request("save_token", {"provider": "qwen", "token": bad})["code"]
        client.request("get_api_key", {"name": KEY_SECRETS["openai"]})
        client.request("get_token", {"provider": REFRESH_NAME_LIKE})
        client.request("refresh_token", {"provider": "anthropic"})
        client.request(KEY_SECRETS["other"], {})
    with RawClient(daemon.socket_path) as garbage:
        garbage.send_raw(b"\x00\x00\x00\x20" + b"refresh-SECRET-qwen-default-4e6a8c0b")
        garbage.wait_closed()


REFRESH_NAME_LIKE = "refresh-SECRET-qwen-default-4e6a8c0b2d"


def _secrets(daemon: DaemonHandle) -> list[str]:
    assert daemon.capability_token is not None
    extra = [
        daemon.capability_token,
        WRONG_CAPABILITY,
        "access-SECRET-planted-77",
        "refresh-SECRET-planted-77",
    ]
    return [*all_secrets(), *extra]


@pytest.mark.parametrize("to_file", [True, False], ids=["audit-file", "audit-stderr"])
def test_no_secret_reaches_the_audit_log_or_daemon_stderr(
    credproxy_daemon: DaemonFactory, to_file: bool
) -> None:
    daemon = credproxy_daemon(tokens=SEEDED_TOKENS, keys=KEY_SECRETS, audit_log=to_file)
    _exercise(daemon)
    assert daemon.stop() == 0
    texts = {"stderr": daemon.stderr_text(), "audit": daemon.audit_text()}
    for where, text in texts.items():
        for secret in _secrets(daemon):
            assert secret not in text, f"{secret!r} found in {where}"
            assert secret[:24] not in text, f"a prefix of {secret!r} found in {where}"
    if to_file:
        assert daemon.audit_path is not None
        assert stat.S_IMODE(os.stat(daemon.audit_path).st_mode) == 0o600
        assert "audit " not in texts["stderr"]
    events = daemon.audit_events()
    ops = [(e["op"], e["outcome"]) for e in events]
    assert ("handshake", "UNAUTHORIZED") in ops
    assert ("get_token", "ok") in ops and ("save_token", "INVALID_REQUEST") in ops
    reads = [e for e in events if e["op"] == "get_token" and e["outcome"] == "ok"]
    assert {(e["provider"], e["bucket"]) for e in reads} == set(SEEDED_TOKENS)
    keys = {e.get("key") for e in events if e["op"] == "get_api_key"}
    assert {"openai", "other"} <= keys
    for event in reads:
        assert event["peer_uid"] == os.getuid() and event["grant"] == "full"
        assert isinstance(event["peer_pid"], int) and event["duration_ms"] >= 0


def test_audit_event_keeps_only_allowlisted_name_shaped_fields() -> None:
    event = AuditEvent.build(
        op="get_token",
        outcome="ok",
        names={
            "provider": "anthropic",
            "bucket": "a" * 64,
            "key": "has space",
            "flow_type": "0123456789abcdef" * 4,
            "access_token": "access-SECRET-x",
            "session_id": "f" * 32,
        },
        peer_uid=0,
        peer_pid=12,
        grant="providers=[anthropic:work] keys=[openai]+save",
        duration_ms=1.23456,
        ts=100.0,
    )
    line = event.to_json()
    assert '"provider":"anthropic"' in line
    assert '"bucket":"<redacted>"' in line
    assert '"key":"<redacted>"' in line and '"flow_type":"<redacted>"' in line
    assert "access" not in line and "session" not in line and "f" * 32 not in line
    assert '"grant":"providers=[anthropic:work] keys=[openai]+save"' in line
    assert '"duration_ms":1.235' in line


def test_log_scrubber_rewrites_credential_shaped_text() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretScrubber())
    logger = logging.getLogger("credproxy.test-scrubber")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("Authorization: Bearer %s", "abc.def-ghi_jkl")
        logger.error('payload {"refresh_token": "%s", "ok": 1}', "rt-plain-words")
        logger.error("capability %s", "0123456789abcdef" * 4)
        logger.error("jwt %s", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl")
        logger.error("key sk-proj-%s", "A1b2C3d4E5f6G7h8")
        try:
            raise ValueError("access_token=very-secret-value")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    for leaked in (
        "abc.def-ghi_jkl",
        "rt-plain-words",
        "0123456789abcdef",
        "eyJhbGciOiJIUzI1NiJ9",
        "A1b2C3d4E5f6G7h8",
        "very-secret-value",
    ):
        assert leaked not in output
    assert "failed (ValueError)" in output


@pytest.fixture
async def embedded() -> AsyncIterator[tuple[Path, Path, io.StringIO, AuditLog]]:
    """An in-process daemon whose handler table has deliberately broken handlers:
    a real store cannot be made to raise an arbitrary exception or return a
    refresh token, so these two handlers are fakes standing in for such bugs."""

    handlers = HANDLERS.without(GET_TOKEN.name, LIST_PROVIDERS.name)

    @handlers.handles(GET_TOKEN)
    async def explode(ctx: RequestContext, payload: ProviderBucket) -> dict[str, Any]:
        raise RuntimeError("boom with access-SECRET-in-exception-1")

    @handlers.handles(LIST_PROVIDERS)
    async def leak(ctx: RequestContext, payload: Empty) -> dict[str, Any]:
        return {"access_token": "a", "refresh_token": "refresh-SECRET-in-return-2"}

    directory = Path(tempfile.mkdtemp(prefix="cpa-", dir="/tmp"))
    audit_path = directory / "audit.log"
    audit = AuditLog.to_file(audit_path)
    logs = io.StringIO()
    log_handler = logging.StreamHandler(logs)
    log_handler.addFilter(SecretScrubber())
    server_log = logging.getLogger("credproxy.server")
    server_log.addHandler(log_handler)
    daemon = Daemon(
        ServerState(MemoryStore()),
        capabilities=None,
        socket_path=directory / "a.sock",
        audit=audit,
        handlers=handlers,
    )
    try:
        yield await daemon.start(), audit_path, logs, audit
    finally:
        await daemon.stop()
        audit.close()
        server_log.removeHandler(log_handler)
        shutil.rmtree(directory, ignore_errors=True)


async def test_handler_bugs_answer_a_generic_internal_error_and_log_no_secret(
    embedded: tuple[Path, Path, io.StringIO, AuditLog],
) -> None:
    path, audit_path, logs, audit = embedded
    reader, writer = await asyncio.open_unix_connection(path)
    decoder = FrameDecoder()
    received = bytearray()

    async def roundtrip(message: dict[str, Any]) -> dict[str, Any]:
        writer.write(encode_frame(message))
        while True:
            chunk = await reader.read(65_536)
            assert chunk
            received.extend(chunk)
            frames = decoder.feed(chunk)
            if frames:
                return frames[0]

    assert (await roundtrip({"v": 2, "op": "handshake", "payload": {}}))["ok"] is True
    exploded = await roundtrip({"v": 2, "id": "1", "op": "get_token", "payload": {"provider": "p"}})
    leaked = await roundtrip({"v": 2, "id": "2", "op": "list_providers", "payload": {}})
    writer.close()
    audit.flush()
    for reply in (exploded, leaked):
        assert reply["code"] == "INTERNAL_ERROR"
        assert reply["error"] == "the host could not complete the operation; see the daemon log"
    everything = bytes(received) + audit_path.read_bytes() + logs.getvalue().encode()
    assert b"SECRET" not in everything and b"boom" not in everything
    assert b"refresh_token" not in bytes(received)
    assert "RuntimeError" in logs.getvalue() and "SecretLeakError" in logs.getvalue()
