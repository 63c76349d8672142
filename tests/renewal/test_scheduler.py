"""ProactiveScheduler: when it renews, how it backs off, and that it always stops."""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import random
from typing import Any

import pytest

from credproxy.protocol.errors import ErrorCode, ProxyError
from credproxy.renewal import (
    MAX_CONSECUTIVE_FAILURES,
    MAX_SLEEP_S,
    MIN_INTERVAL_S,
    ProactiveScheduler,
    RenewalStatus,
    backoff_delay,
    jitter_bound,
    renewal_lead,
)
from tests.renewal.conftest import EdgeRandom, FakeClock, Refresh, renewal_tasks, settle, token

HOUR = 3600.0
HOUR_LEAD = 360.0
NO_JITTER = 0.0
FULL_JITTER = 1.0
BOUND_S = 10.0


def scheduler(
    refresh: Refresh, clock: FakeClock, rng: random.Random | None = None
) -> ProactiveScheduler:
    return ProactiveScheduler(refresh, clock=clock, rng=rng or EdgeRandom(NO_JITTER))


def status(sched: ProactiveScheduler, bucket: str = "work") -> RenewalStatus:
    found = sched.status("acme", bucket)
    assert found is not None
    return found


async def fail_until_given_up(
    clock: FakeClock, refresh: Refresh, error: Exception, dead: dict[str, Any] | None = None
) -> ProactiveScheduler:
    """A scheduler that met ``error`` on every attempt for a day, from an expired token."""
    refresh.error = error
    sched = scheduler(refresh, clock)
    sched.observe("acme", "work", dead if dead is not None else token(clock.time() - 1))
    await clock.advance(24 * HOUR)
    return sched


# --- the policy as numbers ------------------------------------------------------------


def test_lead_is_300s_or_a_tenth_of_the_remaining_lifetime_for_long_lived_tokens() -> None:
    assert renewal_lead(3600) == 360
    assert renewal_lead(7200) == 720
    assert renewal_lead(86400) == 8640
    assert renewal_lead(1800) == 300
    assert renewal_lead(1200) == 300


def test_lead_is_at_most_a_quarter_of_the_remaining_lifetime_for_short_lived_tokens() -> None:
    assert renewal_lead(600) == 150
    assert renewal_lead(60) == 15
    assert renewal_lead(0) == 0
    assert renewal_lead(-30) == 0


def test_jitter_is_at_most_30s_and_at_most_a_tenth_of_the_remaining_lifetime() -> None:
    assert jitter_bound(3600) == 30
    assert jitter_bound(300) == 30
    assert jitter_bound(60) == 6
    assert jitter_bound(0) == 0
    assert jitter_bound(-5) == 0


def test_backoff_doubles_from_30s_and_is_capped_at_30_minutes() -> None:
    assert [backoff_delay(n) for n in range(1, 11)] == [
        30,
        60,
        120,
        240,
        480,
        960,
        1800,
        1800,
        1800,
        1800,
    ]
    assert backoff_delay(10_000) == 1800


# --- scheduling -------------------------------------------------------------------------


async def test_an_hour_token_is_scheduled_at_expiry_minus_lead_minus_seeded_jitter(
    clock: FakeClock, refresh: Refresh
) -> None:
    expiry = clock.time() + HOUR
    sched = scheduler(refresh, clock, random.Random(7))
    sched.observe("acme", "work", token(expiry))
    jitter = random.Random(7).uniform(0, 30)
    assert status(sched).next_at == pytest.approx(expiry - HOUR_LEAD - jitter)
    await sched.aclose()


async def test_jitter_extremes_give_expiry_minus_lead_and_30s_earlier(
    clock: FakeClock, refresh: Refresh
) -> None:
    expiry = clock.time() + HOUR
    low = scheduler(refresh, clock, EdgeRandom(NO_JITTER))
    high = scheduler(refresh, clock, EdgeRandom(FULL_JITTER))
    low.observe("acme", "work", token(expiry))
    high.observe("acme", "work", token(expiry))
    assert status(low).next_at == expiry - HOUR_LEAD
    assert status(high).next_at == expiry - HOUR_LEAD - 30
    await low.aclose()
    await high.aclose()


async def test_jitter_of_many_seeded_draws_stays_within_0_to_30s(
    clock: FakeClock, refresh: Refresh
) -> None:
    expiry = clock.time() + HOUR
    sched = scheduler(refresh, clock, random.Random(20261130))
    buckets = [f"b{n}" for n in range(200)]
    for bucket in buckets:
        sched.observe("acme", bucket, token(expiry))
    times = [status(sched, bucket).next_at for bucket in buckets]
    assert all(t is not None and expiry - HOUR_LEAD - 30 <= t <= expiry - HOUR_LEAD for t in times)
    assert len(set(times)) > 100, "the jitter spreads daemons sharing a store"
    await sched.aclose()


async def test_a_60s_token_renews_before_expiry_and_not_before_now_at_either_jitter_extreme(
    clock: FakeClock, refresh: Refresh
) -> None:
    now = clock.time()
    expiry = now + 60
    low = scheduler(refresh, clock, EdgeRandom(NO_JITTER))
    high = scheduler(refresh, clock, EdgeRandom(FULL_JITTER))
    low.observe("acme", "work", token(expiry))
    high.observe("acme", "work", token(expiry))
    assert status(low).next_at == expiry - 15
    assert status(high).next_at == expiry - 15 - 6
    assert now < status(high).next_at < status(low).next_at < expiry  # type: ignore[operator]
    await low.aclose()
    await high.aclose()


async def test_an_expired_token_is_renewed_at_once(clock: FakeClock, refresh: Refresh) -> None:
    sched = scheduler(refresh, clock, EdgeRandom(FULL_JITTER))
    sched.observe("acme", "work", token(clock.time() - 100))
    await settle()
    assert refresh.calls == [("acme", "work", clock.time())]
    await sched.aclose()


async def test_renewal_fires_at_the_scheduled_time_and_not_a_second_before(
    clock: FakeClock, refresh: Refresh
) -> None:
    sched = scheduler(refresh, clock)
    start = clock.time()
    sched.observe("acme", "work", token(start + HOUR))
    await clock.advance(HOUR - HOUR_LEAD - 1)
    assert refresh.calls == []
    await clock.advance(1)
    assert refresh.call_times == [start + HOUR - HOUR_LEAD]
    await sched.aclose()


async def test_no_single_sleep_is_longer_than_the_cap(clock: FakeClock, refresh: Refresh) -> None:
    sched = scheduler(refresh, clock)
    sched.observe("acme", "work", token(clock.time() + 6 * HOUR))
    await clock.advance(HOUR)
    assert clock.sleeps
    assert max(clock.sleeps) <= MAX_SLEEP_S
    await sched.aclose()


async def test_a_machine_that_slept_past_the_renewal_time_renews_on_waking(
    clock: FakeClock, refresh: Refresh
) -> None:
    sched = scheduler(refresh, clock)
    sched.observe("acme", "work", token(clock.time() + HOUR))
    await clock.advance(10)
    # Suspended for two hours: the wall clock ran on, the monotonic clock and
    # the pending sleep did not.
    clock.jump_wall(2 * HOUR)
    assert refresh.calls == []
    await clock.advance(MAX_SLEEP_S)
    assert len(refresh.calls) == 1
    await sched.aclose()


async def test_a_wall_clock_set_back_a_day_neither_renews_early_nor_postpones_renewal(
    clock: FakeClock, refresh: Refresh
) -> None:
    sched = scheduler(refresh, clock)
    sched.observe("acme", "work", token(clock.time() + HOUR))
    await clock.advance(100)
    clock.jump_wall(-24 * HOUR)
    assert status(sched).next_at == clock.time() + HOUR - HOUR_LEAD - 100
    await clock.advance(HOUR - HOUR_LEAD - 101)
    assert refresh.calls == []
    await clock.advance(1)
    assert len(refresh.calls) == 1
    await sched.aclose()


async def test_after_a_successful_renewal_the_returned_token_is_scheduled(
    clock: FakeClock, refresh: Refresh
) -> None:
    sched = scheduler(refresh, clock)
    sched.observe("acme", "work", token(clock.time() + HOUR))
    await clock.advance(HOUR - HOUR_LEAD)
    renewed_at = clock.time()
    assert status(sched) == RenewalStatus(
        next_at=renewed_at + HOUR - HOUR_LEAD,
        last_outcome="ok",
        last_error=None,
        last_at=renewed_at,
        consecutive_failures=0,
        gave_up=False,
    )
    await clock.advance(HOUR - HOUR_LEAD)
    assert refresh.call_times == [renewed_at, renewed_at + HOUR - HOUR_LEAD]
    await sched.aclose()


async def test_a_refresh_answering_an_unchanged_token_does_not_make_the_scheduler_spin(
    clock: FakeClock, refresh: Refresh
) -> None:
    # A coordinator inside its cooldown answers with the stored token: same expiry, nearly due.
    stale = token(clock.time() + 20)
    refresh.answer = stale
    sched = scheduler(refresh, clock)
    sched.observe("acme", "work", stale)
    await clock.advance(300)
    times = refresh.call_times
    assert 1 <= len(times) <= 300 / MIN_INTERVAL_S + 1
    assert all(b - a >= MIN_INTERVAL_S for a, b in itertools.pairwise(times))
    await sched.aclose()


async def test_a_token_with_a_new_expiry_moves_the_schedule(
    clock: FakeClock, refresh: Refresh
) -> None:
    sched = scheduler(refresh, clock)
    now = clock.time()
    sched.observe("acme", "work", token(now + HOUR))
    await settle()
    sched.observe("acme", "work", token(now + 2 * HOUR))
    await settle()
    assert status(sched).next_at == now + 2 * HOUR - 720
    assert len(renewal_tasks()) == 1
    await clock.advance(HOUR)
    assert refresh.calls == []
    await sched.aclose()


# --- failures ---------------------------------------------------------------------------


async def test_failures_back_off_30_60_120_up_to_1800s_then_stop_after_ten(
    clock: FakeClock, refresh: Refresh
) -> None:
    sched = await fail_until_given_up(clock, refresh, RuntimeError("provider down"))
    times = refresh.call_times
    assert len(times) == MAX_CONSECUTIVE_FAILURES
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == [30, 60, 120, 240, 480, 960, 1800, 1800, 1800]
    assert status(sched) == RenewalStatus(
        next_at=None,
        last_outcome="failed",
        last_error="RuntimeError",
        last_at=times[-1],
        consecutive_failures=MAX_CONSECUTIVE_FAILURES,
        gave_up=True,
    )
    assert renewal_tasks() == []
    await sched.aclose()


async def test_giving_up_logs_one_warning_naming_the_bucket_and_no_secret(
    clock: FakeClock, refresh: Refresh, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="credproxy.renewal")
    sched = await fail_until_given_up(
        clock, refresh, RuntimeError("refused rt-secret-0 and at-secret-0")
    )
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "acme:work" in warnings[0].getMessage()
    assert "secret" not in caplog.text
    assert "secret" not in (status(sched).last_error or "")
    await sched.aclose()


async def test_a_refused_grant_gives_up_at_once_with_the_protocol_reason(
    clock: FakeClock, refresh: Refresh, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="credproxy.renewal")
    sched = await fail_until_given_up(
        clock, refresh, ProxyError(ErrorCode.REAUTH_REQUIRED, "acme: the grant was refused; log in")
    )
    assert len(refresh.calls) == 1
    found = status(sched)
    assert found.gave_up
    assert found.last_error == "REAUTH_REQUIRED: acme: the grant was refused; log in"
    assert len(caplog.records) == 1
    await sched.aclose()


@pytest.mark.parametrize(
    "message",
    [
        "no token stored for provider 'acme' bucket 'work'",
        "the token for provider 'acme' bucket 'work' was removed (logout) while it was "
        "being refreshed; run `credproxy login acme` to use it again",
    ],
)
async def test_a_token_removed_by_another_process_is_forgotten_after_one_attempt(
    clock: FakeClock, refresh: Refresh, caplog: pytest.LogCaptureFixture, message: str
) -> None:
    """A host `credproxy logout` or `token rm` in another process: the refresh answers
    NOT_FOUND, which no backoff can change, so the entry goes at once."""
    caplog.set_level(logging.INFO, logger="credproxy.renewal")
    sched = await fail_until_given_up(clock, refresh, ProxyError(ErrorCode.NOT_FOUND, message))
    assert len(refresh.calls) == 1
    assert sched.status("acme", "work") is None
    assert renewal_tasks() == []
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "acme:work" in caplog.records[0].getMessage()

    login_at = clock.time()  # a later login schedules it again
    sched.observe("acme", "work", token(login_at + HOUR, refresh_token="rt-secret-new"))
    assert status(sched).next_at == login_at + HOUR - HOUR_LEAD
    await sched.aclose()


async def test_a_new_token_after_giving_up_starts_renewal_again(
    clock: FakeClock, refresh: Refresh
) -> None:
    dead = token(clock.time() - 1)
    sched = await fail_until_given_up(clock, refresh, RuntimeError("provider down"), dead)
    assert status(sched).gave_up
    sched.observe("acme", "work", dead)
    await clock.advance(HOUR)
    assert status(sched).gave_up, "the same dead token is not retried on every get_token"
    assert len(refresh.calls) == MAX_CONSECUTIVE_FAILURES

    refresh.error = None
    login_at = clock.time()
    sched.observe("acme", "work", token(login_at + HOUR, refresh_token="rt-secret-new"))
    found = status(sched)
    assert (found.gave_up, found.consecutive_failures) == (False, 0)
    assert found.next_at == login_at + HOUR - HOUR_LEAD
    await clock.advance(HOUR - HOUR_LEAD)
    assert len(refresh.calls) == MAX_CONSECUTIVE_FAILURES + 1
    assert status(sched).last_outcome == "ok"
    await sched.aclose()


async def test_a_fresh_token_observed_during_a_failing_refresh_is_scheduled_without_backoff(
    clock: FakeClock, refresh: Refresh
) -> None:
    refresh.gate = asyncio.Event()
    refresh.error = RuntimeError("provider down")
    sched = scheduler(refresh, clock)
    sched.observe("acme", "work", token(clock.time() - 1))
    await settle()
    fresh_expiry = clock.time() + HOUR
    sched.observe("acme", "work", token(fresh_expiry))  # another daemon refreshed meanwhile
    refresh.gate.set()
    await settle()
    found = status(sched)
    assert (found.last_outcome, found.consecutive_failures) == ("failed", 0)
    assert found.next_at == fresh_expiry - HOUR_LEAD
    await sched.aclose()


async def test_a_raising_refresh_leaves_no_unretrieved_exception(
    clock: FakeClock, refresh: Refresh
) -> None:
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    sched = await fail_until_given_up(clock, refresh, ValueError("boom"))
    await sched.aclose()
    gc.collect()
    await settle()
    assert len(refresh.calls) == MAX_CONSECUTIVE_FAILURES
    assert reported == []


# --- what is never scheduled, duplicates, concurrency -----------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"refresh_token": None},
        {"refresh_token": ""},
        {"refresh_token": 42},
        {"expiry": None},
        {"expiry": "1800003600"},
        {"expiry": True},
        {"expiry": float("nan")},
        {"expiry": float("inf")},
        {"expiry": 10**400},
    ],
    ids=repr,
)
async def test_a_token_without_a_refresh_token_or_numeric_expiry_is_never_scheduled(
    clock: FakeClock, refresh: Refresh, changes: dict[str, Any]
) -> None:
    unusable = token(clock.time() - 1)
    for key, value in changes.items():
        if value is None:
            unusable.pop(key)
        else:
            unusable[key] = value
    sched = scheduler(refresh, clock)
    sched.observe("acme", "work", unusable)
    await clock.advance(HOUR)
    assert sched.status("acme", "work") is None
    assert refresh.calls == []
    assert renewal_tasks() == []
    await sched.aclose()


async def test_observing_the_same_token_again_keeps_one_timer_and_its_time(
    clock: FakeClock, refresh: Refresh
) -> None:
    sched = scheduler(refresh, clock, random.Random(3))
    served = token(clock.time() + HOUR)
    sched.observe("acme", "work", served)
    first = status(sched).next_at
    for _ in range(1000):
        sched.observe("acme", "work", dict(served))
    await settle()
    assert status(sched).next_at == first
    assert len(renewal_tasks()) == 1
    await clock.advance(HOUR)
    assert len(refresh.calls) == 1
    await sched.aclose()


async def test_refresh_is_called_once_per_firing_whatever_arrives_while_it_runs(
    clock: FakeClock, refresh: Refresh
) -> None:
    refresh.gate = asyncio.Event()
    sched = scheduler(refresh, clock)
    due = token(clock.time() - 1)
    sched.observe("acme", "work", due)
    await settle()
    for _ in range(5):
        sched.observe("acme", "work", due)
    sched.observe("acme", "work", token(clock.time() + 30))
    await clock.advance(2 * HOUR)
    assert len(refresh.calls) == 1
    assert status(sched).next_at is None, "renewing now"
    refresh.gate.set()
    await settle()
    assert len(refresh.calls) == 1
    assert status(sched).last_outcome == "ok"
    assert len(renewal_tasks()) == 1
    await sched.aclose()


# --- stopping ---------------------------------------------------------------------------


async def test_forget_cancels_the_timer(clock: FakeClock, refresh: Refresh) -> None:
    sched = scheduler(refresh, clock)
    sched.observe("acme", "work", token(clock.time() + HOUR))
    sched.observe("acme", "home", token(clock.time() + HOUR))
    sched.forget("acme", "work")
    sched.forget("acme", "never-seen")
    await clock.advance(HOUR)
    assert sched.status("acme", "work") is None
    assert [(p, b) for p, b, _ in refresh.calls] == [("acme", "home")]
    assert len(renewal_tasks()) == 1
    await sched.aclose()


async def test_aclose_cancels_every_timer_and_refresh_and_no_task_survives(
    clock: FakeClock, refresh: Refresh
) -> None:
    refresh.gate = asyncio.Event()
    sched = scheduler(refresh, clock)
    sched.observe("acme", "running", token(clock.time() - 1))
    sched.observe("acme", "later", token(clock.time() + HOUR))
    sched.observe("other", "later", token(clock.time() + 2 * HOUR))
    await settle()
    assert len(renewal_tasks()) == 3
    async with asyncio.timeout(BOUND_S):  # fail, not hang, if a timer is left waiting
        await sched.aclose()
    assert renewal_tasks() == []
    await sched.aclose()
    sched.observe("acme", "new", token(clock.time() - 1))
    refresh.gate.set()
    await clock.advance(3 * HOUR)
    assert len(refresh.calls) == 1
    assert renewal_tasks() == []
    assert sched.status("acme", "later") is None


async def test_the_real_clock_renews_an_expired_token_at_once() -> None:
    renewed = asyncio.Event()

    async def refresh(provider: str, bucket: str) -> dict[str, Any]:
        renewed.set()
        return token(10**10)

    sched = ProactiveScheduler(refresh)
    sched.observe("acme", "work", token(1))
    async with asyncio.timeout(30):
        await renewed.wait()
    await sched.aclose()
    assert renewal_tasks() == []
