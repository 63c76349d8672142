"""OAuth providers from ``[providers.NAME]`` tables of the host config.

Endpoints come either from the table or from OpenID Connect Discovery 1.0
(``/.well-known/openid-configuration``, section 4), whose ``issuer`` must equal
the configured issuer exactly (section 4.3) so a redirected or spoofed
document cannot point logins elsewhere. Endpoint URLs must be https, except
on the loopback interface. Every error names the provider and the field; the
client secret never appears in one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast
from urllib.parse import urlsplit

from credproxy.config import ConfigError
from credproxy.oauth.errors import OAuthFlowError
from credproxy.oauth.http import MAX_CALL_TIMEOUT_S, OAuthHttp
from credproxy.protocol.errors import ErrorCode
from credproxy.protocol.messages import NAME_PATTERN

FlowKind = Literal["pkce_redirect", "device_code", "browser_redirect"]
FLOW_KINDS: Final[tuple[FlowKind, ...]] = ("pkce_redirect", "device_code", "browser_redirect")
TokenAuthMethod = Literal["client_secret_basic", "client_secret_post", "none"]
DEFAULT_POLL_INTERVAL_S: Final = 5.0
DISCOVERY_PATH: Final = "/.well-known/openid-configuration"
_ENDPOINT_FIELDS: Final = (
    "authorization_endpoint",
    "token_endpoint",
    "device_authorization_endpoint",
    "revocation_endpoint",
)
_KNOWN_FIELDS: Final = frozenset(
    {
        "client_id",
        "client_secret",
        "token_auth_method",
        "scopes",
        "issuer",
        *_ENDPOINT_FIELDS,
        "flow",
        "redirect_uri",
        "redirect_port",
        "redirect_path",
        "auth_params",
        "device_pkce",
        "poll_interval_s",
        "timeout_s",
    }
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
_NAME_RE: Final = re.compile(NAME_PATTERN)
_LOOPBACK_HOSTS: Final = frozenset({"localhost"})


class ProviderConfigError(ConfigError):
    """One provider table cannot be used; the message names the provider and the field."""


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
    flow: FlowKind
    client_secret: str | None = field(default=None, repr=False)
    token_auth_method: TokenAuthMethod = "none"
    scopes: tuple[str, ...] = ()
    issuer: str | None = None
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    device_authorization_endpoint: str | None = None
    revocation_endpoint: str | None = None
    redirect_uri: str | None = None
    redirect_port: int | None = None
    redirect_path: str = "/callback"
    auth_params: Mapping[str, str] = field(default_factory=dict)
    device_pkce: bool = False
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    timeout_s: float = MAX_CALL_TIMEOUT_S

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


def _url(provider: str, table: Mapping[str, Any], name: str) -> str | None:
    value = table.get(name)
    if value is None:
        return None
    problem = check_endpoint_url(value)
    if problem is not None:
        raise _fail(provider, name, problem)
    return cast(str, value)


def _string(provider: str, table: Mapping[str, Any], name: str) -> str | None:
    value = table.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 1024:
        raise _fail(provider, name, "must be a non-empty string of at most 1024 characters")
    return value


def _number(
    provider: str, table: Mapping[str, Any], name: str, *, default: float, low: float, high: float
) -> float:
    value = table.get(name, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise _fail(provider, name, f"must be a number from {low} to {high}")
    return float(value)


def _client_fields(name: str, table: Mapping[str, Any]) -> tuple[str, str | None, TokenAuthMethod]:
    client_id = _string(name, table, "client_id")
    if client_id is None:
        raise _fail(name, "client_id", "is required")
    client_secret = _string(name, table, "client_secret")
    method = table.get("token_auth_method")
    if method is None:
        method = "none" if client_secret is None else "client_secret_basic"
    if method not in ("client_secret_basic", "client_secret_post", "none"):
        raise _fail(
            name, "token_auth_method", "must be client_secret_basic, client_secret_post or none"
        )
    if method != "none" and client_secret is None:
        raise _fail(name, "client_secret", f"is required by token_auth_method = {method!r}")
    return client_id, client_secret, cast(TokenAuthMethod, method)


def _redirect_fields(name: str, table: Mapping[str, Any]) -> tuple[int | None, str]:
    port = table.get("redirect_port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
        raise _fail(name, "redirect_port", "must be an integer from 1 to 65535")
    if port is not None and not 1 <= port <= 65535:
        raise _fail(name, "redirect_port", "must be an integer from 1 to 65535")
    path = table.get("redirect_path", "/callback")
    if not isinstance(path, str) or not path.startswith("/") or "?" in path or "#" in path:
        raise _fail(name, "redirect_path", "must be a path starting with '/'")
    return port, path


def parse_provider(name: str, table: object) -> ProviderConfig:
    """Validate one ``[providers.NAME]`` table."""
    if not _NAME_RE.match(name):
        raise ProviderConfigError(
            "provider names must be 1 to 64 of A-Z a-z 0-9 . _ @ - "
            "(a [providers.*] table has another name)"
        )
    if not isinstance(table, Mapping):
        raise _fail(name, "(table)", "must be a table")
    unknown = sorted(set(table) - _KNOWN_FIELDS)
    if unknown:
        raise _fail(name, unknown[0], "unknown field")

    client_id, client_secret, method = _client_fields(name, table)

    flow = table.get("flow")
    if flow not in FLOW_KINDS:
        raise _fail(name, "flow", f"must be one of {', '.join(FLOW_KINDS)}")
    flow_kind = cast(FlowKind, flow)

    scopes_raw = table.get("scopes", [])
    if isinstance(scopes_raw, str):
        scopes_raw = scopes_raw.split()
    if not isinstance(scopes_raw, list) or not all(
        isinstance(s, str) and s and " " not in s for s in scopes_raw
    ):
        raise _fail(name, "scopes", "must be a list of scope names without spaces")

    issuer = _url(name, table, "issuer")
    endpoints = {key: _url(name, table, key) for key in _ENDPOINT_FIELDS}
    if issuer is None:
        if endpoints["token_endpoint"] is None:
            raise _fail(name, "token_endpoint", "is required when no issuer is configured")
        if flow_kind == "device_code" and endpoints["device_authorization_endpoint"] is None:
            raise _fail(name, "device_authorization_endpoint", "is required by flow device_code")
        if flow_kind != "device_code" and endpoints["authorization_endpoint"] is None:
            raise _fail(name, "authorization_endpoint", f"is required by flow {flow_kind}")

    redirect_uri = _url(name, table, "redirect_uri")
    if flow_kind == "pkce_redirect" and redirect_uri is None:
        raise _fail(name, "redirect_uri", "is required by flow pkce_redirect (the code page)")

    port, path = _redirect_fields(name, table)

    params_raw = table.get("auth_params", {})
    if not isinstance(params_raw, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in params_raw.items()
    ):
        raise _fail(name, "auth_params", "must be a table of string values")
    reserved = sorted(set(params_raw) & _RESERVED_AUTH_PARAMS)
    if reserved:
        raise _fail(name, f"auth_params.{reserved[0]}", "is set by credproxy itself")

    device_pkce = table.get("device_pkce", False)
    if not isinstance(device_pkce, bool):
        raise _fail(name, "device_pkce", "must be true or false")

    return ProviderConfig(
        name=name,
        client_id=client_id,
        flow=flow_kind,
        client_secret=client_secret,
        token_auth_method=method,
        scopes=tuple(scopes_raw),
        issuer=issuer,
        authorization_endpoint=endpoints["authorization_endpoint"],
        token_endpoint=endpoints["token_endpoint"],
        device_authorization_endpoint=endpoints["device_authorization_endpoint"],
        revocation_endpoint=endpoints["revocation_endpoint"],
        redirect_uri=redirect_uri,
        redirect_port=port,
        redirect_path=path,
        auth_params=dict(params_raw),
        device_pkce=device_pkce,
        poll_interval_s=_number(
            name, table, "poll_interval_s", default=DEFAULT_POLL_INTERVAL_S, low=0.01, high=600.0
        ),
        timeout_s=_number(
            name, table, "timeout_s", default=MAX_CALL_TIMEOUT_S, low=0.1, high=MAX_CALL_TIMEOUT_S
        ),
    )


def parse_providers(config: Mapping[str, Any]) -> dict[str, ProviderConfig]:
    """Every ``[providers.NAME]`` table of a loaded config."""
    section = config.get("providers", {})
    if not isinstance(section, Mapping):
        raise ProviderConfigError("[providers] must be a table of provider tables")
    return {name: parse_provider(name, table) for name, table in section.items()}


class ProviderRegistry:
    """The configured providers and their resolved endpoints (discovery cached per provider)."""

    def __init__(self, providers: Mapping[str, ProviderConfig]) -> None:
        self._providers = dict(providers)
        self._endpoints: dict[str, Endpoints] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ProviderRegistry:
        return cls(parse_providers(config))

    def __contains__(self, name: object) -> bool:
        return name in self._providers

    def names(self) -> list[str]:
        return sorted(self._providers)

    def get(self, name: str) -> ProviderConfig | None:
        return self._providers.get(name)

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
