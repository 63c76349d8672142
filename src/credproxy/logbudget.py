"""The budget for the daemon's log and audit volume under attack.

A hostile peer can make the daemon repeat one line as fast as it can connect
or send frames; unbounded, that fills the disk or buries the lines an
operator needs. ``RepeatLimiter`` lets the first ``burst`` records of one kind
through per window of ``interval_s`` seconds and counts the rest. When the
window has ended (noticed at the next record of any kind, or by the caller's
timer at ``next_due``) or the owner closes, each count comes back as one
``Repeats``, which the owner writes as one summary line: a record is never
dropped silently, the summary with its count stands for the ones not written.

The budget is defined here once (``LogBudget``, ``DEFAULT_LOG_BUDGET``); the
daemon's log handler (``BudgetedHandler``) and the audit log
(``credproxy.audit.AuditLog``) both take it. The clock is injected so tests
decide when windows end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import IO, Final, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
S = TypeVar("S")

Clock = Callable[[], float]
Schedule = Callable[[float, Callable[[], None]], Callable[[], None]]
"""``schedule(delay_s, callback)`` runs ``callback`` once after ``delay_s``; it
returns a function that cancels it."""


@dataclass(frozen=True, slots=True)
class LogBudget:
    """How many records of one kind are written per window; the rest are counted."""

    burst: int = 20
    interval_s: float = 10.0
    max_kinds: int = 1024
    """Kinds tracked at once; past this every open window is summarised and the
    tracking starts over, so a peer cannot grow the table without bound."""

    def __post_init__(self) -> None:
        if self.burst < 1 or self.interval_s <= 0 or self.max_kinds < 1:
            raise ValueError("a log budget needs burst >= 1, interval_s > 0 and max_kinds >= 1")


DEFAULT_LOG_BUDGET: Final = LogBudget()


@dataclass(frozen=True, slots=True)
class Repeats(Generic[K, S]):
    """Records of ``kind`` not written in one window: ``count`` of them, the last
    being ``sample``, within ``interval_s`` of the window's first record."""

    kind: K
    count: int
    sample: S
    interval_s: float


class _Window(Generic[S]):
    __slots__ = ("sample", "start", "suppressed", "written")

    def __init__(self, start: float) -> None:
        self.start = start
        self.written = 0
        self.suppressed = 0
        self.sample: S | None = None


class RepeatLimiter(Generic[K, S]):
    """Per kind: ``burst`` records per window written, the rest counted. Not
    thread-safe; owners that are called from several threads hold a lock."""

    def __init__(self, budget: LogBudget = DEFAULT_LOG_BUDGET, clock: Clock = time.monotonic):
        self.budget = budget
        self._clock = clock
        self._windows: dict[K, _Window[S]] = {}
        self._next_end = float("inf")
        """The earliest end of a window; nothing has expired before it."""

    def admit(self, kind: K, sample: S) -> tuple[bool, list[Repeats[K, S]]]:
        """Whether to write this record, and the counts of ended windows, to be
        written first (a kind's count always precedes its next window's records)."""
        now = self._clock()
        due = self._expire(now) if now >= self._next_end else []
        window = self._windows.get(kind)
        if window is None:
            if len(self._windows) >= self.budget.max_kinds:
                due.extend(self.drain())
            window = self._windows[kind] = _Window(now)
            self._next_end = min(self._next_end, now + self.budget.interval_s)
        if window.written < self.budget.burst:
            window.written += 1
            return True, due
        window.suppressed += 1
        window.sample = sample
        return False, due

    def due(self) -> list[Repeats[K, S]]:
        """Counts of windows that have ended by now (for the owner's timer)."""
        now = self._clock()
        return self._expire(now) if now >= self._next_end else []

    def next_due(self) -> float | None:
        """When the earliest window holding a count ends, on the limiter's clock."""
        ends = [w.start + self.budget.interval_s for w in self._windows.values() if w.suppressed]
        return min(ends) if ends else None

    def drain(self) -> list[Repeats[K, S]]:
        """Every count not yet returned, windows ended or not (on close)."""
        out = [self._repeats(kind, w) for kind, w in self._windows.items() if w.suppressed]
        self._windows.clear()
        self._next_end = float("inf")
        return out

    def _expire(self, now: float) -> list[Repeats[K, S]]:
        interval = self.budget.interval_s
        out: list[Repeats[K, S]] = []
        next_end = float("inf")
        for kind, window in list(self._windows.items()):
            end = window.start + interval
            if end <= now:
                del self._windows[kind]
                if window.suppressed:
                    out.append(self._repeats(kind, window))
            else:
                next_end = min(next_end, end)
        self._next_end = next_end
        return out

    def _repeats(self, kind: K, window: _Window[S]) -> Repeats[K, S]:
        assert window.sample is not None
        return Repeats(kind, window.suppressed, window.sample, self.budget.interval_s)


def thread_timer(delay_s: float, callback: Callable[[], None]) -> Callable[[], None]:
    """``Schedule`` on a daemon thread: log records come from the event loop and
    from the audit writer thread alike, so the log handler cannot rely on a loop."""
    timer = threading.Timer(max(0.0, delay_s), callback)
    timer.daemon = True
    timer.start()
    return timer.cancel


LogKind = tuple[str, int, str]


class BudgetedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes at most ``budget.burst`` records of one kind
    (logger, level and message template) per window, then one line with the
    count: ``... [repeated 1,234 more times within 10 s]``."""

    def __init__(
        self,
        stream: IO[str],
        budget: LogBudget = DEFAULT_LOG_BUDGET,
        *,
        clock: Clock = time.monotonic,
        schedule: Schedule = thread_timer,
    ) -> None:
        super().__init__(stream)
        self._limiter: RepeatLimiter[LogKind, logging.LogRecord] = RepeatLimiter(budget, clock)
        self._clock = clock
        self._schedule = schedule
        self._budget_lock = threading.Lock()
        self._cancel_timer: Callable[[], None] | None = None

    def handle(self, record: logging.LogRecord) -> bool:
        # The kind is taken before the filters run: the scrubber replaces
        # ``msg`` with the formatted text, which differs record by record.
        kind = (record.name, record.levelno, str(record.msg))
        with self._budget_lock:
            write, due = self._limiter.admit(kind, record)
            if not write:
                self._arm_timer()
        self._write_repeats(due)
        if write:
            return bool(super().handle(record))
        return False

    def flush_repeats(self) -> None:
        """Write every count now (the daemon is stopping)."""
        with self._budget_lock:
            due = self._limiter.drain()
            if self._cancel_timer is not None:
                self._cancel_timer()
                self._cancel_timer = None
        self._write_repeats(due)

    def close(self) -> None:
        self.flush_repeats()
        super().close()

    def _arm_timer(self) -> None:
        if self._cancel_timer is not None:
            return
        at = self._limiter.next_due()
        if at is not None:
            self._cancel_timer = self._schedule(at - self._clock(), self._on_timer)

    def _on_timer(self) -> None:
        with self._budget_lock:
            self._cancel_timer = None
            due = self._limiter.due()
            self._arm_timer()
        self._write_repeats(due)

    def _write_repeats(self, due: list[Repeats[LogKind, logging.LogRecord]]) -> None:
        for repeats in due:
            sample = repeats.sample
            try:
                text = sample.getMessage()
            except (TypeError, ValueError):
                text = str(sample.msg)
            summary = logging.LogRecord(
                sample.name,
                sample.levelno,
                sample.pathname,
                sample.lineno,
                "%s [repeated %s more %s within %s s]",
                (
                    text,
                    f"{repeats.count:,}",
                    "time" if repeats.count == 1 else "times",
                    f"{repeats.interval_s:g}",
                ),
                None,
            )
            super().handle(summary)
