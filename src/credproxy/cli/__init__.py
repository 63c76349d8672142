"""The ``credproxy`` command.

One click group; each room of the house registers its commands from its own
module, which is imported only when one of its commands runs (see
``_group.LazyGroup``). Command modules also import heavy dependencies
(aiohttp, the server) inside the command functions, so
``credproxy token get`` inside a sandbox loads the client and nothing else.
"""

from __future__ import annotations

import click

from credproxy import __version__
from credproxy.cli._group import CredproxyGroup, LazyGroup

_SANDBOX = "credproxy.cli.sandbox"
_STORE = "credproxy.cli.store_commands"
_LOGIN = "credproxy.cli.login"

GETTING_STARTED = (
    "\b\nOn the host, to begin:\n"
    "  credproxy key set NAME              store an API key (hidden prompt or stdin)\n"
    "  credproxy token import P --file F   store an OAuth token from a JSON file\n"
    "  credproxy providers                 the ready-made providers and what each needs\n"
    "  credproxy login P                   or log in (providers: docs/providers.md)\n"
    "  credproxy status                    what the store holds, never values\n"
    "  credproxy serve                     run the daemon; it prints what to export\n"
    "  credproxy run --allow P -- CMD      run CMD sandboxed with a private daemon\n"
    "Commands, exit codes and --json output: docs/cli.md."
)


@click.group(
    cls=CredproxyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=GETTING_STARTED,
    lazy={
        "doctor": "credproxy.cli.doctor",
        "import": _STORE,
        "login": _LOGIN,
        "logout": _LOGIN,
        "providers": "credproxy.cli.providers",
        "run": "credproxy.cli.run",
        "serve": "credproxy.cli.serve",
        "status": _SANDBOX,
        "store": _STORE,
    },
)
@click.version_option(__version__, prog_name="credproxy")
def main() -> None:
    """Keep credentials on the host; hand sandboxes only what their grant allows.

    On the host, `credproxy serve` runs the daemon. Inside a sandbox (where
    LLXPRT_CREDENTIAL_SOCKET is set) token get, key get, key list, status,
    login and logout talk to it; without that variable they work on the store
    directly. key set/rm, token import/rm, import, store, run and doctor always
    work on the host.
    """
    _sweep_leftovers()


def _sweep_leftovers() -> None:
    """On the host, remove sockets and full-access capability files that daemons
    killed without cleaning up left in $XDG_RUNTIME_DIR/credproxy-UID, so such a
    file lives only until the next credproxy command, not the next daemon.
    Inside a sandbox there is nothing of ours to sweep."""
    from credproxy.client.env import in_sandbox

    if in_sandbox():
        return
    from credproxy.server.listener import sweep_runtime_dir

    sweep_runtime_dir()


@main.group(cls=LazyGroup, lazy={"get": _SANDBOX, "import": _STORE, "rm": _STORE})
def token() -> None:
    """OAuth tokens: read (sandbox) or manage (host)."""


@main.group(cls=LazyGroup, lazy={"get": _SANDBOX, "list": _SANDBOX, "set": _STORE, "rm": _STORE})
def key() -> None:
    """API keys: read (sandbox) or manage (host)."""
