"""Lifecycle events (APP_STARTED, APP_STOPPED, ...): the model, the log interface, in memory."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

log = logging.getLogger("paastis.events")

APP_REGISTERED = "APP_REGISTERED"
APP_UNREGISTERED = "APP_UNREGISTERED"
APP_STARTED = "APP_STARTED"
APP_STOPPED = "APP_STOPPED"
APP_START_FAILED = "APP_START_FAILED"
APP_STOP_FAILED = "APP_STOP_FAILED"
# Tells the other paastis instances that a stop begins, so they hold new requests for the app
# instead of forwarding them to containers going down. Not shown by the system API.
APP_STOPPING = "APP_STOPPING"
INTERNAL_EVENTS = frozenset({APP_STOPPING})


@dataclass(frozen=True)
class Event:
    oid: str  # the app's name
    name: str
    date: datetime  # aware, UTC

    def to_json(self) -> dict[str, str]:
        return {"oid": self.oid, "name": self.name, "date": iso_utc(self.date)}


EventListener = Callable[[Event], None]


class EventLog(Protocol):
    """Where events are kept; listeners hear the events of every paastis instance."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def record(self, name: str, oid: str) -> None: ...

    async def list(self) -> list[Event]:
        """Oldest first."""
        ...

    def subscribe(self, listener: EventListener) -> None: ...


class InMemoryEventLog:
    """Keeps the newest `capacity` events of this process."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._events: collections.deque[Event] = collections.deque(maxlen=capacity)
        self._listeners: list[EventListener] = []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def record(self, name: str, oid: str) -> None:
        event = Event(oid=oid, name=name, date=datetime.now(UTC))
        self._events.append(event)
        notify(self._listeners, event)

    async def list(self) -> list[Event]:
        return list(self._events)

    def subscribe(self, listener: EventListener) -> None:
        self._listeners.append(listener)


def notify(listeners: list[EventListener], event: Event) -> None:
    for listener in listeners:
        try:
            listener(event)
        except Exception:  # a listener's bug must not lose the event for the others
            log.exception("event listener failed on %s %s", event.name, event.oid)


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC ending in `Z`, as the system API promises."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
