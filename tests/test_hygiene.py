"""Source hygiene: unfinished-work markers never ship in src/."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
MARKERS = re.compile(
    r"\b(TODO|FIXME|HACK|STUB|XXX)\b|for now|placeholder|in a real|in production|ideally",
    re.IGNORECASE,
)


def _offending_lines() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if MARKERS.search(line):
                found.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    return found


def test_src_has_no_unfinished_work_markers() -> None:
    # A moved src/ would make the scan find nothing and pass vacuously.
    assert (SRC / "credproxy" / "tokens.py").is_file()
    assert _offending_lines() == []


def test_marker_pattern_catches_each_forbidden_word() -> None:
    for sample in (
        "# TODO x",
        "fixme",
        "a HACK",
        "Stub",
        "XXX",
        "For now we",
        "a placeholder",
        "in a real system",
        "in production",
        "ideally",
    ):
        assert MARKERS.search(sample), sample
