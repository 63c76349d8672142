"""Slowloris: peers that hold every connection place with frames they never finish.

Before fair admission the caps that bound the daemon also locked newcomers
out: with 500 connections holding partial frames, 86 of 88 fresh clients were
refused, and with the grant's token 85 of 88 got ``RESOURCE_EXHAUSTED``. Now
a newcomer at a full cap takes the place of a stalled connection (nothing in
flight, a frame or handshake unfinished for ``Limits.stall_s``), from the
peer process holding the most stalled places first; a connection being served
never gives its place up.

Every daemon here is a real ``credproxy serve`` process with small caps and
a short stall time (``tests/fixtures/serve_for_tests.py``); the partial-frame
and handshake timeouts are long, so only admission can free a place. Each
hostile peer is a process of its own (``slowloris_peer.py``), so the daemon
tells them apart by SO_PEERCRED pid.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from credproxy.client import ProxyClient
from tests.fixtures.daemon import DaemonFactory, DaemonHandle, RawClient, daemon_env

KEY = "slow-key"
VALUE = "sk-slowloris-decoy-0001"
STALL_S = 0.2
SETTLE_S = 3 * STALL_S
"""Waited once the hostile places are held, so every one of them is stalled (a floor: a
slower machine only makes them older)."""
BOUND_S = 30.0
PATIENT = ("--testing-frame-timeout", "600", "--testing-handshake-timeout", "600")
"""Only admission may free a place in these tests, never the partial-frame or handshake timer."""


class HostilePeer:
    """A ``slowloris_peer`` process holding ``count`` connections."""

    def __init__(self, daemon: DaemonHandle, count: int, *, handshake: bool = True) -> None:
        command = [sys.executable, "-m", "tests.server.slowloris_peer"]
        command += [str(daemon.socket_path), str(count)]
        if handshake:
            assert daemon.capability_token is not None
            command.append(daemon.capability_token)
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=daemon_env(),
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        assert line == "ready", f"the hostile peer did not get its places: {line!r}"

    def closed(self) -> int:
        """How many of its connections the daemon has closed."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("closed\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def closed_reaches(self, expected: int) -> int:
        """The count once it reaches ``expected`` (a close arrives a loop turn after the
        eviction that caused it), or what it is when the bound runs out."""
        deadline = time.monotonic() + BOUND_S
        while (count := self.closed()) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return count

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(BOUND_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def peers() -> Iterator[list[HostilePeer]]:
    started: list[HostilePeer] = []
    yield started
    for peer in started:
        peer.stop()


def _served(path: Path, token: str | None, results: list[str]) -> None:
    try:
        with ProxyClient(str(path), token, timeout=BOUND_S) as client:
            results.append("served" if client.get_api_key(KEY) == VALUE else "wrong value")
    except Exception as exc:
        results.append(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize(
    "cap",
    [
        pytest.param(("--testing-max-connections", "8"), id="daemon-cap"),
        pytest.param(("--testing-max-per-grant", "8"), id="grant-cap"),
    ],
)
def test_fresh_clients_are_served_while_stalled_partial_frames_fill_every_place(
    credproxy_daemon: DaemonFactory, peers: list[HostilePeer], cap: tuple[str, str]
) -> None:
    """The issue's attack, scaled down: the hostile peer shares the grant's token, so
    with the daemon's cap or the grant's cap full every newcomer used to be refused."""
    daemon = credproxy_daemon(*cap, *PATIENT, "--testing-stall", str(STALL_S), keys={KEY: VALUE})
    peers.append(HostilePeer(daemon, 8))
    time.sleep(SETTLE_S)
    results: list[str] = []
    clients = [
        threading.Thread(
            target=_served, args=(daemon.socket_path, daemon.capability_token, results)
        )
        for _ in range(8)
    ]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    assert results == ["served"] * 8
    assert peers[0].closed() >= 1
    assert daemon.process.poll() is None


def test_stalled_handshakes_give_their_places_to_fresh_clients(
    credproxy_daemon: DaemonFactory, peers: list[HostilePeer]
) -> None:
    """Connections that never finish their handshake, from several processes, hold
    every place before the handshake and every place of the daemon."""
    daemon = credproxy_daemon(
        "--testing-max-connections",
        "6",
        "--testing-max-before-handshake",
        "6",
        *PATIENT,
        "--testing-stall",
        str(STALL_S),
        keys={KEY: VALUE},
    )
    peers.extend(HostilePeer(daemon, 3, handshake=False) for _ in range(2))
    # The daemon has taken in every partial handshake once a real handshake behind them is served.
    with RawClient(daemon.socket_path) as probe:
        assert probe.handshake(daemon.capability_token)["ok"] is True
    time.sleep(SETTLE_S)
    results: list[str] = []
    for _ in range(6):
        _served(daemon.socket_path, daemon.capability_token, results)
    assert results == ["served"] * 6


def test_a_connection_being_served_never_gives_its_place_to_a_newcomer(
    credproxy_daemon: DaemonFactory, peers: list[HostilePeer]
) -> None:
    """Three connections wait on the store (held until SIGUSR1), one hostile one is
    stalled; at the cap of four the newcomer takes the stalled place, the next
    newcomer finds only connections being served and is refused, and every held
    request is answered once the store goes on."""
    daemon = credproxy_daemon(
        "--testing-hold-store",
        "--testing-max-connections",
        "4",
        "--testing-idle",
        str(STALL_S),
        "--testing-stall",
        str(STALL_S),
        *PATIENT,
        keys={KEY: VALUE},
    )
    served = [daemon.client() for _ in range(3)]
    pending = [raw.send_request("get_api_key", {"name": KEY}) for raw in served]
    peers.append(HostilePeer(daemon, 1))
    time.sleep(SETTLE_S)

    newcomer = daemon.client()
    newcomer_request = newcomer.send_request("get_api_key", {"name": KEY})
    assert peers[0].closed_reaches(1) == 1

    refused = RawClient(daemon.socket_path)
    with contextlib.suppress(ConnectionError):
        refused.send({"v": 2, "op": "handshake", "payload": {"minVersion": 1, "maxVersion": 2}})
    assert refused.wait_closed() == []
    refused.close()

    daemon.send_signal(signal.SIGUSR1)
    for raw, request_id in [*zip(served, pending, strict=True), (newcomer, newcomer_request)]:
        reply = raw.recv_id(request_id)
        assert reply["ok"] is True, reply
        assert reply["data"]["key"] == VALUE
        raw.close()


def test_the_peer_holding_the_most_stalled_places_loses_them_first(
    credproxy_daemon: DaemonFactory, peers: list[HostilePeer]
) -> None:
    """Peer B connects first (its places are the oldest), peer A holds twice as many;
    the two newcomers take A's places, and B keeps both of its own."""
    daemon = credproxy_daemon(
        "--testing-max-connections",
        "6",
        *PATIENT,
        "--testing-stall",
        str(STALL_S),
        keys={KEY: VALUE},
    )
    small = HostilePeer(daemon, 2)
    peers.append(small)
    large = HostilePeer(daemon, 4)
    peers.append(large)
    time.sleep(SETTLE_S)
    newcomers = [daemon.client() for _ in range(2)]
    assert large.closed_reaches(2) == 2
    assert small.closed() == 0
    for raw in newcomers:
        assert raw.request("get_api_key", {"name": KEY})["ok"] is True
        raw.close()
