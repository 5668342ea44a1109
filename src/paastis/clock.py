"""The clocks paastis reads, handed to the pieces that need them so tests can move time by hand:
a monotonic one for durations, a wall clock (UTC) for idle times and cron schedules."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

MonotonicClock = Callable[[], float]
WallClock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)
