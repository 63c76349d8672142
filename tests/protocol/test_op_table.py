"""Checks derived from the op table: an op declared once is wired everywhere.

Adding an op is one declaration in ``protocol/ops.py`` (what the msgspec-free
client needs) and one in ``protocol/messages.py`` (its schemas) plus one
handler; this test fails until both halves agree and the op also has its
client methods (sync and async), a row in ``docs/protocol.md`` and a test that
sends it to a real daemon.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from credproxy.client import AsyncProxyClient, ProxyClient
from credproxy.protocol import ops
from credproxy.protocol.messages import ALL_OPS, OPERATIONS, Name, Op, convert_payload
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


def test_the_schemas_are_declared_on_the_msgspec_free_op_table_one_to_one() -> None:
    assert [op.facts for op in ALL_OPS] == list(ops.ALL_OP_FACTS)
    assert {name: (op.name, op.min_version) for name, op in OPERATIONS.items()} == {
        name: (facts.name, facts.min_version) for name, facts in ops.REQUEST_OPS.items()
    }


@pytest.mark.parametrize("op", ALL_OPS, ids=_ids)
def test_name_fields_are_declared_exactly_for_payloads_made_only_of_names(
    op: Op[Any],
) -> None:
    """The client passes such payloads without msgspec; every other one goes to the schema."""
    fields = msgspec.structs.fields(op.payload)
    every = {field.name for field in fields}
    names = {field.name for field in fields if field.type == Name}
    if op.facts.name_fields is None:
        assert names != every, f"{op.name}: its payload is all names; declare name_fields"
    else:
        assert set(op.facts.name_fields) == names == every


NAME_OPS = [op for op in ALL_OPS if op.facts.name_fields is not None]
candidate_values = st.one_of(
    st.from_regex(ops.NAME_PATTERN),
    st.text(max_size=70),
    st.sampled_from(["default", "a" * 64, "a" * 65, "", "a\n", "é", "a/b"]),
    st.integers(),
    st.none(),
    st.lists(st.text(max_size=3), max_size=2),
)


@given(
    op=st.sampled_from(NAME_OPS),
    payload=st.dictionaries(
        st.sampled_from(["provider", "bucket", "name", "extra"]), candidate_values, max_size=4
    ),
)
def test_a_payload_the_op_table_passes_is_one_the_schema_accepts(
    op: Op[Any], payload: dict[str, Any]
) -> None:
    if op.facts.plainly_valid(payload):
        convert_payload(payload, op.payload)


@given(op=st.sampled_from(NAME_OPS), data=st.data())
def test_a_payload_of_valid_names_is_passed_without_the_schema(
    op: Op[Any], data: st.DataObject
) -> None:
    fields = op.facts.name_fields or ()
    payload = {field: data.draw(st.from_regex(ops.NAME_PATTERN)) for field in fields}
    payload |= data.draw(st.dictionaries(st.sampled_from(["extra", "v"]), candidate_values))
    assert op.facts.plainly_valid(payload)


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
