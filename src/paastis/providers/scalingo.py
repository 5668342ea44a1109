"""The Scalingo adapter: starts (scales up) and stops (scales to zero) the apps of one account
in one or more regions, each through its region's API, and restores their autoscalers.

Scaling a process type by hand disables its autoscaler server side, so a stop remembers the
autoscalers that were enabled and the wake enables exactly those again once its scale
operation is done (scalingo.md, "Autoscalers"). Every call of the adapter, token exchange
included, goes through one sliding window of 60 calls a minute: Scalingo's documented limit.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import aiohttp

from paastis.providers import (
    AppNotFound,
    AppState,
    Autoscaler,
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
    CallLimiter,
    ProviderCallCounter,
    RetryPolicy,
    parse_time,
)
from paastis.providers.kit import (
    expect_member,
    fit_formation,
    flag,
    formation_of,
    objects,
    poll_until,
    remembered,
    text,
    within,
)
from paastis.providers.ratelimit import SlidingWindow

log = logging.getLogger("paastis.provider.scalingo")

PROVIDER = "scalingo"
DEFAULT_REGION = "osc-fr1"
# Re-exchange the API token when the JWT has fewer seconds than this left (as go-scalingo does).
JWT_RENEW_MARGIN = 300.0
# "Bearer tokens are only valid for an hour"; used when a JWT's `exp` cannot be read.
JWT_DEFAULT_LIFETIME = 3600.0
# "The limit is 60 requests per minute", per account.
RATE_LIMIT = 60
RATE_WINDOW = 60.0
# Six looks a minute at most per wake, so that several wakes fit in the limit together.
POLL = Backoff(first=3.0, factor=2.0, cap=6.0)

STATES: Mapping[str, AppState] = {
    "running": AppState.RUNNING,
    "stopped": AppState.STOPPED,
    "scaling": AppState.STARTING,
    "restarting": AppState.STARTING,
    "booting": AppState.STARTING,
    "crashed": AppState.FAILED,
    # Never deployed: nothing runs and there is nothing to wake, so it is not "unknown".
    "new": AppState.STOPPED,
}
# Statuses of a deployment or restart of an app that may well be serving meanwhile.
DEPLOYING = frozenset({"booting", "restarting"})


class ScalingoProvider:
    """One Scalingo account, in the regions given (the first is the default)."""

    name = PROVIDER

    def __init__(
        self,
        *,
        api_token: str,
        regions: Sequence[str] = (DEFAULT_REGION,),
        api_url: str | None = None,
        auth_url: str = "https://auth.scalingo.com",
        operation_timeout: float = 30.0,
        session: aiohttp.ClientSession,
        counter: ProviderCallCounter,
        poll: Backoff = POLL,
        retry: RetryPolicy | None = None,
        limiter: CallLimiter | None = None,
    ) -> None:
        if not regions:
            raise ValueError("Scalingo needs at least one region")
        if len(regions) > 1 and api_url is not None and "{region}" not in api_url:
            raise ValueError("an API URL shared by several regions must contain {region}")
        self.regions = tuple(regions)
        self.region: str | None = self.regions[0] if len(self.regions) == 1 else None
        self.operation_timeout = operation_timeout
        self.poll = poll
        self._api_token = api_token
        self._jwt: str | None = None
        self._jwt_exp = 0.0
        self._auth_lock = asyncio.Lock()
        self._region_of: dict[str, str] = {}  # app name -> its region, from the listings
        # One window for every call of the account, so concurrent wakes share the budget.
        limiter = limiter or SlidingWindow(RATE_LIMIT, RATE_WINDOW)
        common: dict[str, Any] = {
            "provider": PROVIDER, "session": session, "counter": counter, "retry": retry,
            "limiter": limiter,
        }  # fmt: skip
        self._auth = ApiClient(
            base_url=auth_url,
            headers=self._basic_headers,
            label="Scalingo",
            auth_hint="check PROVIDER_SCALINGO_API_TOKEN",
            **common,
        )
        template = api_url or "https://api.{region}.scalingo.com"
        self._apis = {
            region: ApiClient(
                base_url=template.replace("{region}", region),
                headers=_no_headers,  # the bearer is added per call, see _call
                label="Scalingo",
                auth_hint="check PROVIDER_SCALINGO_API_TOKEN",
                **common,
            )
            for region in self.regions
        }

    async def close(self) -> None:
        """Nothing to release: the HTTP session belongs to the caller."""

    # -- reading ------------------------------------------------------------------------

    async def list_apps(self) -> list[PaasApp]:
        listings = await asyncio.gather(*(self._list_region(r) for r in self.regions))
        apps: dict[str, PaasApp] = {}
        for region, listed in zip(self.regions, listings, strict=True):
            for app in listed:
                if app.name in apps:
                    log.warning(
                        "scalingo app %s exists in %s and %s; paastis manages the one in %s",
                        app.name, apps[app.name].region, region, apps[app.name].region,
                    )  # fmt: skip
                    continue
                apps[app.name] = app
        self._region_of = {name: app.region or self.regions[0] for name, app in apps.items()}
        return list(apps.values())

    async def _list_region(self, region: str) -> list[PaasApp]:
        response = await self._call(region, "GET", "/v1/apps", operation="list_apps")
        listed = objects(expect_member(response, "apps", list, PROVIDER, "list_apps"))
        apps = [self._to_paas_app(item, region) for item in listed]
        deploying = [i for i, app in enumerate(apps) if app.status in DEPLOYING]
        states = await asyncio.gather(*(self._serving_state(apps[i]) for i in deploying))
        for index, state in zip(deploying, states, strict=True):
            apps[index] = replace(apps[index], state=state)
        return apps

    async def get_app(self, name: str) -> PaasApp:
        region = await self._region(name)
        response = await self._call(region, "GET", _app_path(name), operation="get_app", app=name)
        app = self._to_paas_app(expect_member(response, "app", dict, PROVIDER, "get_app"), region)
        if app.state is AppState.RUNNING or app.status in DEPLOYING:
            return replace(app, state=await self._serving_state(app))
        return app

    async def _serving_state(self, app: PaasApp) -> AppState:
        """What the web containers say: `running` means "a container runs", maybe only a
        worker; `booting` and `restarting` may be an app serving while it deploys."""
        web = await self._container_states(app.name, {"web"})
        if web and all(state == "running" for state in web):
            return AppState.RUNNING
        if not web and app.status == "running":
            return AppState.STOPPED
        return AppState.STARTING

    def _to_paas_app(self, item: Mapping[str, Any], region: str) -> PaasApp:
        name = str(item.get("name", ""))
        region = text(item.get("region")) or region
        status = item.get("status")
        # `url` may follow a custom domain pointed at paastis itself; base_url cannot loop.
        upstream = text(item.get("base_url")) or f"https://{name}.{region}.scalingo.io"
        return PaasApp(
            name=name,
            provider=PROVIDER,
            state=STATES.get(str(status), AppState.UNKNOWN),
            upstream_url=upstream,
            id=text(item.get("id")),
            region=region,
            created_at=parse_time(item.get("created_at")),
            updated_at=parse_time(item.get("updated_at")),
            last_deployed_at=parse_time(item.get("last_deployed_at")),
            force_https=flag(item.get("force_https")),
            sticky_session=flag(item.get("sticky_session")),
            git_url=text(item.get("git_url")),
            status=None if status is None else str(status),
        )

    async def _region(self, name: str) -> str:
        """The app's region: the only one, or the one its listing showed (listed again once)."""
        if len(self.regions) == 1:
            return self.regions[0]
        if name not in self._region_of:
            await self.list_apps()
        region = self._region_of.get(name)
        if region is None:
            raise AppNotFound(f"scalingo does not know app {name}", provider=PROVIDER, app=name)
        return region

    # -- starting -----------------------------------------------------------------------

    async def start(self, name: str, remembered: Remembered | None) -> Startup:
        wanted = formation_of(remembered)
        autoscalers = autoscalers_of(remembered)
        for autoscaler in autoscalers:  # an autoscaler refuses fewer than its minimum
            kind = autoscaler["container_type"]
            wanted[kind] = max(wanted.get(kind, 0), autoscaler["min_containers"])
        if not wanted:
            wanted = await self._default_formation(name)
        location = await self._scale_fitting(name, wanted) if wanted else None
        if location is None:  # the formation is already there: it may have crashed
            location = await self._restart_if_crashed(name)
        return Startup(running=lambda: self._runs(name, location, autoscalers))

    async def _default_formation(self, name: str) -> Formation:
        """web x 1, or nothing to scale when web already has containers: without a
        remembered formation, blindly asking for web x 1 would scale a web x 3 down."""
        current = await self._formation(name)
        if current.get("web", 0) > 0:
            return {}
        return self._with_web(name, fit_formation({}, current))

    async def _scale_fitting(self, name: str, wanted: Formation) -> str | None:
        """Scales to `wanted`; refused, scales to what of it fits the app's process types."""
        try:
            return await self._scale(name, wanted)
        except OperationFailed as refused:
            kept = self._with_web(name, fit_formation(wanted, await self._formation(name)))
            if kept == wanted:
                raise refused from None
            log.warning(
                "scalingo app %s no longer has the process types %s; starting %s instead",
                name, sorted(set(wanted) - set(kept)), kept,
            )  # fmt: skip
            return await self._scale(name, kept)

    @staticmethod
    def _with_web(name: str, formation: Formation) -> Formation:
        if "web" not in formation:
            raise OperationFailed(
                f"scalingo app {name} has no web process type", provider=PROVIDER, app=name
            )
        return formation

    async def _restart_if_crashed(self, name: str) -> str | None:
        """Restarts a crashed app (scaling it changes nothing); returns the operation's
        Location, None when the app has not crashed."""
        app = await self.get_app(name)
        if app.status != "crashed":
            return None
        log.warning("scalingo app %s has crashed; restarting it", name)
        response = await self._call(
            await self._region(name), "POST", _app_path(name, "restart"), operation="restart",
            app=name, json={},
        )  # fmt: skip
        return response.headers.get("Location") or None

    async def _runs(self, name: str, location: str | None, autoscalers: list[Autoscaler]) -> bool:
        """One look: the scale (or restart) operation is done, or without one the web
        containers all run; then the autoscalers the stop disabled are enabled again."""
        if location is not None:
            done = await self._operation_done(name, location)
        else:
            web = await self._container_states(name, {"web"})
            done = bool(web) and all(state == "running" for state in web)
        if done:
            await self._enable_autoscalers(name, autoscalers)
        return done

    async def _enable_autoscalers(self, name: str, autoscalers: list[Autoscaler]) -> None:
        region = await self._region(name)
        for autoscaler in autoscalers:
            try:
                await self._call(
                    region, "PATCH", _app_path(name, "autoscalers", autoscaler["id"]),
                    operation="enable_autoscaler", app=name,
                    json={"autoscaler": {"disabled": False}}, idempotent=True,
                )  # fmt: skip
            except ProviderError as exc:
                # The app runs: serving it matters more; the user has to look at this one.
                log.error(
                    "scalingo app %s runs, but its %s autoscaler could not be enabled again: %s",
                    name, autoscaler["container_type"], exc,
                )  # fmt: skip
            else:
                log.info(
                    "scalingo app %s: %s autoscaler enabled again",
                    name, autoscaler["container_type"],
                )  # fmt: skip

    # -- stopping -----------------------------------------------------------------------

    async def stop(self, name: str) -> Remembered | None:
        current = await self._formation(name)
        if not any(current.values()):
            return None
        enabled = await self._enabled_autoscalers(name)
        seconds = self.operation_timeout
        async with within(seconds, lambda: self._stop_timeout(name, seconds)):
            location = await self._scale(name, dict.fromkeys(current, 0))
            if location is not None:
                await poll_until(lambda: self._operation_done(name, location), self.poll)
        value = remembered(current, enabled)
        log.info("scalingo app %s stopped (remembered %s)", name, value)
        return value

    def _stop_timeout(self, name: str, seconds: float) -> OperationFailed:
        return OperationFailed(
            f"scalingo app {name} did not finish stopping within {seconds:g}s",
            provider=PROVIDER,
            app=name,
        )

    async def _enabled_autoscalers(self, name: str) -> list[Autoscaler]:
        """The autoscalers the stop is about to disable (scaling by hand does), to enable
        again at the wake; never one the user had disabled."""
        response = await self._call(
            await self._region(name), "GET", _app_path(name, "autoscalers"),
            operation="autoscalers", app=name, ok=(200, 404),
        )  # fmt: skip
        if response.status == 404:  # an app without autoscaling
            return []
        items = objects(expect_member(response, "autoscalers", list, PROVIDER, "autoscalers"))
        return _autoscalers([item for item in items if item.get("disabled") is False])

    # -- scaling and operations ---------------------------------------------------------

    async def _formation(self, name: str) -> Formation:
        response = await self._call(
            await self._region(name), "GET", _app_path(name, "containers"),
            operation="containers", app=name,
        )  # fmt: skip
        return {
            str(c["name"]): int(c.get("amount") or 0)
            for c in objects(expect_member(response, "containers", list, PROVIDER, "containers"))
            if text(c.get("name"))
        }

    async def _container_states(self, name: str, kinds: set[str]) -> list[str]:
        response = await self._call(
            await self._region(name), "GET", _app_path(name, "ps"), operation="ps", app=name
        )
        containers = objects(expect_member(response, "containers", list, PROVIDER, "ps"))
        return [str(c.get("state")) for c in containers if c.get("type") in kinds]

    async def _scale(self, name: str, formation: Formation) -> str | None:
        """Asks for `formation`; returns the operation's Location, None when nothing to follow.

        An app busy with another operation answers 422: wait and ask again (the caller's
        deadline bounds it). "No change" means the app already has this formation.
        """
        body = {"containers": [{"name": kind, "amount": n} for kind, n in formation.items()]}
        region = await self._region(name)
        while True:
            # Absolute amounts: sending them twice changes nothing.
            response = await self._call(
                region, "POST", _app_path(name, "scale"), operation="scale", app=name, json=body,
                ok=(200, 202, 400, 404, 422), idempotent=True,
            )  # fmt: skip
            if response.status == 202:
                return response.headers.get("Location") or None
            if response.status == 200:
                # Scaled before its first deployment: recorded, but nothing will boot.
                await self._fail_if_never_deployed(name)
                return None
            if not _is_busy(response):
                _raise_scale_error(name, formation, response)
                return None  # 400 "no change": the formation is already the wanted one
            log.info("scalingo app %s is busy; scaling again in %gs", name, self.poll.first)
            await asyncio.sleep(self.poll.first)

    async def _fail_if_never_deployed(self, name: str) -> None:
        app = await self.get_app(name)
        if app.status == "new":
            raise OperationFailed(
                f"scalingo app {name} has never been deployed, so there is nothing to start",
                provider=PROVIDER,
                app=name,
            )

    async def _operation_done(self, name: str, location: str) -> bool:
        """One look at the operation: True once done; its `error` status raises."""
        # Rebuilt from the id on our own API base, so the JWT never goes to another host.
        operation_id = location.rstrip("/").rsplit("/", 1)[-1]
        response = await self._call(
            await self._region(name), "GET", _app_path(name, "operations", operation_id),
            operation="operation", app=name,
        )  # fmt: skip
        operation = expect_member(response, "operation", dict, PROVIDER, "operation")
        status = operation.get("status")
        if status == "error":
            raise OperationFailed(
                f"scalingo operation on {name} failed: {operation.get('error') or 'error'}",
                provider=PROVIDER,
                app=name,
            )
        return status == "done"

    # -- authenticated calls ------------------------------------------------------------

    async def _call(
        self,
        region: str,
        method: str,
        path: str,
        *,
        operation: str,
        app: str | None = None,
        json: Any = None,
        ok: tuple[int, ...] = (200, 201, 202, 204),
        idempotent: bool | None = None,
    ) -> ApiResponse:
        """One call to the region's API with a fresh JWT; a 401 exchanges the token again
        once and retries."""
        api = self._apis[region]
        jwt = await self._bearer()
        for attempt in range(2):
            response = await api.request(
                method, path, operation=operation, app=app, json=json, ok=(*ok, 401),
                headers={"Authorization": f"Bearer {jwt}"}, idempotent=idempotent,
            )  # fmt: skip
            if response.status != 401:
                return response
            if attempt == 0:
                log.info("scalingo %s got 401; exchanging the API token again", operation)
                jwt = await self._bearer(rejected=jwt)
        raise ProviderAuthError(
            f"scalingo rejected a freshly exchanged token on {operation}",
            provider=PROVIDER,
            app=app,
        )

    async def _bearer(self, *, rejected: str | None = None) -> str:
        """The current JWT, exchanged again when near expiry or when `rejected` by the API."""
        async with self._auth_lock:  # concurrent callers share one exchange
            fresh = self._jwt_exp - time.time() > JWT_RENEW_MARGIN
            if self._jwt is not None and fresh and self._jwt != rejected:
                return self._jwt
            self._jwt = await self._exchange()
            self._jwt_exp = jwt_expiry(self._jwt)
            return self._jwt

    async def _exchange(self) -> str:
        try:
            response = await self._auth.request(
                "POST", "/v1/tokens/exchange", operation="exchange_token", json={},
                idempotent=True,
            )  # fmt: skip
        except ProviderAuthError:
            raise ProviderAuthError(
                "the Scalingo API token was rejected by the token exchange "
                "(check PROVIDER_SCALINGO_API_TOKEN)",
                provider=PROVIDER,
            ) from None
        token = text(_body(response).get("token"))
        if token is None:
            raise ProviderError("scalingo token exchange returned no token", provider=PROVIDER)
        return token

    async def _basic_headers(self) -> Mapping[str, str]:
        credentials = base64.b64encode(f":{self._api_token}".encode()).decode()
        return {"Authorization": f"Basic {credentials}"}


async def _no_headers() -> Mapping[str, str]:
    return {}


def autoscalers_of(value: Mapping[str, Any] | None) -> list[Autoscaler]:
    """The autoscalers a stop remembered (none in what earlier versions remembered)."""
    return _autoscalers(objects((value or {}).get("autoscalers")))


def _autoscalers(items: list[dict[str, Any]]) -> list[Autoscaler]:
    return [
        Autoscaler(
            id=str(item["id"]),
            container_type=str(item["container_type"]),
            min_containers=_count(item.get("min_containers")),
        )
        for item in items
        if text(item.get("id")) and text(item.get("container_type"))
    ]


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def jwt_expiry(jwt: str) -> float:
    """The JWT's `exp` (epoch seconds), read without verifying the signature."""
    try:
        payload = jwt.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, KeyError, TypeError, ValueError, binascii.Error):
        log.warning("scalingo JWT has no readable exp; assuming the documented one hour")
        return time.time() + JWT_DEFAULT_LIFETIME


def _app_path(name: str, *parts: str) -> str:
    """/v1/apps/{name}/..., each segment quoted: a name from a request cannot change the path."""
    return "/".join(["/v1/apps", *(quote(p, safe="") for p in (name, *parts))])


def _body(response: ApiResponse) -> Mapping[str, Any]:
    return response.body if isinstance(response.body, dict) else {}


def _is_busy(response: ApiResponse) -> bool:
    """422 {"errors": {"app": ["is scaling"]}}: another operation is in progress."""
    errors = _body(response).get("errors")
    return response.status == 422 and isinstance(errors, dict) and "app" in errors


def _raise_scale_error(name: str, formation: Formation, response: ApiResponse) -> None:
    """Raises for a scale refusal; returns for 400 "no change" (already that formation)."""
    body = _body(response)
    message = str(body.get("error") or body.get("errors") or response.body)
    if response.status == 400 and "no change" in message.lower():
        return
    if response.status == 404 and body.get("resource", "app") == "app":
        raise AppNotFound(f"scalingo does not know app {name}", provider=PROVIDER, app=name)
    raise OperationFailed(
        f"scalingo cannot scale {name} to {formation} (HTTP {response.status}): {message}",
        provider=PROVIDER,
        app=name,
    )
