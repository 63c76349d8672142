"""What the two commands that run a daemon, ``serve`` and ``run``, share.

The grant flags mean the same in both, so they are declared, checked and
turned into a ``Grant`` here once; and both read the configuration the same
way, checking the ``[providers]`` and ``[oauth]`` tables at start-up so a
typo there is a one-line error before any store is opened, not a failure at
the first login.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from credproxy.grants import Grant
    from credproxy.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

CONFIG_HELP = (
    "Configuration file (default: $CREDPROXY_CONFIG, else $XDG_CONFIG_HOME/credproxy/config.toml)."
)
STORE_HELP = "Store backend (default: [store] backend in the config, else file)."
STORE_BACKENDS = ("file", "keyring", "memory", "redis")
"""A copy of ``credproxy.settings.STORE_BACKENDS``: the sandbox-side commands carry ``--store``
and must not load the settings module; tests/settings pins the two equal."""


def store_choice() -> click.Choice[str]:
    """The one way ``--store`` is typed, so every ``--help`` shows [file|keyring|memory|redis]."""
    return click.Choice(STORE_BACKENDS)


def grant_options(holder: str) -> Callable[[F], F]:
    """``--allow``, ``--allow-key``, ``--allow-save``, ``--allow-remove``; ``holder``
    says in ``--help`` who receives the grant."""
    options = (
        click.option(
            "--allow",
            multiple=True,
            metavar="PROVIDER[:BUCKET]",
            help=f"Let {holder} read (and refresh, log in to) this provider (every bucket) "
            "or one bucket. Repeatable.",
        ),
        click.option(
            "--allow-key",
            multiple=True,
            metavar="NAME",
            help=f"Let {holder} read this API key. Repeatable.",
        ),
        click.option("--allow-save", is_flag=True, help=f"Let {holder} save tokens it may read."),
        click.option(
            "--allow-remove", is_flag=True, help=f"Let {holder} remove tokens it may read."
        ),
    )

    def decorate(function: F) -> F:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def config_option(function: F) -> F:
    return click.option(
        "--config",
        "config",
        type=click.Path(dir_okay=False, path_type=Path),
        help=CONFIG_HELP,
    )(function)


def store_options(function: F) -> F:
    """``--store`` and ``--config`` for the commands that open the host store."""
    function = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=CONFIG_HELP,
    )(function)
    return click.option("--store", "backend", type=store_choice(), default=None, help=STORE_HELP)(
        function
    )


def check_names(allow: tuple[str, ...], allow_key: tuple[str, ...]) -> None:
    """Refuse a malformed ``--allow`` or ``--allow-key`` before anything starts."""
    from credproxy.protocol.ops import NAME_RE as name

    for entry in allow:
        parts = entry.split(":")
        if len(parts) > 2 or not all(name.match(part) for part in parts):
            raise click.BadParameter(
                f"{entry!r} is not PROVIDER or PROVIDER:BUCKET (names use A-Z a-z 0-9 . _ @ -)",
                param_hint="--allow",
            )
    for key in allow_key:
        if not name.match(key):
            raise click.BadParameter(f"{key!r} is not a valid key name", param_hint="--allow-key")


def build_grant(
    allow: tuple[str, ...],
    allow_key: tuple[str, ...],
    allow_save: bool,
    allow_remove: bool,
    label: str,
    *,
    id_prefix: str = "run",
) -> Grant:
    """A grant holding exactly the flags; no flag means no access at all."""
    import secrets

    from credproxy.grants import Grant

    check_names(allow, allow_key)
    return Grant(
        grant_id=f"{id_prefix}-{secrets.token_hex(8)}",
        providers=frozenset(allow),
        keys=frozenset(allow_key),
        can_save=allow_save,
        can_remove=allow_remove,
        label=label,
    )


def load_settings(config: Path | None) -> Settings:
    """The configuration, with every provider table already resolved over its preset.

    Raises ``ConfigError``.
    """
    from credproxy.oauth.config import ProviderRegistry
    from credproxy.settings import load_settings as load

    settings = load(config)
    ProviderRegistry.from_settings(settings)
    return settings


def warn_unknown_providers(allow: tuple[str, ...], settings: Settings, stored: list[str]) -> None:
    """``--allow NAME`` for a name that no preset, config table or stored token knows:
    say so, with the nearest known name, but go on (a token may be saved under it later)."""
    from credproxy.oauth.config import ProviderRegistry, nearest_name

    known = [*ProviderRegistry.from_settings(settings).known_names(), *stored]
    for entry in allow:
        name = entry.split(":", 1)[0]
        if name in known:
            continue
        close = nearest_name(name, known)
        hint = f"; did you mean {close!r}?" if close else ""
        click.echo(
            f"warning: --allow {entry}: no preset, [providers.{name}] table or stored "
            f"token is named {name!r}{hint}",
            err=True,
        )
