"""The shared event log: one Redis stream that every paastis instance writes and tails.

Each instance tags its entries with a random source id. Its own events reach its listeners at
once, when recorded; the tail delivers the other instances' events and skips its own, so every
listener hears every event exactly once. While Redis is unreachable, events are kept in process
(listed and heard locally) and appended to the stream once Redis answers again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from paastis.events import Event, EventListener, notify
from paastis.registry import RegistryUnavailable
from paastis.registry.redis_connection import RedisConnection, stop_task

log = logging.getLogger("paastis.events.redis")

NO_ENTRY_YET = "0-0"


class RedisEventLog:
    def __init__(
        self,
        connection: RedisConnection,
        *,
        prefix: str = "paastis:",
        maxlen: int = 10_000,
        block_time: float = 1.0,
        batch_size: int = 100,
    ) -> None:
        self._conn = connection
        self._key = prefix + "events"
        self._maxlen = maxlen
        self._block_ms = max(1, int(block_time * 1000))
        self._batch_size = batch_size
        self._source = secrets.token_hex(8)
        self._listeners: list[EventListener] = []
        # Events this instance has seen, served by list() while Redis is unreachable.
        self._seen: collections.deque[Event] = collections.deque(maxlen=maxlen)
        self._unsent: collections.deque[Event] = collections.deque(maxlen=maxlen)
        self._last_id: str | None = None
        self._tail: asyncio.Task[None] | None = None
        self._sending = asyncio.Lock()
        connection.on_recovery(self._send_unsent)

    async def start(self) -> None:
        await self._conn.start()
        if self._conn.available:
            with contextlib.suppress(RegistryUnavailable):
                self._last_id = await self._conn.run(self._newest_id)
        self._tail = asyncio.get_running_loop().create_task(
            self._tail_loop(), name="paastis-events-tail"
        )

    async def close(self) -> None:
        if self._tail is not None:
            await stop_task(self._tail)
            self._tail = None
        try:
            await self._send_unsent()
        except RegistryUnavailable:
            log.warning("closing with %d events redis never received", len(self._unsent))
        await self._conn.close()

    async def record(self, name: str, oid: str) -> None:
        event = Event(oid=oid, name=name, date=datetime.now(UTC))
        self._seen.append(event)
        self._unsent.append(event)
        with contextlib.suppress(RegistryUnavailable):  # kept in _unsent, sent on recovery
            await self._send_unsent()
        notify(self._listeners, event)

    async def list(self) -> list[Event]:
        """Oldest first: the stream, then what this instance could not send yet."""
        try:
            entries = await self._conn.run(lambda r: r.xrange(self._key, "-", "+"))
        except RegistryUnavailable:
            return list(self._seen)
        return [decode_event(fields) for _entry_id, fields in entries] + list(self._unsent)

    def subscribe(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    async def _send_unsent(self) -> None:
        async with self._sending:
            if not self._unsent:
                return
            batch = list(self._unsent)

            async def send(r: aioredis.Redis) -> None:
                async with r.pipeline(transaction=False) as pipe:
                    for event in batch:
                        pipe.xadd(
                            self._key,
                            self._encode(event),
                            maxlen=self._maxlen,
                            approximate=True,
                        )
                    await pipe.execute()

            await self._conn.run(send)
            for _ in batch:
                self._unsent.popleft()

    async def _tail_loop(self) -> None:
        while True:
            if not self._conn.available:
                await self._conn.wait_available(self._block_ms / 1000)
                continue
            try:
                await self._read_once()
            except RegistryUnavailable:
                continue
            except Exception:  # the tail must outlive a malformed entry
                log.exception("reading events from redis failed")
                await asyncio.sleep(self._block_ms / 1000)

    async def _read_once(self) -> None:
        if self._last_id is None:
            # First contact (Redis was down at start-up): hear what comes from now on.
            self._last_id = await self._conn.run(self._newest_id)
        last_id = self._last_id
        response = await self._conn.run(
            lambda r: r.xread({self._key: last_id}, count=self._batch_size, block=self._block_ms)
        )
        for _stream, entries in response or []:
            for entry_id, fields in entries:
                self._last_id = entry_id
                if fields.get("source") == self._source:
                    continue  # heard already, when recorded
                event = decode_event(fields)
                self._seen.append(event)
                notify(self._listeners, event)

    async def _newest_id(self, r: aioredis.Redis) -> str:
        newest = await r.xrevrange(self._key, "+", "-", count=1)
        return newest[0][0] if newest else NO_ENTRY_YET

    def _encode(self, event: Event) -> dict[str, str]:
        return {
            "oid": event.oid,
            "name": event.name,
            "date": event.date.isoformat(),
            "source": self._source,
        }


def decode_event(fields: dict[str, Any]) -> Event:
    return Event(
        oid=fields["oid"],
        name=fields["name"],
        date=datetime.fromisoformat(fields["date"]).astimezone(UTC),
    )
