"""Built-in provider presets: endpoints, scopes and wire quirks, never a client id.

A preset is a ``[providers.NAME]`` table written in advance. The user's table
of the same name (or one with ``preset = "NAME"``) overrides it key by key;
the client id (and, where the provider issues one, the client secret) is
always the user's own, registered in a few minutes at the provider. Every
value and its source is listed in docs/providers.md.

``{base_url}`` in an endpoint stands for the table's ``base_url``, so a
self-managed GitLab or another Entra tenant is one key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from credproxy.settings import ProviderTable


@dataclass(frozen=True, slots=True)
class Preset:
    table: ProviderTable
    register: str
    """One line: what to register at the provider, and where."""
    needs_secret: bool = False
    """The provider issues a secret with the client id, and its token endpoint wants it."""


PRESETS: Final[dict[str, Preset]] = {
    "github": Preset(
        ProviderTable(
            adapter="github",
            flow="device_code",
            base_url="https://github.com",
            authorization_endpoint="{base_url}/login/oauth/authorize",
            token_endpoint="{base_url}/login/oauth/access_token",
            device_authorization_endpoint="{base_url}/login/device/code",
            scopes=["repo", "read:org", "gist"],
            default_expires_in="never",
        ),
        register=(
            "register an OAuth App (tick 'Enable Device Flow') at "
            "https://github.com/settings/applications/new"
        ),
    ),
    "google": Preset(
        ProviderTable(
            flow="browser_redirect",
            issuer="https://accounts.google.com",
            redirect_path="/oauth2callback",
            scopes=[
                "https://www.googleapis.com/auth/cloud-platform",
                "https://www.googleapis.com/auth/userinfo.email",
                "https://www.googleapis.com/auth/userinfo.profile",
            ],
            auth_params={"access_type": "offline", "prompt": "consent"},
            token_auth_method="client_secret_post",
        ),
        register=(
            "create an OAuth client of type 'Desktop app' at "
            "https://console.cloud.google.com/apis/credentials"
        ),
        needs_secret=True,
    ),
    "microsoft": Preset(
        ProviderTable(
            adapter="microsoft",
            flow="device_code",
            base_url="https://login.microsoftonline.com/organizations",
            authorization_endpoint="{base_url}/oauth2/v2.0/authorize",
            token_endpoint="{base_url}/oauth2/v2.0/token",
            device_authorization_endpoint="{base_url}/oauth2/v2.0/devicecode",
            redirect_host="localhost",
            scopes=["openid", "profile", "offline_access"],
        ),
        register=(
            "register an application (Mobile and desktop redirect http://localhost, "
            "'Allow public client flows' on) at "
            "https://entra.microsoft.com/#view/Microsoft_AAD_RegisteredApps"
        ),
    ),
    "gitlab": Preset(
        ProviderTable(
            flow="device_code",
            base_url="https://gitlab.com",
            authorization_endpoint="{base_url}/oauth/authorize",
            token_endpoint="{base_url}/oauth/token",
            device_authorization_endpoint="{base_url}/oauth/authorize_device",
            revocation_endpoint="{base_url}/oauth/revoke",
            scopes=["read_api", "read_user"],
        ),
        register=(
            "add an application (not confidential, redirect http://127.0.0.1/callback) at "
            "https://gitlab.com/-/user_settings/applications"
        ),
    ),
    "anthropic": Preset(
        ProviderTable(
            adapter="anthropic",
            flow="pkce_redirect",
            authorization_endpoint="https://claude.ai/oauth/authorize",
            token_endpoint="https://platform.claude.com/v1/oauth/token",
            redirect_uri="https://console.anthropic.com/oauth/code/callback",
            scopes=["org:create_api_key", "user:profile", "user:inference"],
            auth_params={"code": "true"},
            token_encoding="json",
        ),
        register=(
            "Anthropic issues none to third parties, so only one that your agreement with "
            "Anthropic grants will do (docs/providers.md, anthropic)"
        ),
    ),
    "codex": Preset(
        ProviderTable(
            adapter="codex",
            flow="browser_redirect",
            base_url="https://auth.openai.com",
            authorization_endpoint="{base_url}/oauth/authorize",
            token_endpoint="{base_url}/oauth/token",
            device_authorization_endpoint="{base_url}/api/accounts/deviceauth/usercode",
            redirect_host="localhost",
            redirect_port=1455,
            redirect_path="/auth/callback",
            scopes=["openid", "profile", "email", "offline_access"],
            auth_params={"id_token_add_organizations": "true", "codex_cli_simplified_flow": "true"},
        ),
        register=(
            "OpenAI issues none to third parties, so only one that your agreement with "
            "OpenAI grants will do (docs/providers.md, codex)"
        ),
    ),
}
