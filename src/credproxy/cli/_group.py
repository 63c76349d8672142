"""The click group behind ``credproxy``: commands load on first use, endings are Unix's.

A command's module is imported only when that command runs (or ``--help``
lists it), so ``credproxy token get`` inside a sandbox loads the client and
nothing of the host side. Three endings every command shares are decided
here once (their wording is in ``credproxy.console``, whose click-free path
for plain sandbox commands ends them the same way):

- input cancelled at a prompt (click's, getpass's, or a blocking read):
  one line in the project's voice; exit 130 for Ctrl-C (128 + SIGINT), 1 for
  end of input (Ctrl-D);
- stdout closed by the reader (``credproxy status | head -1``): nothing on
  stderr and exit 141 (128 + SIGPIPE), what a Unix tool killed by SIGPIPE
  reports;
- everything else as click does it.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Final, NoReturn

import click

from credproxy.console import (
    EXIT_BROKEN_PIPE,
    EXIT_CANCELLED_EOF,
    EXIT_INTERRUPTED,
    report_cancelled,
    silence_stdout,
)

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_CANCELLED_EOF",
    "EXIT_INTERRUPTED",
    "PASS_THROUGH",
    "Command",
    "CredproxyGroup",
    "LazyGroup",
]

PASS_THROUGH: Final = (
    click.exceptions.Exit,
    click.ClickException,
    click.Abort,
    SystemExit,
    KeyboardInterrupt,
    EOFError,
    BrokenPipeError,
)
"""What a command's own error reporting must let reach the group untouched."""


class Command(click.Command):
    """Every credproxy command: a parse error click raises without a context gets one.

    click raises "Option '--allow' requires an argument." without a context,
    so it printed no usage lines; with the context it prints them like every
    other usage error.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if exc.ctx is None:
                exc.ctx = ctx
            raise


class LazyGroup(Command, click.Group):
    """A group whose subcommands register themselves when their module is imported.

    ``lazy`` maps a command name to the module that defines it; the module is
    imported the first time the command is looked up.
    """

    command_class = Command

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, str] = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            importlib.import_module(self.lazy[cmd_name])
        return super().get_command(ctx, cmd_name)


class CredproxyGroup(LazyGroup):
    """The top-level group: lazy, and it ends cancelled input and closed pipes cleanly."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()
        except KeyboardInterrupt:
            _cancelled(EXIT_INTERRUPTED)
        except EOFError:
            _cancelled(EXIT_CANCELLED_EOF)
        except click.Abort as exc:
            # click.prompt turns Ctrl-C and Ctrl-D into a bare Abort; the cause stays
            # in its context.
            interrupted = not isinstance(exc.__context__, EOFError)
            _cancelled(EXIT_INTERRUPTED if interrupted else EXIT_CANCELLED_EOF)
        except BrokenPipeError:
            _stdout_closed()
        return result


def _cancelled(exit_code: int) -> NoReturn:
    raise click.exceptions.Exit(report_cancelled(exit_code))


def _stdout_closed() -> NoReturn:
    raise click.exceptions.Exit(silence_stdout())
