"""Handshake version negotiation: the highest common version, or UNKNOWN_VERSION."""

from __future__ import annotations

from typing import Any

import pytest

from credproxy.protocol.errors import ProxyError
from credproxy.protocol.messages import Handshake
from credproxy.protocol.version import SUPPORTED_VERSIONS, negotiate


def test_server_supports_versions_1_and_2() -> None:
    assert SUPPORTED_VERSIONS == (1, 2)


@pytest.mark.parametrize(
    ("low", "high", "chosen"),
    [(1, 2, 2), (1, 1, 1), (2, 2, 2), (1, 5, 2), (0, 1, 1), (2, 9, 2), (-3, 1, 1)],
)
def test_highest_common_version_is_chosen(low: int, high: int, chosen: int) -> None:
    assert negotiate(1, Handshake(minVersion=low, maxVersion=high)) == chosen


@pytest.mark.parametrize(("envelope", "chosen"), [(1, 1), (2, 2)])
def test_without_bounds_only_the_envelope_version_is_offered(envelope: int, chosen: int) -> None:
    assert negotiate(envelope, Handshake()) == chosen


@pytest.mark.parametrize(
    ("envelope", "low", "high"),
    [
        pytest.param(1, 3, 4, id="above"),
        pytest.param(1, -1, 0, id="below"),
        pytest.param(1, 2, 1, id="min-greater-than-max"),
        pytest.param(1, 1, None, id="only-min"),
        pytest.param(1, None, 2, id="only-max"),
        pytest.param(1, 1.0, 2, id="float-bound"),
        pytest.param(1, True, 2, id="boolean-bound"),
        pytest.param(1, "1", "2", id="string-bounds"),
        pytest.param(3, None, None, id="unsupported-envelope"),
        pytest.param(None, None, None, id="no-version-at-all"),
        pytest.param(True, None, None, id="boolean-envelope"),
        pytest.param("1", None, None, id="string-envelope"),
    ],
)
def test_no_usable_common_version_is_unknown_version(envelope: Any, low: Any, high: Any) -> None:
    with pytest.raises(ProxyError) as info:
        negotiate(envelope, Handshake(minVersion=low, maxVersion=high))
    assert info.value.code == "UNKNOWN_VERSION"


def test_bounds_take_precedence_over_the_envelope_version() -> None:
    assert negotiate(7, Handshake(minVersion=1, maxVersion=1)) == 1


def test_no_overlap_message_states_the_supported_range() -> None:
    with pytest.raises(ProxyError) as info:
        negotiate(1, Handshake(minVersion=3, maxVersion=3))
    assert "1 to 2" in str(info.value)
