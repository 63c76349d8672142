"""A peer that sends requests but never reads the answers.

The sans-IO core frees a request's in-flight place once its answer is built;
the answer may then wait for the peer to read. Counting only built answers let
a peer that paced itself 16 requests at a time park an unbounded number of
large answers in the daemon, so the place must stay taken until the answer is
written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.fixtures.daemon import DaemonFactory, DaemonHandle

BIG_TOKEN = {
    "access_token": "at-big",
    "expiry": 1_900_000_000,
    "token_type": "Bearer",
    "padding": "x" * 60_000,
}
WAIT_S = 15.0


def _get_token_outcomes(daemon: DaemonHandle) -> list[str]:
    return [e["outcome"] for e in daemon.audit_events() if e.get("op") == "get_token"]


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def test_answers_the_peer_has_not_read_still_count_as_in_flight(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon(tokens={("big", "default"): BIG_TOKEN})
    with daemon.client() as client:
        payload: dict[str, Any] = {"provider": "big"}
        for index in range(16):
            client.send_request("get_token", payload, request_id=f"first-{index}")
        _wait_for(lambda: len(_get_token_outcomes(daemon)) >= 16, "the first 16 answers")
        # 16 answers of 60 KB cannot all fit the socket buffers: most still wait
        # for this peer to read, so a second batch exceeds the in-flight limit.
        for index in range(16):
            client.send_request("get_token", payload, request_id=f"second-{index}")
        _wait_for(
            lambda: (
                "RESOURCE_EXHAUSTED" in _get_token_outcomes(daemon)
                or len(_get_token_outcomes(daemon)) >= 32
            ),
            "the second batch",
        )
        outcomes = _get_token_outcomes(daemon)
        assert "RESOURCE_EXHAUSTED" in outcomes
        assert outcomes.count("ok") < 32
