"""The Heroku adapter: Platform API v3, app states learnt once and kept within the budget.

Heroku's app listing carries no process state; knowing whether an app runs costs one more
call per app (`GET /apps/{app}/dynos`), against a pool of 4,500 tokens per account that its
owner's other tools share. So the adapter keeps each app's state and asks Heroku again only
where it does not know it: an app it has never seen (every app at the first listing, paid
from what `RateLimit-Remaining` says is left, so all of them are known at once), a state
left transient (starting, crashed) or older than `max_state_age`. Its own starts and stops
keep the states it holds true without a call. At a listing it spends at most half of what
the pool holds above a reserve left to wakes, so a nearly empty pool pauses the refreshes.

A web dyno `up` (or `idle`, a sleeping Eco dyno that wakes on the next request) means
running; web dynos that exist but are not up mean starting (failed when they all crashed);
no web dyno means stopped. `upstream_url` is the app's `web_url` verbatim: Heroku has added a
random suffix to new host names since 2023, so it is never built from the name.
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
    Backoff,
    Formation,
    OperationFailed,
    PaasApp,
    ProviderAuthError,
    ProviderError,
    Remembered,
    Startup,
)
from paastis.providers.api import (
    ApiClient,
    ApiResponse,
    ProviderCallCounter,
    RetryPolicy,
    parse_time,
)
from paastis.providers.kit import (
    expect_list,
    expect_object,
    fit_formation,
    formation_of,
    objects,
    remembered,
    text,
)

log = logging.getLogger("paastis.provider.heroku")

PROVIDER = "heroku"
ACCEPT = "application/vnd.heroku+json; version=3"
# The largest page Heroku serves; further pages come through 206 + Next-Range.
FIRST_RANGE = "id ..; max=1000"
# A listing longer than this many pages means a Next-Range loop, not an account.
MAX_PAGES = 100
# Tokens of the account's pool never spent on states: left to wakes and the owner's tools.
RESERVE = 450
# States fetched at a listing when Heroku did not say what the pool holds.
BLIND_SPEND = 20
FETCH_CONCURRENCY = 8
# States a fetch is wanted for as soon as the budget allows, however recent.
TRANSIENT_STATES = frozenset({AppState.STARTING, AppState.FAILED, AppState.UNKNOWN})
# Heroku's CLI waits 10 s between dyno polls to spare the rate limit.
POLL = Backoff(first=3.0, factor=2.0, cap=10.0)
AUTH_REASONS = {
    "two_factor": "this account or app requires a second factor (two-factor "
    "authentication), which an API token cannot give",
}


def spendable(remaining: int | None) -> int:
    """States a listing may fetch: half of what the pool holds above the reserve."""
    if remaining is None:
        return BLIND_SPEND
    return max(0, remaining - RESERVE) // 2


@dataclass(frozen=True)
class KnownState:
    state: AppState
    status: str
    learnt_at: float  # `clock` time


def classify_dynos(dynos: list[Any]) -> tuple[AppState, str]:
    """The app's state (and a raw status for logs) from its `GET /dynos` answer."""
    web = [d.get("state") for d in objects(dynos) if d.get("type") == "web"]
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
    """One Heroku account; with `regions`, only its apps in those regions (`list_apps`
    leaves the others out and `get_app` raises AppNotFound for them)."""

    name = PROVIDER

    def __init__(
        self,
        *,
        api_token: str,
        api_url: str = "https://api.heroku.com",
        regions: Iterable[str] = (),
        operation_timeout: float = 30.0,
        session: aiohttp.ClientSession,
        counter: ProviderCallCounter,
        poll: Backoff = POLL,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_state_age: float = 3600.0,
    ) -> None:
        self.regions = frozenset(regions)
        self.region = next(iter(self.regions)) if len(self.regions) == 1 else None
        self.operation_timeout = operation_timeout
        self.poll = poll
        self.max_state_age = max_state_age
        self.rate_limit_remaining: int | None = None
        self._clock = clock
        self._states: dict[str, KnownState] = {}
        headers = {"Authorization": f"Bearer {api_token}", "Accept": ACCEPT}

        async def auth_headers() -> Mapping[str, str]:
            return headers

        self._api = ApiClient(
            provider=PROVIDER,
            base_url=api_url,
            session=session,
            counter=counter,
            headers=auth_headers,
            retry=retry,
            label="Heroku",
            auth_hint="check PROVIDER_HEROKU_API_TOKEN",
            auth_reasons=AUTH_REASONS,
        )
        self._api.on_response = self._observe_response

    async def close(self) -> None:
        """Nothing to release: the HTTP session belongs to the caller."""

    # -- reading ---------------------------------------------------------------------------

    async def list_apps(self) -> list[PaasApp]:
        listed = [raw for raw in await self._list_all() if self._in_regions(raw)]
        names = [raw["name"] for raw in listed]
        self._forget_all_but(names)
        await self._learn_states(names)
        return [self._paas_app(raw, *self._known_state(raw["name"])) for raw in listed]

    async def get_app(self, name: str) -> PaasApp:
        response = await self._api.request("GET", _path(name), operation="get_app", app=name)
        raw = expect_object(response, PROVIDER, "get_app")
        if not text(raw.get("name")):
            raise ProviderError(f"Heroku answered an unexpected app for {name}", provider=PROVIDER)
        if not self._in_regions(raw):
            raise AppNotFound(
                f"Heroku app {name} is not in region {', '.join(sorted(self.regions))}",
                provider=PROVIDER,
                app=name,
            )
        state, status = await self._fetch_state(raw["name"])
        return self._paas_app(raw, state, status)

    async def _list_all(self) -> list[dict[str, Any]]:
        """Every page of `GET /apps`; a failed page raises, never a partial list."""
        apps: dict[str, dict[str, Any]] = {}  # by name: overlapping pages count once
        range_header = FIRST_RANGE
        seen = {range_header}
        for _ in range(MAX_PAGES):
            response = await self._api.request(
                "GET", "/apps", operation="list_apps", headers={"Range": range_header}
            )
            page = expect_list(response, PROVIDER, "list_apps")
            apps.update((raw["name"], raw) for raw in objects(page) if text(raw.get("name")))
            next_range = response.headers.get("Next-Range")
            # Followed on any 2xx, as Heroku's own client does; an empty page ends it.
            if not next_range or not page:
                return list(apps.values())
            if next_range in seen:
                raise ProviderError(f"Heroku repeated Next-Range {next_range}", provider=PROVIDER)
            seen.add(next_range)
            range_header = next_range
        raise ProviderError(f"Heroku listing exceeded {MAX_PAGES} pages", provider=PROVIDER)

    # -- what the adapter knows of each app's state ----------------------------------------

    def _forget_all_but(self, names: Iterable[str]) -> None:
        keep = set(names)
        for name in [n for n in self._states if n not in keep]:
            del self._states[name]

    async def _learn_states(self, names: list[str]) -> None:
        """Fetches the states the adapter lacks, never seen first then oldest, within what
        the account's pool can spare."""
        now = self._clock()
        due = sorted((n for n in names if self._is_due(n, now)), key=self._staleness)
        chosen = due[: spendable(self.rate_limit_remaining)]
        slots = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def fetch(name: str) -> None:
            async with slots:
                await self._fetch_state(name)

        results = await asyncio.gather(*(fetch(n) for n in chosen), return_exceptions=True)
        for name, result in zip(chosen, results, strict=True):
            if isinstance(result, AppNotFound):
                self._states.pop(name, None)  # deleted since the listing
            elif isinstance(result, ProviderAuthError):
                raise result
            elif isinstance(result, ProviderError):
                log.warning("heroku: could not read the state of %s: %s", name, result)
            elif isinstance(result, BaseException):
                raise result
        if due:
            log.debug(
                "heroku: fetched %d app states (%d due, %d listed, %s calls left in the pool)",
                len(chosen), len(due), len(names), self.rate_limit_remaining,
            )  # fmt: skip

    def _is_due(self, name: str, now: float) -> bool:
        known = self._states.get(name)
        if known is None or known.state in TRANSIENT_STATES:
            return True
        return now - known.learnt_at >= self.max_state_age

    def _staleness(self, name: str) -> tuple[int, float]:
        known = self._states.get(name)
        return (0, 0.0) if known is None else (1, known.learnt_at)

    def _known_state(self, name: str) -> tuple[AppState, str]:
        known = self._states.get(name)
        if known is None:
            return AppState.UNKNOWN, "unknown"
        if self._clock() - known.learnt_at > self.max_state_age:
            return AppState.UNKNOWN, f"unknown (last seen {known.status})"
        return known.state, known.status

    def _remember(self, name: str, state: AppState, status: str) -> None:
        self._states[name] = KnownState(state, status, self._clock())

    async def _fetch_state(self, name: str) -> tuple[AppState, str]:
        response = await self._api.request("GET", _path(name, "dynos"), operation="dynos", app=name)
        state, status = classify_dynos(expect_list(response, PROVIDER, "dynos"))
        self._remember(name, state, status)
        return state, status

    # -- starting and stopping -------------------------------------------------------------

    async def start(self, name: str, remembered: Remembered | None) -> Startup:
        wanted = formation_of(remembered)
        if wanted:
            wanted["web"] = max(1, wanted.get("web", 0))
            await self._scale(name, wanted)
        else:
            await self._scale_web_if_none(name)
        self._remember(name, AppState.STARTING, "starting")
        return Startup(running=lambda: self._is_up(name))

    async def _scale_web_if_none(self, name: str) -> None:
        """web x 1, unless web already has dynos: without a remembered formation, blindly
        asking for one would scale a web x 3 down, should our view of the app be stale."""
        current = await self._formation(name)
        if current.get("web", 0) == 0:
            await self._scale(name, fit_formation({}, current), fitted=True)

    async def _scale(self, name: str, wanted: Formation, *, fitted: bool = False) -> None:
        """One batch PATCH; a process type the app no longer has is dropped, then once more."""
        if "web" not in wanted:
            raise OperationFailed(
                f"Heroku app {name} has no web process type", provider=PROVIDER, app=name
            )
        response = await self._patch_formation(name, wanted, ok=(200, 404))
        if response.status == 200:
            return
        body = response.body if isinstance(response.body, dict) else {}
        if body.get("resource") == "app":
            raise AppNotFound(f"Heroku does not know app {name}", provider=PROVIDER, app=name)
        existing = {} if fitted else await self._formation(name)  # AppNotFound when deleted
        kept = fit_formation(wanted, existing)
        if fitted or kept == wanted:
            raise ProviderError(
                f"Heroku refused to scale {name}: {body.get('message', response.body)}",
                provider=PROVIDER,
                app=name,
            )
        log.info("heroku: %s no longer has %s; scaling the rest", name, set(wanted) - set(kept))
        await self._scale(name, kept, fitted=True)

    async def _is_up(self, name: str) -> bool:
        """One look at the dynos: True once a web dyno is up; every web dyno crashed fails."""
        state, _ = await self._fetch_state(name)
        if state is AppState.FAILED:
            raise OperationFailed(
                f"the web dynos of Heroku app {name} crashed", provider=PROVIDER, app=name
            )
        return state is AppState.RUNNING

    async def stop(self, name: str) -> Remembered | None:
        current = await self._formation(name)
        if any(current.values()):
            # Every type, not only the running ones: one scaled up meanwhile stops too.
            await self._patch_formation(name, dict.fromkeys(current, 0))
        self._remember(name, AppState.STOPPED, "no web dyno")
        return remembered(current)

    async def _formation(self, name: str) -> Formation:
        response = await self._api.request(
            "GET", _path(name, "formation"), operation="formation", app=name
        )
        entries = objects(expect_list(response, PROVIDER, "formation"))
        return {e["type"]: quantity_of(e) for e in entries if text(e.get("type"))}

    async def _patch_formation(
        self, name: str, quantities: Formation, ok: tuple[int, ...] = (200,)
    ) -> ApiResponse:
        updates = [{"type": t, "quantity": q} for t, q in quantities.items()]
        # Absolute quantities: sending them twice changes nothing.
        return await self._api.request(
            "PATCH", _path(name, "formation"), operation="scale", app=name,
            json={"updates": updates}, ok=ok, idempotent=True,
        )  # fmt: skip

    # -- answers ---------------------------------------------------------------------------

    def _observe_response(self, response: ApiResponse) -> None:
        value = response.headers.get("RateLimit-Remaining")
        if value is None or not value.strip().isdigit():
            return
        remaining = int(value)
        if spendable(remaining) == 0 and spendable(self.rate_limit_remaining) > 0:
            log.warning(
                "heroku: only %d API calls left in the account's pool; state fetches paused",
                remaining,
            )
        self.rate_limit_remaining = remaining

    def _in_regions(self, raw: Mapping[str, Any]) -> bool:
        return not self.regions or region_name(raw) in self.regions

    def _paas_app(self, raw: Mapping[str, Any], state: AppState, status: str) -> PaasApp:
        return PaasApp(
            name=raw["name"],
            provider=PROVIDER,
            state=state,
            upstream_url=text(raw.get("web_url")),
            id=text(raw.get("id")),
            region=region_name(raw),
            created_at=parse_time(raw.get("created_at")),
            updated_at=parse_time(raw.get("updated_at")),
            last_deployed_at=parse_time(raw.get("released_at")),
            git_url=text(raw.get("git_url")),
            status=status,
        )


def _path(name: str, *parts: str) -> str:
    return "/".join(["/apps", quote(name, safe=""), *parts])


def quantity_of(entry: Mapping[str, Any]) -> int:
    """A formation entry's quantity; the schema says integer, Heroku's CLI sends strings."""
    try:
        return max(0, int(entry.get("quantity") or 0))
    except (TypeError, ValueError):
        return 0


def region_name(raw: Mapping[str, Any]) -> str | None:
    region = raw.get("region")
    return text(region.get("name")) if isinstance(region, dict) else None
