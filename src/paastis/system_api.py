"""The system API: list, inspect, start and stop apps, read events and metrics (JSON, token)."""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

from aiohttp import web
from croniter import croniter

from paastis.catalog import MISS_REFRESH_INTERVAL
from paastis.events import INTERNAL_EVENTS, iso_utc
from paastis.lifecycle import Lifecycle
from paastis.metrics import CONTENT_TYPE, Metrics
from paastis.providers import AppState, PaasApp, ProviderError
from paastis.registry import RunningApp

log = logging.getLogger("paastis.system_api")

Handler = Callable[[web.Request, re.Match[str]], Awaitable[web.StreamResponse]]

# The contract of this API, shipped with the package and served as it is.
OPENAPI_DOCUMENT = resources.files("paastis").joinpath("openapi.json").read_bytes()


class SystemApi:
    def __init__(
        self,
        *,
        lifecycle: Lifecycle,
        token: str,
        metrics: Metrics,
        cron: str,
        kept_awake: Callable[[Iterable[PaasApp]], set[str]] = lambda apps: set(),
    ) -> None:
        self._lifecycle = lifecycle
        # The apps whose keep_awake window is open (the scheduler's view): never due to stop.
        self._kept_awake = kept_awake
        self._token = token.encode()
        self._metrics = metrics
        self._cron = cron  # the scheduler's, to tell when an idle app will be stopped
        # Answered without a token.
        self._public_routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
            (re.compile(r"/openapi\.json"), {"GET": self.openapi}),
        ]
        self._routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
            (re.compile(r"/apps/?"), {"GET": self.list_apps, "DELETE": self.forget_apps}),
            (re.compile(r"/events/?"), {"GET": self.list_events}),
            (re.compile(r"/metrics/?"), {"GET": self.metrics}),
            (re.compile(r"/apps/(?P<name>[^/]+)/?"), {"GET": self.get_app}),
            (re.compile(r"/apps/(?P<name>[^/]+)/start/?"), {"POST": self.start_app}),
            (re.compile(r"/apps/(?P<name>[^/]+)/stop/?"), {"POST": self.stop_app}),
        ]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        found = route(self._public_routes, request.path)
        if found is None:
            if not self._authorized(request):
                return error(401, "missing or invalid system API token")
            found = route(self._routes, request.path)
        if found is None:
            return error(404, f"no route {request.path}")
        match, methods = found
        handler = methods.get(request.method)
        if handler is None:
            response = error(405, f"method {request.method} not allowed on {request.path}")
            response.headers["Allow"] = ", ".join(methods)
            return response
        try:
            return await handler(request, match)
        except ProviderError as exc:
            log.error("system API %s %s: %s", request.method, request.path, exc)
            return error(502, f"provider error: {exc}")
        except Exception:
            # Every answer of this API is JSON, failures included.
            log.exception("system API %s %s failed", request.method, request.path)
            return error(500, "internal error")

    def _authorized(self, request: web.Request) -> bool:
        if not self._token:
            # No ROUTING_SYSTEM_API_TOKEN (the admin listener serves these routes regardless):
            # an empty token must not match an empty header.
            return False
        given = request.headers.get("PaastisProxySystemApiToken")
        if given is None:
            scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
            given = credentials.strip() if scheme.lower() == "bearer" else ""
        try:
            # Header bytes that are not UTF-8 arrive decoded with surrogate escapes.
            presented = given.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(presented, self._token)

    async def openapi(self, request: web.Request, match: re.Match[str]) -> web.Response:
        return web.Response(body=OPENAPI_DOCUMENT, content_type="application/json")

    async def list_apps(self, request: web.Request, match: re.Match[str]) -> web.Response:
        # A dashboard polling this must not spend the provider's rate limit.
        apps = await self._lifecycle.catalog.current(max_age=MISS_REFRESH_INTERVAL)
        registered = {app.name: app for app in await self._lifecycle.registry.list()}
        awake = self._kept_awake(apps)
        return web.json_response(
            [self._describe(app, registered.get(app.name), awake) for app in apps]
        )

    async def forget_apps(self, request: web.Request, match: re.Match[str]) -> web.Response:
        await self._lifecycle.registry.clear()
        return web.Response(status=204)

    async def list_events(self, request: web.Request, match: re.Match[str]) -> web.Response:
        events = await self._lifecycle.events.list()
        return web.json_response(
            [event.to_json() for event in events if event.name not in INTERNAL_EVENTS]
        )

    async def metrics(self, request: web.Request, match: re.Match[str]) -> web.Response:
        return metrics_response(self._metrics)

    async def get_app(self, request: web.Request, match: re.Match[str]) -> web.Response:
        app = await self._find(match["name"])
        if app is None:
            return error(404, f"no app named {match['name']}")
        registered = await self._lifecycle.registry.get(app.name)
        awake = self._kept_awake(self._lifecycle.catalog.all())
        return web.json_response(self._describe(app, registered, awake))

    async def start_app(self, request: web.Request, match: re.Match[str]) -> web.Response:
        app = await self._find(match["name"])
        if app is None:
            return error(404, f"no app named {match['name']}")
        self._lifecycle.wake_in_background(app.name)
        return web.json_response({"app": app.name, "action": "start"}, status=202)

    async def stop_app(self, request: web.Request, match: re.Match[str]) -> web.Response:
        app = await self._find(match["name"])
        if app is None:
            return error(404, f"no app named {match['name']}")
        self._lifecycle.stop_in_background(app.name)
        return web.json_response({"app": app.name, "action": "stop"}, status=202)

    async def _find(self, name: str) -> PaasApp | None:
        return await self._lifecycle.catalog.find(name)

    def _describe(
        self, app: PaasApp, registered: RunningApp | None, kept_awake: set[str]
    ) -> dict[str, Any]:
        route = self._lifecycle.route_of(app.name)
        return {
            "name": app.name,
            "id": app.id,
            "region": app.region,
            "status": app.status or app.state.value,
            "url": app.upstream_url,
            "created_at": optional_iso(app.created_at),
            "updated_at": optional_iso(app.updated_at),
            "last_deployed_at": optional_iso(app.last_deployed_at),
            "force_https": app.force_https,
            "sticky_session": app.sticky_session,
            "git_url": app.git_url,
            "provider": app.provider,
            "is_monitored": registered is not None,
            "max_idle_time": registered.max_idle_time if registered else route.max_idle_time,
            "last_accessed_at": optional_iso(registered.last_accessed_at if registered else None),
            # Beyond DESIGN's fields, for the dashboard.
            "state": self._state(app),
            "stop_due_at": optional_iso(
                None if app.name in kept_awake else self._stop_due_at(app, registered)
            ),
            "kept_awake": app.name in kept_awake,
            "cold_starts": self._lifecycle.cold_starts(app.name),
            "asleep_seconds": round(self._lifecycle.asleep_seconds_of(app.name), 3),
            "requests_in_flight": self._lifecycle.activity.count(app.name),
        }

    def _state(self, app: PaasApp) -> str:
        """paastis' view of the app: its own starts and stops in progress come first."""
        if self._lifecycle.is_stopping(app.name):
            return "stopping"
        if app.state is AppState.RUNNING:
            return "running"
        if self._lifecycle.is_waking(app.name):
            return "waking"
        if app.state is AppState.STOPPED:
            return "sleeping"
        return app.state.value

    def _stop_due_at(self, app: PaasApp, registered: RunningApp | None) -> datetime | None:
        """The scheduler tick that stops the app if no request arrives before it."""
        if registered is None or app.state is not AppState.RUNNING:
            return None
        idle_from = registered.last_accessed_at + timedelta(minutes=registered.max_idle_time)
        return first_tick_from(self._cron, max(idle_from, self._lifecycle.now()))


def route(
    routes: list[tuple[re.Pattern[str], dict[str, Handler]]], path: str
) -> tuple[re.Match[str], dict[str, Handler]] | None:
    for pattern, methods in routes:
        match = pattern.fullmatch(path)
        if match is not None:
            return match, methods
    return None


def first_tick_from(cron: str, moment: datetime) -> datetime:
    """The first occurrence of the scheduler's cron at or after `moment` (as the scheduler
    reads it: croniter, seconds as a 6th field)."""
    schedule = croniter(cron, moment - timedelta(microseconds=1), second_at_beginning=False)
    return schedule.get_next(datetime)


def optional_iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return iso_utc(moment)


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def metrics_response(metrics: Metrics) -> web.Response:
    response = web.Response(body=metrics.render())
    response.headers["Content-Type"] = CONTENT_TYPE
    return response
