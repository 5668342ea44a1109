"""The one way a test waits, bounded, for something asynchronous to become true."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

Condition = Callable[[], object] | Callable[[], Awaitable[object]]


async def eventually(
    condition: Condition,
    *,
    timeout: float = 5.0,
    interval: float = 0.01,
    what: str | None = None,
) -> None:
    """Returns once `condition()` is truthy (a coroutine function is awaited); fails the test
    with an AssertionError naming `what` after `timeout` seconds.

    A synchronous test runs it with `asyncio.run(eventually(...))`.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        outcome = condition()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if asyncio.get_running_loop().time() >= deadline:
            raise AssertionError(f"not true within {timeout} s: {what or _name(condition)}")
        await asyncio.sleep(interval)


def _name(condition: Condition) -> str:
    name = getattr(condition, "__qualname__", repr(condition))
    return "the condition" if "<lambda>" in name else name
