"""What a handler receives, and the table that binds each op to its handler.

Handlers are plain async functions ``(ctx, payload) -> data``, registered
with ``HANDLERS.handles(OP)`` next to their body; mypy checks the payload
parameter against the op's payload struct. They raise ``ProxyError`` for
every failure the peer may see; anything else becomes ``INTERNAL_ERROR``
with a generic message.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from credproxy.grants import Grant
from credproxy.protocol.messages import Op, Payload
from credproxy.server.usage import BucketUsage
from credproxy.store.base import CredentialStore

if TYPE_CHECKING:
    from credproxy.oauth.runtime import OAuthRuntime


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """SO_PEERCRED of the connection, as the host kernel reports it."""

    pid: int | None
    uid: int | None
    gid: int | None


@dataclass
class ServerState:
    """Shared by every connection; ``oauth`` is ``None`` on a daemon without logins."""

    store: CredentialStore
    call_timeout_s: float = 15.0
    usage: BucketUsage = field(default_factory=BucketUsage)
    oauth: OAuthRuntime | None = None


@dataclass(slots=True)
class RequestContext:
    state: ServerState
    grant: Grant
    peer: PeerCredentials
    version: int
    request_id: str
    op: str
    audit: dict[str, str] = field(default_factory=dict)
    """Names (provider, bucket, key, flow type) the handler touched, for the audit line."""


P = TypeVar("P", bound=Payload)
Data = dict[str, Any]
"""An answer's ``data`` object; ``Op.result`` is its schema."""


@dataclass(frozen=True, slots=True)
class BoundHandler(Generic[P]):
    op: Op[P]
    run: Callable[[RequestContext, P], Coroutine[Any, Any, Data]]
    eager: bool
    """Run its first step inline, without a task of its own: it usually
    finishes without waiting (a store call on a fast backend) and uses no
    task-bound API (``asyncio.timeout``) before its first real wait."""


class HandlerTable:
    """Op name -> handler. A handler registers itself beside its body."""

    def __init__(self) -> None:
        self._bound: dict[str, BoundHandler[Any]] = {}

    def handles(
        self, op: Op[P], *, eager: bool = False
    ) -> Callable[
        [Callable[[RequestContext, P], Coroutine[Any, Any, Data]]],
        Callable[[RequestContext, P], Coroutine[Any, Any, Data]],
    ]:
        def register(
            run: Callable[[RequestContext, P], Coroutine[Any, Any, Data]],
        ) -> Callable[[RequestContext, P], Coroutine[Any, Any, Data]]:
            if op.name in self._bound:
                raise RuntimeError(f"a second handler for {op.name}")
            if op.connection_level:
                raise RuntimeError(f"{op.name} is answered by the protocol core")
            self._bound[op.name] = BoundHandler(op, run, eager)
            return run

        return register

    def get(self, name: str) -> BoundHandler[Any] | None:
        return self._bound.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._bound

    def __iter__(self) -> Iterator[str]:
        return iter(self._bound)

    def without(self, *names: str) -> HandlerTable:
        """A copy lacking ``names`` (a daemon embedded without some subsystem)."""
        table = HandlerTable()
        table._bound = {k: v for k, v in self._bound.items() if k not in names}
        return table
