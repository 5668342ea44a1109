"""A monotonic clock that a test moves by hand, for adapters and emulators that take a clock."""

from __future__ import annotations


class ManualClock:
    """Reads as `clock()`; time passes only when the test calls `advance`."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
