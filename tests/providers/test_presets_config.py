"""Presets as configuration: overridden key by key, reused under another name, listed by
``credproxy providers``, and named when a provider name is mistyped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from credproxy.oauth.config import MissingClientError, ProviderRegistry
from credproxy.oauth.presets import PRESETS
from credproxy.settings import ConfigError
from tests.fixtures.daemon import daemon_env
from tests.fixtures.settings import provider_config, settings_of

VENDOR_CLIENT_IDS = (
    "178c6fc778ccc68e1d6a",  # GitHub CLI
    "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j",  # Gemini CLI
    "9d1c250a-e61b-44d9-88ed-5944d1962f5e",  # Claude Code
    "app_EMoamEEZ73f0CkXaXp7hrann",  # Codex CLI
)


def test_no_preset_ships_a_client_id_or_secret() -> None:
    for name, preset in PRESETS.items():
        assert preset.table.client_id is None, name
        assert preset.table.client_secret is None, name
    source = Path(__file__).resolve().parents[2] / "src" / "credproxy"
    text = "".join(p.read_text() for p in source.rglob("*.py"))
    for vendor_id in VENDOR_CLIENT_IDS:
        assert vendor_id not in text


def test_one_key_overrides_a_preset_and_the_rest_of_it_stays() -> None:
    gitlab = provider_config(
        "gitlab", {"client_id": "mine", "base_url": "https://gitlab.example.org"}
    )
    assert gitlab.token_endpoint == "https://gitlab.example.org/oauth/token"
    assert (
        gitlab.device_authorization_endpoint == "https://gitlab.example.org/oauth/authorize_device"
    )
    assert gitlab.flow == "device_code"
    assert gitlab.scopes == ("read_api", "read_user")
    loopback = provider_config("gitlab", {"client_id": "mine", "flow": "browser_redirect"})
    assert loopback.authorization_endpoint == "https://gitlab.com/oauth/authorize"


def test_an_auth_param_override_keeps_the_presets_other_params() -> None:
    google = provider_config(
        "google", {"client_id": "c", "client_secret": "s", "auth_params": {"hd": "example.org"}}
    )
    assert google.auth_params == {
        "access_type": "offline",
        "prompt": "consent",
        "hd": "example.org",
    }
    assert google.token_auth_method == "client_secret_post"


def test_a_preset_can_be_reused_under_another_name() -> None:
    work = provider_config(
        "work-gitlab",
        {"preset": "gitlab", "client_id": "c", "base_url": "https://git.work.example"},
    )
    assert work.name == "work-gitlab"
    assert work.revocation_endpoint == "https://git.work.example/oauth/revoke"


def test_a_mistyped_preset_key_names_the_nearest_preset() -> None:
    with pytest.raises(
        ConfigError,
        match=r"\[providers.x\] preset: no preset named 'githib'; did you mean 'github'\?",
    ):
        provider_config("x", {"preset": "githib", "client_id": "c"})


def test_a_preset_without_the_users_client_id_says_what_to_register_in_one_line() -> None:
    registry = ProviderRegistry.from_settings(settings_of({}))
    assert registry.names() == []
    assert registry.known_names() == sorted(PRESETS)
    missing = registry.missing("github")
    assert isinstance(missing, MissingClientError)
    assert "\n" not in str(missing)
    assert "https://github.com/settings/applications/new" in str(missing)
    assert "[providers.github] client_id" in str(missing)
    google = str(registry.missing("google"))
    assert "Desktop app" in google


def test_google_without_its_client_secret_asks_for_it() -> None:
    registry = ProviderRegistry.from_settings(
        settings_of({"providers": {"google": {"client_id": "c"}}})
    )
    assert "client_secret" in str(registry.missing("google"))


def cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = daemon_env(
        {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "data"),
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "credproxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_providers_json_lists_every_preset_and_its_needs_without_a_config_file(
    tmp_path: Path,
) -> None:
    done = cli("providers", "--json", home=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)["providers"]}
    assert set(rows) == set(PRESETS)
    for name, row in rows.items():
        assert row["source"] == "preset"
        assert row["ready"] is False
        assert row["token_stored"] is False
        assert len(row["needs"]) == 1 and "client id" in row["needs"][0], name
    assert rows["github"]["flow"] == "device_code"
    assert rows["anthropic"]["adapter"] == "anthropic"
    assert not (tmp_path / "data").exists()  # listing created no store


def test_providers_shows_a_configured_override_as_preset_plus_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[providers.github]\nclient_id = "Iv1.mine"\n[providers.corp]\nclient_id = "c"\n'
    )
    done = cli("providers", "--json", "--config", str(config), "--no-store", home=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)["providers"]}
    assert rows["github"]["source"] == "preset+config" and rows["github"]["ready"] is True
    assert rows["github"]["token_stored"] is None
    assert rows["corp"]["source"] == "config"
    assert rows["corp"]["needs"] == [
        "[providers.corp] flow: is required: one of pkce_redirect, device_code, browser_redirect"
    ]


def test_login_of_an_unready_preset_says_what_to_register_and_a_typo_gets_the_nearest_name(
    tmp_path: Path,
) -> None:
    unready = cli("login", "github", home=tmp_path)
    assert unready.returncode == 1
    assert unready.stderr.count("\n") == 1
    assert "github needs your own client id" in unready.stderr
    assert "[providers.github] client_id" in unready.stderr
    typo = cli("login", "githib", home=tmp_path)
    assert typo.returncode == 1
    assert "did you mean 'github'?" in typo.stderr


def test_allow_warns_about_a_name_nothing_knows_and_names_the_nearest(tmp_path: Path) -> None:
    done = cli("run", "--sandbox", "none", "--allow", "githib", "--", "true", home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (
        "warning: --allow githib: no preset, [providers.githib] table or stored token"
        in done.stderr
    )
    assert "did you mean 'github'?" in done.stderr
    known = cli("run", "--sandbox", "none", "--allow", "github", "--", "true", home=tmp_path)
    assert "warning" not in known.stderr


def test_a_token_that_does_not_expire_is_shown_as_such() -> None:
    from credproxy.cli.sandbox import describe_expiry
    from credproxy.tokens import NO_EXPIRY

    assert describe_expiry(NO_EXPIRY, 1_800_000_000) == "does not expire"
    assert describe_expiry(1_800_000_060, 1_800_000_000) == "expires in 1m"
