"""Bringing credentials over from LLxprt Code's plaintext files into a credproxy store.

What is read (facts about LLxprt's layout, not its code):
  ~/.llxprt/oauth/<provider>.json           token of the default bucket
  ~/.llxprt/oauth/<provider>-<bucket>.json  token of another bucket
  ~/.llxprt/keys/<file>                     one API key per file (e.g. ``.xai_key``)
Lock files (``*-refresh.lock``) and half-written temp files (``*.tmp-*``) are ignored.
Newer LLxprt keeps them in the OS keyring instead; on request those are read
too: service ``llxprt-code-oauth`` (accounts ``<provider>:<bucket>``, which
splits without ambiguity) and ``llxprt-code-provider-keys`` (account = key
name). LLxprt's own encrypted fallback files are not read.

Provider and bucket names may both contain ``-``, so ``a-b-c.json`` is
ambiguous. A name is split after the longest known provider name that
prefixes it (LLxprt's OAuth providers, the providers in the credproxy config,
and any given with ``--provider``); a name without ``-`` is a provider's
default bucket; anything else is skipped with a message asking for
``--provider``.

Token shapes accepted: ``expiry`` in Unix seconds (LLxprt's shape) or
milliseconds, ``expires_at`` (seconds, milliseconds or ISO 8601),
``expiry_date`` (milliseconds, Google's shape), ``expires_in`` (seconds,
counted from the file's modification time). A missing ``token_type`` is
``Bearer``. Everything else passes through, ``refresh_token`` included.

Key file names: a leading ``.`` and a trailing ``_key`` or ``.key`` are
dropped (``.xai_key`` becomes ``xai``); the rest must be a valid key name.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import json
import math
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from credproxy.protocol.errors import ProxyError
from credproxy.protocol.ops import DEFAULT_BUCKET, NAME_RE
from credproxy.store.base import CredentialStore, StoreError
from credproxy.store.secretservice import SecretService
from credproxy.tokens import Token, validate_token

LLXPRT_OAUTH_PROVIDERS: Final = frozenset({"anthropic", "codex", "gemini", "qwen"})
LLXPRT_TOKEN_SERVICE: Final = "llxprt-code-oauth"
LLXPRT_KEY_SERVICE: Final = "llxprt-code-provider-keys"
LLXPRT_PROBE_PREFIX: Final = "__securestore_probe__"
MAX_SOURCE_BYTES: Final = 64 * 1024
MAX_KEY_CHARS: Final = 4096
MILLISECONDS_THRESHOLD: Final = 100_000_000_000  # seconds past this are the year 5138
_EXPIRY_ALIASES: Final = ("expires_at", "expiry_date", "expires_in")


class MigrationError(Exception):
    """One source cannot be imported; the message names the file or field, never a value."""


def default_llxprt_dir() -> Path:
    return Path.home() / ".llxprt"


# --- tokens ------------------------------------------------------------------------------


def _seconds(value: Any, field: str) -> float:
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise MigrationError(f"{field} is neither a number nor an ISO 8601 time") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return parsed.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MigrationError(f"{field} must be a number")
    try:
        number = float(value)
    except OverflowError:
        raise MigrationError(f"{field} is out of range") from None
    if not math.isfinite(number):
        raise MigrationError(f"{field} must be a finite number")
    return number / 1000 if number > MILLISECONDS_THRESHOLD else number


def normalize_token(raw: Any, *, issued_at: float | None = None) -> Token:
    """A credproxy token from LLxprt's (or a similar) token JSON; raises MigrationError."""
    if not isinstance(raw, Mapping):
        raise MigrationError("the token must be a JSON object")
    token: dict[str, Any] = dict(raw)
    if "expiry" in token:
        expiry = _seconds(token["expiry"], "expiry")
    elif "expires_at" in token:
        expiry = _seconds(token["expires_at"], "expires_at")
    elif "expiry_date" in token:
        expiry = _seconds(token["expiry_date"], "expiry_date")
    elif "expires_in" in token:
        lifetime = token["expires_in"]
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float):
            raise MigrationError("expires_in must be a number of seconds")
        start = issued_at if issued_at is not None else time.time()
        try:
            expiry = float(int(start + float(lifetime)))
        except (OverflowError, ValueError):
            raise MigrationError("expires_in is out of range") from None
    else:
        raise MigrationError(
            "the token has no expiry (expiry, expires_at, expiry_date, expires_in)"
        )
    for alias in _EXPIRY_ALIASES:
        token.pop(alias, None)
    token["expiry"] = int(expiry) if float(expiry).is_integer() else expiry
    token.setdefault("token_type", "Bearer")
    if token.get("refresh_token") is None:
        token.pop("refresh_token", None)
    try:
        return validate_token(token)
    except ProxyError as exc:
        raise MigrationError(exc.message) from None


def read_source(path: Path) -> bytes:
    """A user's own small regular file, read without following a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MigrationError("is a symbolic link; import its target instead") from None
        raise MigrationError(f"cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise MigrationError("is not a regular file")
        if info.st_size > MAX_SOURCE_BYTES:
            raise MigrationError(f"is larger than {MAX_SOURCE_BYTES} bytes")
        return handle.read(MAX_SOURCE_BYTES + 1)


def load_token_file(path: Path) -> Token:
    data = read_source(path)
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise MigrationError("is not valid JSON") from None
    return normalize_token(raw, issued_at=path.stat().st_mtime)


def split_token_file_name(stem: str, known_providers: Iterable[str]) -> tuple[str, str]:
    """(provider, bucket) of ``<provider>[-<bucket>]``; raises MigrationError when ambiguous."""
    known = set(known_providers)
    if stem in known:
        provider, bucket = stem, DEFAULT_BUCKET
    else:
        prefixes = [name for name in known if stem.startswith(name + "-")]
        if prefixes:
            provider = max(prefixes, key=len)
            bucket = stem[len(provider) + 1 :]
        elif "-" not in stem:
            provider, bucket = stem, DEFAULT_BUCKET
        else:
            raise MigrationError(
                f"cannot tell where the provider name ends in {stem!r} (provider and bucket "
                "names may both contain '-'); name the provider with --provider"
            )
    for kind, value in (("provider", provider), ("bucket", bucket)):
        if not NAME_RE.match(value):
            raise MigrationError(f"{value!r} is not a valid {kind} name")
    return provider, bucket


# --- keys --------------------------------------------------------------------------------


def key_name_from_file_name(file_name: str) -> str:
    name = file_name[1:] if file_name.startswith(".") else file_name
    for suffix in ("_key", ".key"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    if not NAME_RE.match(name):
        raise MigrationError(f"{name!r} is not a valid key name")
    return name


def load_key_file(path: Path) -> str:
    try:
        text = read_source(path).decode("utf-8")
    except UnicodeDecodeError:
        raise MigrationError("is not UTF-8 text") from None
    return _single_key(text)


def _single_key(text: str) -> str:
    value = text.strip()
    if not value:
        raise MigrationError("is empty")
    if len(value) > MAX_KEY_CHARS or any(char.isspace() for char in value):
        raise MigrationError("does not hold a single key (one line, no spaces)")
    return value


# --- the import ---------------------------------------------------------------------------


@dataclass
class ImportItem:
    kind: str  # "token" or "key"
    source: str
    name: str  # "provider/bucket" or the key name; empty when the file name was unusable
    status: str  # imported, would import, already present, skipped
    detail: str = ""
    removed_original: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Candidate:
    item: ImportItem
    value: Token | str | None
    provider: str = ""
    bucket: str = ""
    remove_original: Callable[[], bool] | None = None


def _file_remover(path: Path) -> Callable[[], bool]:
    def remove() -> bool:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            return True
        return False

    return remove


def _token_candidates(oauth_dir: Path, known: set[str]) -> list[_Candidate]:
    found: list[_Candidate] = []
    seen: set[str] = set()
    for path in sorted(oauth_dir.iterdir()) if oauth_dir.is_dir() else []:
        if not path.name.endswith(".json") or ".tmp-" in path.name:
            continue
        item = ImportItem("token", str(path), "", "skipped")
        candidate = _Candidate(item, None, remove_original=_file_remover(path))
        found.append(candidate)
        try:
            provider, bucket = split_token_file_name(path.name[: -len(".json")], known)
            item.name = f"{provider}/{bucket}"
            if item.name in seen:
                raise MigrationError(f"another file already holds token {provider} ({bucket})")
            seen.add(item.name)
            candidate.value = load_token_file(path)
            candidate.provider, candidate.bucket = provider, bucket
        except MigrationError as exc:
            item.detail = str(exc)
    return found


def _key_candidates(keys_dir: Path) -> list[_Candidate]:
    found: list[_Candidate] = []
    seen: set[str] = set()
    for path in sorted(keys_dir.iterdir()) if keys_dir.is_dir() else []:
        item = ImportItem("key", str(path), "", "skipped")
        candidate = _Candidate(item, None, remove_original=_file_remover(path))
        found.append(candidate)
        try:
            item.name = key_name_from_file_name(path.name)
            if item.name in seen:
                raise MigrationError(f"another file already holds key {item.name}")
            seen.add(item.name)
            candidate.value = load_key_file(path)
        except MigrationError as exc:
            item.detail = str(exc)
    return found


def _keyring_candidates(
    tokens_service: SecretService, keys_service: SecretService
) -> list[_Candidate]:
    """Items of LLxprt's keyring services: accounts ``provider:bucket`` and key names."""
    found: list[_Candidate] = []
    for kind, service in (("token", tokens_service), ("key", keys_service)):
        for username, secret in service.search():
            if username.startswith(LLXPRT_PROBE_PREFIX):
                continue
            item = ImportItem(kind, f"keyring {service.service} {username}", "", "skipped")
            candidate = _Candidate(item, None, remove_original=_keyring_remover(service, username))
            found.append(candidate)
            try:
                if kind == "token":
                    provider, _, bucket = username.partition(":")
                    for label, value in (("provider", provider), ("bucket", bucket)):
                        if not NAME_RE.match(value):
                            raise MigrationError(f"{value!r} is not a valid {label} name")
                    item.name = f"{provider}/{bucket}"
                    candidate.provider, candidate.bucket = provider, bucket
                    try:
                        raw = json.loads(secret)
                    except ValueError:
                        raise MigrationError("the keyring item is not token JSON") from None
                    candidate.value = normalize_token(raw)
                else:
                    if not NAME_RE.match(username):
                        raise MigrationError(f"{username!r} is not a valid key name")
                    item.name = username
                    candidate.value = _single_key(secret)
            except MigrationError as exc:
                item.detail = str(exc)
    return found


def _keyring_remover(service: SecretService, username: str) -> Callable[[], bool]:
    def remove() -> bool:
        return service.delete(username)

    return remove


async def import_llxprt(
    store: CredentialStore,
    source: Path | None = None,
    *,
    known_providers: Iterable[str] = (),
    dry_run: bool = False,
    delete_originals: bool = False,
    overwrite: bool = False,
    from_keyring: bool = False,
    secret_service: Callable[[str], SecretService] = SecretService,
) -> list[ImportItem]:
    """Copy LLxprt's token and key files into ``store``; report every source looked at.

    With ``from_keyring`` the items of LLxprt's keyring services are read as
    well (newer LLxprt keeps tokens in ``llxprt-code-oauth`` as
    ``provider:bucket`` and keys in ``llxprt-code-provider-keys``); blocking
    D-Bus work runs in a thread.

    A credential already in the store is kept unless ``overwrite`` (the store's
    copy may be newer: the daemon refreshes it). An original is deleted only
    after its value was written and read back, or when the store already holds
    exactly that value.
    """
    root = source if source is not None else default_llxprt_dir()
    known = set(LLXPRT_OAUTH_PROVIDERS) | set(known_providers)
    candidates = _token_candidates(root / "oauth", known) + _key_candidates(root / "keys")
    if from_keyring:
        candidates += await asyncio.to_thread(
            _keyring_candidates,
            secret_service(LLXPRT_TOKEN_SERVICE),
            secret_service(LLXPRT_KEY_SERVICE),
        )
    for candidate in candidates:
        item = candidate.item
        if candidate.value is None:
            continue
        existing = await _existing(store, candidate)
        if existing is not None and not overwrite:
            same = existing == candidate.value
            item.status = "already present"
            item.detail = (
                "the store holds the same value"
                if same
                else "the store holds a different value; kept it (use --overwrite to replace)"
            )
            if same and delete_originals and not dry_run:
                item.removed_original = await _remove_original(candidate)
            continue
        if dry_run:
            item.status = "would import"
            continue
        if not await _save(store, candidate, overwrite=overwrite):
            item.status = "already present"
            item.detail = "stored by another process meanwhile; kept it"
            continue
        if await _existing(store, candidate) != candidate.value:
            raise StoreError(f"{item.kind} {item.name} did not read back as written; retry")
        item.status = "imported"
        if delete_originals:
            item.removed_original = await _remove_original(candidate)
    return [candidate.item for candidate in candidates]


async def _existing(store: CredentialStore, candidate: _Candidate) -> Token | str | None:
    if candidate.item.kind == "token":
        return await store.get_token(candidate.provider, candidate.bucket)
    return await store.get_key(candidate.item.name)


async def _save(store: CredentialStore, candidate: _Candidate, *, overwrite: bool) -> bool:
    """Write through the store's write path; False when a token appeared meanwhile
    and ``overwrite`` is off (the check is repeated under the record's lock)."""
    from credproxy.store.writepath import write_path

    writes = write_path(store)
    if candidate.item.kind == "token":
        value = candidate.value
        assert isinstance(value, dict)
        written: list[bool] = []

        def change(stored: Token | None) -> Token | None:
            if stored is not None and not overwrite:
                return stored
            written.append(True)
            return dict(value)

        await writes.update_token(
            candidate.provider, candidate.bucket, change, replace_damaged=overwrite
        )
        return bool(written)
    assert isinstance(candidate.value, str)
    await writes.set_key(candidate.item.name, candidate.value)
    return True


async def _remove_original(candidate: _Candidate) -> bool:
    if candidate.remove_original is None:
        return False
    return await asyncio.to_thread(candidate.remove_original)
