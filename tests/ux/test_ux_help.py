"""Every command's ``--help`` as a new user reads it (click's runner, in process)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from credproxy import __version__
from credproxy.cli import main


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path; commands load lazily, so they are looked up by name."""
    found: list[tuple[str, ...]] = [prefix]
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


COMMANDS = _commands(main)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "credproxy")
def test_every_help_names_where_the_config_and_store_come_from(path: tuple[str, ...]) -> None:
    """``--config`` said "$CREDPROXY_CONFIG or the user config dir" in some commands and
    "$XDG_CONFIG_HOME/credproxy/config.toml" in others, and ``run``/``login`` did not
    list the store backends."""
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    if "--config FILE" in text:
        assert "$CREDPROXY_CONFIG, else $XDG_CONFIG_HOME/credproxy/config.toml" in text
    if "--store" in text:
        assert "--store [file|keyring|memory|redis]" in text
        assert "--store BACKEND" not in text


def test_every_command_is_listed() -> None:
    assert {" ".join(path) for path in COMMANDS} >= {
        "doctor",
        "import llxprt",
        "key get",
        "key list",
        "key rm",
        "key set",
        "login",
        "logout",
        "run",
        "serve",
        "status",
        "store copy",
        "store redis-password",
        "token get",
        "token import",
        "token rm",
    }


@pytest.mark.parametrize(
    "args",
    [("serve", "--allow"), ("run", "--allow"), ("token", "get", "--bucket"), ("status", "--store")],
    ids=" ".join,
)
def test_an_option_missing_its_value_prints_the_usage_lines(args: tuple[str, ...]) -> None:
    """``serve --allow`` printed the error line alone, without click's usage lines."""
    result = CliRunner().invoke(main, list(args), prog_name="credproxy")
    assert result.exit_code == 2
    lines = result.output.splitlines()
    command = " ".join(part for part in args if not part.startswith("-"))
    assert lines[0].startswith(f"Usage: credproxy {command} [OPTIONS]")
    assert lines[1] == f"Try 'credproxy {command} --help' for help."
    assert lines[-1] == f"Error: Option '{args[-1]}' requires an argument."


def test_version_is_printed() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"credproxy, version {__version__}\n"


def test_the_top_level_help_says_where_to_begin() -> None:
    """``credproxy --help`` listed the commands alphabetically and nothing else, so a new
    user could not tell that serve comes after storing something, or where docs live."""
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "On the host, to begin:" in result.output
    assert "credproxy serve" in result.output
    assert "docs/cli.md" in result.output


@pytest.mark.parametrize(
    ("args", "kind"),
    [
        (("login", "bad/name"), "provider"),
        (("login", "github", "--bucket", "a b"), "bucket"),
        (("logout", "bad/name"), "provider"),
        (("token", "get", "bad/name"), "provider"),
        (("key", "set", "bad name"), "key"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, tuple) else value,
)
def test_every_command_refuses_a_bad_name_in_the_same_words(
    args: tuple[str, ...], kind: str
) -> None:
    """``login`` and ``logout`` had their own check with other wording."""
    result = CliRunner().invoke(main, list(args), prog_name="credproxy", env={})
    assert result.exit_code == 2
    assert result.output.splitlines()[-1].endswith(
        f"invalid {kind} name: use 1 to 64 of A-Z a-z 0-9 . _ @ -"
    )
