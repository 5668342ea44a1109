"""The shared registry: several paastis instances keep their apps in one Redis.

Layout, every key under the prefix (default `paastis:`):
  <prefix>apps          hash  app name -> JSON (provider, region, name, max_idle_time, linked_apps,
                              started_at); also the index of registered apps
  <prefix>last_access   zset  app name -> last access, integer microseconds since the epoch
  <prefix>formations    hash  app name -> JSON formation remembered while the app sleeps
  <prefix>lock:<key>    string, a lock token with an expiry

While Redis is unreachable the registry serves from an in-process mirror of what it registered
and read, keeps its writes and stamps, and writes them once Redis answers again (last write wins
per app). `lock()` then yields True unless this process already holds the key: with no shared
store, the instance falls back to deciding alone, as a single instance would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis

from paastis.providers import Formation
from paastis.registry import RegistryUnavailable, RunningApp
from paastis.registry.redis_connection import RedisConnection, stop_task

log = logging.getLogger("paastis.registry.redis")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)

# Registers unless already registered; the idle clock starts with the app's last access.
REGISTER_LUA = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  return 1
end
return 0
"""

# Changes what applies to a registered app, nothing else; a forgotten app stays forgotten.
UPDATE_LUA = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return 0
end
local app = cjson.decode(raw)
app['max_idle_time'] = tonumber(ARGV[2])
app['linked_apps'] = cjson.decode(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(app))
return 1
"""

# Moves last accesses forward only, and only for registered apps: the newest time wins whatever
# the order in which instances flush. Scores go to ZADD as the strings received, because Lua
# would print numbers this large with too few digits.
STAMP_LUA = """
local moved = 0
for i = 1, #ARGV, 2 do
  local name = ARGV[i]
  if redis.call('HEXISTS', KEYS[1], name) == 1 then
    local current = redis.call('ZSCORE', KEYS[2], name)
    if (not current) or tonumber(current) < tonumber(ARGV[i + 1]) then
      redis.call('ZADD', KEYS[2], ARGV[i + 1], name)
      moved = moved + 1
    end
  end
end
return moved
"""

# Releases a lock only if it is still ours (it may have expired and been taken by another).
UNLOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_UNREGISTERED = None  # a pending "unregister" in the write-behind queue


class RedisRegistry:
    def __init__(
        self,
        connection: RedisConnection,
        *,
        prefix: str = "paastis:",
        flush_interval: float = 1.0,
        close_timeout: float = 2.0,
    ) -> None:
        self._conn = connection
        self._prefix = prefix
        self._apps_key = prefix + "apps"
        self._access_key = prefix + "last_access"
        self._formations_key = prefix + "formations"
        self._flush_interval = flush_interval
        self._close_timeout = close_timeout
        client = connection.client
        self._register_script = client.register_script(REGISTER_LUA)
        self._update_script = client.register_script(UPDATE_LUA)
        self._stamp_script = client.register_script(STAMP_LUA)
        self._unlock_script = client.register_script(UNLOCK_LUA)
        # What this instance registered or read: served while Redis is unreachable.
        self._mirror: dict[str, RunningApp] = {}
        self._mirror_formations: dict[str, Formation] = {}
        # Writes made while Redis was unreachable, replayed when it answers (last one per app).
        self._pending_apps: dict[str, RunningApp | None] = {}
        self._pending_formations: dict[str, Formation | None] = {}
        self._pending_clear = False
        # Stamps not yet written to Redis: the newest per app.
        self._stamps: dict[str, datetime] = {}
        self._stamped = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._held_locks: set[str] = set()
        self._catching_up = asyncio.Lock()
        connection.on_recovery(self._catch_up)

    async def start(self) -> None:
        await self._conn.start()
        self._flusher = asyncio.get_running_loop().create_task(
            self._flush_loop(), name="paastis-registry-flush"
        )

    async def close(self) -> None:
        if self._flusher is not None:
            await stop_task(self._flusher)
            self._flusher = None
        try:
            await asyncio.wait_for(self._catch_up(), self._close_timeout)
        except (TimeoutError, RegistryUnavailable):
            log.warning(
                "closing with writes redis never received (%d apps, %d formations, %d stamps)",
                len(self._pending_apps),
                len(self._pending_formations),
                len(self._stamps),
            )
        await self._conn.close()

    @property
    def available(self) -> bool:
        """Redis answers and everything kept during an outage has been written back."""
        return self._conn.available and not self._has_pending_writes()

    async def get(self, name: str) -> RunningApp | None:
        if self.available:
            try:
                app = await self._conn.run(lambda r: self._read_app(r, name))
            except RegistryUnavailable:
                app = self._mirror.get(name)
            else:
                self._mirror_put(name, app)
        else:
            app = self._mirror.get(name)
        return self._with_local_stamp(app) if app else None

    async def list(self) -> list[RunningApp]:
        if self.available:
            try:
                apps = await self._conn.run(self._read_apps)
            except RegistryUnavailable:
                apps = list(self._mirror.values())
            else:
                self._mirror = {app.name: app for app in apps}
        else:
            apps = list(self._mirror.values())
        return [self._with_local_stamp(app) for app in apps]

    async def register(self, app: RunningApp) -> bool:
        if self.available:
            try:
                created = await self._conn.run(lambda r: self._write_register(r, app))
            except RegistryUnavailable:
                pass
            else:
                if created:
                    self._mirror[app.name] = app
                return created
        if app.name in self._mirror:
            return False
        self._mirror[app.name] = app
        self._pending_apps[app.name] = app
        return True

    async def update(
        self, name: str, *, max_idle_time: float, linked_apps: tuple[str, ...]
    ) -> bool:
        def changed(app: RunningApp) -> RunningApp:
            return replace(app, max_idle_time=max_idle_time, linked_apps=linked_apps)

        if name in self._mirror:
            self._mirror[name] = changed(self._mirror[name])
        pending = self._pending_apps.get(name)
        if pending is not None:  # registered during an outage: its registration carries it
            self._pending_apps[name] = changed(pending)
            return True
        if self.available:
            try:
                await self._conn.run(
                    lambda r: self._update_script(
                        keys=[self._apps_key],
                        args=[name, str(max_idle_time), json.dumps(list(linked_apps))],
                        client=r,
                    )
                )
            except RegistryUnavailable:
                pass
            else:
                return True
        return False

    async def unregister(self, name: str) -> None:
        self._mirror.pop(name, None)
        if self.available:
            try:
                await self._conn.run(lambda r: self._write_unregister(r, name))
            except RegistryUnavailable:
                pass
            else:
                return
        self._pending_apps[name] = _UNREGISTERED

    async def clear(self) -> None:
        self._mirror.clear()
        if self.available:
            try:
                await self._conn.run(self._write_clear)
            except RegistryUnavailable:
                pass
            else:
                return
        self._pending_apps.clear()
        self._pending_clear = True

    def stamp(self, name: str, when: datetime) -> None:
        previous = self._stamps.get(name)
        if previous is None or when > previous:
            self._stamps[name] = when
            self._stamped.set()

    async def remember_formation(self, name: str, formation: Formation | None) -> None:
        value = dict(formation) if formation else None
        if value:
            self._mirror_formations[name] = value
        else:
            self._mirror_formations.pop(name, None)
        if self.available:
            try:
                await self._conn.run(lambda r: self._write_formation(r, name, value))
            except RegistryUnavailable:
                pass
            else:
                return
        self._pending_formations[name] = value

    async def formation(self, name: str) -> Formation | None:
        if self.available:
            try:
                raw = await self._conn.run(lambda r: r.hget(self._formations_key, name))
            except RegistryUnavailable:
                pass
            else:
                formation = json.loads(raw) if raw else None
                if formation:
                    self._mirror_formations[name] = formation
                else:
                    self._mirror_formations.pop(name, None)
                return formation
        return self._mirror_formations.get(name)

    @asynccontextmanager
    async def lock(self, key: str, ttl: float) -> AsyncIterator[bool]:
        # A key this process holds is refused without a round trip, and stays exclusive within
        # the process even while Redis is down.
        if key in self._held_locks:
            yield False
            return
        redis_key = f"{self._prefix}lock:{key}"
        token = secrets.token_hex(16)
        ttl_ms = max(1, int(ttl * 1000))
        try:
            acquired = bool(
                await self._conn.run(lambda r: r.set(redis_key, token, nx=True, px=ttl_ms))
            )
            shared = True
        except RegistryUnavailable:
            acquired, shared = True, False  # single-instance fallback, see the module docstring
        if not acquired:
            yield False
            return
        self._held_locks.add(key)
        try:
            yield True
        finally:
            self._held_locks.discard(key)
            if shared:
                with contextlib.suppress(RegistryUnavailable):
                    await self._conn.run(
                        lambda r: self._unlock_script(keys=[redis_key], args=[token], client=r)
                    )

    async def flush(self) -> None:
        """Writes the pending stamps now; RegistryUnavailable when Redis does not answer."""
        if not self._stamps:
            return
        batch = dict(self._stamps)
        args: list[str] = []
        for name, when in batch.items():
            args += [name, str(to_micros(when))]
        await self._conn.run(
            lambda r: self._stamp_script(
                keys=[self._apps_key, self._access_key], args=args, client=r
            )
        )
        for name, when in batch.items():
            # A stamp that arrived during the round trip stays for the next flush.
            if self._stamps.get(name) == when:
                del self._stamps[name]

    async def _flush_loop(self) -> None:
        while True:
            await self._stamped.wait()
            self._stamped.clear()
            if self._conn.available:
                try:
                    # Stamps go after the writes kept during an outage: a stamp of an app
                    # registered meanwhile would be dropped as unknown before its registration.
                    await self._catch_up()
                except RegistryUnavailable:
                    pass  # kept; written by _catch_up when Redis is back
                except Exception:  # the loop must outlive a bad batch
                    log.exception("writing last accesses to redis failed")
            # At most one round trip per interval, however many requests came in.
            await asyncio.sleep(self._flush_interval)

    async def _catch_up(self) -> None:
        """Writes what was kept while Redis was unreachable, then the stamps."""
        async with self._catching_up:
            while self._has_pending_writes():
                await self._replay_pending()
            await self.flush()

    def _has_pending_writes(self) -> bool:
        return self._pending_clear or bool(self._pending_apps) or bool(self._pending_formations)

    async def _replay_pending(self) -> None:
        if self._pending_clear:
            await self._conn.run(self._write_clear)
            self._pending_clear = False
        for name, app in list(self._pending_apps.items()):
            if app is _UNREGISTERED:
                await self._conn.run(lambda r, name=name: self._write_unregister(r, name))
            else:
                created = await self._conn.run(lambda r, app=app: self._write_register(r, app))
                if not created:
                    # Another instance registered it meanwhile: keep theirs, newest access wins.
                    self.stamp(app.name, app.last_accessed_at)
            if self._pending_apps.get(name, app) is app:
                self._pending_apps.pop(name, None)
        for name, formation in list(self._pending_formations.items()):
            await self._conn.run(
                lambda r, name=name, formation=formation: self._write_formation(r, name, formation)
            )
            if self._pending_formations.get(name, formation) is formation:
                self._pending_formations.pop(name, None)

    def _mirror_put(self, name: str, app: RunningApp | None) -> None:
        if app is None:
            self._mirror.pop(name, None)
        else:
            self._mirror[name] = app

    def _with_local_stamp(self, app: RunningApp) -> RunningApp:
        when = self._stamps.get(app.name)
        return app.stamped(when) if when else app

    async def _read_app(self, r: aioredis.Redis, name: str) -> RunningApp | None:
        async with r.pipeline(transaction=True) as pipe:
            pipe.hget(self._apps_key, name)
            pipe.zscore(self._access_key, name)
            raw, score = await pipe.execute()
        return decode_app(raw, score) if raw else None

    async def _read_apps(self, r: aioredis.Redis) -> list[RunningApp]:
        async with r.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._apps_key)
            pipe.zrange(self._access_key, 0, -1, withscores=True)
            raw_apps, scores = await pipe.execute()
        last_access = dict(scores)
        return [decode_app(raw, last_access.get(name)) for name, raw in raw_apps.items()]

    async def _write_register(self, r: aioredis.Redis, app: RunningApp) -> bool:
        created = await self._register_script(
            keys=[self._apps_key, self._access_key],
            args=[app.name, encode_app(app), str(to_micros(app.last_accessed_at))],
            client=r,
        )
        return bool(created)

    async def _write_unregister(self, r: aioredis.Redis, name: str) -> None:
        async with r.pipeline(transaction=True) as pipe:
            pipe.hdel(self._apps_key, name)
            pipe.zrem(self._access_key, name)
            await pipe.execute()

    async def _write_clear(self, r: aioredis.Redis) -> None:
        # Only the registered apps: formations of sleeping apps are still needed to wake them.
        await r.delete(self._apps_key, self._access_key)

    async def _write_formation(
        self, r: aioredis.Redis, name: str, formation: Formation | None
    ) -> None:
        if formation:
            await r.hset(self._formations_key, name, json.dumps(formation))
        else:
            await r.hdel(self._formations_key, name)


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch: exact in a Redis score (a double) for any date we meet."""
    return (moment - EPOCH) // MICROSECOND


def from_micros(micros: float) -> datetime:
    return EPOCH + timedelta(microseconds=int(micros))


def encode_app(app: RunningApp) -> str:
    return json.dumps(
        {
            "provider": app.provider,
            "region": app.region,
            "name": app.name,
            "max_idle_time": app.max_idle_time,
            "linked_apps": list(app.linked_apps),
            "started_at": app.started_at.isoformat(),
        }
    )


def decode_app(raw: str, last_access: float | None) -> RunningApp:
    data: dict[str, Any] = json.loads(raw)
    started_at = datetime.fromisoformat(data["started_at"])
    return RunningApp(
        provider=data["provider"],
        region=data["region"],
        name=data["name"],
        max_idle_time=float(data["max_idle_time"]),
        linked_apps=tuple(data["linked_apps"]),
        started_at=started_at,
        last_accessed_at=from_micros(last_access) if last_access is not None else started_at,
    )
