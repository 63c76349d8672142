"""The ``credproxy`` console script: a plain sandbox-side command line runs without click.

Inside a sandbox, ``credproxy token get P`` is called often (one process per
HTTP request in some agents) and its start-up is mostly imports; click and
what it imports are a good part of them. So when ``LLXPRT_CREDENTIAL_SOCKET``
is set and the command line is one of

    token get NAME [--bucket NAME] [--json]
    key get NAME [--json]
    key list [--json]
    status [--json]

with valid names, it runs ``credproxy.client.commands`` directly. Anything
else (``--help``, a typo, a bad name, a host command) goes to the click
group, which prints the usage, errors and help; both paths print the same
output for the same command (``tests/client/test_console.py``). The endings
every command shares are here too: a cancelled prompt and a closed stdout.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Final

EXIT_CANCELLED_EOF: Final = 1
EXIT_INTERRUPTED: Final = 130
EXIT_BROKEN_PIPE: Final = 141

SOCKET_ENV: Final = "LLXPRT_CREDENTIAL_SOCKET"


def report_cancelled(exit_code: int) -> int:
    """Say that input was cancelled (Ctrl-C: 130, end of input: 1); return the code."""
    how = "Ctrl-C" if exit_code == EXIT_INTERRUPTED else "end of input"
    # At a terminal the cursor may still stand after the prompt (and its ^C).
    start = "\n" if sys.stderr.isatty() else ""
    sys.stderr.write(f"{start}credproxy: cancelled ({how}); nothing was saved\n")
    sys.stderr.flush()
    return exit_code


def silence_stdout() -> int:
    """After the reader closed stdout: point it at /dev/null, so the interpreter's final
    flush stays quiet too, and return 141 (128 + SIGPIPE) as a Unix tool reports."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)
    return EXIT_BROKEN_PIPE


def plain_sandbox_command(args: Sequence[str]) -> Callable[[], None] | None:
    """The command to run without click, or None when click must parse the line."""
    positional: list[str] = []
    as_json = False
    bucket: str | None = None
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--json":
            as_json = True
        elif arg == "--bucket" and rest:
            bucket = rest.pop(0)
        elif arg.startswith("--bucket="):
            bucket = arg.removeprefix("--bucket=")
        elif arg.startswith("-"):
            return None
        else:
            positional.append(arg)
    from credproxy.protocol.ops import NAME_RE

    names = [*positional[2:], *([] if bucket is None else [bucket])]
    if not all(NAME_RE.match(value) for value in names):
        return None
    from credproxy.client import commands

    match positional:
        case ["token", "get", provider]:
            return lambda: commands.token_get(provider, bucket or "default", as_json)
        case ["key", "get", key_name] if bucket is None:
            return lambda: commands.key_get(key_name, as_json)
        case ["key", "list"] if bucket is None:
            return lambda: commands.key_list(as_json)
        case ["status"] if bucket is None:
            return lambda: commands.status(as_json)
    return None


def main() -> None:
    command = plain_sandbox_command(sys.argv[1:]) if os.environ.get(SOCKET_ENV) else None
    if command is None:
        from credproxy.cli import main as cli

        cli()
        return
    from credproxy.client import commands

    try:
        with commands.reported_errors():
            command()
        sys.stdout.flush()
    except KeyboardInterrupt:
        sys.exit(report_cancelled(EXIT_INTERRUPTED))
    except BrokenPipeError:
        sys.exit(silence_stdout())
