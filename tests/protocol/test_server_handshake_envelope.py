"""The sans-IO server's handshake reply version when the envelope's ``v`` is not a plain int.

JSON gives 1.0 and true for ``"v": 1.0`` and ``"v": true``; both compare equal
to 1 in Python. They must get a well-formed rejection, never an exception.
"""

from __future__ import annotations

from typing import Any

import pytest

from credproxy.grants import Grant
from credproxy.protocol.framing import FrameDecoder, encode_frame
from credproxy.protocol.server import HandshakeOffered, HandshakeRejected, ServerConnection


@pytest.mark.parametrize("envelope_v", [1.0, 2.0, True, False, "1", None, [1], 3, -1])
def test_unusable_envelope_version_gets_an_unknown_version_reply_in_version_1(
    envelope_v: Any,
) -> None:
    connection = ServerConnection(lambda token: Grant.full())
    events = connection.receive_data(encode_frame({"v": envelope_v, "op": "handshake"}), 0.0)
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, HandshakeRejected)
    connection.send_rejection()
    [reply] = FrameDecoder().feed(connection.data_to_send())
    assert reply["v"] == 1
    assert type(reply["v"]) is int
    assert reply["code"] == "UNKNOWN_VERSION"
    assert connection.closed


@pytest.mark.parametrize("envelope_v", [1.0, True])
def test_non_integer_envelope_version_with_valid_bounds_is_answered_in_the_chosen_version(
    envelope_v: Any,
) -> None:
    connection = ServerConnection(lambda token: Grant.full())
    frame = {"v": envelope_v, "op": "handshake", "payload": {"minVersion": 1, "maxVersion": 2}}
    [event] = connection.receive_data(encode_frame(frame), 0.0)
    assert isinstance(event, HandshakeOffered)
    assert event.version == 2
    connection.admit()
    assert FrameDecoder().feed(connection.data_to_send())[0]["v"] == 2
