"""Who else may read or write the configuration file.

The config names the OAuth servers credproxy trusts and may hold a
``client_secret``. A file anyone can write lets anyone send the user's logins
to a server of their choosing, so it is refused; a secret others can read is
a warning, since many OAuth clients' secrets are not secret by design.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any


class ConfigModeError(Exception):
    """The configuration file is writable by others; the message says the fix."""


def check_config_file_mode(path: Path, settings: dict[str, Any]) -> None:
    """Refuse a world-writable config file; warn on stderr when others can read a
    ``client_secret`` in it."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return
    if mode & stat.S_IWOTH:
        raise ConfigModeError(
            f"refusing config file {path}: every user can write it (mode {mode:04o}) and so "
            f"choose where your logins go; run: chmod go-w {path}"
        )
    if mode & (stat.S_IRGRP | stat.S_IROTH) and _holds_client_secret(settings):
        sys.stderr.write(
            f"credproxy: warning: config file {path} holds a client_secret and other users "
            f"can read it (mode {mode:04o}); run: chmod 600 {path}\n"
        )


def _holds_client_secret(value: object) -> bool:
    if isinstance(value, dict):
        return any(
            (key == "client_secret" and bool(item)) or _holds_client_secret(item)
            for key, item in value.items()
        )
    if isinstance(value, list):
        return any(_holds_client_secret(item) for item in value)
    return False
