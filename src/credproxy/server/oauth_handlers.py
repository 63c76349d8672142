"""Login and refresh over the proxy (protocol.md, "Login over the proxy").

The host runs every flow; the sandbox sees only what the user must see and
the sanitized result. Grant first, then provider: a request outside the grant
gets ``UNAUTHORIZED`` whether or not the provider is configured. Then the
session caps, before any provider work: a login that could not get a session
never makes the host call the provider. A session is bound to the peer uid and
the grant that opened it.

Session lifecycle: ``oauth_exchange`` marks the session used before calling
the provider, and it stays used (later attempts get ``SESSION_ALREADY_USED``)
until the sweep removes it. ``oauth_poll`` removes the session as soon as it
reports the login's end, success or failure; removing it (or cancel, or
expiry) cancels its background task and closes its loopback listener.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from credproxy.oauth.errors import OAuthFlowError
from credproxy.oauth.flows import BackgroundFlow, CodePasteFlow, start_flow
from credproxy.oauth.runtime import OAuthRuntime, runtime_of
from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.protocol.messages import (
    OAUTH_CANCEL,
    OAUTH_EXCHANGE,
    OAUTH_INITIATE,
    OAUTH_POLL,
    REFRESH_TOKEN,
    Exchange,
    ProviderBucket,
    SessionRef,
)
from credproxy.server.context import RequestContext
from credproxy.server.handlers import HANDLERS
from credproxy.sessions import OAuthSession, PeerIdentity
from credproxy.tokens import sanitize

_OUTSIDE_GRANT: Final = "not permitted by this connection's grant"


def _identity(ctx: RequestContext) -> PeerIdentity:
    return PeerIdentity(uid=ctx.peer.uid, pid=ctx.peer.pid, grant=ctx.grant)


def _require_login_access(ctx: RequestContext, provider: str, bucket: str) -> None:
    ctx.audit["provider"] = provider
    ctx.audit["bucket"] = bucket
    if not ctx.grant.allows_token(provider, bucket):
        raise ProxyError(ErrorCode.UNAUTHORIZED, _OUTSIDE_GRANT)


def _own_session(ctx: RequestContext, session_id: str) -> tuple[OAuthRuntime, OAuthSession]:
    """The caller's session, audited by provider and bucket.

    A daemon without OAuth has no sessions either: the id is simply unknown.
    """
    runtime = ctx.state.oauth
    if runtime is None:
        raise ProxyError(ErrorCode.SESSION_NOT_FOUND, "no login session with that id")
    session = runtime.sessions.get_session(session_id, _identity(ctx))
    ctx.audit["provider"] = session.provider
    ctx.audit["bucket"] = session.bucket
    return runtime, session


def _wrong_op(op: str, flow_type: str, use: str) -> ProxyError:
    return ProxyError(
        ErrorCode.INVALID_REQUEST,
        f"{op} is not valid for a login of flow type {flow_type}; use {use}",
    )


@HANDLERS.handles(OAUTH_INITIATE)
async def oauth_initiate(ctx: RequestContext, payload: ProviderBucket) -> dict[str, Any]:
    _require_login_access(ctx, payload.provider, payload.bucket)
    runtime = runtime_of(ctx.state, payload.provider)
    # Suggestions only among names the grant already shows this caller.
    provider = runtime.providers.require(payload.provider, visible=ctx.grant.allows_provider)
    identity = _identity(ctx)
    with runtime.sessions.admit(identity) as admission:
        try:
            endpoints = await runtime.providers.endpoints(provider, runtime.http)
            flow, shown = await start_flow(provider, endpoints, runtime.http, clock=runtime.clock)
        except OAuthFlowError as exc:
            raise exc.to_proxy_error() from None
        try:
            session_id = runtime.sessions.create_session(
                payload.provider,
                payload.bucket,
                flow.flow_type,
                flow,
                identity,
                admission=admission,
            )
        except BaseException:
            await flow.aclose()
            raise
    session = runtime.sessions.get_session(session_id, identity)
    ctx.audit["flow_type"] = flow.flow_type
    if not isinstance(flow, CodePasteFlow):
        session.attach(flow.aclose)
        task = asyncio.get_running_loop().create_task(
            _complete_in_background(runtime, session, flow),
            name=f"credproxy-login-{flow.flow_type}",
        )
        session.attach(task)
    return {"session_id": session_id, "flow_type": flow.flow_type, **shown}


async def _complete_in_background(
    runtime: OAuthRuntime, session: OAuthSession, flow: BackgroundFlow
) -> None:
    """Wait for the device or loopback login, store the token, record the outcome."""
    try:
        token = await flow.wait()
    except OAuthFlowError as exc:
        flow.failure = exc
        session.fail(exc.code, exc.message)
        return
    finally:
        await flow.aclose()
    stored = await runtime.writes.save_login(session.provider, session.bucket, token)
    runtime.token_seen(session.provider, session.bucket, stored)
    session.complete(stored)


@HANDLERS.handles(OAUTH_EXCHANGE)
async def oauth_exchange(ctx: RequestContext, payload: Exchange) -> dict[str, Any]:
    runtime, session = _own_session(ctx, payload.session_id)
    flow = session.flow
    if not isinstance(flow, CodePasteFlow):
        raise _wrong_op("oauth_exchange", session.flow_type, "oauth_poll")
    runtime.sessions.mark_used(payload.session_id)
    try:
        token = await flow.finish(payload.code)
    except OAuthFlowError as exc:
        raise exc.to_proxy_error() from None
    stored = await runtime.writes.save_login(session.provider, session.bucket, token)
    runtime.token_seen(session.provider, session.bucket, stored)
    return sanitize(stored)


@HANDLERS.handles(OAUTH_POLL)
async def oauth_poll(ctx: RequestContext, payload: SessionRef) -> dict[str, Any]:
    runtime, session = _own_session(ctx, payload.session_id)
    flow = session.flow
    if isinstance(flow, CodePasteFlow):
        raise _wrong_op("oauth_poll", session.flow_type, "oauth_exchange")
    result = session.result
    if result.status == "pending":
        return {"status": "pending", "pollIntervalMs": flow.poll_interval_ms}
    runtime.sessions.remove_session(payload.session_id)
    if result.status == "complete" and result.token is not None:
        return {**sanitize(result.token), "status": "complete"}
    answer: dict[str, Any] = {
        "status": "error",
        "code": result.code or ErrorCode.EXCHANGE_FAILED.value,
        "error": result.message or "the login failed",
    }
    if flow.failure is not None and flow.failure.oauth_error is not None:
        answer["oauth_error"] = flow.failure.oauth_error
    return answer


@HANDLERS.handles(OAUTH_CANCEL)
async def oauth_cancel(ctx: RequestContext, payload: SessionRef) -> dict[str, Any]:
    """Idempotent: an unknown, expired or already used session is already over."""
    try:
        runtime, session = _own_session(ctx, payload.session_id)
    except ProxyError as exc:
        if exc.code == ErrorCode.UNAUTHORIZED:
            raise
        return {}
    runtime.sessions.remove_session(session.session_id)
    return {}


@HANDLERS.handles(REFRESH_TOKEN)
async def refresh_token(ctx: RequestContext, payload: ProviderBucket) -> dict[str, Any]:
    _require_login_access(ctx, payload.provider, payload.bucket)
    runtime = runtime_of(ctx.state, payload.provider)
    token = await runtime.refresher.refresh(payload.provider, payload.bucket)
    runtime.token_seen(payload.provider, payload.bucket, token)
    return sanitize(token)


ALL_HANDLERS: Final = HANDLERS
"""The daemon's full handler table: the store ops and, registered above, the login ops."""
