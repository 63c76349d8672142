"""The client's sans-IO core against a model, under any order of answers, cancels and garbage.

A stateful hypothesis run, derandomized and bounded so it is part of the
suite. The model is the set of request ids the caller still waits for; the
core must agree with it after every step, turn only answers to those ids into
events, drop late answers silently, and on bytes it cannot trust raise a
protocol violation, close, and report every id still waiting as lost.
"""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from credproxy.client._core import ClientCore, ResponseReceived, State
from credproxy.client._exceptions import ProtocolViolationError
from credproxy.protocol.framing import encode_frame

TOKEN = "ab" * 32


def _answer(request_id: str, ok: bool) -> bytes:
    if ok:
        return encode_frame({"v": 2, "id": request_id, "ok": True, "data": {"keys": []}})
    return encode_frame(
        {"v": 2, "id": request_id, "ok": False, "code": "NOT_FOUND", "error": "no such key"}
    )


class ClientCoreModel(RuleBasedStateMachine):
    waiting = Bundle("waiting")
    given_up = Bundle("given_up")

    def __init__(self) -> None:
        super().__init__()
        self.core = ClientCore(TOKEN)
        self.core.initiate_handshake()
        events = self.core.receive_data(encode_frame({"v": 2, "ok": True, "data": {"version": 2}}))
        assert [type(e).__name__ for e in events] == ["HandshakeComplete"]
        self.pending: set[str] = set()
        self.lost: frozenset[str] | None = None

    def _feed(self, data: bytes, split: int) -> list[Any]:
        cut = min(split, len(data))
        return self.core.receive_data(data[:cut]) + self.core.receive_data(data[cut:])

    @precondition(lambda self: self.lost is None)
    @rule(target=waiting, op=st.sampled_from(["list_api_keys", "list_providers"]))
    def send(self, op: str) -> str:
        request_id, frame = self.core.send_request(op)
        assert frame[4:].count(request_id.encode()) == 1
        self.pending.add(request_id)
        return request_id

    @precondition(lambda self: self.lost is None)
    @rule(request_id=consumes(waiting), ok=st.booleans(), split=st.integers(0, 200))
    def answer(self, request_id: str, ok: bool, split: int) -> None:
        events = self._feed(_answer(request_id, ok), split)
        if request_id in self.pending:
            assert len(events) == 1
            event = events[0]
            assert isinstance(event, ResponseReceived) and event.request_id == request_id
            assert (event.error is None) == ok
            self.pending.discard(request_id)
        else:
            assert events == []

    @precondition(lambda self: self.lost is None)
    @rule(target=given_up, request_id=consumes(waiting))
    def give_up(self, request_id: str) -> str:
        self.core.discard(request_id)
        self.pending.discard(request_id)
        return request_id

    @precondition(lambda self: self.lost is None)
    @rule(request_id=given_up, split=st.integers(0, 200))
    def late_answer_is_dropped(self, request_id: str, split: int) -> None:
        assert self._feed(_answer(request_id, True), split) == []

    @precondition(lambda self: self.lost is None)
    @rule(split=st.integers(0, 200))
    def answer_to_an_id_never_sent_is_dropped(self, split: int) -> None:
        assert self._feed(_answer(str(uuid.uuid4()), True), split) == []

    @precondition(lambda self: self.lost is None)
    @rule(
        garbage=st.sampled_from(
            [
                encode_frame({"v": 2, "ok": True, "data": {}}),
                encode_frame({"v": 2, "id": 7, "ok": True, "data": {}}),
                b"\x00\x00\x00\x02[]",
                b"\x00\x00\x00\x01{",
                b"\xff\xff\xff\xff",
            ]
        )
    )
    def untrusted_bytes_close_the_core(self, garbage: bytes) -> None:
        try:
            self.core.receive_data(garbage)
        except ProtocolViolationError:
            pass
        else:
            raise AssertionError(f"{garbage!r} was accepted")
        assert self.core.state is State.CLOSED
        self.lost = self.core.connection_closed()
        assert self.lost == frozenset(self.pending)

    @precondition(lambda self: self.lost is not None)
    @rule(data=st.binary(max_size=64))
    def a_closed_core_ignores_whatever_arrives(self, data: bytes) -> None:
        assert self.core.receive_data(data) == []

    @invariant()
    def core_waits_for_exactly_the_models_ids(self) -> None:
        if self.lost is None:
            assert self.core.pending == frozenset(self.pending)
        else:
            assert self.core.pending == frozenset()
            assert self.core.receive_data(_answer(str(uuid.uuid4()), True)) == []


ClientCoreModel.TestCase.settings = settings(
    derandomize=True, max_examples=150, stateful_step_count=30, deadline=None, database=None
)
test_client_core_agrees_with_its_model = ClientCoreModel.TestCase
