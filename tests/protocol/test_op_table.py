"""Checks derived from the op table: an op declared once is wired everywhere.

Adding an op is one declaration in ``protocol/messages.py`` plus one handler;
this test fails until the op also has its client methods (sync and async), a
row in ``docs/protocol.md`` and a test that sends it to a real daemon.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from credproxy.client import AsyncProxyClient, ProxyClient
from credproxy.protocol.messages import ALL_OPS, OPERATIONS, Op
from credproxy.server.oauth_handlers import ALL_HANDLERS

ROOT = Path(__file__).resolve().parents[2]
WIRE_TEST_DIRS = ("tests/server", "tests/client", "tests/oauth")
HANDLER_OPS = [op for op in ALL_OPS if not op.connection_level]
_ids = [op.name for op in ALL_OPS]


def _wire_test_text() -> str:
    return "\n".join(
        path.read_text(encoding="utf-8")
        for directory in WIRE_TEST_DIRS
        for path in sorted((ROOT / directory).glob("test_*.py"))
    )


WIRE_TESTS = _wire_test_text()
PROTOCOL_DOC = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")


def test_every_op_is_declared_once_and_the_request_table_holds_all_but_the_handshake() -> None:
    assert len(_ids) == len(set(_ids))
    assert set(OPERATIONS) == set(_ids) - {"handshake"}


@pytest.mark.parametrize("op", HANDLER_OPS, ids=[op.name for op in HANDLER_OPS])
def test_every_op_has_a_handler_typed_for_its_payload(op: Op[object]) -> None:  # type: ignore[type-var]
    bound = ALL_HANDLERS.get(op.name)
    assert bound is not None, f"{op.name} has no handler"
    hints = inspect.get_annotations(bound.run, eval_str=True)
    assert hints["payload"] is op.payload


def test_connection_level_ops_have_no_handler() -> None:
    for op in ALL_OPS:
        if op.connection_level:
            assert op.name not in ALL_HANDLERS


@pytest.mark.parametrize("op", HANDLER_OPS, ids=[op.name for op in HANDLER_OPS])
def test_every_op_has_a_sync_and_an_async_client_method(op: Op[object]) -> None:  # type: ignore[type-var]
    assert callable(getattr(ProxyClient, op.name, None)), f"ProxyClient.{op.name} is missing"
    method = getattr(AsyncProxyClient, op.name, None)
    assert inspect.iscoroutinefunction(method), f"AsyncProxyClient.{op.name} is missing"


@pytest.mark.parametrize("op", ALL_OPS, ids=_ids)
def test_every_op_has_a_row_in_the_protocol_doc(op: Op[object]) -> None:  # type: ignore[type-var]
    assert re.search(rf"^\| `{op.name}`", PROTOCOL_DOC, re.MULTILINE), (
        f"docs/protocol.md has no row for {op.name}"
    )


@pytest.mark.parametrize("op", ALL_OPS, ids=_ids)
def test_every_op_is_sent_to_a_real_daemon_by_some_test(op: Op[object]) -> None:  # type: ignore[type-var]
    pattern = rf"""["']{op.name}["']|\.{op.name}\("""
    assert re.search(pattern, WIRE_TESTS), f"no test under {WIRE_TEST_DIRS} sends {op.name}"
