"""The embedded registry: one process, state in memory; what a wake needs optionally kept in a
state file (REGISTRY_STATE_FILE) so that it outlives a restart."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from paastis.errors import ConfigError
from paastis.providers import Formation
from paastis.registry import RunningApp
from paastis.registry.state_file import VARIABLE, StateFile

log = logging.getLogger("paastis.registry")


class InMemoryRegistry:
    def __init__(self, state_file: Path | None = None) -> None:
        self._apps: dict[str, RunningApp] = {}
        # Kept apart so the hot path's stamp is a dict write, not a new RunningApp.
        self._last_access: dict[str, datetime] = {}
        self._formations: dict[str, Formation] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._state = StateFile(state_file) if state_file is not None else None

    async def start(self) -> None:
        if self._state is None:
            return
        self._formations = await self._state.load()
        try:
            await self._state.save(self._formations)  # now, not at the first stop
        except OSError as exc:
            raise ConfigError(
                f"{VARIABLE}={str(self._state.path)!r}: cannot write it ({exc})"
            ) from None

    async def close(self) -> None:
        pass

    @property
    def available(self) -> bool:
        return True

    async def get(self, name: str) -> RunningApp | None:
        app = self._apps.get(name)
        return app.stamped(self._last_access[name]) if app is not None else None

    async def list(self) -> list[RunningApp]:
        return [app.stamped(self._last_access[name]) for name, app in self._apps.items()]

    async def register(self, app: RunningApp) -> bool:
        if app.name in self._apps:
            return False
        self._apps[app.name] = app
        self._last_access[app.name] = app.last_accessed_at
        return True

    async def update(
        self, name: str, *, max_idle_time: float, linked_apps: tuple[str, ...]
    ) -> bool:
        app = self._apps.get(name)
        if app is not None:
            self._apps[name] = replace(app, max_idle_time=max_idle_time, linked_apps=linked_apps)
        return True

    async def unregister(self, name: str) -> None:
        self._apps.pop(name, None)
        self._last_access.pop(name, None)

    async def clear(self) -> None:
        self._apps.clear()
        self._last_access.clear()

    def stamp(self, name: str, when: datetime) -> None:
        last = self._last_access.get(name)
        if last is not None and when > last:
            self._last_access[name] = when

    async def remember_formation(self, name: str, formation: Formation | None) -> None:
        if formation:
            self._formations[name] = dict(formation)
        elif self._formations.pop(name, None) is None:
            return
        if self._state is not None:
            try:
                await self._state.save(self._formations)
            except OSError as exc:
                log.error(
                    "writing %s failed (%s): a restart now would forget what %s needs to wake",
                    self._state.path, exc, name,
                )  # fmt: skip

    async def formation(self, name: str) -> Formation | None:
        return self._formations.get(name)

    @asynccontextmanager
    async def lock(self, key: str, ttl: float) -> AsyncIterator[bool]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        if lock.locked():
            yield False
            return
        async with lock:
            yield True
