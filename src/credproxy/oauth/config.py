"""OAuth providers: the built-in presets merged with the user's ``[providers.NAME]`` tables.

The config file's types and ranges are checked once, by the schema in
``credproxy.settings``; this module merges each table over its preset and
checks the rules that involve several keys (a flow needs its endpoint, a
client auth method needs its secret, endpoints must be https). Endpoints
come either from the merged table or from OpenID Connect Discovery 1.0
(``/.well-known/openid-configuration``, section 4), whose ``issuer`` must
equal the configured issuer exactly (section 4.3) so a redirected or spoofed
document cannot point logins elsewhere. Every error names the provider and
the key; the client secret never appears in one.
"""

from __future__ import annotations

import asyncio
import difflib
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import urlsplit

import msgspec

from credproxy.oauth.errors import OAuthFlowError, provider_not_found
from credproxy.oauth.http import MAX_CALL_TIMEOUT_S, OAuthHttp
from credproxy.oauth.presets import PRESETS, Preset
from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.protocol.messages import FLOW_TYPES, FlowType
from credproxy.settings import (
    AdapterName,
    BodyEncoding,
    ConfigError,
    ProviderTable,
    Settings,
    TokenAuthMethod,
)

DEFAULT_POLL_INTERVAL_S: Final = 5.0
DEFAULT_TOKEN_LIFETIME_S: Final = 3600
"""Used when a token response has no ``expires_in`` (RFC 6749 5.1 makes it optional)."""
DISCOVERY_PATH: Final = "/.well-known/openid-configuration"
_ENDPOINT_FIELDS: Final = (
    "authorization_endpoint",
    "token_endpoint",
    "device_authorization_endpoint",
    "revocation_endpoint",
)
_RESERVED_AUTH_PARAMS: Final = frozenset(
    {
        "client_id",
        "response_type",
        "redirect_uri",
        "scope",
        "state",
        "code_challenge",
        "code_challenge_method",
    }
)
_LOOPBACK_HOSTS: Final = frozenset({"localhost"})
Origin = Literal["preset", "config", "preset+config"]


class ProviderConfigError(ConfigError):
    """One provider table cannot be used; the message names the provider and the field."""


class MissingClientError(ProviderConfigError):
    """A preset that still needs the user's own client id (or secret)."""


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where one provider's flows send the user and the host."""

    authorization: str | None
    token: str
    device_authorization: str | None = None
    revocation: str | None = None
    issuer: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    client_id: str
    flow: FlowType
    client_secret: str | None = field(default=None, repr=False)
    token_auth_method: TokenAuthMethod = "none"
    scopes: tuple[str, ...] = ()
    issuer: str | None = None
    base_url: str | None = None
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    device_authorization_endpoint: str | None = None
    revocation_endpoint: str | None = None
    redirect_uri: str | None = None
    redirect_host: Literal["127.0.0.1", "localhost"] = "127.0.0.1"
    redirect_port: int | None = None
    redirect_path: str = "/callback"
    auth_params: Mapping[str, str] = field(default_factory=dict)
    device_pkce: bool = False
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    timeout_s: float = MAX_CALL_TIMEOUT_S
    adapter: AdapterName | None = None
    token_encoding: BodyEncoding = "form"
    default_expires_in: float | None = DEFAULT_TOKEN_LIFETIME_S
    """Lifetime of a token whose response has no ``expires_in``; None: it does not expire."""

    @property
    def scope(self) -> str:
        return " ".join(self.scopes)

    def client_auth(self) -> tuple[dict[str, str], tuple[str, str] | None]:
        """Form fields and HTTP Basic credentials that identify the client (RFC 6749 2.3.1)."""
        if self.client_secret is not None and self.token_auth_method == "client_secret_basic":
            return {}, (self.client_id, self.client_secret)
        form = {"client_id": self.client_id}
        if self.client_secret is not None and self.token_auth_method == "client_secret_post":
            form["client_secret"] = self.client_secret
        return form, None

    def static_endpoints(self) -> Endpoints | None:
        """The endpoints given in the table, or None when discovery must supply them."""
        if self.token_endpoint is None:
            return None
        return Endpoints(
            authorization=self.authorization_endpoint,
            token=self.token_endpoint,
            device_authorization=self.device_authorization_endpoint,
            revocation=self.revocation_endpoint,
            issuer=self.issuer,
        )


def _fail(provider: str, field_name: str, why: str) -> ProviderConfigError:
    return ProviderConfigError(f"[providers.{provider}] {field_name}: {why}")


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint_url(value: object) -> str | None:
    """``None`` if ``value`` is an acceptable endpoint URL, else the reason."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if not value.isprintable() or " " in value:
        # The URL is printed on the user's terminal: no control or escape sequences.
        return "must not contain spaces or control characters"
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "must be an absolute http(s) URL"
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        return "must use https (plain http is allowed only on the loopback interface)"
    if parts.fragment:
        return "must not have a fragment"
    return None


def merged_table(
    name: str, table: ProviderTable | None
) -> tuple[ProviderTable, Preset | None, Origin]:
    """The preset (named by ``preset``, else like the table) with the table's keys over it."""
    preset_name = table.preset if table is not None and table.preset is not None else name
    preset = PRESETS.get(preset_name)
    if table is not None and table.preset is not None and preset is None:
        raise _fail(
            name,
            "preset",
            f"no preset named {table.preset!r}{_nearest_hint(table.preset, PRESETS)}",
        )
    if preset is None:
        if table is None:
            raise ProviderConfigError(f"no provider {name!r}")
        return table, None, "config"
    if table is None:
        return preset.table, preset, "preset"
    overrides = {
        key: getattr(table, key)
        for key in table.__struct_fields__
        if getattr(table, key) is not None and key != "preset"
    }
    if "auth_params" in overrides and preset.table.auth_params:
        overrides["auth_params"] = {**preset.table.auth_params, **overrides["auth_params"]}
    return msgspec.structs.replace(preset.table, **overrides), preset, "preset+config"


def _nearest_hint(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def nearest_name(name: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to a mistyped ``name`` (difflib), if any is close."""
    close = difflib.get_close_matches(name, sorted(set(choices)), n=1, cutoff=0.6)
    return close[0] if close else None


def _expand(name: str, key: str, value: str | None, base_url: str | None) -> str | None:
    if value is None or "{base_url}" not in value:
        return value
    if base_url is None:
        raise _fail(name, "base_url", f"is required by {key}")
    return value.replace("{base_url}", base_url.rstrip("/"))


def resolve_provider(name: str, table: ProviderTable | None) -> ProviderConfig:
    """One provider from its preset and table; raises ``MissingClientError`` when only
    the user's client id (or secret) is missing, ``ProviderConfigError`` otherwise."""
    merged, preset, _ = merged_table(name, table)
    if merged.client_id is None:
        where = f"[providers.{name}] client_id"
        if preset is not None:
            raise MissingClientError(
                f"{name} needs your own client id: {preset.register}; then set {where} "
                "in the credproxy config"
            )
        raise _fail(name, "client_id", "is required")
    method = merged.token_auth_method
    if method is None:
        method = "none" if merged.client_secret is None else "client_secret_basic"
    if method != "none" and merged.client_secret is None:
        if preset is not None and preset.needs_secret:
            raise MissingClientError(
                f"{name} needs the client secret issued with your client id; "
                f"set [providers.{name}] client_secret"
            )
        raise _fail(name, "client_secret", f"is required by token_auth_method = {method!r}")
    flow = merged.flow
    if flow is None:
        raise _fail(name, "flow", f"is required: one of {', '.join(FLOW_TYPES)}")
    base_url = merged.base_url
    if base_url is not None:
        _check_url(name, "base_url", base_url)
    urls: dict[str, str | None] = {}
    for key in ("issuer", *_ENDPOINT_FIELDS, "redirect_uri"):
        value = _expand(name, key, getattr(merged, key), base_url)
        if value is not None:
            _check_url(name, key, value)
        urls[key] = value
    if urls["issuer"] is None:
        if urls["token_endpoint"] is None:
            raise _fail(name, "token_endpoint", "is required when no issuer is configured")
        if flow == "device_code" and urls["device_authorization_endpoint"] is None:
            raise _fail(name, "device_authorization_endpoint", "is required by flow device_code")
        if flow != "device_code" and urls["authorization_endpoint"] is None:
            raise _fail(name, "authorization_endpoint", f"is required by flow {flow}")
    if flow == "pkce_redirect" and urls["redirect_uri"] is None:
        raise _fail(name, "redirect_uri", "is required by flow pkce_redirect (the code page)")
    params = dict(merged.auth_params or {})
    reserved = sorted(set(params) & _RESERVED_AUTH_PARAMS)
    if reserved:
        raise _fail(name, f"auth_params.{reserved[0]}", "is set by credproxy itself")
    scopes = merged.scopes if merged.scopes is not None else []
    if isinstance(scopes, str):
        scopes = scopes.split()
    lifetime = merged.default_expires_in
    return ProviderConfig(
        name=name,
        client_id=merged.client_id,
        flow=flow,
        client_secret=merged.client_secret,
        token_auth_method=method,
        scopes=tuple(scopes),
        issuer=urls["issuer"],
        base_url=base_url,
        authorization_endpoint=urls["authorization_endpoint"],
        token_endpoint=urls["token_endpoint"],
        device_authorization_endpoint=urls["device_authorization_endpoint"],
        revocation_endpoint=urls["revocation_endpoint"],
        redirect_uri=urls["redirect_uri"],
        redirect_host=merged.redirect_host or "127.0.0.1",
        redirect_port=merged.redirect_port,
        redirect_path=merged.redirect_path or "/callback",
        auth_params=params,
        device_pkce=bool(merged.device_pkce),
        poll_interval_s=merged.poll_interval_s or DEFAULT_POLL_INTERVAL_S,
        timeout_s=merged.timeout_s or MAX_CALL_TIMEOUT_S,
        adapter=merged.adapter,
        token_encoding=merged.token_encoding or "form",
        default_expires_in=(
            None if lifetime == "never" else float(lifetime or DEFAULT_TOKEN_LIFETIME_S)
        ),
    )


def _check_url(name: str, key: str, value: str) -> None:
    problem = check_endpoint_url(value)
    if problem is not None:
        raise _fail(name, key, problem)


class ProviderRegistry:
    """The usable providers, the presets still waiting for a client id, and the
    resolved endpoints (discovery cached per provider)."""

    def __init__(
        self,
        providers: Mapping[str, ProviderConfig],
        incomplete: Mapping[str, MissingClientError] | None = None,
    ) -> None:
        self._providers = dict(providers)
        self._incomplete = dict(incomplete or {})
        self._endpoints: dict[str, Endpoints] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderRegistry:
        """Every preset and every ``[providers.NAME]`` table; raises ``ProviderConfigError``
        for a table that cannot be used for another reason than a missing client id."""
        usable: dict[str, ProviderConfig] = {}
        incomplete: dict[str, MissingClientError] = {}
        for name in sorted({*PRESETS, *settings.providers}):
            try:
                usable[name] = resolve_provider(name, settings.providers.get(name))
            except MissingClientError as exc:
                incomplete[name] = exc
        return cls(usable, incomplete)

    def __contains__(self, name: object) -> bool:
        return name in self._providers

    def names(self) -> list[str]:
        return sorted(self._providers)

    def known_names(self) -> list[str]:
        """Usable providers and presets still waiting for a client id."""
        return sorted({*self._providers, *self._incomplete})

    def configs(self) -> dict[str, ProviderConfig]:
        return dict(self._providers)

    def get(self, name: str) -> ProviderConfig | None:
        return self._providers.get(name)

    def missing(self, name: str) -> MissingClientError | None:
        """Why a preset cannot log in yet, when it lacks only the user's client."""
        return self._incomplete.get(name)

    def require(self, name: str, *, visible: Callable[[str], bool] | None = None) -> ProviderConfig:
        """The provider, or a ``PROVIDER_NOT_FOUND`` that says what to register or which
        known name is closest (among presets and the names ``visible`` admits)."""
        config = self._providers.get(name)
        if config is not None:
            return config
        missing = self._incomplete.get(name)
        if missing is not None:
            raise ProxyError(ErrorCode.PROVIDER_NOT_FOUND, str(missing))
        names = [n for n in self.known_names() if n in PRESETS or visible is None or visible(n)]
        raise provider_not_found(name, nearest_name(name, names))

    async def endpoints(self, provider: ProviderConfig, http: OAuthHttp) -> Endpoints:
        """Static endpoints, or the discovery document's (fetched once, then cached)."""
        static = provider.static_endpoints()
        if static is not None and (provider.issuer is None or _complete(provider, static)):
            return static
        cached = self._endpoints.get(provider.name)
        if cached is not None:
            return cached
        lock = self._locks.setdefault(provider.name, asyncio.Lock())
        async with lock:
            cached = self._endpoints.get(provider.name)
            if cached is None:
                cached = await discover(provider, http)
                self._endpoints[provider.name] = cached
            return cached


def _complete(provider: ProviderConfig, endpoints: Endpoints) -> bool:
    if provider.flow == "device_code":
        return endpoints.device_authorization is not None
    return endpoints.authorization is not None


async def discover(provider: ProviderConfig, http: OAuthHttp) -> Endpoints:
    """Fetch and validate the issuer's discovery document; explicit endpoints win over it."""
    issuer = provider.issuer
    if issuer is None:
        raise OAuthFlowError(ErrorCode.EXCHANGE_FAILED, f"{provider.name}: no issuer configured")
    url = issuer.rstrip("/") + DISCOVERY_PATH
    response = await http.get_json(provider.name, "discovery request", url)
    document = response.body
    if response.status != 200 or not document:
        raise OAuthFlowError(
            ErrorCode.EXCHANGE_FAILED,
            f"{provider.name}: the issuer's discovery document is unavailable "
            f"(HTTP {response.status}); check issuer in [providers.{provider.name}], or "
            "configure its endpoints there instead",
        )
    if document.get("issuer") != issuer:
        raise OAuthFlowError(
            ErrorCode.EXCHANGE_FAILED,
            f"{provider.name}: the discovery document names another issuer than the configured one",
        )
    found: dict[str, str | None] = {}
    for key in _ENDPOINT_FIELDS:
        explicit = getattr(provider, key)
        value = explicit if explicit is not None else document.get(key)
        if value is not None and check_endpoint_url(value) is not None:
            raise OAuthFlowError(
                ErrorCode.EXCHANGE_FAILED,
                f"{provider.name}: the discovery document's {key} is not a usable URL",
            )
        found[key] = value
    token = found["token_endpoint"]
    if token is None:
        raise OAuthFlowError(
            ErrorCode.EXCHANGE_FAILED,
            f"{provider.name}: the discovery document has no token_endpoint",
        )
    return Endpoints(
        authorization=found["authorization_endpoint"],
        token=token,
        device_authorization=found["device_authorization_endpoint"],
        revocation=found["revocation_endpoint"],
        issuer=issuer,
    )
