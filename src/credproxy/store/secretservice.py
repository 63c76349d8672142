"""The freedesktop Secret Service, reached through ``keyring``'s SecretService backend.

The backend class is instantiated by name and its viability checked here:
``keyring.get_keyring()`` is never called, because it would pick any
installed backend on its own (keyrings.cryptfile, keyrings.alt) and those
prompt on stdin. Every call blocks on D-Bus; async callers run these in a
thread. Errors become ``StoreError`` with a message that says what to do and
carries no secret.
"""

from __future__ import annotations

from typing import Any, Final

from credproxy.store.base import StoreError

SERVICE: Final = "credproxy"
LOCKED_MESSAGE: Final = "Keyring is locked. Unlock your keyring on the host and retry."
UNAVAILABLE_MESSAGE: Final = "No keyring available on this machine; use --store file"


class KeyringLockedError(StoreError):
    """The Secret Service is there but its collection is locked."""


class KeyringUnavailableError(StoreError):
    """No usable Secret Service on this session bus (or no session bus)."""


def _short_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


class SecretService:
    """Blocking get/set/delete of string secrets under one service name."""

    def __init__(self, service: str = SERVICE) -> None:
        self.service = service
        self._backend: Any = None

    def _open(self) -> Any:
        if self._backend is not None:
            return self._backend
        try:
            from keyring.backends import SecretService as secret_service_module
        except ImportError as exc:  # the keyring package itself is missing
            raise KeyringUnavailableError(
                f"{UNAVAILABLE_MESSAGE} (keyring is not installed: {exc.name})"
            ) from None
        backend_class: Any = secret_service_module.Keyring
        try:
            priority = backend_class.priority
        except Exception as exc:  # keyring reports non-viability by raising anything
            raise KeyringUnavailableError(f"{UNAVAILABLE_MESSAGE} ({_short_reason(exc)})") from None
        if not priority or priority <= 0:
            raise KeyringUnavailableError(UNAVAILABLE_MESSAGE)
        self._backend = backend_class()
        return self._backend

    def _call(self, method: str, *args: str) -> Any:
        backend = self._open()
        from keyring import errors as keyring_errors

        try:
            return getattr(backend, method)(self.service, *args)
        except keyring_errors.KeyringLocked:
            raise KeyringLockedError(LOCKED_MESSAGE) from None
        except keyring_errors.PasswordDeleteError:
            raise
        except Exception as exc:
            if _looks_locked(exc):
                raise KeyringLockedError(LOCKED_MESSAGE) from None
            raise KeyringUnavailableError(f"{UNAVAILABLE_MESSAGE} ({_short_reason(exc)})") from None

    def check(self) -> None:
        """Raise the actionable error unless a read works (locked or absent)."""
        self._call("get_password", "credproxy-probe")

    def get(self, username: str) -> str | None:
        value = self._call("get_password", username)
        return value if isinstance(value, str) else None

    def set(self, username: str, value: str) -> None:
        self._call("set_password", username, value)

    def delete(self, username: str) -> bool:
        from keyring import errors as keyring_errors

        try:
            self._call("delete_password", username)
        except keyring_errors.PasswordDeleteError:
            return False
        return True

    def search(self) -> list[tuple[str, str]]:
        """(user name, secret) of every item under this service.

        The keyring API cannot list, so this asks the Secret Service directly
        for items whose ``service`` attribute matches: that finds items written
        by Python's keyring and by other clients using the same attributes
        (keyring-rs, which LLxprt's @napi-rs/keyring wraps).
        """
        self._open()
        import secretstorage

        try:
            connection = secretstorage.dbus_init()
        except Exception as exc:
            raise KeyringUnavailableError(f"{UNAVAILABLE_MESSAGE} ({_short_reason(exc)})") from None
        try:
            collection = secretstorage.get_default_collection(connection)
            if collection.is_locked():
                collection.unlock()
                if collection.is_locked():
                    raise KeyringLockedError(LOCKED_MESSAGE)
            found = []
            for item in collection.search_items({"service": self.service}):
                username = item.get_attributes().get("username")
                if isinstance(username, str):
                    found.append((username, item.get_secret().decode("utf-8", "replace")))
            return sorted(found)
        except StoreError:
            raise
        except Exception as exc:
            if _looks_locked(exc):
                raise KeyringLockedError(LOCKED_MESSAGE) from None
            raise KeyringUnavailableError(f"{UNAVAILABLE_MESSAGE} ({_short_reason(exc)})") from None
        finally:
            connection.close()


def _looks_locked(exc: BaseException) -> bool:
    try:
        from secretstorage.exceptions import LockedException
    except ImportError:
        return False
    return isinstance(exc, LockedException)
