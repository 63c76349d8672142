"""Replacing every form of a secret in a byte stream with the same form of its stand-in.

The forms are the raw text, percent-encoding (``quote`` and ``quote_plus``,
upper- and lower-case hex), JSON string escaping (with and without ``\\/``, once
and twice, as in a JSON document quoted inside another),
and base64 (standard and URL-safe alphabets): the whole encoding, and the
part of the encoding that depends only on the secret at each of the three
byte alignments it can have inside longer base64 data. A stream is scrubbed
chunk by chunk; only a tail that could still grow into a match is held back,
so a server-sent event ending in a newline is passed on at once.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import quote, quote_plus

_B64_ALPHABETS: Final = (base64.b64encode, base64.urlsafe_b64encode)
MIN_CORE: Final = 8
"""A base64 core shorter than this would match innocent data too often."""


def _base64_cores(value: bytes) -> list[bytes]:
    """For each alignment, the base64 characters fixed by ``value`` alone."""
    cores: list[bytes] = []
    for encode in _B64_ALPHABETS:
        cores.append(encode(value))
        for lead in range(3):
            encoded = encode(b"\0" * lead + value + b"\0\0")
            start = -(-lead * 8 // 6)  # first char whose bits all lie in value
            end = (lead + len(value)) * 8 // 6  # one past the last such char
            cores.append(encoded[start:end])
    return cores


def secret_forms(secret: str, extra_plain: Iterable[str] = ()) -> list[bytes]:
    """Every form of ``secret`` we replace, in a fixed order (so a stand-in's line up)."""
    forms: list[bytes] = []
    for text in (secret, *extra_plain):
        raw = text.encode()
        forms.append(raw)
        forms.append(quote(text, safe="").encode())
        forms.append(quote(text, safe="").lower().encode())
        forms.append(quote_plus(text, safe="").encode())
        escaped = json.dumps(text)[1:-1]
        slashed = escaped.replace("/", "\\/")
        for once in (escaped, slashed):
            forms.append(once.encode())
            forms.append(json.dumps(once)[1:-1].encode())
        forms.extend(_base64_cores(raw))
    return forms


class ScrubRules:
    """The replacement table for one secret and its stand-in."""

    def __init__(self, secret: str, stand_in: str, extra: Iterable[tuple[str, str]] = ()) -> None:
        pairs = list(extra)
        found = secret_forms(secret, [s for s, _ in pairs])
        replaced = secret_forms(stand_in, [r for _, r in pairs])
        table: dict[bytes, bytes] = {}
        for form, replacement in zip(found, replaced, strict=True):
            if len(form) >= MIN_CORE or form == secret.encode():
                table.setdefault(form, replacement)
        self.table = table
        ordered = sorted(table, key=len, reverse=True)
        self.pattern = re.compile(b"|".join(re.escape(f) for f in ordered))
        self.longest = len(ordered[0])
        self.prefixes = frozenset(f[:i] for f in ordered for i in range(1, len(f)))
        self.first_bytes = frozenset(f[0] for f in ordered)

    def replace_all(self, data: bytes) -> bytes:
        return self.pattern.sub(lambda m: self.table[m.group(0)], data)

    def replace_text(self, text: str) -> str:
        return self.replace_all(text.encode("utf-8", "surrogateescape")).decode(
            "utf-8", "surrogateescape"
        )


class StreamScrubber:
    """Feeds chunks through ``ScrubRules``; a match split across chunks is still found."""

    def __init__(self, rules: ScrubRules) -> None:
        self._rules = rules
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        rules = self._rules
        data = self._held + chunk if self._held else chunk
        out: list[bytes] = []
        position = 0
        cut = len(data)
        for match in rules.pattern.finditer(data):
            if (
                len(data) - match.start() < rules.longest
                and data[match.start() :] in rules.prefixes
            ):
                # A longer form may still complete this match in the next chunk.
                cut = match.start()
                break
            out.append(data[position : match.start()])
            out.append(rules.table[match.group(0)])
            position = match.end()
        else:
            for start in range(max(position, len(data) - rules.longest + 1), len(data)):
                if data[start] in rules.first_bytes and data[start:] in rules.prefixes:
                    cut = start
                    break
        out.append(data[position:cut])
        self._held = data[cut:]
        return b"".join(out)

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held
