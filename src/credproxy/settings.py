"""The host configuration file, parsed once into typed structs.

One TOML file (default ``$XDG_CONFIG_HOME/credproxy/config.toml``, or the
path in ``CREDPROXY_CONFIG``). ``load_settings`` reads it, refuses any table
or key the schema does not know (naming the file, the line when it can be
found, the key and the nearest valid name), and checks types and ranges
through the msgspec schema below. Rules that involve several keys at once
(a flow that needs an endpoint, a secret that a client auth method needs)
are checked where the provider is resolved, in ``credproxy.oauth.config``.

A missing default file means embedded defaults; a missing explicit file, or a
malformed one, is an error, never a silent fallback.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin, get_type_hints

import msgspec
from msgspec import Meta

from credproxy.inject.routes import InjectConfig, RouteConfig
from credproxy.protocol.messages import FlowType
from credproxy.protocol.ops import NAME_PATTERN

CONFIG_ENV: Final = "CREDPROXY_CONFIG"
MAX_CALL_TIMEOUT_S: Final = 15.0
"""protocol.md, "Limits and timeouts": one provider call takes at most 15 s."""


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


ProviderName = Annotated[str, Meta(pattern=NAME_PATTERN)]
Text = Annotated[str, Meta(min_length=1, max_length=1024)]
Url = Annotated[str, Meta(min_length=1, max_length=2048)]
ScopeName = Annotated[str, Meta(min_length=1, max_length=256, pattern=r"^\S+\Z")]
TokenAuthMethod = Literal["client_secret_basic", "client_secret_post", "none"]
AdapterName = Literal["github", "microsoft", "anthropic", "codex"]
"""Small wire adapters for providers that depart from the RFCs (``credproxy.oauth.adapters``)."""
BodyEncoding = Literal["form", "json"]
StoreBackend = Literal["file", "keyring", "memory", "redis"]
STORE_BACKENDS: Final[tuple[StoreBackend, ...]] = get_args(StoreBackend)
"""The store backends; ``credproxy.store.factory`` opens them, ``--store`` offers them."""


class StoreSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[store]``: which backend keeps the credentials, and where."""

    backend: StoreBackend | None = None
    path: Text | None = None
    key_source: Literal["auto", "keyring", "keyfile", "passphrase"] | None = None
    key_file: Text | None = None
    # The Redis backend (docs/storage.md, "The Redis store"); cross-key rules
    # (no password in the url, TLS files with rediss://) in store.redis.RedisSettings.
    url: Url | None = None
    username: Text | None = None
    password_file: Text | None = None
    password_keyring: bool | None = None
    tls_ca_file: Text | None = None
    tls_cert_file: Text | None = None
    tls_key_file: Text | None = None
    prefix: Annotated[str, Meta(pattern=r"^\S{1,64}\Z")] | None = None
    timeout_s: Annotated[float, Meta(ge=0.1, le=14.0)] | None = None
    lease_ttl_s: Annotated[float, Meta(ge=0.5, le=300.0)] | None = None
    serve_cached_when_unreachable: bool | None = None


class OAuthSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[oauth]``: how many login sessions may be open."""

    max_sessions_per_identity: Annotated[int, Meta(ge=1, le=100_000)] = 16
    max_sessions: Annotated[int, Meta(ge=1, le=100_000)] = 1024


class ProviderTable(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[providers.NAME]``: one OAuth provider, or overrides of the preset of that name.

    Every key is optional here so a table can override a built-in preset key
    by key; ``credproxy.oauth.config`` merges it over the preset and checks
    what the result still lacks.
    """

    preset: ProviderName | None = None
    """Start from this built-in preset (default: the preset named like the table, if any)."""
    adapter: AdapterName | None = None
    client_id: Text | None = None
    client_secret: Text | None = None
    token_auth_method: TokenAuthMethod | None = None
    flow: FlowType | None = None
    scopes: list[ScopeName] | Text | None = None
    issuer: Url | None = None
    base_url: Url | None = None
    """What ``{base_url}`` stands for in the endpoints (a self-managed GitLab, an Entra tenant)."""
    authorization_endpoint: Url | None = None
    token_endpoint: Url | None = None
    device_authorization_endpoint: Url | None = None
    revocation_endpoint: Url | None = None
    redirect_uri: Url | None = None
    redirect_host: Literal["127.0.0.1", "localhost"] | None = None
    redirect_port: Annotated[int, Meta(ge=1, le=65535)] | None = None
    redirect_path: Annotated[str, Meta(pattern=r"^/[^?#\s]*\Z", max_length=256)] | None = None
    auth_params: dict[Text, Annotated[str, Meta(max_length=1024)]] | None = None
    device_pkce: bool | None = None
    poll_interval_s: Annotated[float, Meta(ge=0.01, le=600.0)] | None = None
    timeout_s: Annotated[float, Meta(ge=0.1, le=MAX_CALL_TIMEOUT_S)] | None = None
    token_encoding: BodyEncoding | None = None
    """How the token endpoint wants its requests: form (RFC 6749) or JSON."""
    default_expires_in: Annotated[int, Meta(ge=1, le=10**9)] | Literal["never"] | None = None
    """The lifetime of a token whose response has no ``expires_in``; ``never`` for
    providers whose tokens do not expire (GitHub OAuth Apps)."""


class _ConfigFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    oauth: OAuthSettings = msgspec.field(default_factory=OAuthSettings)
    providers: dict[ProviderName, ProviderTable] = msgspec.field(default_factory=dict)
    routes: dict[str, RouteConfig] = msgspec.field(default_factory=dict)
    """``[routes.NAME]``: the injection proxy's routes (``credproxy.inject.routes``)."""
    inject: InjectConfig = msgspec.field(default_factory=InjectConfig)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the host configuration says, typed. ``path`` is the file read, if any."""

    store: StoreSettings = field(default_factory=StoreSettings)
    oauth: OAuthSettings = field(default_factory=OAuthSettings)
    providers: Mapping[str, ProviderTable] = field(default_factory=dict)
    routes: Mapping[str, RouteConfig] = field(default_factory=dict)
    inject: InjectConfig = field(default_factory=InjectConfig)
    path: Path | None = None


def default_config_path() -> Path:
    override = os.environ.get(CONFIG_ENV)
    if override:
        return Path(override)
    from platformdirs import user_config_path

    return user_config_path("credproxy") / "config.toml"


def load_settings(path: Path | None = None) -> Settings:
    """The configuration file parsed and checked; embedded defaults when the default
    file does not exist. Raises ``ConfigError`` with a one-line message."""
    explicit = path is not None or bool(os.environ.get(CONFIG_ENV))
    target = path if path is not None else default_config_path()
    try:
        raw = target.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {target} does not exist") from None
        return Settings()
    except IsADirectoryError:
        raise ConfigError(f"config file {target} is a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {target}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
        document = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {target} is not valid TOML: {exc}") from None
    from credproxy.config_mode import ConfigModeError, check_config_file_mode

    try:
        check_config_file_mode(target, document)
    except ConfigModeError as exc:
        raise ConfigError(str(exc)) from None
    return parse_settings(document, source=target, text=text)


def parse_settings(
    document: Mapping[str, Any], *, source: Path | None = None, text: str | None = None
) -> Settings:
    """A parsed TOML document (or an equal mapping) checked against the schema."""
    where = f"config file {source}" if source is not None else "config"
    unknown = _first_unknown_key(document, _ConfigFile, ())
    if unknown is not None:
        keys, valid = unknown
        line = _line_of(text, keys) if text is not None else None
        at = f"{where}, line {line}" if line is not None else where
        nearest = difflib.get_close_matches(keys[-1], valid, n=1, cutoff=0.6)
        hint = f"; did you mean {nearest[0]!r}?" if nearest else f"; valid: {', '.join(valid)}"
        raise ConfigError(f"{at}: unknown {_describe(keys)}{hint}")
    # Each named table on its own: msgspec's error path does not name dict keys.
    named: dict[str, type[msgspec.Struct]] = {"providers": ProviderTable, "routes": RouteConfig}
    shell = dict(document)
    for section in named:
        tables = document.get(section, {})
        if isinstance(tables, Mapping):
            shell[section] = {key: {} for key in tables}
    try:
        parsed = msgspec.convert(shell, _ConfigFile, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {_readable(str(exc))}") from None
    converted: dict[str, dict[str, Any]] = {}
    for section, schema in named.items():
        converted[section] = {}
        for name, table in document.get(section, {}).items():
            try:
                converted[section][name] = msgspec.convert(table, schema, strict=True)
            except msgspec.ValidationError as exc:
                message = _readable(str(exc), f"{section}.{name}")
                raise ConfigError(f"{where}: {message}") from None
    return Settings(
        store=parsed.store,
        oauth=parsed.oauth,
        providers=converted["providers"],
        routes=converted["routes"],
        inject=parsed.inject,
        path=source,
    )


def _table_type(annotation: Any) -> type[msgspec.Struct] | None:
    """The struct a TOML table maps to, through ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        for member in get_args(annotation):
            found = _table_type(member)
            if found is not None:
                return found
    return None


def _first_unknown_key(
    table: Mapping[str, Any], schema: type[msgspec.Struct], keys: tuple[str, ...]
) -> tuple[tuple[str, ...], list[str]] | None:
    """The path of the first key the schema lacks, and the valid names at that level."""
    hints = get_type_hints(schema, include_extras=True)
    for key, value in table.items():
        if key not in schema.__struct_fields__:
            return (*keys, key), list(schema.__struct_fields__)
        annotation = hints[key]
        nested = _table_type(annotation)
        if nested is not None and isinstance(value, Mapping):
            found = _first_unknown_key(value, nested, (*keys, key))
            if found is not None:
                return found
        if get_origin(annotation) is dict and isinstance(value, Mapping):
            member = _table_type(get_args(annotation)[1])
            if member is not None:
                for name, sub in value.items():
                    if isinstance(sub, Mapping):
                        found = _first_unknown_key(sub, member, (*keys, key, name))
                        if found is not None:
                            return found
    return None


def _describe(keys: tuple[str, ...]) -> str:
    if len(keys) == 1:
        return f"table [{keys[0]}]"
    return f"key {keys[-1]!r} in [{'.'.join(keys[:-1])}]"


def _line_of(text: str, keys: tuple[str, ...]) -> int | None:
    """The line that introduces ``keys``: a ``[table]`` header, or ``key =`` inside it."""
    lines = text.splitlines()
    header = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+\s*(#.*)?$")

    def dotted(raw: str) -> tuple[str, ...]:
        return tuple(part.strip().strip("\"'") for part in raw.split("."))

    current: tuple[str, ...] = ()
    target_key = keys[-1]
    parent = keys[:-1]
    for number, line in enumerate(lines, start=1):
        found = header.match(line)
        if found:
            current = dotted(found[1])
            if current[: len(keys)] == keys:
                return number
            continue
        assignment = re.match(r"^\s*([A-Za-z0-9_\-\"'. ]+?)\s*=", line)
        if assignment:
            full = current + dotted(assignment[1])
            if full[: len(keys)] == keys or (current == parent and full[-1] == target_key):
                return number
    return None


def _readable(message: str, table: str = "") -> str:
    """msgspec's ``Expected X - at `$.a['b'].c``` as ``[a.b] c: expected X``."""
    text, sep, path = message.partition(" - at `")
    if not sep:
        return message
    # TOML has no null: "str | null" only says the key may be left out.
    text = (text[:1].lower() + text[1:]).replace(" | null", "")
    path = path.rstrip("`")
    if path.startswith("key` in `"):
        # A table name that breaks the name pattern (only [providers.*] has named tables).
        return "[providers.*] table names use 1 to 64 of A-Z a-z 0-9 . _ @ -"
    names = [
        name or quoted or f"[{index}]"
        for name, quoted, index in re.findall(r"\.([^.\[\]]+)|\['([^']*)'\]|\[(\d+)\]", path)
    ]
    names = [*table.split("."), *names] if table else names
    if not names:
        return text
    if len(names) == 1 and table:
        return f"[{table}]: {text}"
    index = ""
    if names[-1].startswith("[") and len(names) >= 2:
        index = names.pop()
    key = names.pop() + index
    return f"[{'.'.join(names)}] {key}: {text}" if names else f"{key}: {text}"
