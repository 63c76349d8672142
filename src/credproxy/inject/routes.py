"""Routes: where a credential may go, as ``[routes.NAME]`` tables and built-in presets.

A route names one upstream base URL, one credential (an API key or an OAuth
access token), the one slot it goes in (a header with a format, or a query
parameter), the methods and path globs allowed, and the environment variables
a sandboxed program reads its base URL and stand-in from. A config table whose
name is a preset's starts from that preset; any field it sets replaces the
preset's. ``credproxy.settings`` parses the tables into ``RouteConfig`` and
``InjectConfig`` (refusing unknown keys with the nearest name);
``parse_routes`` lays them over the presets and checks what only makes
sense once merged.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal
from urllib.parse import urlsplit

import msgspec

if TYPE_CHECKING:
    from credproxy.settings import ConfigError

ROUTE_NAME_RE: Final = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")
ENV_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
HEADER_NAME_RE: Final = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}\Z")
QUERY_NAME_RE: Final = re.compile(r"^[A-Za-z0-9._~-]{1,128}\Z")
CREDENTIAL_NAME_RE: Final = re.compile(r"^[A-Za-z0-9._@-]{1,64}\Z")
STAND_IN_PREFIX_RE: Final = re.compile(r"^[A-Za-z0-9._-]{0,32}\Z")
ALLOWED_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
DEFAULT_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
FORBIDDEN_SLOT_HEADERS: Final = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-authenticate",
        "cookie",
    }
)
MAX_PATH_GLOBS: Final = 64


class RouteConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One ``[routes.NAME]`` table, or a preset, exactly as written (checked by ``build_route``).

    Every key is optional so a table can override a preset's key by key; ``None``
    means "not written" (TOML has no null) and ``build_route`` fills the defaults.
    """

    upstream: str | None = None
    key: str | None = None
    token: str | None = None
    header: str | None = None
    format: str | None = None
    """Default ``"{}"``."""
    query: str | None = None
    basic_user: str | None = None
    alt_header: str | None = None
    alt_format: str | None = None
    """Default ``"Bearer {}"``."""
    methods: list[str] | None = None
    """Default: GET HEAD POST PUT PATCH DELETE OPTIONS."""
    paths: list[str] | None = None
    """Default ``["/**"]``."""
    base_url_env: str | None = None
    secret_env: str | None = None
    stand_in_prefix: str | None = None
    websocket: bool | None = None
    allow_private: bool | None = None


PRESETS: Final[dict[str, RouteConfig]] = {
    "anthropic": RouteConfig(
        upstream="https://api.anthropic.com",
        key="anthropic",
        header="x-api-key",
        alt_header="authorization",
        methods=["GET", "POST"],
        paths=["/v1/**"],
        base_url_env="ANTHROPIC_BASE_URL",
        secret_env="ANTHROPIC_API_KEY",
    ),
    "anthropic-oauth": RouteConfig(
        upstream="https://api.anthropic.com",
        token="anthropic",
        header="authorization",
        format="Bearer {}",
        methods=["GET", "POST"],
        paths=["/v1/**"],
        base_url_env="ANTHROPIC_BASE_URL",
        secret_env="ANTHROPIC_AUTH_TOKEN",
    ),
    "openai": RouteConfig(
        upstream="https://api.openai.com/v1",
        key="openai",
        header="authorization",
        format="Bearer {}",
        methods=["GET", "POST", "DELETE"],
        base_url_env="OPENAI_BASE_URL",
        secret_env="OPENAI_API_KEY",
    ),
    "gemini": RouteConfig(
        upstream="https://generativelanguage.googleapis.com",
        key="gemini",
        header="x-goog-api-key",
        methods=["GET", "POST"],
        base_url_env="GOOGLE_GEMINI_BASE_URL",
        secret_env="GEMINI_API_KEY",
        stand_in_prefix="AIza",
    ),
    "github": RouteConfig(
        upstream="https://api.github.com",
        key="github",
        header="authorization",
        format="token {}",
        base_url_env="GITHUB_API_URL",
        secret_env="GH_TOKEN",
    ),
}
"""Anthropic's OAuth route passes the client's own ``anthropic-beta`` header
through untouched, as every vendor header is."""


@dataclass(frozen=True, slots=True)
class Route:
    """A checked route. ``base_path`` is the upstream URL's path without a trailing slash."""

    name: str
    scheme: str
    host: str
    port: int
    base_path: str
    credential_kind: str
    """``key`` or ``token``."""
    credential: str
    bucket: str
    header: str | None
    format: str
    alt_header: str | None
    """A second header the client may present the stand-in in (e.g. Anthropic's SDKs
    send an API key as ``Authorization: Bearer``); the secret goes where it was found."""
    alt_format: str
    query: str | None
    basic_user: str | None
    methods: frozenset[str]
    path_patterns: tuple[re.Pattern[str], ...]
    base_url_env: str | None
    secret_env: str | None
    stand_in_prefix: str | None
    websocket: bool
    allow_private: bool

    @property
    def origin(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")

    def allows_path(self, path: str) -> bool:
        return any(p.match(path) for p in self.path_patterns)


def glob_to_regex(glob: str) -> re.Pattern[str]:
    """``*`` matches within one path segment, ``**`` across segments."""
    if not glob.startswith("/") or len(glob) > 512:
        raise ValueError(f"path glob {glob!r} must start with '/' (and be under 512 characters)")
    out = []
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _config_error(message: str) -> ConfigError:
    # Imported on use: credproxy.settings imports this module's structs.
    from credproxy.settings import ConfigError

    return ConfigError(message)


def _check_slot(
    config: RouteConfig, fmt: str, alt_fmt: str, fail: Callable[[str], ConfigError]
) -> None:
    """The one place the credential goes: a header (with a format) or a query parameter."""
    if (config.header is None) == (config.query is None):
        raise fail("set exactly one slot: header = NAME or query = NAME")
    if config.header is not None:
        if not HEADER_NAME_RE.match(config.header):
            raise fail("header: not a valid header name")
        if config.header.lower() in FORBIDDEN_SLOT_HEADERS:
            raise fail(f"header: {config.header} cannot carry a credential")
    if config.alt_header is not None:
        if config.header is None or not HEADER_NAME_RE.match(config.alt_header):
            raise fail("alt_header: needs header, and a valid header name")
        if config.alt_header.lower() in FORBIDDEN_SLOT_HEADERS | {config.header.lower()}:
            raise fail(f"alt_header: {config.alt_header} cannot carry a credential")
        if alt_fmt.count("{}") != 1 or any(ord(c) < 0x20 for c in alt_fmt):
            raise fail('alt_format: must contain "{}" exactly once and no control characters')
    if config.query is not None and not QUERY_NAME_RE.match(config.query):
        raise fail("query: use A-Z a-z 0-9 . _ ~ -")
    if fmt.count("{}") != 1 or any(ord(c) < 0x20 or c == "\x7f" for c in fmt):
        raise fail('format: must contain "{}" exactly once and no control characters')
    if config.basic_user is not None:
        if config.header is None or config.header.lower() != "authorization":
            raise fail('basic_user: needs header = "authorization"')
        if fmt != "Basic {}" or not CREDENTIAL_NAME_RE.match(config.basic_user):
            raise fail('basic_user: needs format = "Basic {}" and a plain user name')


def build_route(name: str, config: RouteConfig) -> Route:
    """Check one route and fill its defaults; errors name the route and field, never a secret."""

    def fail(message: str) -> ConfigError:
        return _config_error(f"[routes.{name}] {message}")

    if not ROUTE_NAME_RE.match(name):
        raise fail("route names use 1 to 64 of A-Z a-z 0-9 . _ -")
    if config.upstream is None:
        raise fail('upstream: missing; give the https:// base URL, e.g. upstream = "https://..."')
    allow_private = bool(config.allow_private)
    parts = urlsplit(config.upstream)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise fail("upstream: must be an https:// base URL")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise fail("upstream: no user, query or fragment allowed in the base URL")
    host = parts.hostname.lower()
    if parts.scheme == "http" and not _is_loopback_host(host):
        raise fail("upstream: http:// is allowed only on loopback; use https://")
    if _is_loopback_host(host) and not allow_private:
        raise fail("upstream: a loopback upstream needs allow_private = true")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise fail("upstream: invalid port") from None
    if (config.key is None) == (config.token is None):
        raise fail('set exactly one of key = "NAME" or token = "PROVIDER[:BUCKET]"')
    if config.key is not None:
        kind, credential, bucket = "key", config.key, ""
    else:
        kind = "token"
        credential, _, bucket = (config.token or "").partition(":")
        bucket = bucket or "default"
    if not CREDENTIAL_NAME_RE.match(credential) or not CREDENTIAL_NAME_RE.match(bucket or "x"):
        raise fail(f"{kind}: names use 1 to 64 of A-Z a-z 0-9 . _ @ -")
    fmt = config.format if config.format is not None else "{}"
    alt_fmt = config.alt_format if config.alt_format is not None else "Bearer {}"
    _check_slot(config, fmt, alt_fmt, fail)
    methods = {m.upper() for m in (DEFAULT_METHODS if config.methods is None else config.methods)}
    if not methods or not methods <= ALLOWED_METHODS:
        raise fail(f"methods: choose from {', '.join(sorted(ALLOWED_METHODS))}")
    paths = config.paths if config.paths is not None else ["/**"]
    if not paths or len(paths) > MAX_PATH_GLOBS:
        raise fail(f"paths: give 1 to {MAX_PATH_GLOBS} globs")
    try:
        patterns = tuple(glob_to_regex(g) for g in paths)
    except ValueError as exc:
        raise fail(f"paths: {exc}") from None
    for field_name in ("base_url_env", "secret_env"):
        value = getattr(config, field_name)
        if value is not None and not ENV_NAME_RE.match(value):
            raise fail(f"{field_name}: not an environment variable name")
    if config.stand_in_prefix is not None and not STAND_IN_PREFIX_RE.match(config.stand_in_prefix):
        raise fail("stand_in_prefix: up to 32 of A-Z a-z 0-9 . _ -")
    return Route(
        name=name,
        scheme=parts.scheme,
        host=host,
        port=port,
        base_path=parts.path.rstrip("/"),
        credential_kind=kind,
        credential=credential,
        bucket=bucket,
        header=config.header.lower() if config.header is not None else None,
        format=fmt,
        alt_header=config.alt_header.lower() if config.alt_header is not None else None,
        alt_format=alt_fmt,
        query=config.query,
        basic_user=config.basic_user,
        methods=frozenset(methods),
        path_patterns=patterns,
        base_url_env=config.base_url_env,
        secret_env=config.secret_env,
        stand_in_prefix=config.stand_in_prefix,
        websocket=bool(config.websocket),
        allow_private=allow_private,
    )


class InjectConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The ``[inject]`` table.

    ``resolve`` maps upstream host names to addresses, as ``curl --resolve``
    does (a mapped address is checked like a resolved one); ``tunnel`` is what
    ``--intercept`` does with a CONNECT to a host it does not intercept.
    """

    resolve: dict[str, str] = msgspec.field(default_factory=dict)
    tunnel: Literal["refuse", "blind"] = "refuse"


def check_inject_config(config: InjectConfig) -> None:
    """What the schema cannot say: every ``resolve`` value is an IP address."""
    for host, address in config.resolve.items():
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise _config_error(
                f"[inject] resolve.{host}: {address!r} is not an IP address"
            ) from None


_PAIRED_KEYS: Final = (("key", "token"), ("header", "query"))
"""Setting one of a pair in a table drops the preset's other: a route has one credential
and one slot."""


def _over_preset(preset: RouteConfig | None, table: RouteConfig) -> RouteConfig:
    """``table``'s written keys laid over ``preset``'s."""
    if preset is None:
        return table
    written = {
        name: value
        for name in RouteConfig.__struct_fields__
        if (value := getattr(table, name)) is not None
    }
    dropped: dict[str, None] = {}
    for pair in _PAIRED_KEYS:
        if any(k in written for k in pair):
            dropped.update(dict.fromkeys(pair))
    if ("header" in written or "query" in written) and "alt_header" not in written:
        dropped["alt_header"] = None
    return msgspec.structs.replace(preset, **{**dropped, **written})


def parse_routes(tables: Mapping[str, RouteConfig]) -> dict[str, Route]:
    """The presets, with the config's ``[routes.NAME]`` tables laid over them, checked."""
    merged = dict(PRESETS)
    for name, table in tables.items():
        merged[name] = _over_preset(PRESETS.get(name), table)
    return {name: build_route(name, config) for name, config in merged.items()}
