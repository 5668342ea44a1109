"""An emulator of the Clever Cloud API (v2) for the tests: OAuth/Bearer auth, apps, deployments.

Routes (for `count()` and `fail_next()`, see emulators/base.py) have short names, the same on
/self and /organisations paths: summary, applications, application, instances, deployments,
deployment, vhosts, favourite. The app of a call is the app id in its path.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

from emulators.base import Emulator

BRIDGE = web.AppKey("bridge", bool)
SELF_PREFIX = "/v2/self"
ORGA_PREFIX = "/v2/organisations/{owner}"


def _pct(value: str) -> str:
    return quote(value, safe="-._~")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"id": status, "message": message, "type": "error"}, status=status, headers=headers
    )


@dataclass
class EmulatedApp:
    """One application and its runtime state; tests may read and change it."""

    id: str
    name: str
    owner: str  # user_… or orga_…
    state: str
    zone: str
    homogeneous: bool
    min_instances: int
    vhosts: list[str]  # fqdn values, each ending with "/"
    favourite: str | None
    created_ms: int = field(default_factory=_now_ms)
    instances: list[dict[str, Any]] = field(default_factory=list)
    deployments: list[dict[str, Any]] = field(default_factory=list)  # newest first
    timers: list[asyncio.TimerHandle] = field(default_factory=list)


class CleverEmulator(Emulator):
    """The Clever Cloud API: `web_app()` is the OAuth API, `web_app(bridge=True)` the Bearer one.

    Both share the same account. POST instances redeploys: the deployment stays WIP for
    `boot_delay` seconds, then turns OK (or FAIL when `fail_deployments`) and the instances
    come UP after a further `instance_up_delay`.
    """

    def __init__(
        self,
        *,
        consumer_key: str = "ck",
        consumer_secret: str = "cs",
        token: str = "tok",
        token_secret: str = "ts",
        api_token: str = "api-token",
        user_id: str | None = None,
        boot_delay: float = 0.05,
        instance_up_delay: float = 0.0,
        vhosts_in_app: bool = True,
    ) -> None:
        super().__init__(boot_delay=boot_delay)
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.token = token
        self.token_secret = token_secret
        self.api_token = api_token
        self.user_id = user_id or f"user_{uuid.uuid4()}"
        self.instance_up_delay = instance_up_delay
        self.fail_deployments = False
        # Whether GET app carries `vhosts` (the real one does); False forces GET …/vhosts.
        self.vhosts_in_app = vhosts_in_app
        self.orgs: dict[str, str] = {}  # id -> name
        self.apps: dict[str, EmulatedApp] = {}

    # Arrange

    def add_org(self, org_id: str | None = None, name: str = "An organisation") -> str:
        org_id = org_id or f"orga_{uuid.uuid4()}"
        self.orgs[org_id] = name
        return org_id

    def add_app(
        self,
        name: str,
        owner: str = "self",
        *,
        state: str = "SHOULD_BE_UP",
        zone: str = "par",
        homogeneous: bool = False,
        min_instances: int = 1,
        vhosts: list[str] | None = None,
        favourite: str | None = None,
        app_id: str | None = None,
    ) -> str:
        """Adds an app (to the personal space, or to organisation `owner`); returns its id."""
        app_id = app_id or f"app_{uuid.uuid4()}"
        if owner == "self":
            owner = self.user_id
        elif owner not in self.orgs:
            self.add_org(owner)
        if vhosts is None:
            vhosts = [f"{app_id.replace('_', '-', 1)}.cleverapps.io"]
        app = EmulatedApp(
            id=app_id,
            name=name,
            owner=owner,
            state=state,
            zone=zone,
            homogeneous=homogeneous,
            min_instances=min_instances,
            vhosts=[v if v.endswith("/") else v + "/" for v in vhosts],
            favourite=favourite,
        )
        if state == "SHOULD_BE_UP":
            app.deployments.insert(0, self._deployment(app, "DEPLOY", "OK"))
            app.instances = self._instances(app, "UP")
        self.apps[app_id] = app
        return app_id

    def is_serving(self, app_id: str) -> bool:
        return any(i["state"] == "UP" for i in self.apps[app_id].instances)

    # Serve

    def web_app(self, *, bridge: bool = False) -> web.Application:
        """The OAuth API (api.clever-cloud.com), or with `bridge` the Bearer one (api-bridge)."""
        app = self.web_application()
        app[BRIDGE] = bridge
        app.router.add_get("/v2/summary", self._summary)
        for prefix in (SELF_PREFIX, ORGA_PREFIX):
            base = prefix + "/applications/{app}"
            app.router.add_get(prefix + "/applications", self._list)
            app.router.add_get(base, self._get)
            app.router.add_get(base + "/instances", self._get_instances)
            app.router.add_post(base + "/instances", self._redeploy)
            app.router.add_delete(base + "/instances", self._undeploy)
            app.router.add_get(base + "/deployments", self._get_deployments)
            app.router.add_get(base + "/deployments/{uuid}", self._get_deployment)
            app.router.add_get(base + "/vhosts", self._get_vhosts)
            app.router.add_get(base + "/vhosts/favourite", self._get_favourite)
        app.on_cleanup.append(self._cancel_timers)
        return app

    def route_of(self, request: web.Request) -> str:
        return _route_name(request) or "unknown"

    def default_fault_body(self, status: int) -> Any:
        return {"id": status, "message": "injected", "type": "error"}

    async def guard(self, request: web.Request, route: str) -> web.StreamResponse | None:
        if self._authorised(request.headers.get("Authorization", ""), request.app[BRIDGE]):
            return None
        return _error(401, "Not logged in or invalid credentials")

    def _authorised(self, header: str, bridge: bool) -> bool:
        if bridge:
            return header == f"Bearer {self.api_token}"
        if not header.startswith("OAuth "):
            return False
        params = {k: unquote(v) for k, v in re.findall(r'(\w+)="([^"]*)"', header[len("OAuth ") :])}
        return (
            params.get("oauth_signature_method", "PLAINTEXT") == "PLAINTEXT"
            and params.get("oauth_consumer_key") == self.consumer_key
            and params.get("oauth_token") == self.token
            and params.get("oauth_signature")
            == f"{_pct(self.consumer_secret)}&{_pct(self.token_secret)}"
        )

    async def _cancel_timers(self, _: web.Application) -> None:
        for app in self.apps.values():
            for timer in app.timers:
                timer.cancel()

    # Lookup

    def _lookup(self, request: web.Request) -> EmulatedApp:
        """The app named in the path, if its owner matches the path's owner."""
        app = self.apps.get(request.match_info["app"])
        owner = request.match_info.get("owner")
        if app is not None:
            if owner is not None and app.owner == owner and owner in self.orgs:
                return app
            if owner is None and app.owner == self.user_id:
                return app
            # Only GET app on /self falls back to the user's organisations (clever-tools).
            if owner is None and _route_name(request) == "application" and app.owner in self.orgs:
                return app
        raise web.HTTPNotFound(
            text='{"id": 404, "message": "Not Found", "type": "error"}',
            content_type="application/json",
        )

    # Handlers

    async def _summary(self, request: web.Request) -> web.Response:
        personal = [self._summary_entry(a) for a in self.apps.values() if a.owner == self.user_id]
        orgas = [{"id": self.user_id, "name": "Personal space", "applications": personal}]
        for org_id, name in self.orgs.items():
            apps = [self._summary_entry(a) for a in self.apps.values() if a.owner == org_id]
            orgas.append({"id": org_id, "name": name, "applications": apps, "addons": []})
        user = {"id": self.user_id, "name": "Emulated user", "applications": personal, "addons": []}
        return web.json_response({"user": user, "organisations": orgas})

    async def _list(self, request: web.Request) -> web.Response:
        owner = request.match_info.get("owner", self.user_id)
        if owner != self.user_id and owner not in self.orgs:
            return _error(404, "Not Found")
        return web.json_response([self._full(a) for a in self.apps.values() if a.owner == owner])

    async def _get(self, request: web.Request) -> web.Response:
        return web.json_response(self._full(self._lookup(request)))

    async def _get_instances(self, request: web.Request) -> web.Response:
        return web.json_response(self._lookup(request).instances)

    async def _redeploy(self, request: web.Request) -> web.Response:
        deployment_id = self.redeploy(self._lookup(request).id)
        return web.json_response(
            {
                "id": 200,
                "message": "The application has been deployed",
                "type": "success",
                "deploymentId": deployment_id,
            }
        )

    async def _undeploy(self, request: web.Request) -> web.Response:
        self.undeploy(self._lookup(request).id)
        return web.json_response(
            {"id": 200, "message": "The application has been undeployed", "type": "success"}
        )

    async def _get_deployments(self, request: web.Request) -> web.Response:
        deployments = self._lookup(request).deployments
        action = request.query.get("action")
        if action:
            deployments = [d for d in deployments if d["action"] == action]
        offset = int(request.query.get("offset", "0"))
        limit = int(request.query.get("limit", str(len(deployments))))
        return web.json_response(deployments[offset : offset + limit])

    async def _get_deployment(self, request: web.Request) -> web.Response:
        for deployment in self._lookup(request).deployments:
            if deployment["uuid"] == request.match_info["uuid"]:
                return web.json_response(deployment)
        return _error(404, "Not Found")

    async def _get_vhosts(self, request: web.Request) -> web.Response:
        return web.json_response([{"fqdn": v} for v in self._lookup(request).vhosts])

    async def _get_favourite(self, request: web.Request) -> web.Response:
        app = self._lookup(request)
        if app.favourite is None:
            return _error(404, "No favourite vhost")
        return web.json_response({"fqdn": app.favourite})

    # State machine

    def redeploy(self, app_id: str) -> str:
        """What POST instances does (tests may call it directly); returns the deployment uuid."""
        app = self.apps[app_id]
        self._cancel_running(app)
        if app.state != "SHOULD_BE_UP":
            app.state = "WANTS_TO_BE_UP"
        deployment = self._deployment(app, "DEPLOY", "WIP")
        app.deployments.insert(0, deployment)
        serving = [i for i in app.instances if i["state"] == "UP"]
        app.instances = serving + self._instances(app, "DEPLOYING")
        loop = asyncio.get_running_loop()
        app.timers.append(loop.call_later(self.boot_delay, self._finish_deploy, app, deployment))
        return str(deployment["uuid"])

    def undeploy(self, app_id: str) -> None:
        """What DELETE instances does (tests may call it directly, as the console would)."""
        app = self.apps[app_id]
        self._cancel_running(app)
        app.state = "SHOULD_BE_DOWN"
        app.instances = []
        app.deployments.insert(0, self._deployment(app, "UNDEPLOY", "OK"))

    def _finish_deploy(self, app: EmulatedApp, deployment: dict[str, Any]) -> None:
        if self.fail_deployments:
            deployment["state"] = "FAIL"
            app.instances = [i for i in app.instances if i["state"] == "UP"]
            return
        deployment["state"] = "OK"
        app.state = "SHOULD_BE_UP"
        if self.instance_up_delay > 0:
            loop = asyncio.get_running_loop()
            app.timers.append(loop.call_later(self.instance_up_delay, self._instances_up, app))
        else:
            self._instances_up(app)

    def _instances_up(self, app: EmulatedApp) -> None:
        app.instances = self._instances(app, "UP")

    def _cancel_running(self, app: EmulatedApp) -> None:
        for timer in app.timers:
            timer.cancel()
        app.timers.clear()
        for deployment in app.deployments:
            if deployment["state"] == "WIP":
                deployment["state"] = "CANCELLED"

    # Shapes

    def _deployment(self, app: EmulatedApp, action: str, state: str) -> dict[str, Any]:
        return {
            "uuid": str(uuid.uuid4()),
            "id": len(app.deployments) + 1,
            "date": _now_ms(),
            "state": state,
            "action": action,
            "commit": "0" * 40,
            "cause": "api",
            "instances": app.min_instances,
            "author": {"id": self.user_id, "name": "Emulated user"},
        }

    def _instances(self, app: EmulatedApp, state: str) -> list[dict[str, Any]]:
        deploy_number = len(app.deployments)
        return [
            {
                "id": str(uuid.uuid4()),
                "appId": app.id,
                "state": state,
                "commit": "0" * 40,
                "flavor": {"name": "XS"},
                "deployNumber": deploy_number,
                "displayName": f"Instance {n}",
                "creationDate": _now_ms(),
            }
            for n in range(app.min_instances)
        ]

    def _summary_entry(self, app: EmulatedApp) -> dict[str, Any]:
        # No zone here: ApplicationSummary in the OpenAPI description has none.
        return {
            "id": app.id,
            "name": app.name,
            "state": app.state,
            "instanceType": "node",
            "variantSlug": "node",
            "homogeneous": app.homogeneous,
            "archived": False,
            "commit": "0" * 40,
        }

    def _full(self, app: EmulatedApp) -> dict[str, Any]:
        git = f"push-n2-{app.zone}-clevercloud-customers.services.clever-cloud.com/{app.id}.git"
        body: dict[str, Any] = {
            "id": app.id,
            "name": app.name,
            "zone": app.zone,
            "ownerId": app.owner,
            "state": app.state,
            "homogeneous": app.homogeneous,
            "commitId": "0" * 40,
            "branch": "master",
            "instance": {
                "type": "node",
                "version": "20240101",
                "variant": {"slug": "node"},
                "minInstances": app.min_instances,
                "maxInstances": app.min_instances,
                "minFlavor": {"name": "XS"},
                "maxFlavor": {"name": "XS"},
                "lifetime": "REGULAR",
            },
            "deployment": {
                "shutdownable": False,
                "type": "GIT",
                "repoState": "CREATED",
                "url": f"git+ssh://git@{git}",
                "httpUrl": f"https://{git}",
            },
            "creationDate": app.created_ms,
            "last_deploy": len(app.deployments),
            "forceHttps": "DISABLED",
            "stickySessions": False,
            "separateBuild": True,
            "deployUrl": f"git+ssh://git@{git}",
        }
        if self.vhosts_in_app:
            body["vhosts"] = [{"fqdn": v.rstrip("/")} for v in app.vhosts]
        return body


_ROUTE_SUFFIXES = (
    ("/vhosts/favourite", "favourite"),
    ("/vhosts", "vhosts"),
    ("/deployments/{uuid}", "deployment"),
    ("/deployments", "deployments"),
    ("/instances", "instances"),
    ("/applications/{app}", "application"),
    ("/applications", "applications"),
    ("/v2/summary", "summary"),
)


def _route_name(request: web.Request) -> str | None:
    """A short name for the matched route, the same for /self and /organisations paths."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    canonical = resource.canonical
    return next((name for suffix, name in _ROUTE_SUFFIXES if canonical.endswith(suffix)), None)
