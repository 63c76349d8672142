"""The log and audit budget with an injected clock: which records are written,
which are counted, and that every count is written once as one line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from credproxy.audit import AuditEvent, AuditLog, SecretScrubber, summarised
from credproxy.logbudget import BudgetedHandler, LogBudget, RepeatLimiter

BUDGET = LogBudget(burst=3, interval_s=10.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTimers:
    """``Schedule`` that only records; the test fires the callbacks."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], None]]] = []
        self.cancelled = 0

    def __call__(self, delay_s: float, callback: Callable[[], None]) -> Callable[[], None]:
        entry = (delay_s, callback)
        self.pending.append(entry)

        def cancel() -> None:
            if entry in self.pending:
                self.pending.remove(entry)
                self.cancelled += 1

        return cancel

    def fire(self) -> None:
        pending, self.pending = self.pending, []
        for _, callback in pending:
            callback()


# --- the limiter ------------------------------------------------------------------------


def test_the_first_burst_of_a_kind_is_written_and_the_rest_counted() -> None:
    clock = FakeClock()
    limiter: RepeatLimiter[str, int] = RepeatLimiter(BUDGET, clock)
    verdicts = [limiter.admit("flood", n) for n in range(10)]
    assert [write for write, _ in verdicts] == [True] * 3 + [False] * 7
    assert all(due == [] for _, due in verdicts)
    assert limiter.admit("other", 0) == (True, [])


def test_a_kind_recurring_after_its_window_gets_its_count_first() -> None:
    clock = FakeClock()
    limiter: RepeatLimiter[str, int] = RepeatLimiter(BUDGET, clock)
    for n in range(1234):
        limiter.admit("flood", n)
    clock.now += 10.0
    write, due = limiter.admit("flood", 9999)
    assert write is True
    assert [(r.kind, r.count, r.sample, r.interval_s) for r in due] == [("flood", 1231, 1233, 10.0)]
    # The new window starts with that record: two more are written, then counting.
    assert [limiter.admit("flood", n)[0] for n in range(3)] == [True, True, False]


def test_an_ended_window_is_reported_at_the_next_record_of_any_kind() -> None:
    clock = FakeClock()
    limiter: RepeatLimiter[str, int] = RepeatLimiter(BUDGET, clock)
    for n in range(5):
        limiter.admit("flood", n)
    clock.now += 9.9
    assert limiter.admit("quiet", 0) == (True, [])
    clock.now += 0.1
    write, due = limiter.admit("quiet", 1)
    assert write is True
    assert [(r.kind, r.count) for r in due] == [("flood", 2)]


def test_a_window_without_repeats_ends_without_a_line() -> None:
    clock = FakeClock()
    limiter: RepeatLimiter[str, int] = RepeatLimiter(BUDGET, clock)
    limiter.admit("once", 0)
    assert limiter.next_due() is None
    clock.now += 60.0
    assert limiter.due() == []
    assert limiter.drain() == []


def test_next_due_is_the_end_of_the_earliest_window_holding_a_count() -> None:
    clock = FakeClock()
    limiter: RepeatLimiter[str, int] = RepeatLimiter(BUDGET, clock)
    limiter.admit("quiet", 0)
    clock.now += 2.0
    for n in range(4):
        limiter.admit("flood", n)
    assert limiter.next_due() == 1012.0
    assert limiter.due() == []
    clock.now = 1012.0
    assert [(r.kind, r.count) for r in limiter.due()] == [("flood", 1)]
    assert limiter.next_due() is None


def test_drain_returns_every_count_once() -> None:
    clock = FakeClock()
    limiter: RepeatLimiter[str, int] = RepeatLimiter(BUDGET, clock)
    for kind in ("a", "b"):
        for n in range(5):
            limiter.admit(kind, n)
    assert sorted((r.kind, r.count) for r in limiter.drain()) == [("a", 2), ("b", 2)]
    assert limiter.drain() == []


def test_too_many_kinds_summarise_every_window_instead_of_growing() -> None:
    clock = FakeClock()
    limiter: RepeatLimiter[int, int] = RepeatLimiter(LogBudget(burst=1, max_kinds=4), clock)
    for kind in range(4):
        limiter.admit(kind, 0)
        limiter.admit(kind, 1)
    write, due = limiter.admit(99, 0)
    assert write is True
    assert sorted((r.kind, r.count) for r in due) == [(0, 1), (1, 1), (2, 1), (3, 1)]
    assert limiter.drain() == []


def test_a_budget_that_writes_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="burst"):
        LogBudget(burst=0)


# --- the daemon's log handler -------------------------------------------------------------


def _handler(clock: FakeClock, timers: FakeTimers) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = BudgetedHandler(stream, BUDGET, clock=clock, schedule=timers)
    handler.addFilter(SecretScrubber())
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"credproxy.test_log_budget.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger, stream


def test_the_handler_counts_records_of_one_template_and_writes_the_count_with_the_last() -> None:
    clock, timers = FakeClock(), FakeTimers()
    logger, stream = _handler(clock, timers)
    for uid in range(100):
        logger.info("closing connection of uid %s: %s", uid, "frame body is not valid JSON")
    logger.warning("the store is unreachable")
    lines = stream.getvalue().splitlines()
    assert lines == [
        "INFO closing connection of uid 0: frame body is not valid JSON",
        "INFO closing connection of uid 1: frame body is not valid JSON",
        "INFO closing connection of uid 2: frame body is not valid JSON",
        "WARNING the store is unreachable",
    ]
    # The window's end is due in 10 s; the timer writes the count then.
    assert [delay for delay, _ in timers.pending] == [10.0]
    clock.now += 10.0
    timers.fire()
    assert stream.getvalue().splitlines()[4:] == [
        "INFO closing connection of uid 99: frame body is not valid JSON "
        "[repeated 97 more times within 10 s]"
    ]


def test_the_count_line_goes_through_the_scrubber_like_any_record() -> None:
    clock, timers = FakeClock(), FakeTimers()
    logger, stream = _handler(clock, timers)
    secret = "sk-" + "a" * 40
    for _ in range(5):
        logger.error("refresh failed: %s", f"api_key={secret}")
    logging.getLogger(logger.name).handlers[0].close()
    text = stream.getvalue()
    assert secret not in text
    assert text.count("[repeated 2 more times within 10 s]") == 1


def test_closing_the_handler_writes_the_counts_and_stops_the_timer() -> None:
    clock, timers = FakeClock(), FakeTimers()
    logger, stream = _handler(clock, timers)
    for _ in range(4):
        logger.debug("connection opened by uid %s (pid %s)", 1000, 7)
    handler = logger.handlers[0]
    assert isinstance(handler, BudgetedHandler)
    handler.flush_repeats()
    assert stream.getvalue().splitlines()[-1] == (
        "DEBUG connection opened by uid 1000 (pid 7) [repeated 1 more time within 10 s]"
    )
    assert timers.pending == [] and timers.cancelled == 1
    handler.flush_repeats()
    assert len(stream.getvalue().splitlines()) == 4


# --- the audit log -------------------------------------------------------------------------


def _refusal(op: str = "invalid", uid: int = 1000) -> AuditEvent:
    return AuditEvent(ts=1.0, op=op, outcome="INVALID_REQUEST", peer_uid=uid, peer_pid=4)


def _served(n: int) -> AuditEvent:
    return AuditEvent(ts=1.0, op="get_api_key", outcome="ok", key=f"k{n}", peer_uid=1000)


def _events(text: str) -> list[dict[str, object]]:
    return [json.loads(line.removeprefix("audit ")) for line in text.splitlines()]


def test_refusals_past_the_budget_are_counted_and_served_requests_always_written() -> None:
    clock, stream = FakeClock(), io.StringIO()
    audit = AuditLog(stream, budget=BUDGET, clock=clock)
    for n in range(50):
        audit.record(_refusal())
        audit.record(_served(n))
    events = _events(stream.getvalue())
    assert [e["op"] for e in events].count("invalid") == 3
    assert [e["key"] for e in events if e["op"] == "get_api_key"] == [f"k{n}" for n in range(50)]
    audit.close()
    summary = _events(stream.getvalue())[-1]
    assert summary == {
        "ts": summary["ts"],
        "op": "invalid",
        "outcome": "INVALID_REQUEST",
        "peer_uid": 1000,
        "repeated": 47,
        "within_s": 10.0,
    }


def test_refusals_are_counted_per_op_outcome_uid_and_grant() -> None:
    clock, stream = FakeClock(), io.StringIO()
    audit = AuditLog(stream, budget=BUDGET, clock=clock)
    for _ in range(5):
        audit.record(_refusal("invalid", 1000))
        audit.record(_refusal("invalid", 1001))
        audit.record(_refusal("unknown", 1000))
    clock.now += 10.0
    audit.record(_refusal("invalid", 1000))
    counts = {
        (e["op"], e["peer_uid"]): e["repeated"]
        for e in _events(stream.getvalue())
        if "repeated" in e
    }
    assert counts == {("invalid", 1000): 2, ("invalid", 1001): 2, ("unknown", 1000): 2}


def test_only_refusals_of_what_a_peer_sent_may_be_summarised() -> None:
    def event(op: str, outcome: str) -> AuditEvent:
        return AuditEvent(ts=1.0, op=op, outcome=outcome)

    for op, outcome in [
        ("invalid", "TIMEOUT"),
        ("handshake", "UNAUTHORIZED"),
        ("handshake", "UNKNOWN_VERSION"),
        ("get_token", "UNAUTHORIZED"),
        ("get_token", "RATE_LIMITED"),
        ("connect", "RESOURCE_EXHAUSTED"),
    ]:
        assert summarised(event(op, outcome)), (op, outcome)
    for op, outcome in [
        ("handshake", "ok"),
        ("get_token", "ok"),
        ("get_token", "NOT_FOUND"),
        ("get_token", "INTERNAL_ERROR"),
        ("refresh_token", "REAUTH_REQUIRED"),
        ("oauth_exchange", "EXCHANGE_FAILED"),
        ("get_token", "TIMEOUT"),
        ("audit", "BEHIND"),
    ]:
        assert not summarised(event(op, outcome)), (op, outcome)


async def test_the_count_reaches_the_audit_file_when_the_window_ends(tmp_path: Path) -> None:
    """With a real clock and a short window: the loop's timer writes the count
    without any further record (no bound on how soon: only that it comes)."""
    path = tmp_path / "audit.log"
    audit = AuditLog.to_file(path, budget=LogBudget(burst=2, interval_s=0.05))
    try:
        for _ in range(7):
            audit.record(_refusal())
        for _ in range(600):
            await asyncio.sleep(0.05)
            audit.flush()
            if '"repeated"' in path.read_text():
                break
        events = _events(path.read_text())
        assert [e.get("repeated") for e in events] == [None, None, 5]
    finally:
        audit.close()
    assert len(_events(path.read_text())) == 3
