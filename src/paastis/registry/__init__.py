"""The registry of running apps that paastis watches: the model and the store interface."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

from paastis.providers import Formation


@dataclass(frozen=True)
class RunningApp:
    """An app paastis watches: it runs, and stops once idle for `max_idle_time` minutes."""

    provider: str
    region: str | None
    name: str
    max_idle_time: float  # minutes, decimals allowed
    linked_apps: tuple[str, ...]
    started_at: datetime  # aware, UTC
    last_accessed_at: datetime  # aware, UTC

    def idle_for(self, now: datetime) -> timedelta:
        """How long since the last access; zero, never negative, for a stamp in the future
        (another instance's clock running ahead)."""
        return max(now - self.last_accessed_at, timedelta(0))

    def is_idle(self, now: datetime) -> bool:
        """True once the last access is at least `max_idle_time` old (absolute time)."""
        return self.idle_for(now) >= timedelta(minutes=self.max_idle_time)

    def stamped(self, when: datetime) -> RunningApp:
        """This app with its last access moved to `when`, never backwards."""
        if when <= self.last_accessed_at:
            return self
        return replace(self, last_accessed_at=when)


class RegistryUnavailable(Exception):
    """The store cannot be read or written right now (e.g. Redis is down)."""


class Registry(Protocol):
    """Where registered apps, their last access and remembered formations live."""

    async def start(self) -> None:
        """Connects (or retries in the background); never refuses to start."""
        ...

    async def close(self) -> None:
        """Flushes pending stamps and disconnects."""
        ...

    @property
    def available(self) -> bool:
        """False while the store is unreachable: the scheduler then stops nothing."""
        ...

    async def get(self, name: str) -> RunningApp | None: ...

    async def list(self) -> list[RunningApp]: ...

    async def register(self, app: RunningApp) -> bool:
        """Registers the app unless it already is; True when it was new."""
        ...

    async def update(
        self, name: str, *, max_idle_time: float, linked_apps: tuple[str, ...]
    ) -> bool:
        """Changes what applies to a registered app (nothing when it is not registered);
        False when the store could not take the change now."""
        ...

    async def unregister(self, name: str) -> None: ...

    async def clear(self) -> None:
        """Forgets every registered app (only paastis' own data)."""
        ...

    def stamp(self, name: str, when: datetime) -> None:
        """Moves a registered app's last access to `when`. Hot path: never waits on I/O."""
        ...

    async def remember_formation(self, name: str, formation: Formation | None) -> None: ...

    async def formation(self, name: str) -> Formation | None: ...

    def lock(self, key: str, ttl: float) -> AbstractAsyncContextManager[bool]:
        """Tries once to take a lock shared by every paastis instance; yields whether it did.

        The lock expires after `ttl` seconds should its holder die.
        """
        ...
