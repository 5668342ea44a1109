"""The embedded registry: one process, state in memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime

from paastis.providers import Formation
from paastis.registry import RunningApp


class InMemoryRegistry:
    def __init__(self) -> None:
        self._apps: dict[str, RunningApp] = {}
        # Kept apart so the hot path's stamp is a dict write, not a new RunningApp.
        self._last_access: dict[str, datetime] = {}
        self._formations: dict[str, Formation] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def start(self) -> None:
        pass

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
        else:
            self._formations.pop(name, None)

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
