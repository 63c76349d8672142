"""Stand-ins: what the sandbox holds instead of a credential.

A stand-in keeps the real credential's prefix (``sk-ant-api03-``, ``ghp_``)
and length, and draws the rest from the same kind of alphabet, so an SDK
that checks the shape accepts it; it carries at least 256 random bits, so
when the real credential is too short for that the stand-in is longer. A new
one is made for every ``run``; none ends in a newline.
"""

from __future__ import annotations

import math
import re
import secrets
import string
from typing import Final

STAND_IN_BITS: Final = 256
_PREFIX_RE: Final = re.compile(r"^(?:[A-Za-z0-9]{1,12}[-_]){1,4}")
_HEX: Final = "0123456789abcdef"
_ALNUM: Final = string.ascii_letters + string.digits
_URLSAFE: Final = _ALNUM + "-_"
_STANDARD: Final = _ALNUM + "+/"


class SecretFormatError(ValueError):
    """The stored secret cannot be put in an HTTP request as it is."""


def check_secret(secret: str, label: str) -> None:
    """Refuse a secret that could split a header or smuggle a second request."""
    if not secret:
        raise SecretFormatError(f"{label} is empty")
    if any(c in secret for c in "\r\n\0"):
        raise SecretFormatError(f"{label} contains a line break or NUL; store it again without one")
    if not secret.isascii() or not secret.isprintable():
        raise SecretFormatError(f"{label} contains characters that cannot go in a header")


def _alphabet(body: str) -> str:
    if body and all(c in _HEX for c in body.lower()):
        return _HEX if body == body.lower() else _HEX.upper()
    if any(c in "+/" for c in body):
        return _STANDARD
    if any(c in "-_" for c in body):
        return _URLSAFE
    return _ALNUM


def make_stand_in(secret: str, prefix: str | None = None) -> str:
    """A fresh stand-in shaped like ``secret``; ``prefix`` overrides the detected one."""
    if prefix is None:
        match = _PREFIX_RE.match(secret)
        prefix = match.group(0) if match and len(match.group(0)) < len(secret) else ""
    body = secret[len(prefix) :] if secret.startswith(prefix) else secret
    alphabet = _alphabet(body)
    needed = math.ceil(STAND_IN_BITS / math.log2(len(alphabet)))
    length = max(len(secret) - len(prefix), needed)
    stand_in = prefix + "".join(secrets.choice(alphabet) for _ in range(length))
    return stand_in
