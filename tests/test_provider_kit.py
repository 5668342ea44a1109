"""The adapter kit: the sliding window, polling with a backoff and a nudge, formations."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from clock import ManualClock
from paastis.providers import Backoff, ProviderError
from paastis.providers.kit import fit_formation, formation_of, poll_until, remembered, within
from paastis.providers.ratelimit import SlidingWindow

# -- the sliding window ----------------------------------------------------------------------


def window_on(clock: ManualClock, limit: int = 60, window: float = 60.0) -> SlidingWindow:
    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    return SlidingWindow(limit, window, clock=clock, sleep=sleep)


async def test_no_window_of_60_seconds_holds_more_than_60_calls_bursts_included() -> None:
    clock = ManualClock()
    limiter = window_on(clock)
    sent: list[float] = []

    for _ in range(200):  # as fast as the limiter lets them go
        async with limiter.slot():
            sent.append(clock())

    assert max(sum(1 for t in sent if start <= t < start + 60) for start in sent) == 60
    assert sent[59] == 0 and sent[60] == 60  # a burst of 60, then the window


async def test_a_slot_is_held_until_a_window_after_the_answer() -> None:
    clock = ManualClock()
    limiter = window_on(clock, limit=1, window=10)

    async with limiter.slot():
        clock.advance(5)  # a slow answer: the provider may have counted it at 5 s
    async with limiter.slot():
        second = clock()

    assert second == 15


async def test_a_429_holds_every_caller_for_a_whole_window() -> None:
    clock = ManualClock()
    limiter = window_on(clock)
    async with limiter.slot():
        pass

    assert limiter.throttled() == 60
    async with limiter.slot():
        assert clock() == 60


# -- polling ---------------------------------------------------------------------------------


async def test_checks_follow_the_backoff() -> None:
    loop = asyncio.get_running_loop()
    checks: list[float] = []

    async def check() -> bool:
        checks.append(loop.time())
        return len(checks) == 4

    began = loop.time()
    await poll_until(check, Backoff(0.05, factor=2, cap=0.15, min_gap=0.01))

    gaps = [b - a for a, b in itertools.pairwise([began, *checks])]
    assert all(gap >= want * 0.95 for gap, want in zip(gaps, [0.05, 0.1, 0.15, 0.15], strict=True))


async def test_a_nudge_brings_the_next_check_forward() -> None:
    loop = asyncio.get_running_loop()
    nudge = asyncio.Event()
    loop.call_later(0.05, nudge.set)

    async def check() -> bool:
        return True

    began = loop.time()
    await poll_until(check, Backoff(30, min_gap=0.01), nudge=nudge)

    assert loop.time() - began < 5  # not the 30 s of the backoff


async def test_a_nudge_never_brings_two_checks_within_min_gap() -> None:
    loop = asyncio.get_running_loop()
    nudge = asyncio.Event()
    nudge.set()  # the upstream answers from the start, but the provider lags
    checks: list[float] = []

    async def check() -> bool:
        checks.append(loop.time())
        return len(checks) == 3

    began = loop.time()
    await poll_until(check, Backoff(30, factor=1, cap=30, min_gap=0.1), nudge=nudge)

    gaps = [b - a for a, b in itertools.pairwise([began, *checks])]
    assert all(gap >= 0.1 * 0.95 for gap in gaps)
    assert loop.time() - began < 5


async def test_within_turns_its_deadline_into_the_error_given() -> None:
    with pytest.raises(ProviderError, match="too slow"):
        async with within(0.05, lambda: ProviderError("too slow")):
            await asyncio.sleep(1)


async def test_within_leaves_another_timeout_as_it_is() -> None:
    with pytest.raises(TimeoutError):
        async with within(5, lambda: ProviderError("too slow")):
            raise TimeoutError  # a client timeout inside the operation


# -- formations ------------------------------------------------------------------------------


def test_a_remembered_formation_reads_both_shapes() -> None:
    assert formation_of({"formation": {"web": 2, "worker": 0}}) == {"web": 2}
    assert formation_of({"web": 2, "worker": 1}) == {"web": 2, "worker": 1}  # earlier versions
    assert formation_of(None) == formation_of({}) == {}


def test_fitting_drops_the_types_the_app_lost_and_keeps_one_web() -> None:
    assert fit_formation({"web": 2, "clock": 1}, {"web", "worker"}) == {"web": 2}
    assert fit_formation({"worker": 1}, {"web", "worker"}) == {"web": 1, "worker": 1}
    assert fit_formation({"web": 1}, {"worker"}) == {}


def test_a_stop_remembers_only_what_ran() -> None:
    assert remembered({"web": 2, "worker": 0}) == {"formation": {"web": 2}}
    assert remembered({"web": 0}) is None
