"""The Redis store: one set of credentials for a fleet of hosts, sealed before it leaves each host.

Records are sealed on the host exactly as in the file store (``store.sealing``:
AES-256-GCM, associated data = store id + the record's identity), so Redis only
ever holds ciphertext, key names and version numbers. Keys under the prefix P
(``[store] prefix``, default ``credproxy``):

  P:header           hash: format, store id, where the data key comes from,
                     the sealed key check (as in the file store's header)
  P:rec:<record id>  hash: ``v`` the record's version (never goes back, also
                     across removal), ``c`` the sealed record (absent once removed)
  P:index            set of the record ids that hold a record, for listing
  P:lease:<name>     a lease: owner token, with a time to live
  channel P:changes  "<record id> <version>" after every write

Every write is one Lua script: compare the version the writer read (and, under
a lease, that the lease is still the writer's), write, bump the version,
publish. So a writer that lost its lease, or read before another host wrote,
never overwrites the newer record. Reads are served from a per-process cache
while the change subscription is up (no Redis round trip on the hot path);
when it is down or an entry is older than ``CACHE_RECHECK_S``, a read compares
versions with Redis first. Leases (``RedisLeases``) stand in for the file
store's lock files in ``store.writepath``: an owner token set with NX and a
time to live, renewed while held, released only by its owner.

Every Redis call is bounded by ``[store] timeout_s``; an unreachable or slow
Redis is a ``StoreUnavailableError`` (never a hang), and the client reconnects
on the next call. Whether cached, unexpired access tokens are still served
while Redis is unreachable is ``[store] serve_cached_when_unreachable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import operator
import os
import secrets
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit

import msgspec

from credproxy.store.base import StoreError, StoreUnavailableError, Token
from credproxy.store.keysource import KeySettings
from credproxy.store.records import RecordStore, describe
from credproxy.store.sealing import Sealer, decode_value, new_sealer, open_sealer
from credproxy.store.writepath import RecordLocks

if TYPE_CHECKING:
    from credproxy.settings import StoreSettings

log = logging.getLogger("credproxy.store.redis")

FORMAT: Final = "credproxy-redis-store"
FORMAT_VERSION: Final = 1
DEFAULT_PREFIX: Final = "credproxy"
DEFAULT_TIMEOUT_S: Final = 5.0
DEFAULT_LEASE_TTL_S: Final = 10.0
DEFAULT_LEASE_WAIT_S: Final = 15.0
CACHE_RECHECK_S: Final = 30.0
"""A cached record is compared with Redis at least this often, even with the change
subscription up, so a lost notification costs at most this much staleness."""
PASSWORD_ENV: Final = "CREDPROXY_REDIS_PASSWORD"
MAX_PASSWORD_BYTES: Final = 4096
_RESUBSCRIBE_MIN_S: Final = 0.2
_RESUBSCRIBE_MAX_S: Final = 5.0
_LEASE_POLL_MIN_S: Final = 0.01
_LEASE_POLL_MAX_S: Final = 0.25
"""Waiters are woken by the release notice; polling only covers a lease that ran out
(its holder died) or a notice lost while the subscription was down."""
_BLIND_WRITE_ATTEMPTS: Final = 16

T = TypeVar("T")

# KEYS: record, index, lease (the record again when none, so ACLs by prefix hold)
# ARGV: expected version, sealed record ("" removes), record id, channel, lease owner ("" none)
# Answers {1, v} written, {2, v} nothing to remove, {0, v} version moved on, {-1, 0} lease lost.
_WRITE_SCRIPT: Final = """
if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[5] then return {-1, 0} end
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[1]) then return {0, v} end
if ARGV[2] == '' then
  if redis.call('HEXISTS', KEYS[1], 'c') == 0 then return {2, v} end
  redis.call('HDEL', KEYS[1], 'c')
  redis.call('SREM', KEYS[2], ARGV[3])
else
  redis.call('HSET', KEYS[1], 'c', ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[3])
end
v = v + 1
redis.call('HSET', KEYS[1], 'v', v)
redis.call('PUBLISH', ARGV[4], ARGV[3] .. ' ' .. v)
return {1, v}
"""

_CREATE_HEADER_SCRIPT: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

_RENEW_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lease; ARGV: owner, channel. Wakes the other hosts waiting for it.
_RELEASE_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'lease ' .. KEYS[1])
  return 1
end
return 0
"""


class StoreConflictError(StoreError):
    """A write lost its compare-and-set: another host wrote first, or the lease ran out."""


@dataclass(frozen=True)
class RedisSettings:
    """``[store]`` keys of the Redis backend (see ``docs/storage.md``)."""

    url: str
    username: str | None = None
    password_file: Path | None = None
    password_keyring: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    prefix: str = DEFAULT_PREFIX
    timeout_s: float = DEFAULT_TIMEOUT_S
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S
    serve_cached_when_unreachable: bool = True

    @property
    def location(self) -> str:
        """The server as the user configured it, without any credential."""
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            return f"unix://{parts.path}"
        host = parts.hostname or "localhost"
        return f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path or ''}"

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> RedisSettings:
        url = section.get("url")
        if not isinstance(url, str) or not url:
            raise StoreError('[store] backend = "redis" needs url = "redis://HOST:PORT/DB"')
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise StoreError(
                f"[store] url must start with redis://, rediss:// (TLS) or unix://, "
                f"not {parts.scheme or url[:10]!r}"
            )
        if parts.password is not None or "password=" in parts.query:
            raise StoreError(
                "[store] url must not contain the Redis password (config files are often "
                f"readable); put it in a 0600 file named by password_file, in {PASSWORD_ENV}, "
                "or in the keyring (password_keyring = true)"
            )
        username = section.get("username", parts.username)

        def path(name: str) -> Path | None:
            value = section.get(name)
            if value is None:
                return None
            if not isinstance(value, str) or not value:
                raise StoreError(f"[store] {name} must be a path")
            return Path(value).expanduser()

        def number(name: str, default: float, low: float, high: float) -> float:
            value = section.get(name, default)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise StoreError(f"[store] {name} must be a number of seconds")
            if not low <= value <= high:
                raise StoreError(f"[store] {name} must be from {low:g} to {high:g} seconds")
            return float(value)

        def flag(name: str, default: bool) -> bool:
            value = section.get(name, default)
            if not isinstance(value, bool):
                raise StoreError(f"[store] {name} must be true or false")
            return value

        prefix = section.get("prefix", DEFAULT_PREFIX)
        if not isinstance(prefix, str) or not prefix or any(c.isspace() for c in prefix):
            raise StoreError("[store] prefix must be a non-empty word without spaces")
        if username is not None and (not isinstance(username, str) or not username):
            raise StoreError("[store] username must be a non-empty string")
        settings = cls(
            url=url,
            username=username,
            password_file=path("password_file"),
            password_keyring=flag("password_keyring", False),
            tls_ca_file=path("tls_ca_file"),
            tls_cert_file=path("tls_cert_file"),
            tls_key_file=path("tls_key_file"),
            prefix=prefix,
            timeout_s=number("timeout_s", DEFAULT_TIMEOUT_S, 0.1, 14.0),
            lease_ttl_s=number("lease_ttl_s", DEFAULT_LEASE_TTL_S, 0.5, 300.0),
            serve_cached_when_unreachable=flag("serve_cached_when_unreachable", True),
        )
        if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
            raise StoreError("[store] tls_cert_file and tls_key_file go together")
        if parts.scheme != "rediss" and settings.tls_ca_file is not None:
            raise StoreError("[store] tls_ca_file needs a rediss:// url")
        return settings

    @classmethod
    def from_store_settings(cls, section: StoreSettings) -> RedisSettings:
        """From the typed ``[store]`` table (``credproxy.settings``): the keys it sets."""
        given = msgspec.structs.asdict(section)
        return cls.from_section({k: v for k, v in given.items() if v is not None})

    def password(self) -> str | None:
        """From ``password_file``, else CREDPROXY_REDIS_PASSWORD, else the keyring; never argv."""
        if self.password_file is not None:
            return _read_password_file(self.password_file)
        value = os.environ.get(PASSWORD_ENV)
        if value:
            return value
        if self.password_keyring:
            from credproxy.store.secretservice import SecretService

            found = SecretService().get(self.keyring_entry)
            if not found:
                raise StoreError(
                    f"no Redis password in the keyring for {self.keyring_entry}; store it with "
                    "`credproxy store redis-password`"
                )
            return found
        return None

    @property
    def keyring_entry(self) -> str:
        return f"redis-password/{self.username or 'default'}@{self.location}"


def _read_password_file(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise StoreError(f"cannot read the Redis password file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise StoreError(
                f"the Redis password file {path} is readable by other users; run: chmod 600 {path}"
            )
        data = handle.read(MAX_PASSWORD_BYTES + 1)
    text = data.decode("utf-8", errors="replace").strip()
    if not text or len(data) > MAX_PASSWORD_BYTES or "\n" in text:
        raise StoreError(f"the Redis password file {path} must hold one line")
    return text


@dataclass
class _Cached:
    """A record as last seen: its version and plaintext (None: no record). Each read
    decodes the plaintext again, so a caller that edits what it got edits its own copy."""

    version: int
    plain: bytes | None
    checked_at: float
    epoch: int


@dataclass
class _LeaseScope:
    """The lease the current task holds, and the versions it read under it."""

    store: RedisStore
    key: str
    owner: str
    versions: dict[str, int] = field(default_factory=dict)


_SCOPE: contextvars.ContextVar[_LeaseScope | None] = contextvars.ContextVar(
    "credproxy_redis_lease", default=None
)


class RedisStore(RecordStore):
    """A ``CredentialStore`` on Redis; see the module docstring."""

    def __init__(
        self,
        settings: RedisSettings,
        key_settings: KeySettings | None = None,
        key_directory: Path | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._key_settings = key_settings or KeySettings(source="keyfile")
        self._key_directory = key_directory or Path(".")
        self._monotonic = monotonic
        self._clock = clock
        p = settings.prefix
        self._header_key = f"{p}:header"
        self._index_key = f"{p}:index"
        self.channel = f"{p}:changes"
        self._sealer: Sealer | None = None
        self._client: Any = None
        self._password: tuple[str | None] | None = None
        self._scripts: dict[str, Any] = {}
        self._opening: asyncio.Lock | None = None
        self._cache: dict[str, _Cached] = {}
        self._epoch = 0
        self._subscribed = False
        self._subscriber: asyncio.Task[None] | None = None
        self._closed = False
        self._unreachable_since: float | None = None
        self.record_locks = RedisLeases(self)
        """The cross-host record locks ``store.writepath`` holds for each read-merge-write."""

    # --- connection ---------------------------------------------------------------

    async def _new_client(self, *, read_timeout_s: float | None) -> Any:
        """A client (it connects on first use); the password is read once, off the loop,
        since a keyring lookup blocks on D-Bus."""
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        s = self.settings
        if self._password is None:
            self._password = (await asyncio.to_thread(s.password),)
        options: dict[str, Any] = {
            "username": s.username,
            "password": self._password[0],
            "socket_timeout": read_timeout_s,
            "socket_connect_timeout": s.timeout_s,
            "retry": Retry(NoBackoff(), 0),
        }
        if urlsplit(s.url).scheme == "rediss":
            options["ssl_ca_certs"] = str(s.tls_ca_file) if s.tls_ca_file else None
            if s.tls_cert_file is not None and s.tls_key_file is not None:
                options["ssl_certfile"] = str(s.tls_cert_file)
                options["ssl_keyfile"] = str(s.tls_key_file)
        return Redis.from_url(s.url, **options)

    def _unreachable(self, exc: BaseException | None) -> StoreUnavailableError:
        if self._unreachable_since is None:
            self._unreachable_since = self._monotonic()
            log.warning(
                "the Redis store at %s is unreachable (%s)",
                self.settings.location,
                _reason(exc),
            )
        return StoreUnavailableError(
            f"the Redis store at {self.settings.location} is unreachable ({_reason(exc)}); "
            "check that Redis runs and this host can reach it, then retry"
        )

    async def _call(self, operation: Callable[[Any], Awaitable[T]]) -> T:
        """One bounded Redis exchange; connection trouble becomes ``StoreUnavailableError``."""
        from redis.exceptions import (
            AuthenticationError,
            ConnectionError,
            NoPermissionError,
            RedisError,
        )
        from redis.exceptions import TimeoutError as RedisTimeout

        if self._closed:
            raise StoreError("the Redis store was closed")
        if self._client is None:
            self._client = await self._new_client(read_timeout_s=self.settings.timeout_s)
        try:
            # wait_for, not asyncio.timeout: the server may run a handler's first
            # step before it has a task of its own.
            result = await asyncio.wait_for(operation(self._client), self.settings.timeout_s)
        except (AuthenticationError, NoPermissionError) as exc:
            raise StoreError(
                f"Redis at {self.settings.location} refused the store's user "
                f"{self.settings.username or 'default'} ({_reason(exc)}); check [store] username "
                "and its password, and the user's ACL (it needs the keys and channels "
                f"{self.settings.prefix}:*)"
            ) from None
        except (ConnectionError, RedisTimeout, TimeoutError, OSError) as exc:
            raise self._unreachable(exc) from None
        except RedisError as exc:
            raise StoreError(
                f"Redis at {self.settings.location} answered with an error ({_reason(exc)}); "
                "check that it is a writable primary and that the store's user may run scripts"
            ) from None
        if self._unreachable_since is not None:
            log.warning("the Redis store at %s is reachable again", self.settings.location)
            self._unreachable_since = None
        return result

    async def _script(self, name: str, source: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            client = self._client if self._client is not None else await self._connected()
            script = self._scripts[name] = client.register_script(source)
        return script

    async def _connected(self) -> Any:
        await self._call(lambda c: c.ping())
        return self._client

    async def connect(self) -> None:
        """Connect, read (or create) the header, check the data key, subscribe to changes.

        Called by the first operation; the daemon calls it at start so a wrong key is
        reported at once. Redis being down here is an error of this call only.
        """
        if self._sealer is not None:
            return
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._sealer is not None:
                return
            header = await self._read_header()
            if header is None:
                fresh = await asyncio.to_thread(new_sealer, self._key_settings, self._key_directory)
                fields = {
                    "format": FORMAT,
                    "version": str(FORMAT_VERSION),
                    "store_id": fresh.store_id,
                    "key": msgspec.json.encode(fresh.key_info).decode(),
                    "check": fresh.check,
                }
                flat = [item for pair in fields.items() for item in pair]
                script = await self._script("header", _CREATE_HEADER_SCRIPT)
                await self._call(lambda c: script(keys=[self._header_key], args=flat))
                header = await self._read_header()
                if header is None:
                    raise StoreError(f"the Redis store header {self._header_key} vanished")
            where = f"the Redis store {self._header_key} at {self.settings.location}"
            sample = await self._sample_records()
            self._sealer = await asyncio.to_thread(
                functools.partial(
                    open_sealer,
                    self._key_settings,
                    self._key_directory,
                    header,
                    where=where,
                    header_name=where,
                    sealed_records=lambda: sample,
                )
            )
            if self._subscriber is None:
                self._subscriber = asyncio.get_running_loop().create_task(
                    self._follow_changes(), name="credproxy-redis-changes"
                )

    async def _sample_records(self) -> list[tuple[str, bytes | None]]:
        """A few sealed records, so that a key check that fails can be told apart from
        a wrong key (``sealing.open_sealer``)."""
        ids: list[bytes] = await self._call(lambda c: c.srandmember(self._index_key, 3))
        sample: list[tuple[str, bytes | None]] = []
        for raw in ids:
            record_id = raw.decode("utf-8", "replace")
            read = operator.methodcaller("hget", self._record_key(record_id), "c")
            sample.append((record_id, await self._call(read)))
        return sample

    @property
    def key_source(self) -> str:
        return self._sealer.key_source if self._sealer is not None else ""

    async def _read_header(self) -> dict[str, Any] | None:
        raw: dict[bytes, bytes] = await self._call(lambda c: c.hgetall(self._header_key))
        if not raw:
            return None
        header: dict[str, Any] = {
            k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in raw.items()
        }
        if header.get("format") != FORMAT:
            raise StoreError(
                f"{self._header_key} at {self.settings.location} is not a credproxy store "
                "header; choose another [store] prefix"
            )
        if header.get("version") != str(FORMAT_VERSION):
            raise StoreError(
                f"the Redis store {self.settings.prefix} has format version "
                f"{header.get('version')!r}; this credproxy reads version {FORMAT_VERSION}. "
                "Upgrade credproxy"
            )
        try:
            header["key"] = msgspec.json.decode(header.get("key", ""))
        except msgspec.DecodeError:
            header["key"] = None
        return header

    async def _ready(self) -> Sealer:
        if self._sealer is None:
            await self.connect()
        assert self._sealer is not None
        return self._sealer

    # --- change subscription --------------------------------------------------------

    async def _follow_changes(self) -> None:
        """Drop cached records other hosts changed; resubscribe forever with backoff.

        While not subscribed every read checks the version with Redis; each new
        subscription starts a new epoch, so entries cached before it are checked once.
        """
        pause = _RESUBSCRIBE_MIN_S
        while not self._closed:
            client = None
            pubsub = None
            try:
                client = await self._new_client(read_timeout_s=None)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                async with asyncio.timeout(self.settings.timeout_s):
                    await pubsub.subscribe(self.channel)
                    await pubsub.get_message(timeout=0)
                self._epoch += 1
                self._subscribed = True
                pause = _RESUBSCRIBE_MIN_S
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._subscribed:
                    log.warning(
                        "lost the change subscription of the Redis store at %s (%s); "
                        "checking versions on every read until it is back",
                        self.settings.location,
                        _reason(exc),
                    )
                self._subscribed = False
            finally:
                self._subscribed = False
                for closer in (pubsub, client):
                    if closer is not None:
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(closer.aclose(), 1.0)
            await asyncio.sleep(pause)
            pause = min(pause * 2, _RESUBSCRIBE_MAX_S)

    async def _listen(self, pubsub: Any) -> None:
        """Hand change notices to ``_invalidate``; ping when idle, and give up on a
        connection that stays silent (Redis frozen, the network cut) so that reads
        go back to checking versions instead of trusting a dead subscription."""
        limit = self.settings.timeout_s
        heard = self._monotonic()
        pinged = False
        while True:
            message = await pubsub.get_message(timeout=min(1.0, limit))
            now = self._monotonic()
            if message is not None:
                heard, pinged = now, False
                if message.get("type") == "message":
                    self._invalidate(message.get("data"))
                continue
            if now - heard > 2 * limit:
                raise TimeoutError("the subscription stopped answering")
            if now - heard > limit and not pinged:
                await pubsub.ping()
                pinged = True

    def _invalidate(self, data: object) -> None:
        if not isinstance(data, bytes):
            return
        if data.startswith(b"lease "):
            self.record_locks.released(data[6:].decode("utf-8", "replace"))
            return
        record_id, _, version = data.decode("utf-8", "replace").rpartition(" ")
        entry = self._cache.get(record_id)
        if entry is None:
            return
        try:
            newer = int(version) > entry.version
        except ValueError:
            newer = True
        if newer:
            self._cache.pop(record_id, None)

    @property
    def subscribed(self) -> bool:
        return self._subscribed

    # --- records ----------------------------------------------------------------------

    def _scope(self) -> _LeaseScope | None:
        """The lease this task holds on this store, if any."""
        scope = _SCOPE.get()
        return scope if scope is not None and scope.store is self else None

    def _record_key(self, record_id: str) -> str:
        return f"{self.settings.prefix}:rec:{record_id}"

    async def _fetch(self, record_id: str) -> tuple[int, bytes | None]:
        key = self._record_key(record_id)
        version, blob = await self._call(lambda c: c.hmget(key, "v", "c"))
        return (int(version) if version is not None else 0), blob

    def _fresh_from_cache(self, record_id: str) -> _Cached | None:
        entry = self._cache.get(record_id)
        if (
            entry is not None
            and self._subscribed
            and entry.epoch == self._epoch
            and self._monotonic() - entry.checked_at < CACHE_RECHECK_S
        ):
            return entry
        return None

    async def _load_record(self, record_id: str) -> Any:
        sealer = await self._ready()
        scope = self._scope()
        if scope is None:
            hit = self._fresh_from_cache(record_id)
            if hit is not None:
                return _decoded(record_id, hit.plain)
        version, blob = await self._fetch(record_id)
        if scope is not None:
            scope.versions[record_id] = version
        entry = self._cache.get(record_id)
        if entry is not None and entry.version == version:
            plain = entry.plain
        else:
            plain = None if blob is None else sealer.unseal(record_id, blob)
        value = _decoded(record_id, plain)
        self._cache[record_id] = _Cached(version, plain, self._monotonic(), self._epoch)
        return value

    async def _store_record(self, record_id: str, value: dict[str, Any] | None) -> bool:
        sealer = await self._ready()
        plain = None if value is None else msgspec.json.encode(value)
        blob = b"" if plain is None else sealer.seal(record_id, plain)
        script = await self._script("write", _WRITE_SCRIPT)
        scope = self._scope()
        expected = scope.versions.get(record_id) if scope is not None else None
        for _ in range(_BLIND_WRITE_ATTEMPTS):
            if expected is None:
                expected, _ = await self._fetch(record_id)
            record_key = self._record_key(record_id)
            keys = [record_key, self._index_key, scope.key if scope else record_key]
            args = [expected, blob, record_id, self.channel, scope.owner if scope else ""]
            answer: list[int] = await self._call(_run_script(script, keys, args))
            outcome, version = int(answer[0]), int(answer[1])
            if outcome == -1:
                raise StoreConflictError(
                    f"this host's lease on the stored {describe(record_id)} ran out before it "
                    "could save; nothing was overwritten, retry"
                )
            if outcome == 0:
                if scope is not None and record_id in scope.versions:
                    raise StoreConflictError(
                        f"another host changed the stored {describe(record_id)} first; "
                        "nothing was overwritten, retry"
                    )
                expected = None
                continue
            if scope is not None:
                scope.versions[record_id] = version
            stored = plain if outcome == 1 else None
            self._cache[record_id] = _Cached(version, stored, self._monotonic(), self._epoch)
            return outcome == 1
        raise StoreConflictError(
            f"the stored {describe(record_id)} kept changing under this write; retry"
        )

    async def _record_ids(self) -> list[str]:
        await self._ready()
        members: set[bytes] = await self._call(lambda c: c.smembers(self._index_key))
        return sorted(m.decode("utf-8", "replace") for m in members)

    # --- the down-Redis policy -----------------------------------------------------------

    async def get_token(self, provider: str, bucket: str) -> Token | None:
        try:
            return await super().get_token(provider, bucket)
        except StoreUnavailableError:
            cached = self._cached_when_unreachable(f"token/{provider}/{bucket}")
            if cached is None:
                raise
            expiry = cached.get("expiry")
            if isinstance(expiry, int | float) and not isinstance(expiry, bool):
                live = expiry > self._clock()
                if live:
                    return dict(cached)
            raise

    async def get_key(self, name: str) -> str | None:
        try:
            return await super().get_key(name)
        except StoreUnavailableError:
            cached = self._cached_when_unreachable(f"key/{name}")
            if cached is not None and isinstance(cached.get("value"), str):
                value: str = cached["value"]
                return value
            raise

    def _cached_when_unreachable(self, record_id: str) -> dict[str, Any] | None:
        if not self.settings.serve_cached_when_unreachable or self._scope() is not None:
            return None
        entry = self._cache.get(record_id)
        if entry is None:
            return None
        value = _decoded(record_id, entry.plain)
        return value if isinstance(value, dict) else None

    # --- status and shutdown -----------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """For ``credproxy status``: where, whether it answers, round trip, subscription."""
        report: dict[str, Any] = {
            "backend": "redis",
            "location": self.settings.location,
            "prefix": self.settings.prefix,
            "tls": urlsplit(self.settings.url).scheme == "rediss",
            "user": self.settings.username or "default",
        }
        report["reachable"] = False
        started = self._monotonic()
        try:
            await self._call(lambda c: c.ping())
            report["reachable"] = True
            report["roundTripMs"] = round((self._monotonic() - started) * 1000.0, 2)
            await self._ready()
            report["records"] = len(await self._record_ids())
            report["keySource"] = self.key_source
            report["subscribed"] = self._subscribed
        except StoreError as exc:
            report["error"] = str(exc)
        return report

    async def close(self) -> None:
        self._closed = True
        if self._subscriber is not None:
            self._subscriber.cancel()
            with contextlib.suppress(BaseException):
                await self._subscriber
            self._subscriber = None
        if self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.aclose(), 2.0)
            self._client = None
        self._cache.clear()


def _decoded(record_id: str, plain: bytes | None) -> Any:
    return None if plain is None else decode_value(record_id, plain)


def _run_script(script: Any, keys: list[Any], args: list[Any]) -> Callable[[Any], Awaitable[Any]]:
    def run(client: Any) -> Awaitable[Any]:
        return script(keys=keys, args=args, client=client)  # type: ignore[no-any-return]

    return run


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "TimeoutError":
        return "no answer in time"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text[:160] if text else type(exc).__name__


class RedisLeases:
    """Cross-host record locks: ``hold(name)`` like ``store.writepath.RecordLocks``.

    In process, ``store.writepath.RecordLocks`` (without lock files) queues this
    daemon's own holders.
    Across hosts, a lease ``P:lease:<name>`` set with NX to a random owner token
    and a time to live, renewed at a third of it while held, and released with a
    compare-and-delete, so a holder whose lease ran out never releases another's;
    the release is published, so waiting hosts try again at once.
    A holder that dies (SIGKILL, lost host) blocks the others for at most the time
    to live. While the lease is held, reads of the store go to Redis and its writes
    compare-and-set against the versions read and the lease's owner.
    """

    def __init__(self, store: RedisStore, *, wait_s: float = DEFAULT_LEASE_WAIT_S) -> None:
        self._store = store
        self._wait_s = wait_s
        self._local = RecordLocks(None, timeout_s=wait_s)
        self._waiting: dict[str, asyncio.Event] = {}
        self.acquired = 0

    def released(self, lease_key: str) -> None:
        """A release notice: wake this daemon's waiter for that lease, if any."""
        waiter = self._waiting.get(lease_key)
        if waiter is not None:
            waiter.set()

    def _key(self, name: str) -> str:
        return f"{self._store.settings.prefix}:lease:{name}"

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        async with self._local.hold(name), self._lease(name):
            yield

    @contextlib.asynccontextmanager
    async def _lease(self, name: str) -> AsyncIterator[None]:
        store = self._store
        await store.connect()
        lease_key = self._key(name)
        owner = secrets.token_hex(16)
        ttl_ms = int(store.settings.lease_ttl_s * 1000)
        deadline = store._monotonic() + self._wait_s
        pause = _LEASE_POLL_MIN_S
        while True:
            woken = self._waiting[lease_key] = asyncio.Event()
            try:
                if await store._call(lambda c: c.set(lease_key, owner, nx=True, px=ttl_ms)):
                    break
                if store._monotonic() + pause >= deadline:
                    raise self._stuck(name)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), pause)
            finally:
                self._waiting.pop(lease_key, None)
            pause = min(pause * 2, _LEASE_POLL_MAX_S)
        self.acquired += 1
        renewal = asyncio.get_running_loop().create_task(
            self._renew(lease_key, owner, ttl_ms), name="credproxy-redis-lease"
        )
        token = _SCOPE.set(_LeaseScope(store, lease_key, owner))
        try:
            yield
        finally:
            _SCOPE.reset(token)
            renewal.cancel()
            with contextlib.suppress(BaseException):
                await renewal
            release = await store._script("release", _RELEASE_SCRIPT)
            with contextlib.suppress(StoreError):
                await store._call(lambda c: release(keys=[lease_key], args=[owner, store.channel]))

    async def _renew(self, lease_key: str, owner: str, ttl_ms: int) -> None:
        store = self._store
        renew = await store._script("renew", _RENEW_SCRIPT)
        while True:
            await asyncio.sleep(ttl_ms / 3000.0)
            try:
                kept = await store._call(lambda c: renew(keys=[lease_key], args=[owner, ttl_ms]))
            except StoreError:
                continue
            if not kept:
                log.warning(
                    "lost the lease %s before finishing; its writes will be refused", lease_key
                )
                return

    def _stuck(self, name: str) -> StoreError:
        return StoreError(
            f"the stored credential stayed locked by another credproxy host for "
            f"{self._wait_s:g} s (Redis lease {self._key(name)}); retry"
        )
