"""Sandboxes that start together all get in: listen backlog, and the client's bounded retry.

A burst of new connections meets two limits of a busy daemon: the kernel's
listen queue (a full one makes ``connect`` fail with EAGAIN) and the
daemon's cap on connections still waiting for their handshake (past it the
oldest waiting one is closed). The client tries opening again, with jitter,
while its request timeout lasts; a connection that broke after its handshake
is still never replaced silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from credproxy.client import AsyncProxyClient, ProxyClient
from credproxy.client._core import (
    CONNECT_BACKOFF_MAX_S,
    NOT_LISTENING_WINDOW_S,
    ConnectFailure,
    ConnectRetry,
)
from credproxy.client._exceptions import ConnectFailedError, ConnectionLostError
from tests.fixtures.daemon import DaemonFactory, DaemonHandle

CLIENTS = 200
ROUNDS = 5
KEY = "burst-key"
VALUE = "sk-burst-decoy-0001"


def _listen_backlog(path: Path) -> int:
    """The backlog the kernel holds for the listening socket at ``path`` (ss's Send-Q)."""
    out = subprocess.run(
        ["ss", "-xlnH", "src", str(path)], capture_output=True, text=True, check=True
    ).stdout
    fields = out.split()
    return int(fields[3])


@pytest.fixture
def busy_daemon(credproxy_daemon: DaemonFactory) -> DaemonHandle:
    return credproxy_daemon(keys={KEY: VALUE})


def _one_shot(
    path: Path, token: str | None, barrier: threading.Barrier, failures: list[str]
) -> None:
    """What ``credproxy key get`` in a freshly started sandbox does: connect, ask, close."""
    barrier.wait()
    try:
        with ProxyClient(str(path), token) as client:
            if client.get_api_key(KEY) != VALUE:
                failures.append("wrong value")
    except Exception as exc:
        failures.append(f"{type(exc).__name__}: {exc}")


def test_two_hundred_clients_connecting_at_once_all_succeed_five_rounds(
    busy_daemon: DaemonHandle,
) -> None:
    failures: list[str] = []
    for _ in range(ROUNDS):
        barrier = threading.Barrier(CLIENTS)
        args = (busy_daemon.socket_path, busy_daemon.capability_token, barrier, failures)
        threads = [threading.Thread(target=_one_shot, args=args) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []


async def test_two_hundred_async_clients_connecting_at_once_all_succeed_five_rounds(
    busy_daemon: DaemonHandle,
) -> None:
    token = busy_daemon.capability_token

    async def one_shot() -> str:
        async with AsyncProxyClient(str(busy_daemon.socket_path), token) as client:
            return await client.get_api_key(KEY)

    for _ in range(ROUNDS):
        results = await asyncio.gather(
            *(one_shot() for _ in range(CLIENTS)), return_exceptions=True
        )
        assert [r for r in results if r != VALUE] == []


def test_serve_listens_with_a_backlog_of_1024_by_default(busy_daemon: DaemonHandle) -> None:
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert _listen_backlog(busy_daemon.socket_path) == min(1024, somaxconn)


def test_serve_listen_backlog_option_sets_the_kernels_queue(
    credproxy_daemon: DaemonFactory,
) -> None:
    daemon = credproxy_daemon("--listen-backlog", "7", store="memory")
    assert _listen_backlog(daemon.socket_path) == 7


@contextlib.contextmanager
def _stopped(daemon: DaemonHandle) -> Iterator[None]:
    daemon.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        daemon.send_signal(signal.SIGCONT)


def test_a_client_meeting_a_full_listen_queue_waits_its_turn(
    credproxy_daemon: DaemonFactory,
) -> None:
    """The daemon is stopped and its two-place queue filled, so the client's
    connect fails with EAGAIN; once the daemon runs again the client gets in."""
    daemon = credproxy_daemon("--listen-backlog", "2", keys={KEY: VALUE})
    fillers: list[socket.socket] = []
    outcome: list[object] = []
    with _stopped(daemon):
        while True:
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            filler.setblocking(False)
            try:
                filler.connect(str(daemon.socket_path))
            except BlockingIOError:
                filler.close()
                break
            fillers.append(filler)
        client = ProxyClient(str(daemon.socket_path), daemon.capability_token, timeout=30)

        def call() -> None:
            try:
                outcome.append(client.get_api_key(KEY))
            except Exception as exc:
                outcome.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        caller.join(0.5)  # time to meet the full queue at least once
    caller.join()
    client.close()
    for filler in fillers:
        filler.close()
    assert outcome == [VALUE]


def test_a_refused_connect_fails_soon_with_the_not_listening_message(tmp_path: Path) -> None:
    """A socket file nobody listens on (a daemon killed) is tried only briefly."""
    path = tmp_path / "dead.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.close()
    with (
        ProxyClient(str(path), None, timeout=60) as client,
        pytest.raises(ConnectFailedError, match="no credential proxy is listening"),
    ):
        client.list_api_keys()


def test_a_connection_broken_after_its_handshake_is_not_reopened(
    busy_daemon: DaemonHandle,
) -> None:
    with ProxyClient(str(busy_daemon.socket_path), busy_daemon.capability_token) as client:
        assert client.get_api_key(KEY) == VALUE
        busy_daemon.stop(signal.SIGKILL)
        with pytest.raises(ConnectionLostError):
            client.get_api_key(KEY)
        with pytest.raises(ConnectionLostError):
            client.get_api_key(KEY)
        assert client.handshakes == 1


def test_retry_delays_grow_with_full_jitter_up_to_the_cap() -> None:
    retry = ConnectRetry(budget_s=1000.0, rand=lambda: 1.0)
    delays = [retry.delay_after(ConnectFailure.BUSY, 0.0) for _ in range(12)]
    assert all(d is not None for d in delays)
    bounded = [d for d in delays if d is not None]
    assert bounded == sorted(bounded)
    assert bounded[0] < bounded[1] < bounded[2]
    assert max(bounded) == CONNECT_BACKOFF_MAX_S
    half = ConnectRetry(budget_s=1000.0, rand=lambda: 0.5)
    assert half.delay_after(ConnectFailure.BUSY, 0.0) == pytest.approx(bounded[0] / 2)


def test_retry_gives_up_at_the_request_budget_and_never_retries_final_failures() -> None:
    retry = ConnectRetry(budget_s=2.0, rand=lambda: 1.0)
    assert retry.delay_after(ConnectFailure.BUSY, 1.0) is not None
    assert retry.delay_after(ConnectFailure.BUSY, 1.99) is None
    assert ConnectRetry(budget_s=30.0).delay_after(ConnectFailure.FINAL, 0.0) is None


def test_refused_connects_are_retried_only_within_a_short_window() -> None:
    retry = ConnectRetry(budget_s=30.0, rand=lambda: 1.0)
    assert retry.delay_after(ConnectFailure.NOT_LISTENING, 0.0) is not None
    assert retry.delay_after(ConnectFailure.NOT_LISTENING, NOT_LISTENING_WINDOW_S) is None
    assert retry.delay_after(ConnectFailure.BUSY, NOT_LISTENING_WINDOW_S) is not None
