"""The login driver inside a sandbox: the host runs the flow, we show and relay.

``oauth_initiate`` returns what the user must see (a URL, or a URL and a user
code); for code paste we read the code and send ``oauth_exchange``, for the
device and loopback flows we poll ``oauth_poll`` until the host reports the
end. Ctrl-C (or any failure before the end) cancels the session on the host so
its background polling and listener stop at once. Imports nothing from the
server side.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TextIO

from credproxy.client._exceptions import (
    ProxyClientError,
    SessionAlreadyUsedError,
    SessionExpiredError,
    SessionNotFoundError,
    clean_message,
)
from credproxy.protocol.errors import ErrorCode
from credproxy.protocol.ops import DEFAULT_BUCKET

EXPIRED_MESSAGE: Final = "Login session expired. Run `credproxy login` again."
USED_MESSAGE: Final = "This login session was already used. Run `credproxy login` again."
GONE_MESSAGE: Final = "The login session no longer exists on the host. Run `credproxy login` again."
DENIED_MESSAGE: Final = "The login was denied at the provider."
DEFAULT_POLL_MS: Final = 1000
MIN_POLL_S: Final = 0.05
MAX_POLL_S: Final = 10.0
PLAIN_PROGRESS_EVERY_S: Final = 10.0
_SPINNER: Final = "|/-\\"


class LoginError(Exception):
    """The login did not produce a token; ``str(err)`` tells the user what to do."""

    def __init__(self, message: str, *, code: str = "LOGIN_FAILED") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class LoginClient(Protocol):
    """The four calls the driver needs (``credproxy.client.ProxyClient`` has them)."""

    def oauth_initiate(self, provider: str, bucket: str = ...) -> dict[str, Any]: ...

    def oauth_exchange(self, session_id: str, code: str) -> dict[str, Any]: ...

    def oauth_poll(self, session_id: str) -> dict[str, Any]: ...

    def oauth_cancel(self, session_id: str) -> None: ...


MAX_URL_CHARS: Final = 8192
"""A login URL is printed whole up to this size: a clipped one would open a login the
provider refuses (long scope lists and extra parameters pass 1 KiB easily)."""


def _clean_url(value: object) -> str:
    if not isinstance(value, str):
        return ""
    return "".join(ch if ch.isprintable() else "?" for ch in value[:MAX_URL_CHARS])


def describe_start(flow_type: str, shown: dict[str, Any]) -> list[str]:
    """What to tell the user once a login has started (plain text lines)."""
    if flow_type == "device_code":
        url = _clean_url(shown.get("verification_url"))
        code = clean_message(shown.get("user_code"))
        lines = [f"Open {url} and enter the code: {code}"]
        complete = shown.get("verification_url_complete")
        if isinstance(complete, str):
            lines.append(f"Or open this link, which carries the code: {_clean_url(complete)}")
        return lines
    url = _clean_url(shown.get("auth_url"))
    if flow_type == "pkce_redirect":
        return [
            "Open this URL in a browser and log in:",
            f"  {url}",
            "Then paste the code the provider shows you.",
        ]
    return [
        "Open this URL in a browser on this machine and log in:",
        f"  {url}",
        "The login completes by itself once the browser is redirected.",
    ]


@dataclass
class Prompter:
    """Writes what the user must see to ``out`` (stderr) and reads the pasted code."""

    out: TextIO = field(default_factory=lambda: sys.stderr)
    source: TextIO = field(default_factory=lambda: sys.stdin)
    clock: Callable[[], float] = time.monotonic
    _started: float = 0.0
    _last_line: float = 0.0
    _ticks: int = 0

    @property
    def interactive(self) -> bool:
        return self.out.isatty()

    def show(self, flow_type: str, shown: dict[str, Any]) -> None:
        for line in describe_start(flow_type, shown):
            self.out.write(line + "\n")
        self.out.flush()
        self._started = self._last_line = self.clock()

    def read_code(self) -> str:
        if self.source.isatty():
            self.out.write("Code: ")
            self.out.flush()
        line = self.source.readline()
        if not line:
            raise LoginError("No code was entered; the login was cancelled.", code="NO_CODE")
        return line.strip()

    def progress(self) -> None:
        now = self.clock()
        elapsed = int(now - self._started)
        if self.interactive:
            spin = _SPINNER[self._ticks % len(_SPINNER)]
            self._ticks += 1
            self.out.write(f"\r{spin} waiting for the login to complete ({elapsed} s)")
            self.out.flush()
        elif now - self._last_line >= PLAIN_PROGRESS_EVERY_S:
            self._last_line = now
            self.out.write(f"waiting for the login to complete ({elapsed} s)\n")
            self.out.flush()

    def finish(self) -> None:
        if self.interactive and self._ticks:
            self.out.write("\r" + " " * 60 + "\r")
            self.out.flush()


@dataclass(frozen=True)
class LoginResult:
    """The sanitized token the host returned and how it was obtained."""

    flow_type: str
    token: dict[str, Any]


def _poll_seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        value = DEFAULT_POLL_MS
    return min(max(float(value) / 1000.0, MIN_POLL_S), MAX_POLL_S)


def explain(error: ProxyClientError) -> LoginError:
    """A proxy error during a login, in words that say what to do."""
    if isinstance(error, SessionExpiredError):
        return LoginError(EXPIRED_MESSAGE, code=error.code)
    if isinstance(error, SessionAlreadyUsedError):
        return LoginError(USED_MESSAGE, code=error.code)
    if isinstance(error, SessionNotFoundError):
        return LoginError(GONE_MESSAGE, code=error.code)
    return LoginError(f"Login failed: {error.message}", code=error.code)


def _poll_failure(result: dict[str, Any]) -> LoginError:
    code = clean_message(result.get("code"))[:64] or ErrorCode.EXCHANGE_FAILED
    text = clean_message(result.get("error")) or "the login failed"
    if result.get("oauth_error") == "access_denied":
        return LoginError(DENIED_MESSAGE, code=code)
    if result.get("oauth_error") == "expired_token":
        return LoginError(
            "The device code expired before the login was completed. Run `credproxy login` again.",
            code=code,
        )
    if code == ErrorCode.SESSION_EXPIRED:
        return LoginError(EXPIRED_MESSAGE, code=code)
    return LoginError(f"Login failed: {text}", code=code)


def run_login(
    client: LoginClient,
    provider: str,
    bucket: str = DEFAULT_BUCKET,
    *,
    prompter: Prompter | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> LoginResult:
    """Drive one login through the proxy; raises ``LoginError`` or ``KeyboardInterrupt``."""
    ui = prompter or Prompter()
    try:
        started = client.oauth_initiate(provider, bucket)
    except ProxyClientError as exc:
        raise explain(exc) from None
    session_id = started.get("session_id")
    flow_type = started.get("flow_type")
    if not isinstance(session_id, str) or not isinstance(flow_type, str):
        raise LoginError("The host answered oauth_initiate without a session.")
    settled = False
    try:
        ui.show(flow_type, started)
        if flow_type == "pkce_redirect":
            code = ui.read_code()
            settled = True  # the exchange consumes the session whatever its outcome
            token = client.oauth_exchange(session_id, code)
            return LoginResult(flow_type, token)
        interval = _poll_seconds(started.get("pollIntervalMs"))
        while True:
            result = client.oauth_poll(session_id)
            status = result.get("status")
            if status == "pending":
                interval = _poll_seconds(result.get("pollIntervalMs", interval * 1000))
                ui.progress()
                sleep(interval)
                continue
            settled = True
            ui.finish()
            if status == "complete":
                token = {k: v for k, v in result.items() if k != "status"}
                return LoginResult(flow_type, token)
            raise _poll_failure(result)
    except ProxyClientError as exc:
        if isinstance(exc, SessionExpiredError | SessionAlreadyUsedError | SessionNotFoundError):
            settled = True
        raise explain(exc) from None
    finally:
        if not settled:
            ui.finish()
            with contextlib.suppress(ProxyClientError, OSError):
                client.oauth_cancel(session_id)
