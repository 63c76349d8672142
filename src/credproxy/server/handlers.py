"""One plain async function per op, registered in ``HANDLERS`` (docs/protocol.md, "Operations").

Each handler checks the connection's grant before it touches the store, and
answers ``UNAUTHORIZED`` with the same message whether or not the credential
exists, so the answer reveals nothing outside the grant. Tokens leave only
through ``tokens.sanitize``. Handlers name what they touched in ``ctx.audit``.
"""

from __future__ import annotations

from typing import Any, Final

from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.protocol.messages import (
    GET_API_KEY,
    GET_BUCKET_STATS,
    GET_TOKEN,
    HAS_API_KEY,
    LIST_API_KEYS,
    LIST_BUCKETS,
    LIST_PROVIDERS,
    REMOVE_TOKEN,
    SAVE_TOKEN,
    Empty,
    KeyName,
    ProviderBucket,
    ProviderOnly,
    SaveToken,
)
from credproxy.server.context import HandlerTable, RequestContext
from credproxy.store.writepath import BucketLimitError, write_path
from credproxy.tokens import sanitize

HANDLERS: Final = HandlerTable()
"""Every op's handler; ``server.oauth_handlers`` adds the login ops."""

_OUTSIDE_GRANT: Final = "not permitted by this connection's grant"
MAX_BUCKETS_PER_PROVIDER: Final = 256
"""A sandbox that may save tokens can create buckets; this bounds how many, so a
grant over a whole provider cannot be used to grow the host's store without end."""


def _deny() -> ProxyError:
    return ProxyError(ErrorCode.UNAUTHORIZED, _OUTSIDE_GRANT)


def _require_token_access(ctx: RequestContext, provider: str, bucket: str) -> None:
    ctx.audit["provider"] = provider
    ctx.audit["bucket"] = bucket
    if not ctx.grant.allows_token(provider, bucket):
        raise _deny()


@HANDLERS.handles(GET_TOKEN, eager=True)
async def get_token(ctx: RequestContext, payload: ProviderBucket) -> dict[str, Any]:
    _require_token_access(ctx, payload.provider, payload.bucket)
    token = await ctx.state.store.get_token(payload.provider, payload.bucket)
    if token is None:
        raise ProxyError(
            ErrorCode.NOT_FOUND,
            f"no token stored for provider {payload.provider!r} bucket {payload.bucket!r}",
        )
    ctx.state.usage.record(payload.provider, payload.bucket)
    _token_seen(ctx, payload.provider, payload.bucket, token)
    return sanitize(token)


def _token_seen(ctx: RequestContext, provider: str, bucket: str, token: dict[str, Any]) -> None:
    """Let the renewal scheduler see the host-side token (cheap when unchanged)."""
    from credproxy.oauth.runtime import optional_runtime

    runtime = optional_runtime(ctx.state)
    if runtime is not None:
        runtime.token_seen(provider, bucket, token)


@HANDLERS.handles(GET_BUCKET_STATS, eager=True)
async def get_bucket_stats(ctx: RequestContext, payload: ProviderBucket) -> dict[str, Any]:
    """Usage of one bucket since the daemon started; LLxprt's client asks for it."""
    _require_token_access(ctx, payload.provider, payload.bucket)
    if await ctx.state.store.get_token(payload.provider, payload.bucket) is None:
        raise ProxyError(
            ErrorCode.NOT_FOUND,
            f"no token stored for provider {payload.provider!r} bucket {payload.bucket!r}",
        )
    return ctx.state.usage.stats(payload.provider, payload.bucket)


@HANDLERS.handles(SAVE_TOKEN)
async def save_token(ctx: RequestContext, payload: SaveToken) -> dict[str, Any]:
    """Merge the sandbox's token into the freshest stored one, under the record's lock.

    Host-only fields (refresh tokens at any depth, host metadata) are stripped
    before merging: only the host may set them, so a sandbox can neither plant
    nor erase the refresh token the host relies on, nor make the record unservable.
    """
    _require_token_access(ctx, payload.provider, payload.bucket)
    if not ctx.grant.can_save:
        raise _deny()
    try:
        saved = await write_path(ctx.state.store).save_from_sandbox(
            payload.provider,
            payload.bucket,
            payload.token,
            max_buckets=MAX_BUCKETS_PER_PROVIDER,
        )
    except BucketLimitError as exc:
        raise ProxyError(ErrorCode.RESOURCE_EXHAUSTED, str(exc)) from None
    _token_seen(ctx, payload.provider, payload.bucket, saved)
    return {}


@HANDLERS.handles(REMOVE_TOKEN)
async def remove_token(ctx: RequestContext, payload: ProviderBucket) -> dict[str, Any]:
    """Logout is idempotent: removing what is not there succeeds too."""
    _require_token_access(ctx, payload.provider, payload.bucket)
    if not ctx.grant.can_remove:
        raise _deny()
    await write_path(ctx.state.store).remove_token(payload.provider, payload.bucket)
    from credproxy.oauth.runtime import optional_runtime

    runtime = optional_runtime(ctx.state)
    if runtime is not None:
        runtime.token_removed(payload.provider, payload.bucket)
    return {}


@HANDLERS.handles(LIST_PROVIDERS, eager=True)
async def list_providers(ctx: RequestContext, payload: Empty) -> dict[str, Any]:
    providers = await ctx.state.store.list_providers()
    return {"providers": sorted(p for p in providers if ctx.grant.allows_provider(p))}


@HANDLERS.handles(LIST_BUCKETS, eager=True)
async def list_buckets(ctx: RequestContext, payload: ProviderOnly) -> dict[str, Any]:
    ctx.audit["provider"] = payload.provider
    if not ctx.grant.allows_provider(payload.provider):
        raise _deny()
    buckets = await ctx.state.store.list_buckets(payload.provider)
    allowed = (b for b in buckets if ctx.grant.allows_token(payload.provider, b))
    return {"buckets": sorted(allowed)}


def _require_key_access(ctx: RequestContext, name: str) -> None:
    ctx.audit["key"] = name
    if not ctx.grant.allows_key(name):
        raise _deny()


@HANDLERS.handles(GET_API_KEY, eager=True)
async def get_api_key(ctx: RequestContext, payload: KeyName) -> dict[str, Any]:
    _require_key_access(ctx, payload.name)
    value = await ctx.state.store.get_key(payload.name)
    if value is None:
        raise ProxyError(ErrorCode.NOT_FOUND, f"no API key stored under {payload.name!r}")
    return {"key": value}


@HANDLERS.handles(LIST_API_KEYS, eager=True)
async def list_api_keys(ctx: RequestContext, payload: Empty) -> dict[str, Any]:
    keys = await ctx.state.store.list_keys()
    return {"keys": sorted(k for k in keys if ctx.grant.allows_key(k))}


@HANDLERS.handles(HAS_API_KEY, eager=True)
async def has_api_key(ctx: RequestContext, payload: KeyName) -> dict[str, Any]:
    _require_key_access(ctx, payload.name)
    return {"exists": await ctx.state.store.get_key(payload.name) is not None}


def not_available(op: str) -> ProxyError:
    """The answer for a declared op that this daemon has no handler for."""
    return ProxyError(ErrorCode.INVALID_REQUEST, f"operation {op} is not available on this daemon")
