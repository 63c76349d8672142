"""Proactive renewal in real daemons: two ``credproxy serve`` processes on one store,
the real oidc-provider issuing 60 s access tokens, refresh grants counted there.

This test runs for five minutes of real time on purpose: it is the issue's
acceptance scenario (a client reading every second for 5 minutes never receives
an expired token, and the server sees one refresh per token lifetime although
two daemons renew it). The scheduler's timing policy itself is pinned with an
injected clock in tests/renewal.
"""

from __future__ import annotations

import time

from credproxy.client import ProxyClient
from tests.fixtures.daemon import DaemonFactory
from tests.fixtures.oidc import OidcServer
from tests.oauth.refresh_helpers import (
    PROVIDER,
    log_in,
    oauth_daemon,
    refresh_grants,
    second_daemon,
)

DURATION_S = 300.0
LIFETIME_S = 60.0
SHORTEST_RENEWAL_INTERVAL_S = LIFETIME_S - 15.0 - 6.0
"""A 60 s token is renewed 15 s (the lead) plus at most 6 s (the jitter) early."""


def test_two_daemons_renew_a_short_lived_token_before_expiry_once_per_lifetime(
    credproxy_daemon: DaemonFactory, oidc_server_short_tokens: OidcServer
) -> None:
    oidc = oidc_server_short_tokens
    first = oauth_daemon(credproxy_daemon, oidc)
    log_in(first, oidc)
    second = second_daemon(credproxy_daemon, first)
    assert second.capability_token is not None
    grants = refresh_grants(oidc)
    expired: list[str] = []
    seen: list[str] = []
    started = time.monotonic()
    with (
        ProxyClient(str(first.socket_path), first.token) as one,
        ProxyClient(str(second.socket_path), second.capability_token) as other,
    ):
        reads = 0
        while time.monotonic() - started < DURATION_S:
            client = one if reads % 2 == 0 else other
            token = client.get_token(PROVIDER)
            reads += 1
            now = time.time()
            if token["expiry"] <= now:
                expired.append(f"read {reads}: expired {now - token['expiry']:.1f} s ago")
            if not seen or seen[-1] != token["access_token"]:
                seen.append(token["access_token"])
            time.sleep(1.0)
    elapsed = time.monotonic() - started
    made = refresh_grants(oidc) - grants

    assert expired == []
    assert made >= 1
    # One grant per token the clients were served: no second daemon's refresh
    # replaced a token before anyone saw it.
    assert len(set(seen)) == len(seen) == made + 1
    assert made <= elapsed / SHORTEST_RENEWAL_INTERVAL_S + 1
