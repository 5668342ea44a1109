"""The one path that wakes and stops an app: locks, hooks, provider call, readiness, events.

The proxy, the scheduler and the system API all go through it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import aiohttp

from paastis import events
from paastis.catalog import AppCatalog
from paastis.clock import MonotonicClock, WallClock, utc_now
from paastis.events import EventLog
from paastis.hooks import Hooks
from paastis.metrics import Metrics
from paastis.providers import (
    AppNotFound,
    AppState,
    PaasApp,
    Provider,
    ProviderError,
    Startup,
    WakeTimeout,
)
from paastis.providers.kit import poll_until, wake_timeout, within
from paastis.registry import Registry, RunningApp
from paastis.rules import Route, RuleSet

log = logging.getLogger("paastis.lifecycle")

# The readiness check costs no provider call: it can look often.
READINESS_INTERVAL = 0.2
READINESS_REQUEST_TIMEOUT = 5.0
# Extra seconds a cross-instance app lock outlives the operation it guards.
LOCK_MARGIN = 30.0
LOCK_RETRY_INTERVAL = 0.5


@dataclass
class WhyNotYet:
    """What a wake still waits for, to say so when it times out."""

    provider_agrees: bool = False
    upstream: str | None = "the upstream was not asked yet"

    def describe(self) -> str:
        reasons = [] if self.provider_agrees else ["the provider does not report it running"]
        if self.upstream:
            reasons.append(self.upstream)
        return "; ".join(reasons)


@dataclass(frozen=True)
class UpstreamPolicy:
    """Where a request for an app goes, and how readiness is checked."""

    url_template: str | None  # UPSTREAM_URL_TEMPLATE
    readiness_path: str  # PROXY_READINESS_PATH ('' = no check)


class LockOutcome(enum.Enum):
    ACQUIRED = "acquired"
    ACQUIRED_AFTER_WAIT = "acquired after wait"
    BUSY = "busy"


class Activity:
    """Requests and streams open through this process, per app."""

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()

    def begin(self, app: str) -> None:
        self._open[app] += 1

    def end(self, app: str) -> None:
        self._open[app] -= 1
        if self._open[app] <= 0:
            del self._open[app]

    def count(self, app: str) -> int:
        return self._open.get(app, 0)

    def apps(self) -> list[str]:
        return list(self._open)


class Lifecycle:
    def __init__(
        self,
        *,
        provider: Provider,
        registry: Registry,
        event_log: EventLog,
        hooks: Hooks,
        catalog: AppCatalog,
        rules: RuleSet,
        upstream: UpstreamPolicy,
        http: aiohttp.ClientSession,
        metrics: Metrics,
        clock: MonotonicClock = time.monotonic,
        wall_clock: WallClock = utc_now,
    ) -> None:
        self.provider = provider
        self.registry = registry
        self.events = event_log
        self.hooks = hooks
        self.catalog = catalog
        self.rules = rules
        self.upstream = upstream
        self.activity = Activity()
        self._http = http
        self._metrics = metrics
        self._clock = clock
        self._wall_clock = wall_clock
        self._wakes: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._asleep_since: dict[str, float] = {}
        # The route of the last request for each app, and the idle time and linked apps this
        # process last wrote to the registry for it.
        self._routes: dict[str, Route] = {}
        self._registered_as: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._asleep_total: Counter[str] = Counter()
        self._cold_starts: Counter[str] = Counter()
        self._stopping: set[str] = set()
        event_log.subscribe(self._on_event)

    def now(self) -> datetime:
        """The wall clock's time (UTC): what last accesses and idle times are measured on."""
        return self._wall_clock()

    # --- the hot path's helpers -------------------------------------------------------------

    def touch(self, app_name: str, linked_apps: Iterable[str] = ()) -> None:
        """Stamps the app and its linked apps (last access = now); never waits on I/O."""
        now = self.now()
        self.registry.stamp(app_name, now)
        for name in linked_apps:
            self.registry.stamp(name, now)

    def use_rules(self, rules: RuleSet) -> None:
        """Applies reloaded rules (SIGHUP) to the next requests and ticks: what earlier
        requests' keys said is forgotten, and the next request for an app writes its fields to
        the registry again."""
        self.rules = rules
        self._routes.clear()
        self._registered_as.clear()

    def route_of(self, app_name: str) -> Route:
        """What applies to the app: what the key of the last request for it said (every field
        its rules set, DESIGN §4), else the rules matching the app's own name."""
        return self._routes.get(app_name) or self.rules.for_app(app_name)

    def linked_closure(
        self, app_name: str, linked_apps: Iterable[str] | None = None
    ) -> tuple[str, ...]:
        """The apps woken with `app_name`: `linked_apps` (default: those that apply to it) and
        theirs, transitively."""
        if linked_apps is None:
            linked_apps = self.route_of(app_name).linked_apps
        return self.rules.linked_closure(app_name, linked_apps)

    def upstream_url(self, app: PaasApp) -> str | None:
        """The rule's upstream, else UPSTREAM_URL_TEMPLATE, else the provider's URL."""
        route = self.route_of(app.name)
        if route.upstream:
            return route.upstream
        if self.upstream.url_template:
            return self.upstream.url_template.replace("{app}", app.name)
        return app.upstream_url

    async def resolve_upstream(self, app: PaasApp) -> str:
        """The upstream URL, asking the provider once when the listing did not carry it."""
        url = self.upstream_url(app)
        if url is None:
            url = self.upstream_url(await self.catalog.fetch(app.name))
        if url is None:
            raise ProviderError(
                f"{self.provider.name} reports no URL for {app.name}; set `upstream` in a rule "
                "or UPSTREAM_URL_TEMPLATE",
                provider=self.provider.name,
                app=app.name,
            )
        return url

    # --- waking -----------------------------------------------------------------------------

    async def ensure_running(self, app_name: str, linked_apps: Iterable[str] | None = None) -> bool:
        """Returns once the app (and its linked apps) run; True when it had to wake them.

        `linked_apps` are the request key's (its rules may name the app differently); None:
        what applies to the app. Concurrent callers share one wake per app.
        """
        app = self.catalog.lookup(app_name)
        if app is not None and app.state is AppState.UNKNOWN:
            app = await self.catalog.fetch(app_name)
        if app is not None and app.state is AppState.RUNNING:
            return False
        asleep = [
            name
            for name in self.linked_closure(app_name, linked_apps)
            if not self._is_running(name)
        ]
        results = await asyncio.gather(
            self.wake(app_name), *(self.wake(name) for name in asleep), return_exceptions=True
        )
        for name, result in zip(asleep, results[1:], strict=True):
            if isinstance(result, BaseException):
                log.warning("linked app %s of %s did not wake: %s", name, app_name, result)
        if isinstance(results[0], BaseException):
            raise results[0]
        return True

    def wake_in_background(self, app_name: str, linked_apps: Iterable[str] | None = None) -> None:
        """Starts the wake without waiting for it (the waiting page's case)."""
        self._in_background(self.ensure_running(app_name, linked_apps))

    def stop_in_background(self, app_name: str) -> None:
        """Stops the app now, in use or not, without waiting (the system API's case)."""
        self._in_background(self.stop(app_name, only_if_idle=False))

    def _in_background(self, operation: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(operation)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_consume_exception)

    async def drain(self, timeout: float) -> None:
        """Lets the wakes and stops under way finish (bounded), for a graceful shutdown."""
        pending = {*self._background, *self._wakes.values()}
        if pending:
            log.info("waiting for %d wake(s) or stop(s) under way", len(pending))
            _, late = await asyncio.wait(pending, timeout=timeout)
            if late:
                log.warning(
                    "shutdown deadline reached: cancelling %d wake(s) or stop(s)", len(late)
                )
            for task in late:
                task.cancel()

    async def wake(self, app_name: str) -> None:
        """Wakes one app; every concurrent caller awaits the same wake."""
        task = self._wakes.get(app_name)
        if task is None:
            task = asyncio.ensure_future(self._wake(app_name))
            self._wakes[app_name] = task
            task.add_done_callback(lambda _: self._wakes.pop(app_name, None))
        await asyncio.shield(task)

    def is_waking(self, app_name: str) -> bool:
        return app_name in self._wakes

    def is_stopping(self, app_name: str) -> bool:
        return app_name in self._stopping

    async def _wake(self, app_name: str) -> None:
        async with self._app_lock(app_name):
            if self._is_running(app_name):
                return  # woken by a stop-then-wake race's other side, or another instance
            timeout = self.provider.operation_timeout
            async with self._shared_lock(app_name, timeout, wait=True) as outcome:
                if outcome is LockOutcome.BUSY:
                    raise WakeTimeout(
                        f"another paastis instance is still busy with {app_name}",
                        provider=self.provider.name,
                        app=app_name,
                    )
                if outcome is LockOutcome.ACQUIRED_AFTER_WAIT:
                    # Another instance acted on the app meanwhile: ask how it is now.
                    await self.catalog.fetch(app_name)
                if not self._is_running(app_name):
                    await self._start(app_name, timeout)

    async def _start(self, app_name: str, timeout: float) -> None:
        started = self._clock()
        app = self.catalog.lookup(app_name) or await self.catalog.fetch(app_name)
        log.info("waking %s", app_name)
        await self._run_hook("before_start", app_name)
        try:
            remembered = await self.registry.formation(app_name)
            self._learn_upstream(app_name, remembered)  # after a restart of paastis
            app = self.catalog.lookup(app_name) or app
            why = WhyNotYet()
            async with within(timeout, lambda: self._wake_timeout(app_name, timeout, why)):
                # Known before the start: an app paastis cannot reach is not started at all.
                readiness_url = await self._readiness_url(app)
                startup = await self.provider.start(app_name, remembered)
                await self._until_running(startup, readiness_url, why)
            # Only now: requests arriving meanwhile joined this wake instead of racing ahead.
            self.catalog.set_state(app_name, AppState.RUNNING)
        except BaseException as exc:
            await self._start_failed(app_name, exc, started)
            raise _as_provider_error(exc, self.provider.name, app_name) from exc
        await self._register(app_name, region=app.region)
        await self._run_hook("after_start", app_name)
        await self.events.record(events.APP_STARTED, app_name)
        self._woke(app_name)
        elapsed = self._clock() - started
        self._metrics.wakes.labels(app_name, "success").inc()
        self._metrics.wake_duration.observe(elapsed)
        log.info("woke %s in %.1fs", app_name, elapsed)

    def _wake_timeout(self, app_name: str, timeout: float, why: WhyNotYet) -> WakeTimeout:
        return wake_timeout(self.provider.name, app_name, timeout, why.describe())

    async def _start_failed(self, app_name: str, exc: BaseException, started: float) -> None:
        outcome = "timeout" if isinstance(exc, WakeTimeout | TimeoutError) else "error"
        self._metrics.wakes.labels(app_name, outcome).inc()
        log.error(
            "waking %s failed after %.1fs: %s", app_name, self._clock() - started, exc or outcome
        )
        if not isinstance(exc, asyncio.CancelledError):
            await self.events.record(events.APP_START_FAILED, app_name)

    def _learn_upstream(self, app_name: str, remembered: Mapping[str, Any] | None) -> None:
        """Gives the catalog the upstream a stop looked up (Clever Cloud's domain, which its
        listing lacks), so that the next wake asks the provider for nothing before its start."""
        url = (remembered or {}).get("upstream_url")
        app = self.catalog.lookup(app_name)
        if app is not None and isinstance(url, str) and url and url != app.upstream_url:
            self.catalog.update(replace(app, upstream_url=url))

    async def _readiness_url(self, app: PaasApp) -> str | None:
        """Where the readiness check asks, None when it is off."""
        path = self._readiness_path(app.name)
        if not path:
            return None
        return (await self.resolve_upstream(app)).rstrip("/") + path

    async def _until_running(self, startup: Startup, url: str | None, why: WhyNotYet) -> None:
        """Returns once the provider says the app runs and its upstream answers the
        readiness `url` below 500: both must agree before a request is forwarded.

        The readiness check costs no provider call, so it runs every READINESS_INTERVAL from
        the moment the platform accepted the start; the provider is asked on its own backoff,
        and at once (within its pace) when the upstream starts answering.
        """
        if url is None:
            why.upstream = None
            await poll_until(self._provider_check(startup, why), self.provider.poll.quicker())
            return
        answering = asyncio.Event()
        readiness = asyncio.ensure_future(self._until_ready(url, answering, why))
        try:
            check = self._provider_check(startup, why)
            await poll_until(check, self.provider.poll, nudge=answering)
            await readiness
        finally:
            readiness.cancel()
            await asyncio.gather(readiness, return_exceptions=True)

    @staticmethod
    def _provider_check(startup: Startup, why: WhyNotYet) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            runs = await startup.running()
            why.provider_agrees = runs
            return runs

        return check

    def _readiness_path(self, app_name: str) -> str:
        route = self.route_of(app_name)
        if route.readiness_path is not None:
            return route.readiness_path
        return self.upstream.readiness_path

    async def _until_ready(self, url: str, answering: asyncio.Event, why: WhyNotYet) -> None:
        """Asks the upstream for `url` until it answers below 500; sets `answering` then."""
        while True:
            try:
                timeout = aiohttp.ClientTimeout(total=READINESS_REQUEST_TIMEOUT)
                async with self._http.get(url, timeout=timeout, allow_redirects=False) as resp:
                    if resp.status < 500:
                        why.upstream = None
                        answering.set()
                        return
                    why.upstream = f"{url} answered HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                why.upstream = f"{url} did not answer ({type(exc).__name__})"
            await asyncio.sleep(READINESS_INTERVAL)

    # --- stopping ---------------------------------------------------------------------------

    async def stop(self, app_name: str, *, only_if_idle: bool) -> bool:
        """Stops the app (hooks, provider call, events) and forgets it; True when it did.

        With `only_if_idle`, gives up when a request is in flight or the registry says it
        was used recently (another instance may have served it).
        """
        async with self._app_lock(app_name):
            timeout = self.provider.operation_timeout
            async with self._shared_lock(app_name, timeout, wait=False) as outcome:
                if outcome is LockOutcome.BUSY:
                    return False
                if only_if_idle and not await self._still_idle(app_name):
                    return False
                self._stopping.add(app_name)
                try:
                    return await self._stop(app_name)
                finally:
                    self._stopping.discard(app_name)

    async def _still_idle(self, app_name: str) -> bool:
        if self.activity.count(app_name):
            return False
        registered = await self.registry.get(app_name)
        return registered is None or registered.is_idle(self.now())

    async def _stop(self, app_name: str) -> bool:
        started = self._clock()
        previous = self.catalog.lookup(app_name)
        # Requests arriving from now on (on every instance) wait for this stop to end, then
        # wake the app.
        self.catalog.set_state(app_name, AppState.STOPPED)
        await self.events.record(events.APP_STOPPING, app_name)
        log.info("stopping %s", app_name)
        await self._run_hook("before_stop", app_name)
        try:
            formation = await self.provider.stop(app_name)
        except ProviderError as exc:
            if previous is not None:
                self.catalog.set_state(app_name, previous.state)
            self._metrics.stops.labels(app_name, "error").inc()
            log.error("stopping %s failed: %s", app_name, exc)
            await self.events.record(events.APP_STOP_FAILED, app_name)
            return False
        await self.registry.remember_formation(app_name, formation)
        self._learn_upstream(app_name, formation)
        await self._run_hook("after_stop", app_name)
        await self.events.record(events.APP_STOPPED, app_name)
        await self.registry.unregister(app_name)
        self._registered_as.pop(app_name, None)
        await self.events.record(events.APP_UNREGISTERED, app_name)
        self._asleep_since[app_name] = self._clock()
        self._metrics.stops.labels(app_name, "success").inc()
        log.info("stopped %s in %.1fs", app_name, self._clock() - started)
        return True

    # --- registration -----------------------------------------------------------------------

    async def register(self, app: PaasApp) -> bool:
        """Registers a running app found by discovery (its idle clock starts now)."""
        return await self._register(app.name, region=app.region)

    async def _register(self, app_name: str, *, region: str | None = None) -> bool:
        now = self.now()
        route = self.route_of(app_name)
        registered = await self.registry.register(
            RunningApp(
                provider=self.provider.name,
                region=region or self.provider.region,
                name=app_name,
                max_idle_time=route.max_idle_time,
                linked_apps=route.linked_apps,
                started_at=now,
                last_accessed_at=now,
            )
        )
        if registered:
            self._registered_as[app_name] = (route.max_idle_time, route.linked_apps)
            await self.events.record(events.APP_REGISTERED, app_name)
        else:
            self.registry.stamp(app_name, now)
        return registered

    async def unregister(self, app_name: str) -> None:
        await self.registry.unregister(app_name)
        self._registered_as.pop(app_name, None)
        await self.events.record(events.APP_UNREGISTERED, app_name)

    # --- what the proxy asks ------------------------------------------------------------------

    def route(self, key: str) -> Route:
        """Where a request for the app key `key` goes, by the rules."""
        return self.rules.resolve(key)

    async def known_app(self, name: str) -> PaasApp | None:
        """The app as paastis knows it, asking the provider on a miss (rate-limited) and when
        its state is unknown; None when the provider has no such app."""
        app = self.catalog.lookup(name) or await self.catalog.find(name)
        if app is not None and app.state is AppState.UNKNOWN:
            # A waiting page or a monitor's 503 for an app that in fact runs would be wrong.
            try:
                app = await self.catalog.fetch(app.name)
            except AppNotFound:
                return None
        return app

    def request_started(self, app_name: str, route: Route) -> None:
        """Stamps the app (and its linked apps) and counts the request as activity. What the
        request key's rules set now applies to the app (`route`)."""
        self._routes[app_name] = route
        self._apply_to_registered(app_name, route)
        self.touch(app_name, route.linked_apps)
        self.activity.begin(app_name)

    def request_ended(self, app_name: str, route: Route) -> None:
        self.activity.end(app_name)
        self.touch(app_name, route.linked_apps)

    def _apply_to_registered(self, app_name: str, route: Route) -> None:
        """Writes the route's idle time and linked apps to the registry when they differ from
        what this process last wrote there (so not on every request)."""
        wanted = (route.max_idle_time, route.linked_apps)
        if self._registered_as.get(app_name) == wanted:
            return
        self._registered_as[app_name] = wanted

        async def update() -> None:
            written = await self.registry.update(
                app_name, max_idle_time=route.max_idle_time, linked_apps=route.linked_apps
            )
            if not written and self._registered_as.get(app_name) == wanted:
                del self._registered_as[app_name]  # try again with a later request

        self._in_background(update())

    # --- what the metrics read --------------------------------------------------------------

    def cold_starts(self, app_name: str) -> int:
        """Wakes of the app by this process."""
        return self._cold_starts[app_name]

    def asleep_seconds(self) -> list[tuple[str, float]]:
        now = self._clock()
        totals = Counter(self._asleep_total)
        for name, since in self._asleep_since.items():
            totals[name] += now - since
        return list(totals.items())

    def asleep_seconds_of(self, app_name: str) -> float:
        """Seconds the app spent stopped by this process, the current sleep included."""
        since = self._asleep_since.get(app_name)
        current = self._clock() - since if since is not None else 0.0
        return self._asleep_total[app_name] + current

    # --- internals --------------------------------------------------------------------------

    def _woke(self, app_name: str) -> None:
        self._cold_starts[app_name] += 1
        since = self._asleep_since.pop(app_name, None)
        if since is not None:
            self._asleep_total[app_name] += self._clock() - since

    def _is_running(self, app_name: str) -> bool:
        app = self.catalog.lookup(app_name)
        return app is not None and app.state is AppState.RUNNING

    def _app_lock(self, app_name: str) -> asyncio.Lock:
        return self._locks.setdefault(app_name, asyncio.Lock())

    @asynccontextmanager
    async def _shared_lock(
        self, app_name: str, timeout: float, *, wait: bool
    ) -> AsyncIterator[LockOutcome]:
        """The app's lock across paastis instances, so one of them acts on it at a time."""
        ttl = timeout + LOCK_MARGIN
        deadline = self._clock() + (ttl if wait else 0.0)
        outcome = LockOutcome.ACQUIRED
        while True:
            async with self.registry.lock(f"app:{app_name}", ttl) as won:
                if won:
                    yield outcome
                    return
            if self._clock() >= deadline:
                yield LockOutcome.BUSY
                return
            outcome = LockOutcome.ACQUIRED_AFTER_WAIT
            await asyncio.sleep(LOCK_RETRY_INTERVAL)

    async def _run_hook(self, hook: str, app_name: str) -> None:
        app = self.catalog.lookup(app_name)
        region = app.region if app and app.region else self.provider.region
        await self.hooks.run(hook, app_name=app_name, provider=self.provider.name, region=region)

    def _on_event(self, event: events.Event) -> None:
        """Keeps the catalog true to the starts and stops of every paastis instance."""
        if event.name == events.APP_STARTED:
            self.catalog.set_state(event.oid, AppState.RUNNING)
        elif event.name in (events.APP_STOPPING, events.APP_STOPPED):
            self.catalog.set_state(event.oid, AppState.STOPPED)
        elif event.name == events.APP_STOP_FAILED and not self._app_lock(event.oid).locked():
            # Another instance's stop failed: the app's state is unknown until asked again.
            self.catalog.set_state(event.oid, AppState.UNKNOWN)


def _as_provider_error(exc: BaseException, provider: str, app: str) -> BaseException:
    if isinstance(exc, ProviderError | asyncio.CancelledError):
        return exc
    if isinstance(exc, TimeoutError):
        return WakeTimeout(f"{app} did not start in time", provider=provider, app=app)
    return ProviderError(f"waking {app} failed: {exc}", provider=provider, app=app)


def _consume_exception(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("background wake failed: %s", task.exception())


__all__ = ["Activity", "AppNotFound", "Lifecycle", "UpstreamPolicy"]
