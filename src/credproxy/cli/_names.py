"""Name checks shared by the commands that take a provider, bucket or key name.

The daemon would refuse a malformed name too, but only with the schema's
wording and as a host-side failure; checked while parsing, the user gets a
usage error that says which characters a name may hold.
"""

from __future__ import annotations

import click

_KINDS = {"provider": "provider", "bucket": "bucket", "name": "key"}


def check_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A click callback: refuse anything outside the protocol's name pattern."""
    from credproxy.protocol.ops import NAME_RE

    if not NAME_RE.match(value):
        kind = _KINDS.get(param.name or "", param.name or "")
        raise click.BadParameter(f"invalid {kind} name: use 1 to 64 of A-Z a-z 0-9 . _ @ -")
    return value
