"""An in-process emulator of the Heroku Platform API (v3), for the tests.

Arrange and inspect through `HerokuEmulator`:

    emulator = HerokuEmulator(boot_delay=0.05)
    emulator.add_app("my-app", formation={"web": 2, "worker": 1})
    server = await aiohttp_server(emulator.app())
    ...
    emulator.count("/apps/{app}/formation", method="PATCH", app="my-app")
    emulator.fail_next("/apps", 500, times=3)    # the next 3 GET /apps answer 500

Routes (for `count()` and `fail_next()`, see emulators/base.py) are named by their templates:
`/apps`, `/apps/{app}`, `/apps/{app}/formation`, `/apps/{app}/formation/{type}`,
`/apps/{app}/dynos`, `/account/rate-limits`.

Time comes from `clock` (default: the event loop's clock), read lazily on each request, so
no background task or thread runs: dynos turn `up` when a request looks at them after their
boot delay, and the rate-limit bucket refills by elapsed clock time. A test may pass a fake
clock to simulate an hour in a second.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from emulators.base import Clock, Emulator

ACCEPT = "application/vnd.heroku+json; version=3"
DEFAULT_PAGE_SIZE = 200
MAX_PAGE_SIZE = 1000
RANGE_FIELDS = ("id", "name")
# `[field ][[]|]]start..[end][; max=N][, order=asc|desc]`, as sent and answered by Heroku.
RANGE_PATTERN = re.compile(
    r"^\s*(?:(?P<field>[a-z_]+)\s+)?(?P<exclusive>\])?(?P<start>[^.;\s]*)\.\.(?P<end>[^;\s]*)"
    r"\s*(?:;\s*(?P<params>.*))?$"
)
QUANTITY_PATTERN = re.compile(r"^[+-]?\d+$")


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _error(status: int, error_id: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"id": error_id, "message": message, **extra}, status=status)


def _app_missing() -> web.HTTPNotFound:
    body = {"resource": "app", "id": "not_found", "message": "Couldn't find that app."}
    return web.HTTPNotFound(text=json.dumps(body), content_type="application/json")


@dataclass
class EmulatedDyno:
    type: str
    index: int
    up_at: float  # clock time from which it leaves `starting`; -inf for one already up
    outcome: str = "up"  # what `starting` turns into: `up` or `crashed`
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def state(self, now: float) -> str:
        return self.outcome if now >= self.up_at else "starting"


@dataclass
class EmulatedApp:
    """One app; tests may change any field (e.g. `web_url`, `boot_outcome`) at any time."""

    name: str
    region: str
    web_url: str | None
    formation: dict[str, int]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    dyno_size: str = "Basic"
    # What new dynos become after the boot delay: `up`, or `crashed` to test failed starts.
    boot_outcome: str = "up"
    git_url: str = ""
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    released_at: datetime | None = field(default_factory=lambda: datetime.now(UTC))
    dynos: list[EmulatedDyno] = field(default_factory=list)
    formation_ids: dict[str, str] = field(default_factory=dict)


class RateLimitBucket:
    """Heroku's per-account token pool: `capacity` tokens, refilled `per_minute`."""

    def __init__(self, capacity: float, per_minute: float, clock: Clock) -> None:
        self.capacity = capacity
        self.per_minute = per_minute
        self._clock = clock
        self._tokens = capacity
        self._updated: float | None = None

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    @tokens.setter
    def tokens(self, value: float) -> None:
        self._refill()
        self._tokens = max(0.0, min(self.capacity, value))

    def _refill(self) -> None:
        now = self._clock()
        if self._updated is not None:
            gained = (now - self._updated) * self.per_minute / 60
            self._tokens = min(self.capacity, self._tokens + gained)
        self._updated = now

    def take(self) -> bool:
        self._refill()
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class HerokuEmulator(Emulator):
    """State and call log of one emulated Heroku account."""

    def __init__(
        self,
        *,
        token: str = "heroku-test-token",
        boot_delay: float = 0.05,
        max_page_size: int = MAX_PAGE_SIZE,
        rate_limit_capacity: float = 4500,
        rate_limit_per_minute: float = 75,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(boot_delay=boot_delay, clock=clock)
        self.token = token
        self.max_page_size = max_page_size
        self.rate_limit = RateLimitBucket(rate_limit_capacity, rate_limit_per_minute, self.now)
        self.apps: dict[str, EmulatedApp] = {}

    # -- arrange ---------------------------------------------------------------------------

    def add_app(
        self,
        name: str,
        *,
        formation: dict[str, int] | None = None,
        web_url: str | None = None,
        region: str = "us",
        booted: bool = True,
    ) -> EmulatedApp:
        """Adds an app (formation `{"web": 1}` by default); its dynos are already `up`
        unless `booted` is False. `web_url` defaults to the post-2023 random-suffix form."""
        quantities = {"web": 1} if formation is None else dict(formation)
        url = web_url or f"https://{name}-{secrets.token_hex(6)}.herokuapp.com/"
        app = EmulatedApp(
            name=name,
            region=region,
            web_url=url,
            formation={},
            git_url=f"https://git.heroku.com/{name}.git",
        )
        for process_type, quantity in quantities.items():
            app.formation[process_type] = 0
            app.formation_ids[process_type] = str(uuid.uuid4())
            up_at = float("-inf") if booted else self.now() + self.boot_delay
            self._scale(app, process_type, quantity, up_at=up_at)
        self.apps[name] = app
        return app

    def dyno_states(self, name: str) -> list[tuple[str, str]]:
        now = self.now()
        return [(dyno.type, dyno.state(now)) for dyno in self.apps[name].dynos]

    def is_serving(self, name: str) -> bool:
        return ("web", "up") in self.dyno_states(name)

    # -- server ----------------------------------------------------------------------------

    def app(self) -> web.Application:
        application = self.web_application()
        application.router.add_get("/apps", self._list_apps)
        application.router.add_get("/apps/{app}", self._get_app)
        application.router.add_get("/apps/{app}/formation", self._list_formation)
        application.router.add_patch("/apps/{app}/formation", self._batch_update)
        application.router.add_get("/apps/{app}/formation/{type}", self._get_formation)
        application.router.add_patch("/apps/{app}/formation/{type}", self._update_formation)
        application.router.add_get("/apps/{app}/dynos", self._list_dynos)
        application.router.add_get("/account/rate-limits", self._rate_limits)
        return application

    def route_of(self, request: web.Request) -> str:
        resource = request.match_info.route.resource
        return resource.canonical if resource is not None else request.path

    def default_fault_body(self, status: int) -> Any:
        return {"id": "internal", "message": "Injected failure."}

    def finish(self, response: web.StreamResponse) -> None:
        response.headers["RateLimit-Remaining"] = str(int(self.rate_limit.tokens))

    async def guard(self, request: web.Request, route: str) -> web.StreamResponse | None:
        if request.headers.get("Accept", "") != ACCEPT:
            return _error(
                406,
                "not_acceptable",
                f"Please specify a version along with Heroku's API MIME type. For example, "
                f"`Accept: {ACCEPT}`.",
            )
        if not self._authorized(request.headers.get("Authorization", "")):
            return _error(401, "unauthorized", "Invalid credentials provided.")
        # Real Heroku does not charge the rate-limit endpoint against the limit.
        if route != "/account/rate-limits" and not self.rate_limit.take():
            return _error(
                429,
                "rate_limit",
                "Your account reached the API rate limit. Please wait a few minutes before "
                "making new requests.",
            )
        return None

    def _authorized(self, header: str) -> bool:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer":
            return secrets.compare_digest(credentials.strip(), self.token)
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return False
            _, _, password = decoded.partition(":")
            return secrets.compare_digest(password, self.token)
        return False

    def _find(self, ref: str) -> EmulatedApp | None:
        if ref in self.apps:
            return self.apps[ref]
        return next((app for app in self.apps.values() if app.id == ref), None)

    def _app_or_404(self, request: web.Request) -> EmulatedApp:
        app = self._find(request.match_info["app"])
        if app is None:
            raise _app_missing()
        return app

    # -- handlers --------------------------------------------------------------------------

    async def _list_apps(self, request: web.Request) -> web.StreamResponse:
        parsed = self._parse_range(request.headers.get("Range"))
        if parsed is None:
            return _error(416, "requested_range_not_satisfiable", "Invalid Range header.")
        key, start, exclusive, size = parsed
        ordered = sorted(self.apps.values(), key=lambda app: getattr(app, key))
        if start:
            ordered = [
                app
                for app in ordered
                if getattr(app, key) > start or (not exclusive and getattr(app, key) == start)
            ]
        page = ordered[:size]
        body = [self._app_json(app) for app in page]
        if len(ordered) <= size:
            return web.json_response(body, status=200)
        response = web.json_response(body, status=206)
        response.headers["Next-Range"] = f"]{getattr(page[-1], key)}..; max={size}"
        return response

    def _parse_range(self, header: str | None) -> tuple[str, str, bool, int] | None:
        """(field, start, exclusive, page size), or None for a malformed header."""
        if not header:
            return "id", "", False, min(DEFAULT_PAGE_SIZE, self.max_page_size)
        match = RANGE_PATTERN.match(header)
        if match is None or (match["field"] or "id") not in RANGE_FIELDS:
            return None
        size = DEFAULT_PAGE_SIZE
        for param in (match["params"] or "").replace(",", ";").split(";"):
            name, _, value = param.strip().partition("=")
            if name == "max":
                if not value.isdigit() or int(value) < 1:
                    return None
                size = int(value)
        size = min(size, MAX_PAGE_SIZE, self.max_page_size)
        return match["field"] or "id", match["start"], bool(match["exclusive"]), size

    async def _get_app(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._app_json(self._app_or_404(request)))

    async def _list_formation(self, request: web.Request) -> web.StreamResponse:
        app = self._app_or_404(request)
        return web.json_response([self._formation_json(app, t) for t in app.formation])

    async def _get_formation(self, request: web.Request) -> web.StreamResponse:
        app = self._app_or_404(request)
        process_type = request.match_info["type"]
        if process_type not in app.formation:
            return self._missing_type(process_type)
        return web.json_response(self._formation_json(app, process_type))

    async def _batch_update(self, request: web.Request) -> web.StreamResponse:
        app = self._app_or_404(request)
        body = await self._json_body(request)
        updates = body.get("updates") if isinstance(body, dict) else None
        if not isinstance(updates, list) or not all(isinstance(u, dict) for u in updates):
            return _error(422, "invalid_params", "Invalid params: updates must be a list.")
        # Validate everything first so that a bad item changes nothing.
        planned: list[tuple[str, int]] = []
        for update in updates:
            process_type = update.get("type")
            if process_type not in app.formation:
                return self._missing_type(str(process_type))
            quantity = self._quantity(app, process_type, update.get("quantity"))
            if quantity is None:
                return _error(422, "invalid_params", "Invalid params: quantity.")
            planned.append((process_type, quantity))
        for process_type, quantity in planned:
            self._scale(app, process_type, quantity, up_at=self.now() + self.boot_delay)
        return web.json_response([self._formation_json(app, t) for t in app.formation])

    async def _update_formation(self, request: web.Request) -> web.StreamResponse:
        app = self._app_or_404(request)
        process_type = request.match_info["type"]
        if process_type not in app.formation:
            return self._missing_type(process_type)
        body = await self._json_body(request)
        raw = body.get("quantity", app.formation[process_type]) if isinstance(body, dict) else None
        quantity = self._quantity(app, process_type, raw)
        if quantity is None:
            return _error(422, "invalid_params", "Invalid params: quantity.")
        self._scale(app, process_type, quantity, up_at=self.now() + self.boot_delay)
        return web.json_response(self._formation_json(app, process_type))

    async def _list_dynos(self, request: web.Request) -> web.StreamResponse:
        app = self._app_or_404(request)
        now = self.now()
        return web.json_response([self._dyno_json(app, dyno, now) for dyno in app.dynos])

    async def _rate_limits(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"remaining": int(self.rate_limit.tokens)})

    # -- model -----------------------------------------------------------------------------

    @staticmethod
    async def _json_body(request: web.Request) -> Any:
        try:
            return await request.json()
        except ValueError:
            return None

    @staticmethod
    def _missing_type(process_type: str) -> web.Response:
        return _error(
            404,
            "not_found",
            f"Couldn't find that process type ({process_type}).",
            resource="formation",
        )

    @staticmethod
    def _quantity(app: EmulatedApp, process_type: str, raw: Any) -> int | None:
        """An absolute quantity from an int or a numeric string (`"+1"`/`"-1"` relative)."""
        if raw is None:
            return app.formation[process_type]
        if isinstance(raw, bool):
            return None
        if isinstance(raw, int):
            return raw if raw >= 0 else None
        if isinstance(raw, str) and QUANTITY_PATTERN.match(raw):
            value = int(raw)
            if raw[0] in "+-":
                value += app.formation[process_type]
            return value if value >= 0 else None
        return None

    def _scale(self, app: EmulatedApp, process_type: str, quantity: int, *, up_at: float) -> None:
        current = [d for d in app.dynos if d.type == process_type]
        if quantity < len(current):
            removed = {id(d) for d in current[quantity:]}
            app.dynos = [d for d in app.dynos if id(d) not in removed]
        for index in range(len(current) + 1, quantity + 1):
            app.dynos.append(EmulatedDyno(process_type, index, up_at, outcome=app.boot_outcome))
        app.formation[process_type] = quantity
        app.updated_at = datetime.now(UTC)

    def _app_json(self, app: EmulatedApp) -> dict[str, Any]:
        return {
            "id": app.id,
            "name": app.name,
            "web_url": app.web_url,
            "region": {"id": str(uuid.uuid5(uuid.NAMESPACE_DNS, app.region)), "name": app.region},
            "stack": {"id": str(uuid.uuid5(uuid.NAMESPACE_DNS, "heroku-24")), "name": "heroku-24"},
            "generation": {"id": str(uuid.uuid5(uuid.NAMESPACE_DNS, "cedar")), "name": "cedar"},
            "maintenance": False,
            "git_url": app.git_url,
            "released_at": _iso(app.released_at),
            "created_at": _iso(app.created_at),
            "updated_at": _iso(app.updated_at),
            "owner": {"id": str(uuid.uuid5(uuid.NAMESPACE_DNS, "owner")), "email": "o@example.com"},
            "team": None,
            "space": None,
            "acm": False,
            "internal_routing": None,
            "archived_at": None,
        }

    def _formation_json(self, app: EmulatedApp, process_type: str) -> dict[str, Any]:
        return {
            "id": app.formation_ids[process_type],
            "type": process_type,
            "quantity": app.formation[process_type],
            # `size` is deprecated in favour of `dyno_size`; older clients read `size`.
            "size": app.dyno_size,
            "dyno_size": {
                "id": str(uuid.uuid5(uuid.NAMESPACE_DNS, app.dyno_size)),
                "name": app.dyno_size,
            },
            "command": f"run-{process_type}",
            "app": {"id": app.id, "name": app.name},
            "created_at": _iso(app.created_at),
            "updated_at": _iso(app.updated_at),
        }

    @staticmethod
    def _dyno_json(app: EmulatedApp, dyno: EmulatedDyno, now: float) -> dict[str, Any]:
        return {
            "id": dyno.id,
            "name": f"{dyno.type}.{dyno.index}",
            "type": dyno.type,
            "state": dyno.state(now),
            "size": app.dyno_size,
            "command": f"run-{dyno.type}",
            "release": {"id": str(uuid.uuid5(uuid.NAMESPACE_DNS, app.id)), "version": 1},
            "app": {"id": app.id, "name": app.name},
            "attach_url": None,
            "created_at": _iso(dyno.created_at),
            "updated_at": _iso(dyno.created_at),
        }
