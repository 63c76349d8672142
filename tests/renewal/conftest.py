"""A hand-driven clock and a scripted refresh for the renewal scheduler's tests.

The refresh is a stand-in on purpose: these tests pin the scheduler's timing
policy (when it calls, how often, what it does with the answer), which a real
provider cannot be made to produce on demand, in simulated hours. The real
refresh path is tested against the real OAuth server elsewhere.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from typing import Any

import pytest

START_WALL = 1_800_000_000.0
START_MONO = 5_000.0
SETTLE_TURNS = 25
"""Loop turns that let every runnable task reach its next wait; the chains here are short."""
RENEWAL_TASK_PREFIX = "credproxy-renewal-"


async def settle() -> None:
    for _ in range(SETTLE_TURNS):
        await asyncio.sleep(0)


class FakeClock:
    """Wall and monotonic time moved by hand; ``sleep`` wakes only when ``advance`` gets there.

    ``advance`` runs both clocks on together, waking sleepers in deadline
    order and letting the woken tasks run before moving on. ``jump_wall``
    moves only the wall clock: forward is a suspended machine waking up (the
    monotonic clock does not count a suspend), backward is a clock set back.
    """

    def __init__(self, wall: float = START_WALL, mono: float = START_MONO) -> None:
        self.wall = wall
        self.mono = mono
        self.sleeps: list[float] = []
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.mono + seconds, next(self._order), woken))
        await woken

    async def advance(self, seconds: float) -> None:
        target = self.mono + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, woken = heapq.heappop(self._sleepers)
            if woken.done():
                continue
            self._run_on(max(0.0, deadline - self.mono))
            woken.set_result(None)
            await settle()
        self._run_on(target - self.mono)
        await settle()

    def jump_wall(self, seconds: float) -> None:
        self.wall += seconds

    def _run_on(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


class Refresh:
    """Records each call with the wall time it was made, then answers as scripted."""

    def __init__(self, clock: FakeClock, lifetime: float = 3600.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls: list[tuple[str, str, float]] = []
        self.error: Exception | None = None
        self.answer: dict[str, Any] | None = None
        self.gate: asyncio.Event | None = None

    async def __call__(self, provider: str, bucket: str) -> dict[str, Any]:
        self.calls.append((provider, bucket, self.clock.time()))
        await asyncio.sleep(0)  # a real refresh awaits I/O; a spinning scheduler then shows
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        if self.answer is not None:
            return dict(self.answer)
        return token(self.clock.time() + self.lifetime, serial=len(self.calls))

    @property
    def call_times(self) -> list[float]:
        return [at for _, _, at in self.calls]


def token(
    expiry: float, *, serial: int = 0, refresh_token: str | None = "rt-secret-0"
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "access_token": f"at-secret-{serial}",
        "expiry": int(expiry),
        "token_type": "Bearer",
    }
    if refresh_token is not None:
        value["refresh_token"] = refresh_token
    return value


class EdgeRandom(random.Random):
    """A generator pinned to one end of its range, to test the jitter's extremes."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def renewal_tasks() -> list[asyncio.Task[Any]]:
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_name().startswith(RENEWAL_TASK_PREFIX) and not task.done()
    ]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def refresh(clock: FakeClock) -> Refresh:
    return Refresh(clock)
