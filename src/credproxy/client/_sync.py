"""The blocking client: one plain socket, one request at a time, no event loop.

A ``credproxy token get`` inside a sandbox needs one answer and exits, so
this client pays for nothing it does not use. There is no background thread:
the idle close happens on the next use, which then reconnects with a fresh
handshake; a connection that broke on its own is an error, never a silent
reconnect (``protocol.md``, "Limits and timeouts").
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TypeVar

from credproxy.client import _core
from credproxy.client._base import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    READ_BYTES,
    BaseClient,
    Clock,
)
from credproxy.client._core import ClientCore, ResponseReceived
from credproxy.client._exceptions import (
    ConnectFailedError,
    ProxyClientError,
    RequestTimeoutError,
    ResourceExhaustedError,
    client_closed,
    connection_lost,
    request_timeout,
)
from credproxy.protocol.ops import DEFAULT_BUCKET

T = TypeVar("T")


class ProxyClient(BaseClient):
    """Blocking client for the credential proxy.

    ``clock`` (monotonic seconds) decides when the connection counts as idle;
    tests pass a fake one to see the idle close without waiting.
    """

    def __init__(
        self,
        socket_path: str,
        capability_token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(
            socket_path, capability_token, timeout=timeout, idle_timeout=idle_timeout, clock=clock
        )
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._core: ClientCore | None = None

    def __repr__(self) -> str:
        return f"ProxyClient({self._path!r}, version={self.protocol_version})"

    def __enter__(self) -> ProxyClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def protocol_version(self) -> int | None:
        """The version negotiated on the open connection, if one is open."""
        return self._core.version if self._core is not None and self._sock is not None else None

    @property
    def is_connected(self) -> bool:
        return self._sock is not None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop_connection()

    def request(self, op: str, payload: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send one operation and return its ``data``, or raise its typed error."""
        with self._lock:
            core, sock = self._ensure_connected()
            request_id, frame = core.send_request(op, payload)
            deadline = time.monotonic() + self._timeout
            try:
                self._send(sock, frame, deadline, op)
                while True:
                    for event in self._receive(sock, core, deadline, op):
                        if isinstance(event, ResponseReceived) and event.request_id == request_id:
                            self._last_used = self._clock()
                            return event.unwrap()
            except RequestTimeoutError:
                self._abandon(sock, core, request_id)
                raise

    def _call(self, call: _core.Call[T]) -> T:
        return call.result(self.request(call.op, call.payload))

    def get_token(self, provider: str, bucket: str = DEFAULT_BUCKET) -> dict[str, Any]:
        return self._call(_core.get_token(provider, bucket))

    def save_token(
        self, provider: str, token: Mapping[str, Any], bucket: str = DEFAULT_BUCKET
    ) -> None:
        self._call(_core.save_token(provider, token, bucket))

    def remove_token(self, provider: str, bucket: str = DEFAULT_BUCKET) -> None:
        self._call(_core.remove_token(provider, bucket))

    def list_providers(self) -> list[str]:
        return self._call(_core.list_providers())

    def list_buckets(self, provider: str) -> list[str]:
        return self._call(_core.list_buckets(provider))

    def get_api_key(self, name: str) -> str:
        return self._call(_core.get_api_key(name))

    def list_api_keys(self) -> list[str]:
        return self._call(_core.list_api_keys())

    def has_api_key(self, name: str) -> bool:
        return self._call(_core.has_api_key(name))

    def get_bucket_stats(self, provider: str, bucket: str = DEFAULT_BUCKET) -> dict[str, Any]:
        return self._call(_core.get_bucket_stats(provider, bucket))

    def refresh_token(self, provider: str, bucket: str = DEFAULT_BUCKET) -> dict[str, Any]:
        return self._call(_core.refresh_token(provider, bucket))

    def oauth_initiate(self, provider: str, bucket: str = DEFAULT_BUCKET) -> dict[str, Any]:
        return self._call(_core.oauth_initiate(provider, bucket))

    def oauth_exchange(self, session_id: str, code: str) -> dict[str, Any]:
        return self._call(_core.oauth_exchange(session_id, code))

    def oauth_poll(self, session_id: str) -> dict[str, Any]:
        return self._call(_core.oauth_poll(session_id))

    def oauth_cancel(self, session_id: str) -> None:
        self._call(_core.oauth_cancel(session_id))

    def _ensure_connected(self) -> tuple[ClientCore, socket.socket]:
        if self._closed:
            raise client_closed()
        if self._broken:
            raise connection_lost()
        if self._sock is not None and self._core is not None:
            if self._clock() - self._last_used < self._idle_timeout:
                return self._core, self._sock
            self._drop_connection()
        return self._connect()

    def _connect(self) -> tuple[ClientCore, socket.socket]:
        """Open and handshake, trying again while the daemon is merely busy
        (see ``ConnectRetry``), all within one request timeout."""
        started = time.monotonic()
        deadline = started + self._timeout
        retry = _core.ConnectRetry(self._timeout)
        while True:
            try:
                return self._connect_once(deadline)
            except (RequestTimeoutError, TimeoutError) as exc:
                busy = retry.timed_out()
                if busy is not None:
                    raise busy from None
                if isinstance(exc, RequestTimeoutError):
                    raise
                raise _core.connect_error(self._path, exc) from None
            except (ConnectFailedError, ResourceExhaustedError, OSError) as exc:
                delay = retry.after_failure(exc, self._path, time.monotonic() - started)
            time.sleep(delay)

    def _connect_once(self, deadline: float) -> tuple[ClientCore, socket.socket]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.connect(self._path)
            core = ClientCore(self._token)
            self._send(
                sock, core.initiate_handshake(), deadline, "handshake", during_handshake=True
            )
            while True:
                events = self._receive(sock, core, deadline, "handshake", during_handshake=True)
                if _core.handshake_complete(events):
                    break
        except BaseException:
            sock.close()
            raise
        self._sock, self._core = sock, core
        self._last_used = self._clock()
        self._handshakes += 1
        return core, sock

    def _send(
        self,
        sock: socket.socket,
        frame: bytes,
        deadline: float,
        op: str,
        *,
        during_handshake: bool = False,
    ) -> None:
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(frame)
        except TimeoutError:
            # Part of the frame may be out: the stream can no longer be trusted.
            if not during_handshake:
                self._broken = True
                self._drop_connection()
            raise request_timeout(op, self._timeout) from None
        except OSError:
            raise self._lost(during_handshake) from None

    def _receive(
        self,
        sock: socket.socket,
        core: ClientCore,
        deadline: float,
        op: str,
        *,
        during_handshake: bool = False,
    ) -> list[_core.Event]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise request_timeout(op, self._timeout)
        try:
            sock.settimeout(remaining)
            data = sock.recv(READ_BYTES)
        except TimeoutError:
            raise request_timeout(op, self._timeout) from None
        except OSError:
            raise self._lost(during_handshake) from None
        if not data:
            raise self._lost(during_handshake)
        try:
            return core.receive_data(data)
        except ProxyClientError:
            if not during_handshake:
                self._broken = True
                self._drop_connection()
            raise

    def _lost(self, during_handshake: bool) -> ProxyClientError:
        if during_handshake:
            return _core.closed_during_handshake()
        self._broken = True
        self._drop_connection()
        return connection_lost()

    def _abandon(self, sock: socket.socket, core: ClientCore, request_id: str) -> None:
        """Best effort: tell a version 2 daemon to stop working on a request we gave up on."""
        frame = core.send_cancel(request_id)
        if frame is None or self._sock is not sock:
            return
        try:
            sock.settimeout(1.0)
            sock.sendall(frame)
        except OSError:
            self._broken = True
            self._drop_connection()

    def _drop_connection(self) -> None:
        sock, self._sock = self._sock, None
        if self._core is not None:
            self._core.connection_closed()
        self._core = None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
