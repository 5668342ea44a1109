"""The cron-driven background task: discover running apps, forget stopped ones, stop idle ones,
and keep the apps of open office hours (`keep_awake`) awake."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from croniter import croniter

from paastis.clock import MonotonicClock, WallClock, utc_now
from paastis.lifecycle import Lifecycle
from paastis.metrics import Metrics
from paastis.office_hours import OfficeHours
from paastis.providers import AppState, PaasApp, ProviderError
from paastis.registry import RunningApp

log = logging.getLogger("paastis.scheduler")

# A tick's lease outlives the tick should its instance die mid-tick.
TICK_LEASE_SECONDS = 300.0
# Idle apps stopped at the same time: a stop mostly waits on the provider, and many review apps
# tend to go idle together; the adapters' own rate limiters still pace the calls.
STOP_CONCURRENCY = 4


@dataclass
class TickReport:
    listed: int = 0
    registered: list[str] = field(default_factory=list)
    unregistered: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    woken: list[str] = field(default_factory=list)  # their keep_awake window is open
    skipped: str | None = None  # why the tick did nothing


class Scheduler:
    def __init__(
        self,
        *,
        lifecycle: Lifecycle,
        cron: str,
        ignored_apps: frozenset[str],
        metrics: Metrics,
        clock: MonotonicClock = time.monotonic,
        wall_clock: WallClock = utc_now,
        office_hours: OfficeHours | None = None,
    ) -> None:
        self._lifecycle = lifecycle
        self._office_hours = office_hours or OfficeHours()
        self._clock = clock
        self._wall_clock = wall_clock
        self._cron = cron
        self._ignored = ignored_apps
        self._metrics = metrics
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()
        # Apps registered at the last tick, for the metrics.
        self.registered_count = 0

    async def run(self) -> None:
        """A tick now, then one per cron occurrence, until `stop()`."""
        schedule = croniter(self._cron, self._wall_clock(), second_at_beginning=False)
        while not self._stopping.is_set():
            await self.tick()
            delay = next_delay(schedule, self._wall_clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    def stop(self) -> None:
        """Ends the loop after the tick under way, if any."""
        self._stopping.set()

    async def tick(self) -> TickReport:
        """One pass; never overlaps another and never raises."""
        if self._lock.locked():
            return TickReport(skipped="the previous tick is still running")
        async with self._lock:
            started = self._clock()
            try:
                return await self._tick()
            except Exception:
                log.exception("scheduler tick failed")
                return TickReport(skipped="error")
            finally:
                self._metrics.tick_duration.observe(self._clock() - started)

    async def _tick(self) -> TickReport:
        lifecycle = self._lifecycle
        async with lifecycle.registry.lock("tick", TICK_LEASE_SECONDS) as leader:
            if not leader:
                return TickReport(skipped="another paastis instance runs this tick")
            try:
                apps = await lifecycle.catalog.refresh()
            except ProviderError as exc:
                log.error("listing the apps failed, so nothing is stopped this tick: %s", exc)
                return TickReport(skipped="listing failed")
            report = TickReport(listed=len(apps))
            if not lifecycle.registry.available:
                log.warning("the registry is unreachable, so nothing is stopped this tick")
                report.skipped = "registry unavailable"
                return report
            registered = {app.name: app for app in await lifecycle.registry.list()}
            if not lifecycle.registry.available:  # the store went away during that read
                report.skipped = "registry unavailable"
                return report
            self.registered_count = len(registered)
            awake = self.kept_awake(apps)
            idle: list[str] = []
            for app in apps:
                if app.name in self._ignored or self._stopping.is_set():
                    continue
                visited = await self._visit(app.name, app.state, registered.get(app.name), report)
                if visited and app.name not in awake:  # idle, outside its office hours
                    idle.append(app.name)
            self._wake_kept_awake(apps, awake, report)
            await self._stop_idle(idle, report)
            return report

    def kept_awake(self, apps: Iterable[PaasApp]) -> set[str]:
        """The apps whose keep_awake window is open now, with their linked apps."""
        now = self._wall_clock()
        awake: set[str] = set()
        for app in apps:
            if self._office_hours.is_open(self._lifecycle.route_of(app.name).keep_awake, now):
                awake.add(app.name)
                awake.update(self._lifecycle.linked_closure(app.name))
        return awake

    def _wake_kept_awake(self, apps: list[PaasApp], awake: set[str], report: TickReport) -> None:
        """Wakes the sleeping apps of an open window, in the background, as a request would."""
        for app in apps:
            if (
                app.name in awake
                and app.name not in self._ignored
                and app.state is AppState.STOPPED
                and not self._lifecycle.is_waking(app.name)
                and not self._stopping.is_set()
            ):
                log.info("waking %s: its keep_awake window is open", app.name)
                self._lifecycle.wake_in_background(app.name)
                report.woken.append(app.name)

    async def _stop_idle(self, names: list[str], report: TickReport) -> None:
        slots = asyncio.Semaphore(STOP_CONCURRENCY)

        async def stop(name: str) -> None:
            async with slots:
                if self._stopping.is_set():
                    return
                if await self._lifecycle.stop(name, only_if_idle=True):
                    report.stopped.append(name)

        await asyncio.gather(*(stop(name) for name in names))
        report.stopped.sort()

    async def _visit(
        self, name: str, state: AppState, registered: RunningApp | None, report: TickReport
    ) -> bool:
        """Registers or forgets the app as its state says; True when it is idle to stop."""
        lifecycle = self._lifecycle
        if state is AppState.STOPPED:
            if registered is not None and not lifecycle.is_waking(name):
                await lifecycle.unregister(name)
                report.unregistered.append(name)
            return False
        if state is not AppState.RUNNING:
            return False  # starting, failed or unknown: look again next tick
        app = lifecycle.catalog.lookup(name)
        if registered is None:
            if app is not None and await lifecycle.register(app):
                report.registered.append(name)
            return False
        return registered.is_idle(self._wall_clock()) and not lifecycle.activity.count(name)


def next_delay(schedule: croniter, now: datetime) -> float:
    """Seconds from `now` until the next cron occurrence (croniter keeps its own position)."""
    upcoming: datetime = schedule.get_next(datetime)
    while upcoming <= now:  # a slow tick may have passed occurrences: skip them
        upcoming = schedule.get_next(datetime)
    return (upcoming - now).total_seconds()
