"""A short, deterministic run of the request-path fuzzer against a real daemon.

The same harness as ``benchmarks/fuzz.py`` (which runs the long campaign):
each input is one connection to a real ``credproxy serve`` on a file store
holding a token with a refresh token and a key, carrying a handshake and
frames built from the input bytes. No input may crash or hang the daemon,
draw ``INTERNAL_ERROR``, or bring the refresh token onto the socket, and a
fresh well-behaved client must still be served afterwards.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from benchmarks.fuzz import Findings, RequestPathTarget, probe, stream_from_input
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

HANG_S = 10.0


@pytest.fixture(scope="module")
def fuzz_target() -> Iterator[RequestPathTarget]:
    workdir = Path(tempfile.mkdtemp(prefix="cpfz-", dir="/tmp"))
    target = RequestPathTarget(workdir, HANG_S, Findings())
    try:
        yield target
    finally:
        target.close()
        shutil.rmtree(workdir, ignore_errors=True)


@settings(
    derandomize=True,
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.binary(max_size=1024))
@example(data=b"")
@example(data=b"\x00" + b"\xff" * 8)  # raw stream: an oversize header first
@example(data=bytes([2, 0, 0, 0, 5, 0, 0, 0]))  # get_token of the seeded provider
@example(data=bytes([2, 1]) + bytes(range(256)))
def test_no_input_crashes_hangs_leaks_or_breaks_the_daemon(
    fuzz_target: RequestPathTarget, data: bytes
) -> None:
    before = len(fuzz_target.findings.items)
    fuzz_target(data)
    assert fuzz_target.findings.items[before:] == []


def test_the_daemon_still_serves_and_every_answer_kind_was_reached(
    fuzz_target: RequestPathTarget,
) -> None:
    """Runs after the fuzz test in this module; also proves the inputs went deep."""
    assert probe(fuzz_target.daemon, HANG_S) is None
    answers = fuzz_target.findings.answers
    assert fuzz_target.findings.inputs >= 300
    assert answers["ok"] > 0 and answers["INVALID_REQUEST"] > 0 and answers["NOT_FOUND"] > 0


def test_inputs_map_to_streams_deterministically() -> None:
    token = "ab" * 32
    sample = bytes(range(200))
    assert stream_from_input(sample, token) == stream_from_input(sample, token)
    assert stream_from_input(b"\x00raw", token) == b"raw"
