"""An in-process emulator of Scalingo's auth and regional APIs, for the tests.

One `web.Application` serves both hosts (tests pass the same base URL as `api_url` and
`auth_url`). Arrange and inspect through `ScalingoEmulator`:

    emulator = ScalingoEmulator(boot_delay=0.2)
    emulator.add_app("my-app", formation={"web": 2, "worker": 1}, status="stopped")
    server = await aiohttp_server(emulator.app())
    ...
    emulator.count("scale", app="my-app")       # POST /scale calls for that app
    emulator.fail_next("list_apps", 500)        # the next GET /v1/apps answers 500

Route names (for `count()` and `fail_next()`, see emulators/base.py) match the adapter's
operation names: exchange_token, regions, list_apps, get_app, ps, containers, scale, restart,
operation, autoscalers, autoscaler.

Time: scale operations and busy periods use the event loop's clock (`loop.time()`) and are
advanced lazily on each request, so no background task runs. JWT `exp` is wall-clock epoch
seconds, as in a real JWT.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from emulators.base import Emulator

BUSY_STATUSES = frozenset({"scaling", "restarting", "booting"})
MAX_CONTAINERS_PER_TYPE = 10

REGION = web.AppKey("region", str | None)


def _now() -> float:
    return asyncio.get_running_loop().time()


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _object_id() -> str:
    return secrets.token_hex(12)


@dataclass
class EmulatedOperation:
    """A scale operation: pending, then running, then done (or error) at `done_at`."""

    id: str
    app_id: str
    started_at: float
    done_at: float
    created_at: datetime
    error: str | None = None
    finished_at: datetime | None = None

    def status(self, now: float) -> str:
        if now >= self.done_at:
            return "error" if self.error else "done"
        # The first quarter of the delay shows `pending`, as a queued operation would.
        if now < self.started_at + (self.done_at - self.started_at) / 4:
            return "pending"
        return "running"


@dataclass
class EmulatedContainer:
    type: str
    index: int
    ready_at: float  # loop time from which it is `running`; -inf for one already running
    id: str = field(default_factory=_object_id)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class EmulatedAutoscaler:
    """An autoscaler; scaling its container type by hand sets it `disabled`, as Scalingo does."""

    container_type: str
    min_containers: int
    max_containers: int
    disabled: bool = False
    metric: str = "cpu"
    target: float = 0.8
    id: str = field(default_factory=lambda: f"au-{_object_id()}")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "container_type": self.container_type, "metric": self.metric,
                "target": self.target, "min_containers": self.min_containers,
                "max_containers": self.max_containers, "disabled": self.disabled}  # fmt: skip


@dataclass
class EmulatedApp:
    """One app; tests may change any field (e.g. `base_url`) between requests."""

    name: str
    region: str
    status: str
    formation: dict[str, int]
    base_url: str | None
    url: str | None
    id: str = field(default_factory=_object_id)
    sizes: dict[str, str] = field(default_factory=dict)
    git_url: str = ""
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_deployed_at: datetime | None = None
    force_https: bool = False
    sticky_session: bool = False
    containers: list[EmulatedContainer] = field(default_factory=list)
    autoscalers: list[EmulatedAutoscaler] = field(default_factory=list)
    operation: EmulatedOperation | None = None
    # Formation and containers to restore when the current operation ends in error.
    rollback: tuple[dict[str, int], list[EmulatedContainer]] | None = None
    busy_until: float | None = None
    # The next scale operation ends with this error (then it is cleared).
    next_operation_error: str | None = None

    @property
    def deployed(self) -> bool:
        return self.status != "new"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "region": self.region,
            "status": self.status,
            "url": self.url,
            "base_url": self.base_url,
            "git_url": self.git_url,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "last_deployed_at": _iso(self.last_deployed_at),
            "force_https": self.force_https,
            "sticky_session": self.sticky_session,
            "owner": {"id": "us-emulated", "username": "emulator", "email": "emu@example.test"},
        }

    def formation_json(self) -> list[dict[str, Any]]:
        return [
            {"id": f"ct-{self.id}-{name}", "app_id": self.id, "name": name, "amount": amount,
             "size": self.sizes.get(name, "M"), "command": ""}
            for name, amount in self.formation.items()
        ]  # fmt: skip

    def container_state(self, container: EmulatedContainer, now: float) -> str:
        if self.status == "crashed":
            return "crashed"
        return "running" if now >= container.ready_at else "booting"


class ScalingoEmulator(Emulator):
    """The state behind the emulated Scalingo APIs, and the knobs the tests turn."""

    def __init__(
        self,
        *,
        region: str = "osc-fr1",
        valid_tokens: tuple[str, ...] = ("tk-us-emulated-token",),
        token_lifetime: float = 3600.0,
        boot_delay: float = 0.0,
        rate_limit_per_minute: int | None = None,
        rate_limit_window: float = 60.0,
        unknown_type_status: int = 404,
        container_boot_lag: float = 0.0,
    ) -> None:
        super().__init__(boot_delay=boot_delay)
        self.region = region
        self.valid_tokens: set[str] = set(valid_tokens)
        self.token_lifetime = token_lifetime
        # "60 requests per minute": at most this many accepted in any `rate_limit_window`.
        self.rate_limit_per_minute = rate_limit_per_minute
        self.rate_limit_window = rate_limit_window
        # Scalingo's answer to an unknown container type is ambiguous (404 or 422).
        self.unknown_type_status = unknown_type_status
        # Seconds new containers stay `booting` in /ps after their operation is done.
        self.container_boot_lag = container_boot_lag
        self.apps: dict[str, EmulatedApp] = {}
        self.operations: dict[str, EmulatedOperation] = {}
        self.issued_jwts: dict[str, float] = {}  # JWT -> exp (epoch seconds)
        self._accepted_at: deque[float] = deque()

    # -- arrange ------------------------------------------------------------------------

    def add_app(
        self,
        name: str,
        formation: dict[str, int] | None = None,
        *,
        status: str | None = None,
        base_url: str | None = "",
        url: str | None = "",
        region: str | None = None,
    ) -> EmulatedApp:
        """Adds an app. `status` defaults to running/stopped from the formation.

        `status="stopped"` keeps the formation's types at amount 0; `status="new"` is a
        never-deployed app (no containers). `base_url=""` means the platform default
        `https://{name}.{region}.scalingo.io`; None sends null. Any other status string is
        served as is (to test unknown statuses).
        """
        region = region or self.region
        wanted = dict(formation if formation is not None else {"web": 1})
        if status == "stopped":
            wanted = dict.fromkeys(wanted, 0)
        if status is None:
            status = "running" if any(wanted.values()) else "stopped"
        default_url = f"https://{name}.{region}.scalingo.io"
        app = EmulatedApp(
            name=name,
            region=region,
            status=status,
            formation=wanted,
            base_url=default_url if base_url == "" else base_url,
            url=(default_url if base_url == "" else base_url) if url == "" else url,
            git_url=f"git@ssh.{region}.scalingo.com:{name}.git",
        )
        if status != "new":
            app.last_deployed_at = app.created_at
            app.containers = _containers_for(wanted, [], ready_at=float("-inf"))
        self.apps[name] = app
        return app

    def add_autoscaler(
        self, name: str, container_type: str = "web", *, min_containers: int = 2,
        max_containers: int = 4, disabled: bool = False,
    ) -> EmulatedAutoscaler:  # fmt: skip
        autoscaler = EmulatedAutoscaler(container_type, min_containers, max_containers, disabled)
        self.apps[name].autoscalers.append(autoscaler)
        return autoscaler

    def make_busy(self, name: str, seconds: float, status: str = "restarting") -> None:
        """Puts the app in a busy `status` for `seconds` (scale answers 422 meanwhile)."""
        app = self.apps[name]
        app.status = status
        app.busy_until = _now() + seconds

    def revoke_jwts(self) -> None:
        """Invalidates every JWT issued so far, as an expiry or revocation would."""
        self.issued_jwts.clear()

    # -- inspect ------------------------------------------------------------------------

    def web_states(self, name: str) -> list[str]:
        """The current `/ps` states of the app's web containers."""
        app = self._refreshed(name)
        return [app.container_state(c, _now()) for c in app.containers if c.type == "web"]

    def status_of(self, name: str) -> str:
        return self._refreshed(name).status

    def is_serving(self, name: str) -> bool:
        states = self.web_states(name)
        return bool(states) and all(state == "running" for state in states)

    # -- the web application ------------------------------------------------------------

    def regional_app(self, regions: tuple[str, ...]) -> web.Application:
        """The auth API under `/auth` and each region's API under `/<region>`, on one server:
        the adapter's URL template is then `<server>/{region}`."""
        root = web.Application()
        root.add_subapp("/auth", self.app())
        for region in regions:
            root.add_subapp(f"/{region}", self.app(region=region))
        return root

    def app(self, region: str | None = None) -> web.Application:
        """The emulated API; with `region`, a regional API serving that region's apps only."""
        application = self.web_application()
        application[REGION] = region
        r = application.router
        r.add_post("/v1/tokens/exchange", self._exchange, name="exchange_token")
        r.add_get("/v1/regions", self._regions, name="regions")
        r.add_get("/v1/apps", self._list_apps, name="list_apps")
        r.add_get("/v1/apps/{app}", self._get_app, name="get_app")
        r.add_get("/v1/apps/{app}/ps", self._ps, name="ps")
        r.add_get("/v1/apps/{app}/containers", self._containers, name="containers")
        r.add_post("/v1/apps/{app}/scale", self._scale, name="scale")
        r.add_post("/v1/apps/{app}/restart", self._restart, name="restart")
        r.add_get("/v1/apps/{app}/operations/{operation}", self._operation, name="operation")
        r.add_get("/v1/apps/{app}/autoscalers", self._autoscalers, name="autoscalers")
        r.add_patch(
            "/v1/apps/{app}/autoscalers/{autoscaler}", self._patch_autoscaler, name="autoscaler"
        )
        return application

    def route_of(self, request: web.Request) -> str:
        return request.match_info.route.name or "unknown"

    def default_fault_body(self, status: int) -> Any:
        # Scalingo's: plain-text `Retry later` for 429, `{"error": ...}` otherwise.
        return "Retry later" if status == 429 else {"error": _default_error(status)}

    async def guard(self, request: web.Request, route: str) -> web.StreamResponse | None:
        now = _now()
        response = self._rate_limited(now)
        if response is None and route not in ("exchange_token", "unknown"):
            response = self._unauthorized(request)
        if response is None:
            self._refresh_all(now)
        return response

    def _rate_limited(self, now: float) -> web.Response | None:
        if self.rate_limit_per_minute is None:
            return None
        while self._accepted_at and self._accepted_at[0] <= now - self.rate_limit_window:
            self._accepted_at.popleft()
        if len(self._accepted_at) >= self.rate_limit_per_minute:
            return web.Response(status=429, text="Retry later")
        self._accepted_at.append(now)
        return None

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        scheme, _, jwt = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not jwt:
            return web.json_response({"error": "no authorization header"}, status=401)
        exp = self.issued_jwts.get(jwt)
        if exp is None:
            return web.json_response({"error": "invalid token"}, status=401)
        if time.time() >= exp:
            return web.json_response({"error": "token expired"}, status=401)
        return None

    # -- auth host ----------------------------------------------------------------------

    async def _exchange(self, request: web.Request) -> web.Response:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        token = ""
        if scheme.lower() == "basic":
            try:
                token = base64.b64decode(encoded, validate=True).decode().partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                token = ""
        if token not in self.valid_tokens:
            return web.json_response({"error": "invalid credentials"}, status=401)
        return web.json_response({"token": self._issue_jwt()})

    def _issue_jwt(self) -> str:
        issued = time.time()
        exp = round(issued + self.token_lifetime, 3)
        header = {"alg": "HS256", "typ": "JWT"}
        payload = {"iss": "Scalingo Emulator", "iat": int(issued), "exp": exp,
                   "jti": secrets.token_hex(8), "sub": "us-emulated"}  # fmt: skip
        jwt = ".".join(
            [
                _b64url(json.dumps(header).encode()),
                _b64url(json.dumps(payload).encode()),
                _b64url(secrets.token_bytes(32)),
            ]
        )
        self.issued_jwts[jwt] = exp
        return jwt

    async def _regions(self, request: web.Request) -> web.Response:
        api = str(request.url.origin())
        region = {"name": self.region, "display_name": "Emulated region", "api": api,
                  "dashboard": api, "database_api": api, "ssh": "localhost:22",
                  "default": True}  # fmt: skip
        return web.json_response({"regions": [region]})

    # -- regional host ------------------------------------------------------------------

    def _find(self, request: web.Request) -> EmulatedApp | None:
        """The app the path names (by name or id), among those of the API's region."""
        key = request.match_info["app"]
        app = self.apps.get(key) or next((a for a in self.apps.values() if a.id == key), None)
        return app if app is not None and _serves(request, app) else None

    def _refreshed(self, name: str) -> EmulatedApp:
        self._refresh_all(_now())
        return self.apps[name]

    def _refresh_all(self, now: float) -> None:
        for app in self.apps.values():
            _advance(app, now)

    async def _list_apps(self, request: web.Request) -> web.Response:
        apps = [a.to_json() for a in self.apps.values() if _serves(request, a)]
        return web.json_response({"apps": apps})

    async def _get_app(self, request: web.Request) -> web.Response:
        app = self._find(request)
        if app is None:
            return _app_not_found()
        return web.json_response({"app": app.to_json()})

    async def _ps(self, request: web.Request) -> web.Response:
        app = self._find(request)
        if app is None:
            return _app_not_found()
        now = _now()
        containers = [
            {"id": c.id, "type": c.type, "type_index": c.index, "label": f"{c.type}-{c.index}",
             "created_at": _iso(c.created_at), "deleted_at": None,
             "state": app.container_state(c, now), "command": "",
             "container_size": {"name": app.sizes.get(c.type, "M")}}
            for c in app.containers
        ]  # fmt: skip
        return web.json_response({"containers": containers})

    async def _containers(self, request: web.Request) -> web.Response:
        app = self._find(request)
        if app is None:
            return _app_not_found()
        return web.json_response({"containers": app.formation_json()})

    async def _operation(self, request: web.Request) -> web.Response:
        app = self._find(request)
        op = self.operations.get(request.match_info["operation"])
        if app is None:
            return _app_not_found()
        if op is None or op.app_id != app.id:
            return web.json_response({"resource": "operation", "error": "not found"}, status=404)
        body = {"id": op.id, "app_id": op.app_id, "type": "scale", "status": op.status(_now()),
                "created_at": _iso(op.created_at), "finished_at": _iso(op.finished_at),
                "error": op.error or ""}  # fmt: skip
        return web.json_response({"operation": body})

    async def _autoscalers(self, request: web.Request) -> web.Response:
        app = self._find(request)
        if app is None:
            return _app_not_found()
        return web.json_response({"autoscalers": [a.to_json() for a in app.autoscalers]})

    async def _patch_autoscaler(self, request: web.Request) -> web.Response:
        app = self._find(request)
        if app is None:
            return _app_not_found()
        autoscaler = next(
            (a for a in app.autoscalers if a.id == request.match_info["autoscaler"]), None
        )
        if autoscaler is None:
            return web.json_response({"resource": "autoscaler", "error": "not found"}, status=404)
        if app.status in BUSY_STATUSES:
            return web.json_response({"errors": {"app": [f"is {app.status}"]}}, status=422)
        try:
            changes = (await request.json())["autoscaler"]
        except (ValueError, TypeError, KeyError):
            return web.json_response({"errors": {"autoscaler": ["is invalid"]}}, status=422)
        if isinstance(changes.get("disabled"), bool):
            autoscaler.disabled = changes["disabled"]
        return web.json_response({"autoscaler": autoscaler.to_json()})

    async def _scale(self, request: web.Request) -> web.Response:
        app = self._find(request)
        if app is None:
            return _app_not_found()
        try:
            requested = _requested_formation(await request.json())
        except (ValueError, TypeError, KeyError):
            return web.json_response({"errors": {"containers": ["are invalid"]}}, status=422)
        unknown = [name for name in requested if name not in app.formation]
        if unknown:
            return self._unknown_type(unknown[0])
        if app.status in BUSY_STATUSES:
            return web.json_response({"errors": {"app": [f"is {app.status}"]}}, status=422)
        wanted = {**app.formation, **requested}
        if wanted == app.formation:
            return web.json_response({"error": "no change in containers formation"}, status=400)
        for autoscaler in app.autoscalers:
            # "Scaling up or scaling down an application disables any Scalingo Autoscaler
            # enabled for the corresponding process type."
            if autoscaler.container_type in requested:
                autoscaler.disabled = True
        if not app.deployed:
            # Scaled before its first deployment: recorded, nothing boots, no operation.
            app.formation = wanted
            return web.json_response({"containers": app.formation_json()}, status=200)
        op = self._begin_scale(app, wanted)
        location = request.url.origin().with_path(f"/v1/apps/{app.name}/operations/{op.id}")
        return web.json_response(
            {"containers": app.formation_json()}, status=202, headers={"Location": str(location)}
        )

    async def _restart(self, request: web.Request) -> web.Response:
        """202 with an operation; the containers boot again (how a crashed app recovers)."""
        app = self._find(request)
        if app is None:
            return _app_not_found()
        if app.status in BUSY_STATUSES:
            return web.json_response({"errors": {"app": [f"is {app.status}"]}}, status=422)
        now = _now()
        op = EmulatedOperation(
            id=_object_id(),
            app_id=app.id,
            started_at=now,
            done_at=now + self.boot_delay,
            created_at=datetime.now(UTC),
        )
        self.operations[op.id] = op
        app.operation = op
        app.status = "restarting"
        for container in app.containers:
            container.ready_at = op.done_at + self.container_boot_lag
        _advance(app, now)
        location = request.url.origin().with_path(f"/v1/apps/{app.name}/operations/{op.id}")
        return web.Response(status=202, headers={"Location": str(location)})

    def _unknown_type(self, name: str) -> web.Response:
        if self.unknown_type_status == 404:
            body: dict[str, Any] = {"resource": "container_type", "error": "not found"}
        else:
            body = {"errors": {"containers": [f"no container type yet: {name}"]}}
        return web.json_response(body, status=self.unknown_type_status)

    def _begin_scale(self, app: EmulatedApp, wanted: dict[str, int]) -> EmulatedOperation:
        now = _now()
        op = EmulatedOperation(
            id=_object_id(),
            app_id=app.id,
            started_at=now,
            done_at=now + self.boot_delay,
            created_at=datetime.now(UTC),
            error=app.next_operation_error,
        )
        app.next_operation_error = None
        self.operations[op.id] = op
        app.rollback = (app.formation, app.containers)
        app.formation = wanted
        ready_at = op.done_at + self.container_boot_lag
        app.containers = _containers_for(wanted, app.containers, ready_at=ready_at)
        app.operation = op
        app.status = "scaling"
        _advance(app, now)  # a zero boot_delay finishes at once
        return op


def _serves(request: web.Request, app: EmulatedApp) -> bool:
    region = request.app[REGION]
    return region is None or app.region == region


def _containers_for(
    formation: dict[str, int], current: list[EmulatedContainer], *, ready_at: float
) -> list[EmulatedContainer]:
    """Keeps the containers that still fit the formation and boots the missing ones."""
    kept = [c for c in current if c.index <= formation.get(c.type, 0)]
    present = {(c.type, c.index) for c in kept}
    new = [
        EmulatedContainer(type=name, index=i, ready_at=ready_at)
        for name, amount in formation.items()
        for i in range(1, amount + 1)
        if (name, i) not in present
    ]
    return kept + new


def _advance(app: EmulatedApp, now: float) -> None:
    """Moves the app's state forward to `now` (operation end, busy period end)."""
    op = app.operation
    if op is not None and now >= op.done_at:
        op.finished_at = datetime.now(UTC)
        if op.error and app.rollback is not None:
            app.formation, app.containers = app.rollback
        app.operation = None
        app.rollback = None
        app.updated_at = datetime.now(UTC)
        app.status = "running" if any(app.formation.values()) else "stopped"
    if app.busy_until is not None and now >= app.busy_until:
        app.busy_until = None
        app.status = "running" if any(app.formation.values()) else "stopped"


def _requested_formation(body: Any) -> dict[str, int]:
    requested: dict[str, int] = {}
    for item in body["containers"]:
        name, amount = item["name"], item["amount"]
        if not isinstance(name, str) or not isinstance(amount, int) or isinstance(amount, bool):
            raise TypeError("invalid container entry")
        if not 0 <= amount <= MAX_CONTAINERS_PER_TYPE:
            raise ValueError("amount out of range")
        requested[name] = amount
    return requested


def _app_not_found() -> web.Response:
    return web.json_response({"resource": "app", "error": "not found"}, status=404)


def _default_error(status: int) -> str:
    if status >= 500:
        return "Internal error occured, we're on it!"
    return {401: "invalid token", 403: "forbidden", 404: "not found"}.get(status, "error")
