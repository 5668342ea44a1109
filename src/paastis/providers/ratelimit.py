"""Keeps an adapter's own calls inside its provider's documented rate limit."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

# How often a caller looks again while every slot is taken by calls still under way.
BUSY_RECHECK = 0.05


class SlidingWindow:
    """At most `limit` calls in any `window` seconds, bursts included, as the provider counts.

    A call holds a slot from the moment it is sent until `window` seconds after its answer
    came back: the provider counted it somewhere in between, so no window the provider can
    draw holds more than `limit` of our calls. Callers are served first come, first served.
    After a 429, `throttled()` holds every caller for a whole window: retrying within
    seconds would only fail again.
    """

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._ended: deque[float] = deque()  # when each recent call got its answer
        self._in_flight = 0
        self._paused_until = float("-inf")
        self._lock = asyncio.Lock()

    def used(self) -> int:
        """Slots taken now: calls under way plus calls answered within the last window."""
        self._forget_old(self._clock())
        return self._in_flight + len(self._ended)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._lock:
            while (delay := self._delay()) > 0:
                await self._sleep(delay)
            self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            self._ended.append(self._clock())

    def throttled(self) -> float:
        """The provider answered 429: every caller waits a whole window from now."""
        self._paused_until = self._clock() + self.window
        return self.window

    def _delay(self) -> float:
        now = self._clock()
        if now < self._paused_until:
            return self._paused_until - now
        self._forget_old(now)
        if self._in_flight + len(self._ended) < self.limit:
            return 0.0
        if len(self._ended) == 0:
            return BUSY_RECHECK  # every slot is a call still under way
        return self._ended[0] + self.window - now

    def _forget_old(self, now: float) -> None:
        while self._ended and self._ended[0] <= now - self.window:
            self._ended.popleft()
