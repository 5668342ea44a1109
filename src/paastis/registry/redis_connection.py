"""One Redis client shared by the registry and the event log: availability, backoff, recovery."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from paastis.registry import RegistryUnavailable
from paastis.urls import mask_url

log = logging.getLogger("paastis.redis")

T = TypeVar("T")

# Everything that means "Redis cannot serve us right now", as opposed to a bug in a command.
# AuthenticationError and BusyLoadingError are ConnectionError subclasses; a read-only replica
# (after a failover) cannot take our writes either.
REDIS_DOWN_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    OSError,
    TimeoutError,
)

RecoveryCallback = Callable[[], Awaitable[None]]


class RedisConnection:
    """Owns the pooled client, knows whether Redis answers, and reconnects in the background.

    `start()`/`close()` are counted, so the registry and the event log may both call them: the
    pool opens on the first `start()` and closes on the matching last `close()`.
    """

    def __init__(
        self,
        url: str,
        *,
        retry_min: float = 0.5,
        retry_max: float = 30.0,
        connect_timeout: float = 2.0,
        socket_timeout: float = 5.0,
    ) -> None:
        self.safe_url = mask_url(url)
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._ping_timeout = connect_timeout + socket_timeout
        # Options written in the URL (e.g. ?socket_timeout=) win over these keywords.
        # One immediate retry, no backoff: it replaces a pooled connection that a Redis restart
        # left dead, without making every call wait while Redis is really down.
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self._available = False
        self._up = asyncio.Event()
        self._users = 0
        self._reconnect_task: asyncio.Task[None] | None = None
        self._on_recovery: list[RecoveryCallback] = []
        self._ever_reported = False

    @property
    def available(self) -> bool:
        return self._available

    def on_recovery(self, callback: RecoveryCallback) -> None:
        """`callback` runs each time Redis answers again (to write what was kept meanwhile)."""
        self._on_recovery.append(callback)

    async def start(self) -> None:
        """Pings Redis once; when it does not answer, logs it and retries in the background."""
        self._users += 1
        if self._users > 1:
            return
        try:
            await asyncio.wait_for(self.client.ping(), self._ping_timeout)
        except REDIS_DOWN_ERRORS as exc:
            self.mark_down(exc)
            return
        self._set_up()

    async def close(self) -> None:
        self._users = max(0, self._users - 1)
        if self._users:
            return
        if self._reconnect_task is not None:
            await stop_task(self._reconnect_task)
            self._reconnect_task = None
        self._available = False
        self._up.clear()
        await self.client.aclose()

    async def run(self, operation: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Runs `operation` on the client; RegistryUnavailable when Redis is (or just went) down.

        While Redis is known to be down this fails at once, without touching the network, so
        callers fall back to memory without waiting on a connect timeout every time.
        """
        if not self._available:
            raise RegistryUnavailable(f"redis unreachable at {self.safe_url}")
        try:
            return await operation(self.client)
        except REDIS_DOWN_ERRORS as exc:
            self.mark_down(exc)
            raise RegistryUnavailable(f"redis unreachable at {self.safe_url}") from exc

    async def wait_available(self, timeout: float) -> bool:
        """Waits (at most `timeout` seconds) until Redis answers; whether it does."""
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def mark_down(self, exc: BaseException) -> None:
        """Records that Redis stopped answering (logged once per change) and starts retrying."""
        if self._available or not self._ever_reported:
            log.warning(
                "redis unreachable at %s (%s: %s); serving from memory and retrying",
                self.safe_url,
                type(exc).__name__,
                exc,
            )
        self._ever_reported = True
        self._available = False
        self._up.clear()
        if self._users and (self._reconnect_task is None or self._reconnect_task.done()):
            self._reconnect_task = asyncio.get_running_loop().create_task(
                self._reconnect(), name="paastis-redis-reconnect"
            )

    def _set_up(self) -> None:
        if not self._available and self._ever_reported:
            log.info("redis is back at %s", self.safe_url)
        self._ever_reported = True
        self._available = True
        self._up.set()

    async def _reconnect(self) -> None:
        delay = self._retry_min
        while True:
            # Jitter keeps several paastis instances from knocking on Redis in step.
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self._retry_max)
            try:
                await asyncio.wait_for(self.client.ping(), self._ping_timeout)
            except REDIS_DOWN_ERRORS:
                continue
            self._set_up()
            await self._recover()
            if self._available:
                return

    async def _recover(self) -> None:
        for callback in self._on_recovery:
            try:
                await callback()
            except RegistryUnavailable:
                return  # it marked Redis down again; the retry loop goes on
            except Exception:  # one component's bug must not keep the others from catching up
                log.exception("catching up with redis failed")


async def stop_task(task: asyncio.Task[None], timeout: float = 2.0) -> None:
    """Cancels `task` and waits (bounded) for it to end.

    redis-py's asyncio client sometimes swallows a cancellation that lands while a command is in
    flight (redis/redis-py#2028, #2551), so the task is cancelled again until it ends.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done() and loop.time() < deadline:
        task.cancel()
        await asyncio.wait([task], timeout=0.05)
    if not task.done():
        log.warning("background task %s did not stop within %.1f s", task.get_name(), timeout)
    elif not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed", task.get_name(), exc_info=task.exception())
