"""What every adapter needs beside its provider's facts: a deadline, polling with a backoff,
guards on the shape of an answer, and fitting a remembered formation to the app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import Any

from paastis.providers import (
    Backoff,
    Formation,
    Provider,
    ProviderError,
    Remembered,
    WakeTimeout,
)
from paastis.providers.api import ApiResponse


@contextlib.asynccontextmanager
async def within(seconds: float, error: Callable[[], ProviderError]) -> AsyncIterator[None]:
    """Runs the block within `seconds`; past them, raises `error()` instead of TimeoutError.

    A TimeoutError raised inside the block for another reason (a client timeout) is left as
    it is, so that a slow answer is not mistaken for the operation's deadline.
    """
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            yield
    except TimeoutError:
        if not deadline.expired():
            raise
        raise error() from None


def wake_timeout(provider: str, app: str, seconds: float, why: str = "") -> WakeTimeout:
    reason = f" ({why})" if why else ""
    return WakeTimeout(
        f"{provider} app {app} did not run within {seconds:g}s{reason}", provider=provider, app=app
    )


async def poll_until(
    check: Callable[[], Awaitable[bool]],
    backoff: Backoff,
    *,
    nudge: asyncio.Event | None = None,
) -> None:
    """Calls `check()` on the backoff's schedule until it returns True (no deadline here:
    callers bound it with `within`).

    When `nudge` is set (the upstream answers, at no provider cost), the next look comes at
    once, no sooner than `min_gap` after the previous call, and the schedule starts again
    from `min_gap`: a provider that lags the app is soon asked again, while an upstream that
    answers too early (an error page below 500) costs a few calls, not one per second.
    """
    loop = asyncio.get_running_loop()
    last_call = loop.time()
    delays = backoff.delays()
    nudged = nudge is None
    while True:
        delay = next(delays)
        if nudged:
            await asyncio.sleep(delay)
        elif await _wait_set(nudge, delay):  # type: ignore[arg-type]
            nudged = True
            delays = backoff.quicker().delays()
            await asyncio.sleep(max(0.0, last_call + backoff.min_gap - loop.time()))
        last_call = loop.time()
        if await check():
            return


async def _wait_set(event: asyncio.Event, timeout: float) -> bool:
    """True when `event` is set within `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def start_and_wait(provider: Provider, name: str, remembered: Remembered | None) -> None:
    """Starts the app and returns once the provider says it runs, within its operation
    timeout (WakeTimeout past it). The lifecycle adds the upstream's readiness to this."""
    seconds = provider.operation_timeout
    async with within(seconds, lambda: wake_timeout(provider.name, name, seconds)):
        startup = await provider.start(name, remembered)
        await poll_until(startup.running, provider.poll)


# -- remembered formations ---------------------------------------------------------------


def formation_of(remembered: Mapping[str, Any] | None) -> Formation:
    """The process quantities to restore, from what a stop remembered.

    Also reads the flat `{"web": 2}` that earlier versions remembered (a Redis registry may
    still hold some).
    """
    if not remembered:
        return {}
    formation = remembered.get("formation")
    if formation is None and all(_is_quantity(v) for v in remembered.values()):
        formation = remembered
    if not isinstance(formation, Mapping):
        return {}
    return {str(t): int(n) for t, n in formation.items() if _is_quantity(n) and n > 0}


def _is_quantity(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def fit_formation(wanted: Formation, existing: Collection[str]) -> Formation:
    """`wanted` without the process types the app no longer has (a deployment while it
    slept may have removed one), and with at least one web process when the app has a web
    type, since waking is for serving HTTP. Empty when nothing of it fits."""
    kept = {kind: n for kind, n in wanted.items() if kind in existing and n > 0}
    if "web" in existing:
        kept["web"] = max(1, kept.get("web", 0))
    return kept


def remembered(formation: Formation, autoscalers: list[Any] | None = None) -> Remembered | None:
    """What a stop returns: the running quantities (and autoscalers), None when nothing ran."""
    running = {kind: n for kind, n in formation.items() if n > 0}
    if not running:
        return None
    value: Remembered = {"formation": running}
    if autoscalers:
        value["autoscalers"] = autoscalers
    return value


# -- the shape of an answer --------------------------------------------------------------


def expect_object(response: ApiResponse, provider: str, operation: str) -> dict[str, Any]:
    """The answer's JSON object; a ProviderError naming the call when it is anything else."""
    if not isinstance(response.body, dict):
        raise ProviderError(f"{provider} {operation} answered no JSON object", provider=provider)
    return response.body


def expect_list(response: ApiResponse, provider: str, operation: str) -> list[Any]:
    """The answer's JSON array; a ProviderError naming the call when it is anything else."""
    if not isinstance(response.body, list):
        raise ProviderError(f"{provider} {operation} answered no JSON array", provider=provider)
    return response.body


def expect_member(
    response: ApiResponse, key: str, kind: type, provider: str, operation: str
) -> Any:
    """`body[key]` of a JSON object, of the `kind` expected (list or dict), else a
    ProviderError: an answer of the wrong shape must never read as "no apps"."""
    value = expect_object(response, provider, operation).get(key)
    if not isinstance(value, kind):
        raise ProviderError(
            f"{provider} {operation} answered no {key!r} {kind.__name__}", provider=provider
        )
    return value


def objects(value: Any) -> list[dict[str, Any]]:
    """The JSON objects of a list (anything else in it, or a non-list, is left out)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def text(value: Any) -> str | None:
    """A non-empty string field, else None."""
    return value if isinstance(value, str) and value else None


def flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None
