"""``credproxy providers``: every preset and configured provider, and what each still needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from credproxy.cli import main
from credproxy.cli._daemon_options import store_options

if TYPE_CHECKING:
    from credproxy.settings import Settings


def describe_providers(
    settings: Settings, stored: dict[str, list[str]] | None
) -> list[dict[str, Any]]:
    """One entry per provider: flow, where its settings come from, what it still needs and
    whether a token is stored (None when the store could not be read)."""
    from credproxy.oauth.config import ProviderConfigError, merged_table, resolve_provider
    from credproxy.oauth.presets import PRESETS
    from credproxy.settings import ProviderTable

    rows: list[dict[str, Any]] = []
    for name in sorted({*PRESETS, *settings.providers}):
        table = settings.providers.get(name)
        needs: list[str] = []
        try:
            merged, _, origin = merged_table(name, table)
        except ProviderConfigError as exc:  # a `preset` that names no preset
            merged, origin = table or ProviderTable(), "config"
            needs.append(str(exc))
        else:
            try:
                resolve_provider(name, table)
            except ProviderConfigError as exc:
                needs.append(str(exc))
        buckets = None if stored is None else stored.get(name, [])
        rows.append(
            {
                "name": name,
                "flow": merged.flow,
                "adapter": merged.adapter,
                "source": origin,
                "ready": not needs,
                "needs": needs,
                "token_stored": None if buckets is None else bool(buckets),
                "buckets": buckets,
            }
        )
    return rows


async def _stored(backend: str | None, settings: Settings) -> dict[str, list[str]]:
    from credproxy.hardening import harden_process
    from credproxy.store.factory import backend_name, open_store, store_directory

    if backend_name(backend, settings) == "file" and not store_directory(settings).exists():
        return {}  # listing must not create a store (and its key) as a side effect
    harden_process()
    store = open_store(backend, settings)
    try:
        return {name: await store.list_buckets(name) for name in await store.list_providers()}
    finally:
        await store.close()


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@store_options
@click.option("--no-store", is_flag=True, help="Do not open the store (token_stored is null).")
def providers(as_json: bool, config_path: Path | None, backend: str | None, no_store: bool) -> None:
    """List the built-in presets and configured providers.

    For each: its flow, where its settings come from (preset, config, or
    preset+config), what it still needs before `credproxy login NAME` works
    (usually your own client id) and whether a token is stored for it.
    """
    import asyncio

    from credproxy.settings import ConfigError, load_settings
    from credproxy.store.base import StoreError

    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    stored: dict[str, list[str]] | None = None
    store_error: str | None = None
    if not no_store:
        try:
            stored = asyncio.run(_stored(backend, settings))
        except StoreError as exc:
            store_error = str(exc)
    rows = describe_providers(settings, stored)
    if as_json:
        document: dict[str, Any] = {"providers": rows}
        if store_error is not None:
            document["store_error"] = store_error
        click.echo(json.dumps(document))
        return
    for row in rows:
        token = {True: "token stored", False: "no token", None: "store not read"}[
            row["token_stored"]
        ]
        state = "ready" if row["ready"] else "needs setup"
        adapter = f", adapter {row['adapter']}" if row["adapter"] else ""
        click.echo(f"{row['name']}: {row['flow']}{adapter} ({row['source']}); {state}; {token}")
        for need in row["needs"]:
            click.echo(f"  needs: {need}")
    if store_error is not None:
        click.echo(f"warning: the store could not be read: {store_error}", err=True)
