"""A hostile sandbox tries to fill the host's disk through the daemon's logs.

Before the log budget every hostile input cost stderr a line (an INFO line per
closed connection, about 51 bytes per fuzzed input) and the audit log a line,
so ten times the inputs wrote ten times the bytes. Now per-connection lines are
DEBUG, and past the budget repeats of one kind are counted, not written: ten
times the inputs past the budget write no more than the first round did, while
every request of a well-behaved client is still audited whole, and on stop each
count is written as one line, so the counts add up to every hostile input.

The daemon runs with ``--log-level debug`` (the per-connection lines are then
written, and budgeted too) and with a budget window longer than the test, so the
rounds fall in one window whatever the machine's load.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

from tests.fixtures.daemon import DaemonFactory, DaemonHandle, RawClient

KEY_NAME = "honest-key"
KEY_VALUE = "sk-log-budget-decoy-0001"
HONEST_REQUESTS_PER_ROUND = 25
INVALID_PER_CONNECTION = 20
GARBAGE_FRAME = struct.pack(">I", 9) + b"not json!"
BURST = 20
"""``LogBudget().burst``: the daemon under test uses the default budget."""


def _garbage_connection(daemon: DaemonHandle) -> None:
    """Bytes that are no frame, before any handshake: the daemon closes the connection."""
    with RawClient(daemon.socket_path) as raw:
        raw.send_raw(GARBAGE_FRAME)
        raw.wait_closed()


def _invalid_requests(daemon: DaemonHandle, count: int) -> None:
    """Requests of an op that does not exist, each answered ``INVALID_REQUEST``."""
    with daemon.client() as client:
        for _ in range(count):
            assert client.request("steal_everything", {})["code"] == "INVALID_REQUEST"


def _honest_requests(daemon: DaemonHandle) -> None:
    with daemon.client() as client:
        for _ in range(HONEST_REQUESTS_PER_ROUND):
            reply = client.request("get_api_key", {"name": KEY_NAME})
            assert reply["ok"] is True, reply


def _sizes(daemon: DaemonHandle) -> tuple[int, int]:
    daemon.audit_text()  # waits for the writer thread to settle
    assert daemon.audit_path is not None
    return daemon.stderr_path.stat().st_size, daemon.audit_path.stat().st_size


def _round(daemon: DaemonHandle, garbage: int, invalid_connections: int) -> tuple[int, int]:
    before = _sizes(daemon)
    for _ in range(garbage):
        _garbage_connection(daemon)
    for _ in range(invalid_connections):
        _invalid_requests(daemon, INVALID_PER_CONNECTION)
    _honest_requests(daemon)
    after = _sizes(daemon)
    return after[0] - before[0], after[1] - before[1]


def _audit_events(daemon: DaemonHandle) -> list[dict[str, Any]]:
    assert daemon.audit_path is not None
    text = daemon.audit_path.read_text(encoding="utf-8")
    return [json.loads(line[len("audit ") :]) for line in text.splitlines()]


def _written_and_counted(events: list[dict[str, Any]], op: str, outcome: str) -> tuple[int, int]:
    lines = [e for e in events if e.get("op") == op and e.get("outcome") == outcome]
    whole = [e for e in lines if "repeated" not in e]
    return len(whole), sum(e.get("repeated", 0) for e in lines)


def test_ten_times_the_hostile_inputs_past_the_budget_write_no_more_log_or_audit_bytes(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon(
        "--log-level", "debug", "--testing-log-window", "3600", keys={KEY_NAME: KEY_VALUE}
    )
    # Round 1 already passes the budget of every hostile kind; round 2 is ten times it.
    first = _round(daemon, garbage=2 * BURST, invalid_connections=2)
    second = _round(daemon, garbage=20 * BURST, invalid_connections=20)

    stderr_first, audit_first = first
    stderr_second, audit_second = second
    assert stderr_first > 0  # the debug lines are written up to the budget
    assert stderr_second <= stderr_first, (first, second)
    # Round 2 writes more whole lines only for what is never summarised: the
    # handshakes of its 18 more connections.
    assert audit_second <= audit_first, (first, second)

    assert daemon.stop() == 0
    events = _audit_events(daemon)
    garbage_total = 22 * BURST
    whole, counted = _written_and_counted(events, "invalid", "INVALID_REQUEST")
    assert (whole, whole + counted) == (BURST, garbage_total)
    invalid_total = 22 * INVALID_PER_CONNECTION
    whole, counted = _written_and_counted(events, "unknown", "INVALID_REQUEST")
    assert (whole, whole + counted) == (BURST, invalid_total)
    honest = [e for e in events if e.get("op") == "get_api_key"]
    assert len(honest) == 2 * HONEST_REQUESTS_PER_ROUND
    assert all(e["outcome"] == "ok" and e["key"] == KEY_NAME for e in honest)
    assert sum(1 for e in events if e.get("op") == "handshake" and e["outcome"] == "ok") == 24

    stderr = daemon.stderr_text()
    closing = re.findall(r"closing connection of uid \d+: .*", stderr)
    repeats = re.findall(
        r"closing connection of uid \d+: .* \[repeated ([\d,]+) more times within 3600 s\]",
        stderr,
    )
    assert len(closing) == BURST + 1
    assert BURST + int(repeats[0].replace(",", "")) == garbage_total
    assert KEY_VALUE not in stderr and KEY_VALUE not in daemon.audit_text()
