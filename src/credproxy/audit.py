"""Audit trail and log hygiene: the one place where redaction is enforced.

An audit line is built only through ``AuditEvent.build``, which accepts an
allowlist of fields and keeps a value only when it has the shape of a name
(provider, bucket, key, op, error code). A secret cannot reach the audit log
by accident because nothing secret-shaped passes that gate: a value that is
too long for a real name or matches a credential pattern is recorded as
``<redacted>``, and an op is recorded only if it is one the protocol
defines. The daemon's own log records go through ``SecretScrubber``, which
rewrites anything that looks like a credential before it is formatted.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Final

from credproxy.protocol.messages import OPERATIONS

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9._@-]{1,64}\Z")
_GRANT_RE: Final = re.compile(r"^[A-Za-z0-9._@:,*=+\[\] -]{1,1024}\Z")
_REDACTED: Final = "<redacted>"

MAX_AUDIT_NAME: Final = 32
KNOWN_OPS: Final = frozenset({*OPERATIONS, "handshake", "connect", "invalid"})


def _name(value: object) -> str | None:
    """A name as the peer sent it, unless it could be a credential sent in its place.

    Names come from the peer, and a confused or hostile peer may put a token
    or key where a name goes. Real provider, bucket and key names are short
    and plain, so anything longer than ``MAX_AUDIT_NAME`` or shaped like a
    credential is recorded as ``<redacted>``.
    """
    if value is None:
        return None
    if (
        isinstance(value, str)
        and len(value) <= MAX_AUDIT_NAME
        and _NAME_RE.match(value)
        and scrub(value) == value
    ):
        return value
    return _REDACTED


def _op(value: object) -> str | None:
    """Ops are recorded only when they are ones we know; anything else is ``unknown``."""
    if value is None:
        return None
    return value if isinstance(value, str) and value in KNOWN_OPS else "unknown"


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One line of the audit log. Construct it with ``build``."""

    ts: float
    op: str | None
    outcome: str | None
    provider: str | None
    bucket: str | None
    key: str | None
    flow_type: str | None
    peer_uid: int | None
    peer_pid: int | None
    grant: str | None
    duration_ms: float | None

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
        fields = dict(names or {})
        grant_text: str | None = None
        if grant is not None:
            grant_text = grant if isinstance(grant, str) and _GRANT_RE.match(grant) else _REDACTED
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
            grant=grant_text,
            duration_ms=None if duration_ms is None else round(float(duration_ms), 3),
        )

    def to_json(self) -> str:
        """Fields are flat scalars, so read them directly: ``asdict`` deep-copies
        each one and cost a fifth of the daemon's CPU per request."""
        present = {}
        for name in _EVENT_FIELDS:
            value = getattr(self, name)
            if value is not None:
                present[name] = value
        return json.dumps(present, separators=(",", ":"))


_EVENT_FIELDS: Final = tuple(f.name for f in fields(AuditEvent))


class AuditLogError(Exception):
    """The audit log cannot be opened; the message names the path and the reason."""


class AuditLog:
    """Writes one JSON line per event to a stream or an append-only 0600 file."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._owned = False

    @classmethod
    def to_stderr(cls) -> AuditLog:
        return cls(sys.stderr)

    @classmethod
    def to_file(cls, path: Path) -> AuditLog:
        """Open ``path`` for appending, created 0600; an existing file must be ours."""
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
            stream = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
        except BaseException:
            os.close(fd)
            raise
        log = cls(stream)
        log._owned = True
        return log

    def record(self, event: AuditEvent) -> None:
        try:
            self._stream.write("audit " + event.to_json() + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            logging.getLogger("credproxy.audit").error("cannot write the audit log")

    def close(self) -> None:
        if self._owned:
            self._stream.close()


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


def configure_daemon_logging(level: int = logging.INFO) -> logging.Handler:
    """Send the ``credproxy`` loggers to stderr through the scrubber."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(SecretScrubber())
    handler.setFormatter(logging.Formatter("credproxy: %(levelname)s %(message)s"))
    logger = logging.getLogger("credproxy")
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler
