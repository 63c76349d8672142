"""Audit trail and log hygiene: the one place where redaction is enforced.

An audit line is an ``AuditEvent`` (a msgspec struct) built from typed,
already validated fields: the op comes from the op table, names passed the
protocol's name schema. A name that is valid but shaped like a credential (a
token pasted where a provider name goes) is still recorded as
``<redacted>``; that verdict is computed once per distinct name and
remembered, so the common case costs a dict lookup. Free text never enters an
audit line; the daemon's own log records go through ``SecretScrubber``, the one
redaction point for text.

Lines are written by ``AuditLog``: the event loop appends encoded lines to a
batch, hands the batch to a writer thread every few milliseconds (or sooner
when it is large), and never waits for the disk. When the disk cannot keep up and the backlog passes
``max_backlog_bytes``, the log says so (``accepting`` turns false) and the
daemon refuses new operations until the writer catches up, rather than serve
requests it cannot record; the refusals are counted and written as one line
when it does. Files rotate by size (``max_bytes``), keeping ``keep`` old files
(``audit.log.1`` the newest); a batch is never split across files, so nothing
is lost at rotation.

Refusals of what a peer sent (``summarised``) are held to the budget of
``credproxy.logbudget``: past it, lines of one op, outcome, peer uid and
grant are counted and written as one line with ``repeated``, so a hostile
peer cannot grow the log by the number of its attempts. Every admitted
handshake and every served request is written whole.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import re
import stat
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Final

import msgspec

from credproxy.logbudget import (
    DEFAULT_LOG_BUDGET,
    BudgetedHandler,
    LogBudget,
    RepeatLimiter,
    Repeats,
)
from credproxy.protocol.messages import ALL_OPS
from credproxy.protocol.ops import NAME_RE

_GRANT_RE: Final = re.compile(r"^[A-Za-z0-9._@:,*=+\[\] -]{1,1024}\Z")
_REDACTED: Final = "<redacted>"

MAX_AUDIT_NAME: Final = 32
KNOWN_OPS: Final = frozenset({*(op.name for op in ALL_OPS), "connect", "invalid", "audit"})
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
DEFAULT_KEEP: Final = 5
DEFAULT_MAX_BACKLOG: Final = 16 * 1024 * 1024
_NAME_CACHE_SIZE: Final = 4096
HAND_OVER_DELAY_S: Final = 0.005
"""Lines wait this long in the loop's batch, so one wake-up of the writer
thread carries many of them even when requests come one at a time."""
HAND_OVER_LINES: Final = 1024

_verdicts: dict[str, str] = {}


def _judge(value: str) -> str:
    if len(value) <= MAX_AUDIT_NAME and NAME_RE.match(value) and scrub(value) == value:
        return value
    return _REDACTED


def safe_name(value: str) -> str:
    """``value`` if it is safe to record as a name, else ``<redacted>``.

    Names come from the peer, and a confused or hostile peer may put a token
    or key where a name goes. Real names are short and plain, so anything
    longer than ``MAX_AUDIT_NAME`` or shaped like a credential is redacted.
    """
    verdict = _verdicts.get(value)
    if verdict is None:
        verdict = _judge(value)
        if len(_verdicts) >= _NAME_CACHE_SIZE:
            _verdicts.clear()
        _verdicts[value] = verdict
    return verdict


def _name(value: object) -> str | None:
    if value is None:
        return None
    return safe_name(value) if isinstance(value, str) else _REDACTED


def _op(value: object) -> str | None:
    """Ops are recorded only when they are ones we know; anything else is ``unknown``."""
    if value is None:
        return None
    return value if isinstance(value, str) and value in KNOWN_OPS else "unknown"


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def safe_grant(grant: object) -> str | None:
    if grant is None:
        return None
    return grant if isinstance(grant, str) and _GRANT_RE.match(grant) else _REDACTED


class AuditEvent(msgspec.Struct, frozen=True, omit_defaults=True):
    """One line of the audit log. From untrusted values, construct it with ``build``."""

    ts: float
    op: str | None = None
    outcome: str | None = None
    provider: str | None = None
    bucket: str | None = None
    key: str | None = None
    flow_type: str | None = None
    peer_uid: int | None = None
    peer_pid: int | None = None
    grant: str | None = None
    duration_ms: float | None = None
    refused: int | None = None
    """On an ``audit`` line: operations refused while the writer was behind."""
    repeated: int | None = None
    """On a summary line: this many more lines like it (same op, outcome, peer
    uid and grant) within ``within_s`` seconds were not written one by one."""
    within_s: float | None = None

    @classmethod
    def build(
        cls,
        *,
        op: object,
        outcome: object,
        names: Mapping[str, object] | None = None,
        peer_uid: object = None,
        peer_pid: object = None,
        grant: object = None,
        duration_ms: float | None = None,
        ts: float | None = None,
    ) -> AuditEvent:
        """Keep only allowlisted fields with name-shaped values; anything else
        becomes ``<redacted>`` (present but unsafe) or is dropped (not allowed)."""
        fields = names or {}
        return cls(
            ts=round(time.time() if ts is None else ts, 3),
            op=_op(op),
            outcome=_name(outcome),
            provider=_name(fields.get("provider")),
            bucket=_name(fields.get("bucket")),
            key=_name(fields.get("key")),
            flow_type=_name(fields.get("flow_type")),
            peer_uid=_int(peer_uid),
            peer_pid=_int(peer_pid),
            grant=safe_grant(grant),
            duration_ms=None if duration_ms is None else round(float(duration_ms), 3),
        )

    def to_json(self) -> str:
        return _encoder.encode(self).decode("utf-8")


_encoder: Final = msgspec.json.Encoder()
_PREFIX: Final = b"audit "

MAX_AUDIT_PATH: Final = 256
_PATH_RE: Final = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@/%-]*\Z")
_METHOD_RE: Final = re.compile(r"^[A-Z]{1,16}\Z")


class ProxyRequestEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One request through the injection proxy. Built with ``build``: the path is
    kept only when it is plain and short and holds nothing credential-shaped, and
    of the query only the parameter names are kept, never a value or a body."""

    ts: float
    op: str
    route: str | None = None
    method: str | None = None
    path: str | None = None
    query_names: tuple[str, ...] = ()
    status: int | None = None
    bytes_in: int
    bytes_out: int
    duration_ms: float
    peer: str | None = None
    outcome: str | None = None

    @classmethod
    def build(
        cls,
        *,
        route: object,
        method: object,
        path: object,
        query_names: tuple[str, ...],
        status: int | None,
        bytes_in: int,
        bytes_out: int,
        duration_ms: float,
        peer: str | None,
        outcome: object = None,
    ) -> ProxyRequestEvent:
        safe_path: str | None = None
        if isinstance(path, str):
            safe_path = (
                path
                if len(path) <= MAX_AUDIT_PATH and _PATH_RE.match(path) and scrub(path) == path
                else _REDACTED
            )
        names = tuple(n if NAME_RE.match(n) and scrub(n) == n else _REDACTED for n in query_names)
        return cls(
            ts=round(time.time(), 3),
            op="http_proxy",
            route=_name(route),
            method=method if isinstance(method, str) and _METHOD_RE.match(method) else _REDACTED,
            path=safe_path,
            query_names=names[:32],
            status=status,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            duration_ms=round(duration_ms, 3),
            peer=peer if peer is None or _GRANT_RE.match(peer) else _REDACTED,
            outcome=_name(outcome),
        )

    def to_json(self) -> str:
        return _encoder.encode(self).decode("utf-8")


class AuditLogError(Exception):
    """The audit log cannot be opened; the message names the path and the reason."""


class _Rotation(msgspec.Struct, frozen=True):
    max_bytes: int
    keep: int


class AuditLog:
    """One JSON line per event, prefixed ``audit ``.

    ``AuditLog(stream)`` writes synchronously to a text stream (embedding,
    tests); ``to_file`` and ``to_stderr`` write through the background writer.
    """

    def __init__(
        self,
        stream: IO[str],
        *,
        budget: LogBudget = DEFAULT_LOG_BUDGET,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream: IO[str] | None = stream
        self._writer: _Writer | None = None
        self._batch: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._refused = 0
        self._init_budget(budget, clock)

    @classmethod
    def to_stderr(
        cls, *, budget: LogBudget = DEFAULT_LOG_BUDGET, clock: Callable[[], float] = time.monotonic
    ) -> AuditLog:
        log = cls.__new__(cls)
        log._init_writer(_Writer(None, sys.stderr.fileno(), None, DEFAULT_MAX_BACKLOG))
        log._init_budget(budget, clock)
        return log

    @classmethod
    def to_file(
        cls,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: int = DEFAULT_KEEP,
        max_backlog_bytes: int = DEFAULT_MAX_BACKLOG,
        budget: LogBudget = DEFAULT_LOG_BUDGET,
        clock: Callable[[], float] = time.monotonic,
    ) -> AuditLog:
        """Append to ``path`` (created 0600; an existing file must be ours),
        rotating past ``max_bytes`` and keeping ``keep`` old files (0 keeps none:
        the file is cut back to empty, the only mode in which lines are dropped
        on purpose, so it is refused)."""
        if keep < 1:
            raise AuditLogError("the audit log must keep at least one rotated file")
        fd = _open_owned(path)
        log = cls.__new__(cls)
        log._init_writer(_Writer(path, fd, _Rotation(max_bytes, keep), max_backlog_bytes))
        log._init_budget(budget, clock)
        return log

    def _init_writer(self, writer: _Writer) -> None:
        self._stream = None
        self._writer = writer
        self._batch = []
        self._loop = None
        self._refused = 0

    def _init_budget(self, budget: LogBudget, clock: Callable[[], float]) -> None:
        self._repeats: RepeatLimiter[_RefusalKind, AuditEvent] = RepeatLimiter(budget, clock)
        self._clock = clock
        self._repeats_timer: asyncio.TimerHandle | None = None

    @property
    def accepting(self) -> bool:
        """False while the writer is more than its backlog bound behind."""
        writer = self._writer
        return writer is None or writer.backlog < writer.max_backlog

    def refused(self) -> None:
        """Count one operation refused because the log was behind."""
        self._refused += 1

    def record(self, event: AuditEvent | ProxyRequestEvent) -> None:
        """Write ``event``; a refusal of what a peer sent past the budget for its
        kind is counted instead, and the count written as one line later."""
        if isinstance(event, AuditEvent) and summarised(event):
            kind = (event.op, event.outcome, event.peer_uid, event.grant)
            write, due = self._repeats.admit(kind, event)
            for repeats in due:
                self._append(_summary_line(repeats))
            if not write:
                self._arm_repeats_timer()
                return
        self._append(_PREFIX + _encoder.encode(event) + b"\n")

    def _arm_repeats_timer(self) -> None:
        """Counts are written when their window ends even if the peer went quiet."""
        if self._repeats_timer is not None:
            return
        at = self._repeats.next_due()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: the count waits for the next line or ``close``
        if at is not None:
            self._repeats_timer = loop.call_later(at - self._clock(), self._write_due_repeats)

    def _write_due_repeats(self) -> None:
        self._repeats_timer = None
        for repeats in self._repeats.due():
            self._append(_summary_line(repeats))
        self._arm_repeats_timer()

    def _write_all_repeats(self) -> None:
        if self._repeats_timer is not None:
            self._repeats_timer.cancel()
            self._repeats_timer = None
        for repeats in self._repeats.drain():
            self._append(_summary_line(repeats))

    def _append(self, line: bytes) -> None:
        if self._writer is None:
            self._write_stream(line)
            return
        batch = self._batch
        batch.append(line)
        if len(batch) == 1:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._hand_over()
                return
            loop.call_later(HAND_OVER_DELAY_S, self._hand_over)
        elif len(batch) >= HAND_OVER_LINES:
            self._hand_over()

    def _write_stream(self, line: bytes) -> None:
        assert self._stream is not None
        try:
            self._stream.write(line.decode("utf-8"))
            self._stream.flush()
        except (OSError, ValueError):
            logging.getLogger("credproxy.audit").error("cannot write the audit log")

    def _hand_over(self) -> None:
        """The batch goes to the writer in one piece (every few milliseconds)."""
        writer = self._writer
        if writer is None or not self._batch:
            return
        if self._refused and self.accepting:
            note = AuditEvent(ts=round(time.time(), 3), op="audit", outcome="BEHIND")
            note = msgspec.structs.replace(note, refused=self._refused)
            self._batch.append(_PREFIX + _encoder.encode(note) + b"\n")
            self._refused = 0
        data = b"".join(self._batch)
        self._batch.clear()
        writer.submit(data)

    def flush(self) -> None:
        """Block until every line recorded so far is in the file (tests, shutdown)."""
        if self._writer is not None:
            self._hand_over()
            self._writer.drain()

    def close(self) -> None:
        """Write what is queued and every count of lines not written one by one,
        then close the file (not stderr or a caller's stream)."""
        self._write_all_repeats()
        if self._writer is not None:
            self._hand_over()
            self._writer.close()


SUMMARISED_OUTCOMES: Final = frozenset(
    {"INVALID_REQUEST", "UNKNOWN_VERSION", "UNAUTHORIZED", "RATE_LIMITED", "RESOURCE_EXHAUSTED"}
)
"""Refusals of what a peer sent, before any credential was read or written:
past the budget, lines of one (op, outcome, peer uid, grant) are counted."""

_RefusalKind = tuple[str | None, str | None, int | None, str | None]


def summarised(event: AuditEvent) -> bool:
    """Whether ``event`` may be counted instead of written past the budget: a
    refusal, or a connection closed for what it sent (op ``invalid``). Served
    requests (``ok``, ``NOT_FOUND``, failures of the host) are always written."""
    return event.outcome in SUMMARISED_OUTCOMES or event.op == "invalid"


def _summary_line(repeats: Repeats[_RefusalKind, AuditEvent]) -> bytes:
    op, outcome, peer_uid, grant = repeats.kind
    event = AuditEvent(
        ts=round(time.time(), 3),
        op=op,
        outcome=outcome,
        peer_uid=peer_uid,
        grant=grant,
        repeated=repeats.count,
        within_s=repeats.interval_s,
    )
    return _PREFIX + _encoder.encode(event) + b"\n"


def _open_owned(path: Path) -> int:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise AuditLogError(
            f"cannot open audit log {path}: {exc.strerror} (a symlink is refused)"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            raise AuditLogError(f"audit log {path} must be a regular file owned by us")
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Writer:
    """The thread that owns the audit file: writes batches, rotates by size."""

    def __init__(
        self, path: Path | None, fd: int, rotation: _Rotation | None, max_backlog: int
    ) -> None:
        self._path = path
        self._fd = fd
        self._owned = path is not None
        self._rotation = rotation
        self.max_backlog = max_backlog
        self._size = os.fstat(fd).st_size if path is not None else 0
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.backlog = 0
        self._failed = False
        self._thread = threading.Thread(target=self._run, name="credproxy-audit", daemon=True)
        self._thread.start()

    def submit(self, data: bytes) -> None:
        with self._lock:
            self.backlog += len(data)
        self._queue.put(data)

    def drain(self) -> None:
        while self._thread.is_alive():
            with self._lock:
                if self.backlog == 0:
                    return
            time.sleep(0.001)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._owned:
            os.close(self._fd)
            self._owned = False

    def _run(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            self._write(data)
            with self._lock:
                self.backlog -= len(data)

    def _write(self, data: bytes) -> None:
        rotation = self._rotation
        if rotation is not None and self._size and self._size + len(data) > rotation.max_bytes:
            self._rotate(rotation)
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except InterruptedError:
                continue
            except OSError as exc:
                # The writer cannot drop lines quietly; it keeps the daemon's
                # log informed and retries, holding the backlog, which makes the
                # daemon refuse new operations until the disk takes lines again.
                if not self._failed:
                    logging.getLogger("credproxy.audit").error(
                        "cannot write the audit log: %s; retrying", exc.strerror
                    )
                    self._failed = True
                time.sleep(0.5)
                continue
            view = view[written:]
            self._size += written
        self._failed = False

    def _rotate(self, rotation: _Rotation) -> None:
        """audit.log -> audit.log.1 -> ... -> audit.log.KEEP; the oldest goes."""
        path = self._path
        assert path is not None
        try:
            for index in range(rotation.keep - 1, 0, -1):
                older = path.with_name(f"{path.name}.{index}")
                if older.exists():
                    os.replace(older, path.with_name(f"{path.name}.{index + 1}"))
            os.replace(path, path.with_name(f"{path.name}.1"))
            fd = _open_owned(path)
        except (OSError, AuditLogError) as exc:
            logging.getLogger("credproxy.audit").error(
                "cannot rotate the audit log: %s; appending to the current file", exc
            )
            return
        os.close(self._fd)
        self._fd = fd
        self._size = 0


_SECRET_PATTERNS: Final[tuple[re.Pattern[str], ...]] = (
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"),
    re.compile(
        r"(?i)([\"']?(?:access_token|refresh_token|id_token|client_secret|code_verifier"
        r"|device_code|capabilityToken|api_key|key|password|secret|code)[\"']?\s*[:=]\s*)"
        r"(\"[^\"]*\"|'[^']*'|[^\s,}&]+)"
    ),
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*)?"),
    re.compile(r"\b[0-9a-fA-F]{32,}\b"),
    re.compile(r"\b(?:sk|pk|rk|ghp|gho|ghs|xox[abp])[-_][A-Za-z0-9_-]{8,}"),
    re.compile(r"[A-Za-z0-9+/_-]{40,}={0,2}"),
)


def scrub(text: str) -> str:
    """Replace anything shaped like a credential; over-redaction is the safe error."""
    for pattern in _SECRET_PATTERNS:
        if pattern.groups >= 2:
            text = pattern.sub(lambda m: m.group(1) + _REDACTED, text)
        else:
            text = pattern.sub(_REDACTED, text)
    return text


class SecretScrubber(logging.Filter):
    """Formats each record once, scrubs the result, and drops exception text
    (exception messages may quote a secret; the type name is kept)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and record.exc_info[0] is not None:
            message += f" ({record.exc_info[0].__name__})"
        record.msg = scrub(message)
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


def configure_daemon_logging(
    level: int = logging.INFO, budget: LogBudget = DEFAULT_LOG_BUDGET
) -> BudgetedHandler:
    """Send the ``credproxy`` loggers to stderr through the scrubber, with repeats
    of one kind beyond ``budget`` counted instead of written."""
    handler = BudgetedHandler(sys.stderr, budget)
    handler.addFilter(SecretScrubber())
    handler.setFormatter(logging.Formatter("credproxy: %(levelname)s %(message)s"))
    logger = logging.getLogger("credproxy")
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler
