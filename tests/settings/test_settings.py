"""The config file is parsed once, into typed structs: any unknown table or key, anywhere,
stops every command that reads the file with one line naming the file, the line, the key
and the nearest valid name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from credproxy.inject.routes import InjectConfig, RouteConfig
from credproxy.settings import ConfigError, load_settings
from tests.fixtures.daemon import daemon_env

STORE = '[store]\nbackend = "memory"\n'
TYPOS = [
    pytest.param(
        "[stroe]\nbackend = 'memory'\n", 1, "unknown table [stroe]", "'store'", id="table"
    ),
    pytest.param(
        "[store]\nbackned = 'keyring'\n",
        2,
        "unknown key 'backned' in [store]",
        "'backend'",
        id="key",
    ),
    pytest.param(
        STORE
        + "[providers.x]\nclient_id = 'c'\nflow = 'device_code'\ntoken_endpiont = 'https://a'\n",
        6,
        "unknown key 'token_endpiont' in [providers.x]",
        "'token_endpoint'",
        id="provider-key",
    ),
    pytest.param(
        STORE + "[providers.github]\nclient_idd = 'c'\n",
        4,
        "unknown key 'client_idd' in [providers.github]",
        "'client_id'",
        id="preset-override",
    ),
    pytest.param(
        STORE + "[oauth]\nmax_session = 4\n",
        4,
        "unknown key 'max_session' in [oauth]",
        "'max_sessions'",
        id="oauth-key",
    ),
    pytest.param(
        STORE + "[routes.mine]\nupstream = 'https://x.test'\nkey = 'k'\nheaderr = 'x-api-key'\n",
        6,
        "unknown key 'headerr' in [routes.mine]",
        "'header'",
        id="route-key",
    ),
    pytest.param(
        STORE + "[routes.anthropic]\nsecret_evn = 'MY_KEY'\n",
        4,
        "unknown key 'secret_evn' in [routes.anthropic]",
        "'secret_env'",
        id="route-preset-override",
    ),
    pytest.param(
        STORE + "[inject]\ntunel = 'blind'\n",
        4,
        "unknown key 'tunel' in [inject]",
        "'tunnel'",
        id="inject-key",
    ),
]
COMMANDS = [
    ("serve",),
    ("run", "--sandbox", "none", "--", "true"),
    ("login", "github"),
    ("status",),
]


def credproxy(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "credproxy", *args]
    where = command.index("--") if "--" in command else len(command)
    command[where:where] = ["--config", str(config)]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=daemon_env(),
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(("text", "line", "names", "nearest"), TYPOS)
def test_an_unknown_table_or_key_is_one_line_naming_file_line_key_and_nearest(
    tmp_path: Path, text: str, line: int, names: str, nearest: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert message.startswith(f"config file {config}, line {line}: {names}")
    assert message.endswith(f"did you mean {nearest}?")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_every_command_that_reads_the_config_refuses_a_typo_in_it(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[store]\nbackned = 'keyring'\n")
    done = credproxy(config, *command)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "unknown key 'backned' in [store]; did you mean 'backend'?" in lines[0]
    assert "Traceback" not in done.stderr


def test_values_of_the_wrong_type_or_range_name_the_table_and_key(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[providers.acme]\ntimeout_s = 60\n")
    with pytest.raises(ConfigError, match=r"\[providers.acme\] timeout_s: expected `float` <= 15"):
        load_settings(config)
    config.write_text("[store]\nbackend = 'sqlite'\n")
    with pytest.raises(ConfigError, match=r"\[store\] backend: invalid enum value 'sqlite'"):
        load_settings(config)
    config.write_text("[routes.mine]\nmethods = 'GET'\n")
    with pytest.raises(ConfigError, match=r"\[routes.mine\] methods: expected `array`"):
        load_settings(config)
    config.write_text("[inject]\ntunnel = 'open'\n")
    with pytest.raises(ConfigError, match=r"\[inject\] tunnel: invalid enum value 'open'"):
        load_settings(config)


def test_routes_and_inject_tables_come_out_typed_with_only_the_written_keys(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        "[routes.anthropic]\nkey = 'work'\n"
        "[inject]\ntunnel = 'blind'\nresolve = { 'api.test' = '127.0.0.1' }\n"
    )
    settings = load_settings(config)
    assert settings.routes == {"anthropic": RouteConfig(key="work")}
    assert settings.inject == InjectConfig(resolve={"api.test": "127.0.0.1"}, tunnel="blind")


def test_no_default_file_means_defaults_but_a_missing_explicit_one_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDPROXY_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "nothing"))
    settings = load_settings()
    assert settings.path is None and settings.providers == {}
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")


def test_store_option_offers_exactly_the_backends_the_config_accepts() -> None:
    from credproxy.cli._daemon_options import store_choice
    from credproxy.settings import STORE_BACKENDS

    assert tuple(store_choice().choices) == STORE_BACKENDS == ("file", "keyring", "memory", "redis")
