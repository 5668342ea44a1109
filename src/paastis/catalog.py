"""What paastis knows of the provider's apps, so the hot path needs no provider call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from paastis.providers import AppNotFound, AppState, PaasApp, Provider, ProviderError

log = logging.getLogger("paastis.catalog")

# Seconds between two listings caused by requests for unknown apps: a scan of random host names
# costs at most 360 listings an hour (Heroku's account budget is 4,500, Scalingo's 3,600),
# while an app created a moment ago becomes reachable within seconds.
MISS_REFRESH_INTERVAL = 10.0


class AppCatalog:
    """The provider's app list with each app's last known state, addressed by name or alias.

    Filled by the scheduler's listing, corrected by paastis' own starts and stops (and those of
    other instances, through events), and refreshed on a miss at most every
    `miss_refresh_interval` seconds so random hosts cannot flood the provider.
    """

    def __init__(
        self,
        provider: Provider,
        *,
        miss_refresh_interval: float = MISS_REFRESH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._provider = provider
        self._miss_refresh_interval = miss_refresh_interval
        self._clock = clock
        self._apps: dict[str, PaasApp] = {}
        self._keys: dict[str, str] = {}  # name or alias -> name
        self._listed_at: float | None = None
        # When paastis itself last changed each app's state, so an older listing cannot undo it.
        self._changed_at: dict[str, float] = {}
        self._refreshing: asyncio.Task[list[PaasApp]] | None = None
        # Why the latest listing failed: a miss meanwhile is "cannot tell", never "no such app".
        self._listing_error: ProviderError | None = None
        self._fetching: dict[str, asyncio.Task[PaasApp]] = {}

    def lookup(self, key: str) -> PaasApp | None:
        name = self._keys.get(key)
        return self._apps.get(name) if name is not None else None

    def all(self) -> list[PaasApp]:
        return list(self._apps.values())

    async def find(self, key: str) -> PaasApp | None:
        """The app for `key`, listing the provider again on a miss (rate-limited)."""
        app = self.lookup(key)
        if app is not None:
            return app
        in_flight = self._is_refreshing()
        stale = self._listed_at is None or (
            self._clock() - self._listed_at >= self._miss_refresh_interval
        )
        if in_flight or stale:
            await self.refresh()
        elif self._listing_error is not None:
            raise self._listing_error.with_traceback(None)
        return self.lookup(key)

    async def current(self, max_age: float) -> list[PaasApp]:
        """The apps, listed again only when the last listing is older than `max_age` seconds."""
        fresh = self._listed_at is not None and self._clock() - self._listed_at < max_age
        if fresh and self._listing_error is None and not self._is_refreshing():
            return self.all()
        return await self.refresh()

    def _is_refreshing(self) -> bool:
        return self._refreshing is not None and not self._refreshing.done()

    async def refresh(self) -> list[PaasApp]:
        """Lists the provider's apps once, however many callers ask at the same time."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._list())
        return await asyncio.shield(self._refreshing)

    async def _list(self) -> list[PaasApp]:
        started = self._listed_at = self._clock()
        try:
            apps = await self._provider.list_apps()
        except ProviderError as exc:
            self._listing_error = exc
            raise
        self.replace_all(apps, asked_at=started)
        return self.all()

    def replace_all(self, apps: list[PaasApp], *, asked_at: float | None = None) -> None:
        """Takes a complete listing, asked for at `asked_at`. An UNKNOWN state, or one that
        paastis itself changed while the listing was under way, keeps the state known before."""
        previous = self._apps
        self._apps = {}
        self._keys = {}
        for app in apps:
            known = previous.get(app.name)
            changed_since = asked_at is not None and self._changed_at.get(app.name, -1) >= asked_at
            if known is not None and (app.state is AppState.UNKNOWN or changed_since):
                app = replace(app, state=known.state, status=known.status)
            if app.upstream_url is None and known is not None and known.upstream_url:
                app = replace(app, upstream_url=known.upstream_url)
            self._put(app)
        self._listed_at = self._clock()
        self._listing_error = None

    def update(self, app: PaasApp) -> None:
        self._put(app)

    def set_state(self, name: str, state: AppState) -> None:
        """Records a state paastis brought about; the provider's raw status string, now
        stale, is dropped so that the system API reports the new state at once."""
        app = self._apps.get(name)
        if app is not None and app.state is not state:
            self._apps[name] = replace(app, state=state, status=None)
            self._changed_at[name] = self._clock()

    async def fetch(self, name: str) -> PaasApp:
        """The app's current state from the provider; raises AppNotFound.

        Concurrent callers share one provider call: a burst of requests for an app of
        unknown state must not cost the provider's rate limit one call per request.
        """
        task = self._fetching.get(name)
        if task is None:
            task = asyncio.ensure_future(self._fetch(name))
            self._fetching[name] = task
            task.add_done_callback(lambda done: self._fetched(name, done))
        return await asyncio.shield(task)

    async def _fetch(self, name: str) -> PaasApp:
        try:
            app = await self._provider.get_app(name)
        except AppNotFound:
            self._forget(name)
            raise
        self._put(app)
        return app

    def _fetched(self, name: str, task: asyncio.Task[PaasApp]) -> None:
        if self._fetching.get(name) is task:
            del self._fetching[name]
        if not task.cancelled():
            task.exception()  # retrieved, even when every caller has gone away

    def _put(self, app: PaasApp) -> None:
        self._apps[app.name] = app
        self._keys[app.name] = app.name
        for alias in app.aliases:
            self._keys[alias] = app.name

    def _forget(self, name: str) -> None:
        app = self._apps.pop(name, None)
        if app is not None:
            for key in (app.name, *app.aliases):
                self._keys.pop(key, None)
