"""The Heroku adapter: Platform API v3, with per-app state refreshed within a call budget.

Heroku's app listing carries no process state; knowing whether an app runs costs one more
call per app (`GET /apps/{app}/dynos`). The account's 4500-token pool is shared with
everything its owner runs, so `list_apps` does not fetch every app's state on every tick.
It keeps a per-app state cache and, on each call, refreshes only the stalest apps within a
budget that accrues with time (`state_refresh_budget_per_hour`) and shrinks when Heroku's
`RateLimit-Remaining` header says the pool runs low. With the defaults (840 refreshes an
hour, one listing a minute) 200 apps cost at most 900 calls an hour and no app's state is
older than 15 minutes. A state older than `max_state_age` is reported as UNKNOWN rather than
trusted; callers that must know it call `get_app`.

Why `/dynos` alone is enough: a web dyno `up` (or `idle`, a sleeping Eco dyno that wakes on
the next request) means running; web dynos that exist but are not up mean starting (or
failed when they all crashed); no web dyno means stopped. The only case dynos cannot tell is
the instant between a scale-up and the dynos' creation; our own `start` covers it through
the cache and its polling, and a scale-up by someone else shows at the next refresh.

`upstream_url` is the app's `web_url` verbatim, trailing slash included (Heroku has added a
random suffix to new app host names since 2023, so it is never built from the name).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from paastis.providers import (
    AppNotFound,
    AppState,
    Formation,
    OperationFailed,
    PaasApp,
    ProviderAuthError,
    ProviderError,
    WakeTimeout,
)
from paastis.providers.api import (
    ApiClient,
    ApiResponse,
    ProviderCallCounter,
    RetryPolicy,
    parse_time,
)

log = logging.getLogger("paastis.provider.heroku")

ACCEPT = "application/vnd.heroku+json; version=3"
# The largest page Heroku serves; further pages come through 206 + Next-Range.
FIRST_RANGE = "id ..; max=1000"
# A listing longer than this many pages means a Next-Range loop, not an account.
MAX_PAGES = 100
# Heroku's per-account token pool, against which RateLimit-Remaining is read.
RATE_LIMIT_CAPACITY = 4500
REFRESH_CONCURRENCY = 4
# States a refresh is wanted for as soon as the budget allows, however recent.
TRANSIENT_STATES = frozenset({AppState.STARTING, AppState.FAILED, AppState.UNKNOWN})


def rate_limit_factor(remaining: int, capacity: int = RATE_LIMIT_CAPACITY) -> float:
    """The share of the refresh budget to use: all of it while at least half the account's
    pool remains, proportionally less below, nothing below a tenth (left to wakes)."""
    share = remaining / capacity
    return max(0.0, min(1.0, (share - 0.1) / 0.4))


class RefreshBudget:
    """State refreshes the adapter may spend: `per_hour` accrued continuously from `clock`,
    scaled by the latest rate-limit factor, and capped at five minutes' worth so that a long
    pause between listings cannot turn into a burst."""

    def __init__(self, per_hour: int, clock: Callable[[], float]) -> None:
        self.per_hour = per_hour
        self.cap = per_hour / 12
        self.factor = 1.0
        self._clock = clock
        self._credits = 0.0  # nothing up front, so the first hour stays inside the budget
        self._updated = clock()

    def _accrue(self) -> None:
        now = self._clock()
        gained = max(0.0, now - self._updated) * self.per_hour / 3600 * self.factor
        self._credits = min(self.cap, self._credits + gained)
        self._updated = now

    def observe_remaining(self, remaining: int) -> None:
        # Time elapsed so far accrued at the old factor; from now on at the new one.
        self._accrue()
        self.factor = rate_limit_factor(remaining)

    def available(self) -> int:
        self._accrue()
        return int(self._credits + 1e-9)  # 13.999999 is 14 refreshes, not 13

    def spend(self, count: int) -> None:
        self._credits -= count


@dataclass(frozen=True)
class CachedState:
    state: AppState
    status: str
    fetched_at: float  # `clock` time


def classify_dynos(dynos: Any) -> tuple[AppState, str]:
    """The app's state (and a raw status for logs) from its `GET /dynos` answer."""
    if not isinstance(dynos, list):
        raise ProviderError("Heroku answered an unexpected dyno list", provider="heroku")
    web = [d.get("state") for d in dynos if isinstance(d, dict) and d.get("type") == "web"]
    if not web:
        return AppState.STOPPED, "no web dyno"
    if "up" in web:
        return AppState.RUNNING, "up"
    if "idle" in web:
        return AppState.RUNNING, "idle"
    if all(state == "crashed" for state in web):
        return AppState.FAILED, "crashed"
    # `starting`, `down`, or crashed dynos beside ones Heroku is still booting.
    return AppState.STARTING, "starting"


class HerokuProvider:
    """One Heroku account; with `region`, only its apps in that region (`list_apps` leaves
    the others out and `get_app` raises AppNotFound for them)."""

    def __init__(
        self,
        *,
        api_token: str,
        api_url: str = "https://api.heroku.com",
        region: str | None = None,
        operation_timeout: float = 30.0,
        session: aiohttp.ClientSession,
        counter: ProviderCallCounter,
        poll_interval: float = 5.0,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        state_refresh_budget_per_hour: int = 840,
        max_state_age: float = 900.0,
    ) -> None:
        self.name = "heroku"
        self.region = region
        self.operation_timeout = operation_timeout
        self.poll_interval = poll_interval
        self.max_state_age = max_state_age
        self.rate_limit_remaining: int | None = None
        self._clock = clock
        self._budget = RefreshBudget(state_refresh_budget_per_hour, clock)
        self._states: dict[str, CachedState] = {}
        headers = {"Authorization": f"Bearer {api_token}", "Accept": ACCEPT}

        async def auth_headers() -> Mapping[str, str]:
            return headers

        self._api = ApiClient(
            provider=self.name,
            base_url=api_url,
            session=session,
            counter=counter,
            headers=auth_headers,
            retry=retry,
        )
        self._api.on_response = self._observe_response

    # -- the Provider protocol -------------------------------------------------------------

    async def list_apps(self) -> list[PaasApp]:
        listed = [raw for raw in await self._list_all() if self._in_region(raw)]
        names = [raw["name"] for raw in listed]
        self._forget_all_but(names)
        await self._refresh_stalest(names)
        return [self._paas_app(raw, *self._known_state(raw["name"])) for raw in listed]

    async def get_app(self, name: str) -> PaasApp:
        response = await self._request("GET", self._path(name), operation="get_app", app=name)
        raw = response.body
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise ProviderError(f"Heroku answered an unexpected app for {name}", provider="heroku")
        if not self._in_region(raw):
            raise AppNotFound(
                f"Heroku app {name} is not in region {self.region}", provider=self.name, app=name
            )
        state, status = await self._fetch_state(raw["name"])
        return self._paas_app(raw, state, status)

    async def start(self, name: str, formation: Formation | None) -> None:
        quantities = wake_formation(formation)
        try:
            async with asyncio.timeout(self.operation_timeout):
                await self._scale(name, quantities)
                self._remember(name, AppState.STARTING, "starting")
                await self._wait_until_up(name)
        except TimeoutError:
            raise WakeTimeout(
                f"Heroku app {name} did not run within {self.operation_timeout:g}s",
                provider=self.name,
                app=name,
            ) from None

    async def stop(self, name: str) -> Formation | None:
        entries = await self._formation(name)
        remembered = {t: q for t, q in entries.items() if q > 0}
        if remembered:
            # Every type, not only the running ones: one scaled up meanwhile stops too.
            await self._patch_formation(name, dict.fromkeys(entries, 0))
        self._remember(name, AppState.STOPPED, "no web dyno")
        return remembered or None

    async def close(self) -> None:
        # The session belongs to the caller; the adapter holds nothing else.
        return None

    # -- listing and state cache -----------------------------------------------------------

    async def _list_all(self) -> list[dict[str, Any]]:
        """Every page of `GET /apps`; a failed page raises, never a partial list."""
        apps: dict[str, dict[str, Any]] = {}  # by name: overlapping pages count once
        range_header = FIRST_RANGE
        seen = {range_header}
        for _ in range(MAX_PAGES):
            response = await self._request(
                "GET", "/apps", operation="list_apps", headers={"Range": range_header}
            )
            if not isinstance(response.body, list):
                raise ProviderError("Heroku answered an unexpected app list", provider=self.name)
            apps.update((raw["name"], raw) for raw in response.body if valid_app(raw))
            next_range = response.headers.get("Next-Range")
            # Followed on any 2xx, as Heroku's own client does; an empty page ends it.
            if not next_range or not response.body:
                return list(apps.values())
            if next_range in seen:
                raise ProviderError(f"Heroku repeated Next-Range {next_range}", provider=self.name)
            seen.add(next_range)
            range_header = next_range
        raise ProviderError(f"Heroku listing exceeded {MAX_PAGES} pages", provider=self.name)

    def _forget_all_but(self, names: Iterable[str]) -> None:
        keep = set(names)
        for name in [n for n in self._states if n not in keep]:
            del self._states[name]

    async def _refresh_stalest(self, names: list[str]) -> None:
        """Refreshes the due apps, never-fetched first then oldest, within the budget."""
        now = self._clock()
        due = [name for name in names if self._is_due(name, now)]
        due.sort(key=self._staleness)
        chosen = due[: self._budget.available()]
        self._budget.spend(len(chosen))
        semaphore = asyncio.Semaphore(REFRESH_CONCURRENCY)

        async def refresh(name: str) -> None:
            async with semaphore:
                await self._fetch_state(name)

        results = await asyncio.gather(*(refresh(n) for n in chosen), return_exceptions=True)
        for name, result in zip(chosen, results, strict=True):
            if isinstance(result, AppNotFound):
                self._states.pop(name, None)  # deleted since the listing
            elif isinstance(result, ProviderAuthError):
                raise result
            elif isinstance(result, ProviderError):
                log.warning("heroku: could not refresh the state of %s: %s", name, result)
            elif isinstance(result, BaseException):
                raise result
        log.debug(
            "heroku: refreshed %d app states (%d due, %d listed, budget factor %.2f)",
            len(chosen), len(due), len(names), self._budget.factor,
        )  # fmt: skip

    def _is_due(self, name: str, now: float) -> bool:
        """Never fetched, transient, or older than a third of `max_state_age`: refreshing a
        settled app more often only spends an account pool shared with its owner."""
        cached = self._states.get(name)
        if cached is None or cached.state in TRANSIENT_STATES:
            return True
        return now - cached.fetched_at >= self.max_state_age / 3

    def _staleness(self, name: str) -> tuple[int, float]:
        cached = self._states.get(name)
        return (0, 0.0) if cached is None else (1, cached.fetched_at)

    def _known_state(self, name: str) -> tuple[AppState, str]:
        cached = self._states.get(name)
        if cached is None:
            return AppState.UNKNOWN, "unknown"
        if self._clock() - cached.fetched_at > self.max_state_age:
            return AppState.UNKNOWN, f"unknown (last seen {cached.status})"
        return cached.state, cached.status

    def _remember(self, name: str, state: AppState, status: str) -> None:
        self._states[name] = CachedState(state, status, self._clock())

    async def _fetch_state(self, name: str) -> tuple[AppState, str]:
        response = await self._request(
            "GET", self._path(name, "dynos"), operation="dynos", app=name
        )
        state, status = classify_dynos(response.body)
        self._remember(name, state, status)
        return state, status

    # -- scaling ---------------------------------------------------------------------------

    async def _formation(self, name: str) -> Formation:
        response = await self._request(
            "GET", self._path(name, "formation"), operation="formation", app=name
        )
        if not isinstance(response.body, list):
            raise ProviderError(
                f"Heroku answered an unexpected formation for {name}", provider=self.name, app=name
            )
        return {
            entry["type"]: quantity_of(entry)
            for entry in response.body
            if isinstance(entry, dict) and isinstance(entry.get("type"), str)
        }

    async def _scale(self, name: str, quantities: Formation) -> None:
        """One batch PATCH; a process type the app no longer has is dropped, then once more."""
        response = await self._patch_formation(name, quantities, ok=(200, 404))
        if response.status == 200:
            return
        body = response.body if isinstance(response.body, dict) else {}
        if body.get("resource") == "app":
            raise AppNotFound(f"Heroku does not know app {name}", provider=self.name, app=name)
        existing = await self._formation(name)  # raises AppNotFound for a deleted app
        kept = {t: q for t, q in quantities.items() if t in existing}
        if "web" not in kept:
            raise OperationFailed(
                f"Heroku app {name} has no web process type", provider=self.name, app=name
            )
        if kept == quantities:
            raise ProviderError(
                f"Heroku refused to scale {name}: {body.get('message', response.body)}",
                provider=self.name,
                app=name,
            )
        log.info("heroku: %s no longer has %s; scaling the rest", name, set(quantities) - set(kept))
        await self._patch_formation(name, kept)

    async def _patch_formation(
        self, name: str, quantities: Formation, ok: tuple[int, ...] = (200,)
    ) -> ApiResponse:
        updates = [{"type": t, "quantity": q} for t, q in quantities.items()]
        return await self._request(
            "PATCH",
            self._path(name, "formation"),
            operation="scale",
            app=name,
            json={"updates": updates},
            ok=ok,
        )

    async def _wait_until_up(self, name: str) -> None:
        """Polls `/dynos` every `poll_interval` (Heroku's CLI waits 10 s between polls to
        spare the rate limit) until a web dyno is up; every web dyno crashed is a failure."""
        while True:
            state, _ = await self._fetch_state(name)
            if state is AppState.RUNNING:
                return
            if state is AppState.FAILED:
                raise OperationFailed(
                    f"the web dynos of Heroku app {name} crashed", provider=self.name, app=name
                )
            await asyncio.sleep(self.poll_interval)

    # -- HTTP ------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        app: str | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200, 206),
    ) -> ApiResponse:
        try:
            return await self._api.request(
                method, path, operation=operation, json=json, headers=headers, ok=ok, app=app
            )
        except ProviderAuthError:
            raise ProviderAuthError(
                "the Heroku API token was rejected", provider=self.name, app=app
            ) from None

    def _observe_response(self, response: ApiResponse) -> None:
        value = response.headers.get("RateLimit-Remaining")
        if value is None or not value.strip().isdigit():
            return
        remaining = int(value)
        before = self._budget.factor
        self.rate_limit_remaining = remaining
        self._budget.observe_remaining(remaining)
        if before > 0 and self._budget.factor == 0:
            log.warning(
                "heroku: only %d API calls left in the account's pool; state refreshes paused",
                remaining,
            )

    @staticmethod
    def _path(name: str, *parts: str) -> str:
        return "/".join(["/apps", quote(name, safe=""), *parts])

    # -- mapping ---------------------------------------------------------------------------

    def _in_region(self, raw: Mapping[str, Any]) -> bool:
        return self.region is None or region_name(raw) == self.region

    def _paas_app(self, raw: Mapping[str, Any], state: AppState, status: str) -> PaasApp:
        web_url = raw.get("web_url")
        git_url = raw.get("git_url")
        return PaasApp(
            name=raw["name"],
            provider=self.name,
            state=state,
            upstream_url=web_url if isinstance(web_url, str) and web_url else None,
            id=raw.get("id") if isinstance(raw.get("id"), str) else None,
            region=region_name(raw),
            created_at=parse_time(raw.get("created_at")),
            updated_at=parse_time(raw.get("updated_at")),
            last_deployed_at=parse_time(raw.get("released_at")),
            git_url=git_url if isinstance(git_url, str) and git_url else None,
            status=status,
        )


def wake_formation(formation: Formation | None) -> Formation:
    """The quantities to restore: the remembered ones, with at least one web dyno, since
    waking is for serving HTTP."""
    quantities = {t: q for t, q in (formation or {}).items() if q > 0}
    quantities["web"] = max(1, quantities.get("web", 0))
    return quantities


def quantity_of(entry: Mapping[str, Any]) -> int:
    """A formation entry's quantity; the schema says integer, Heroku's CLI sends strings."""
    try:
        return max(0, int(entry.get("quantity") or 0))
    except (TypeError, ValueError):
        return 0


def valid_app(raw: Any) -> bool:
    return isinstance(raw, dict) and isinstance(raw.get("name"), str) and bool(raw["name"])


def region_name(raw: Mapping[str, Any]) -> str | None:
    region = raw.get("region")
    name = region.get("name") if isinstance(region, dict) else None
    return name if isinstance(name, str) else None
