"""A clock that a test moves by hand, for the pieces that take a clock: read as `clock()` it is
monotonic seconds; `clock.wall()` is the matching UTC wall-clock time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

# Where the wall clock starts: a Monday at 10:00 UTC, in office hours.
WALL_START = datetime(2025, 3, 3, 10, 0, tzinfo=UTC)


class ManualClock:
    """Time passes only when the test calls `advance`."""

    def __init__(self, wall_start: datetime = WALL_START) -> None:
        self.now = 0.0
        self._wall_start = wall_start

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return self._wall_start + timedelta(seconds=self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds
