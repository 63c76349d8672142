"""The ``credproxy`` command.

One click group; each room of the house registers its commands from its own
module. Command modules import heavy dependencies (aiohttp, rich, the server)
inside the command functions, so ``credproxy token get`` inside a sandbox
starts fast.
"""

from __future__ import annotations

import click

from credproxy import __version__

GETTING_STARTED = (
    "\b\nOn the host, to begin:\n"
    "  credproxy key set NAME              store an API key (hidden prompt or stdin)\n"
    "  credproxy token import P --file F   store an OAuth token from a JSON file\n"
    "  credproxy login P                   or log in (providers: docs/providers.md)\n"
    "  credproxy status                    what the store holds, never values\n"
    "  credproxy serve                     run the daemon; it prints what to export\n"
    "  credproxy run --allow P -- CMD      run CMD sandboxed with a private daemon\n"
    "Commands, exit codes and --json output: docs/cli.md."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=GETTING_STARTED)
@click.version_option(__version__, prog_name="credproxy")
def main() -> None:
    """Keep credentials on the host; hand sandboxes only what their grant allows.

    On the host, `credproxy serve` runs the daemon. Inside a sandbox (where
    LLXPRT_CREDENTIAL_SOCKET is set) the other commands talk to it; on the
    host without that variable they work on the store directly.
    """


@main.group()
def token() -> None:
    """OAuth tokens: read (sandbox) or manage (host)."""


@main.group()
def key() -> None:
    """API keys: read (sandbox) or manage (host)."""


from credproxy.cli import login as _login  # noqa: E402, F401  (registers `login`, `logout`)
from credproxy.cli import run as _run  # noqa: E402, F401  (registers `credproxy run`)
from credproxy.cli import sandbox as _sandbox  # noqa: E402, F401  (token get, key get/list, status)
from credproxy.cli import serve as _serve  # noqa: E402, F401  (registers `credproxy serve`)
from credproxy.cli import store_commands as _store  # noqa: E402, F401  (key set/rm, token import/rm, import)
