"""One small adapter per provider that departs from the RFCs, chosen by ``adapter``.

Everything else about a provider is configuration (presets.py). An adapter
holds only what configuration cannot say:

- ``github``: poll and token errors come inside HTTP 200 under GitHub's own
  codes (docs.github.com, "Authorizing OAuth apps", error table); they are
  mapped onto the RFC 6749 / RFC 8628 codes they mean. The ``interval`` of a
  ``slow_down`` answer is honoured by the device flow for every provider.
- ``microsoft``: Entra ID's device flow says ``authorization_declined`` where
  RFC 8628 says ``access_denied``, and ``bad_verification_code`` for an unknown
  device code (learn.microsoft.com, "OAuth 2.0 device authorization grant").
- ``anthropic``: the token request carries the ``state`` of the login, the
  half after ``#`` on Anthropic's code page (LLxprt anthropic-device-flow.ts,
  opencode-anthropic-auth ``exchange()``).
- ``codex``: OpenAI's refresh errors (``refresh_token_reused`` and its
  siblings, codex-rs ``classify_refresh_token_failure``) mean the grant is
  gone; and its device login (``CodexDeviceFlow``) is not RFC 8628: JSON
  requests, "pending" as HTTP 403/404, and a server that issues the PKCE
  verifier with the authorization code (codex-rs ``device_code_auth.rs``);
  that flow is in ``codex_device.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from credproxy.settings import AdapterName

if TYPE_CHECKING:
    from credproxy.oauth.config import ProviderConfig


@dataclass(frozen=True, slots=True)
class Adapter:
    error_aliases: Mapping[str, str] = field(default_factory=dict)
    """The provider's own error codes, and the registered codes they mean."""
    exchange_sends_state: bool = False


ADAPTERS: Final[dict[AdapterName, Adapter]] = {
    "github": Adapter(
        error_aliases={
            "incorrect_device_code": "invalid_grant",
            "bad_verification_code": "invalid_grant",
            "incorrect_client_credentials": "invalid_client",
            "device_flow_disabled": "unauthorized_client",
        }
    ),
    "microsoft": Adapter(
        error_aliases={
            "authorization_declined": "access_denied",
            "bad_verification_code": "invalid_grant",
        }
    ),
    "anthropic": Adapter(exchange_sends_state=True),
    "codex": Adapter(
        error_aliases={
            "refresh_token_reused": "invalid_grant",
            "refresh_token_expired": "invalid_grant",
            "refresh_token_invalidated": "invalid_grant",
        }
    ),
}
_PLAIN: Final = Adapter()


def adapter_of(provider: ProviderConfig) -> Adapter:
    return ADAPTERS[provider.adapter] if provider.adapter is not None else _PLAIN
