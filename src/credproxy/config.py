"""The host configuration file: where it lives and how it is read.

One TOML file (default ``$XDG_CONFIG_HOME/credproxy/config.toml``, or the path
in ``CREDPROXY_CONFIG``). Each subsystem parses its own table: ``[store]`` by
``credproxy.store``, ``[providers.NAME]`` by ``credproxy.oauth``. A missing
file means embedded defaults; a malformed one is an error that names the file
and the line, never a silent fallback.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from credproxy.config_mode import ConfigModeError, check_config_file_mode

CONFIG_ENV = "CREDPROXY_CONFIG"


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


def default_config_path() -> Path:
    override = os.environ.get(CONFIG_ENV)
    if override:
        return Path(override)
    from platformdirs import user_config_path

    return user_config_path("credproxy") / "config.toml"


def load_config(path: Path | None = None) -> dict[str, Any]:
    """The parsed file, or ``{}`` when the default file does not exist."""
    explicit = path is not None or bool(os.environ.get(CONFIG_ENV))
    target = path if path is not None else default_config_path()
    try:
        raw = target.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {target} does not exist") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {target}: {exc.strerror}") from None
    try:
        settings = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {target} is not valid TOML: {exc}") from None
    try:
        check_config_file_mode(target, settings)
    except ConfigModeError as exc:
        raise ConfigError(str(exc)) from None
    return settings
