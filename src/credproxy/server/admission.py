"""Which connection gives its place to a newcomer when the daemon is full.

The caps (connections, connections before their handshake, connections per
grant) keep the daemon bounded; this policy keeps them from becoming a way to
lock other peers out. A slot is only ever taken from a connection that is not
being served (no request running, no answer on its way), and first from
connections that are stalled: a frame or a handshake left unfinished for
``Limits.stall_s``, or nothing at all sent for ``Limits.idle_s``. Among
those, the peer process (SO_PEERCRED pid) holding the most stalled slots
loses first, then the connection stalled longest. When nobody is stalled, a
peer holding more than its fair share of the slots (the cap divided among the
peers present and the newcomer's) gives up its longest-idle connection. If
neither applies the newcomer is refused, as before. No sockets, no clock:
``now`` and a view of each slot are passed in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SlotView:
    """What admission needs to know about one open connection."""

    pid: int | None
    """The peer process (SO_PEERCRED); ``None`` where the kernel gave none."""
    serving: bool
    """A request runs or an answer waits to be written: never evicted."""
    last_progress: float
    """When the peer last sent a whole frame or got an answer (its open time before either)."""
    stall_after_s: float
    """How long without progress marks it stalled: short while a frame or the handshake
    is unfinished, long for an idle connection that is merely kept open."""
    unfinished: bool
    """It holds a partial frame or has not finished its handshake."""

    def stalled(self, now: float) -> bool:
        return not self.serving and now - self.last_progress >= self.stall_after_s


def choose_victim(
    slots: Iterable[T],
    view: Callable[[T], SlotView],
    *,
    newcomer_pid: int | None,
    capacity: int,
    now: float,
) -> T | None:
    """The slot to free for a newcomer from ``newcomer_pid``, or ``None`` to refuse it.

    ``slots`` are the connections that count against the cap that is full,
    ``capacity`` that cap."""
    viewed = [(slot, view(slot)) for slot in slots]
    stalled = [(slot, seen) for slot, seen in viewed if seen.stalled(now)]
    if stalled:
        held = Counter(seen.pid for _, seen in stalled)
        return max(
            stalled,
            key=lambda item: (held[item[1].pid], item[1].unfinished, now - item[1].last_progress),
        )[0]
    held = Counter(seen.pid for _, seen in viewed)
    peers = len(held.keys() | {newcomer_pid})
    share = max(1, capacity // peers)
    own = held[newcomer_pid]
    over_share = [
        (slot, seen)
        for slot, seen in viewed
        if not seen.serving
        and seen.pid != newcomer_pid
        and held[seen.pid] > share
        and held[seen.pid] > own + 1
    ]
    if not over_share:
        return None
    return max(over_share, key=lambda item: (held[item[1].pid], now - item[1].last_progress))[0]


def oldest_of_largest(slots: Iterable[T], view: Callable[[T], SlotView], *, now: float) -> T | None:
    """Among connections still waiting for their handshake, the one to close when
    too many wait: from the peer with the most of them, the oldest."""
    viewed = [(slot, view(slot)) for slot in slots]
    if not viewed:
        return None
    held = Counter(seen.pid for _, seen in viewed)
    return max(viewed, key=lambda item: (held[item[1].pid], now - item[1].last_progress))[0]
