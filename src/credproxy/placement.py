"""Names the daemon's socket placement shares with the sandbox launcher.

``credproxy run`` must keep every daemon's socket directory out of a sandbox,
so it needs the directory's name without importing the server.
"""

from __future__ import annotations

from typing import Final

DIR_PREFIX: Final = "credproxy-"
"""Socket directories are ``<runtime dir>/credproxy-<uid>``."""
