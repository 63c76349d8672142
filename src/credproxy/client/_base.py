"""What the blocking and the asyncio client share besides the protocol core.

In the manner of httpx's ``BaseClient``: where the daemon is, how long to
wait, and finding both from the environment live here once; each face adds
only how it moves bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping
from typing import Any, Final, Self

from credproxy.client.env import discover

DEFAULT_TIMEOUT_S: Final = 30.0
DEFAULT_IDLE_TIMEOUT_S: Final = 300.0
READ_BYTES: Final = 65_536

Clock = Callable[[], float]


class BaseClient:
    def __init__(
        self,
        socket_path: str,
        capability_token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
        clock: Clock = time.monotonic,
    ) -> None:
        self._path = socket_path
        self._token = capability_token
        self._timeout = timeout
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._last_used = 0.0
        self._broken = False
        self._closed = False
        self._handshakes = 0

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str] | None = None, **options: Any) -> Self:
        """A client for the proxy the environment names; see ``credproxy.client.env``."""
        found = discover(environ)
        return cls(found.socket_path, found.capability_token, **options)

    @property
    def socket_path(self) -> str:
        return self._path

    @property
    def handshakes(self) -> int:
        """Successful handshakes so far: one per connection this client opened."""
        return self._handshakes
