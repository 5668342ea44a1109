"""The Scalingo provider: lists, starts (scales up) and stops (scales to zero) Scalingo apps."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
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
from paastis.providers.ratelimit import TokenBucket

log = logging.getLogger("paastis.provider.scalingo")

PROVIDER = "scalingo"
# Re-exchange the API token when the JWT has fewer seconds than this left (as go-scalingo does).
JWT_RENEW_MARGIN = 300.0
# "Bearer tokens are only valid for an hour"; used when a JWT's `exp` cannot be read.
JWT_DEFAULT_LIFETIME = 3600.0
# Scalingo documents 60 requests per minute: bursts of 20, then one per second.
RATE_LIMIT_CAPACITY = 20.0
RATE_LIMIT_PER_SECOND = 1.0

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


class ScalingoProvider:
    """One Scalingo account in one region, through the regional API and the auth API."""

    name = PROVIDER

    def __init__(
        self,
        *,
        api_token: str,
        region: str = "osc-fr1",
        api_url: str | None = None,
        auth_url: str = "https://auth.scalingo.com",
        operation_timeout: float = 30.0,
        session: aiohttp.ClientSession,
        counter: ProviderCallCounter,
        poll_interval: float = 3.0,
        retry: RetryPolicy | None = None,
        limiter: TokenBucket | None = None,
    ) -> None:
        self.region: str | None = region
        self.operation_timeout = operation_timeout
        self.poll_interval = poll_interval
        self._api_token = api_token
        self._jwt: str | None = None
        self._jwt_exp = 0.0
        self._auth_lock = asyncio.Lock()
        # One bucket for every call of this adapter, so concurrent wakes share the budget.
        limiter = limiter or TokenBucket(RATE_LIMIT_CAPACITY, RATE_LIMIT_PER_SECOND)
        self._auth = ApiClient(
            provider=PROVIDER,
            base_url=auth_url,
            session=session,
            counter=counter,
            headers=self._basic_headers,
            retry=retry,
            limiter=limiter,
        )
        self._api = ApiClient(
            provider=PROVIDER,
            base_url=api_url or f"https://api.{region}.scalingo.com",
            session=session,
            counter=counter,
            headers=_no_headers,  # the bearer is added per call, see _call
            retry=retry,
            limiter=limiter,
        )

    async def close(self) -> None:
        """Nothing to release: the HTTP session belongs to the caller."""

    # -- reading ------------------------------------------------------------------------

    async def list_apps(self) -> list[PaasApp]:
        response = await self._call("GET", "/v1/apps", operation="list_apps")
        return [self._to_paas_app(item) for item in _body(response).get("apps", [])]

    async def get_app(self, name: str) -> PaasApp:
        response = await self._call("GET", _app_path(name), operation="get_app", app=name)
        app = self._to_paas_app(_body(response).get("app", {}))
        if app.state is not AppState.RUNNING:
            return app
        # `running` means "at least one container runs": it may be a worker while web is at 0.
        web = await self._web_states(name)
        if not web:
            return _with_state(app, AppState.STOPPED)
        if any(state != "running" for state in web):
            return _with_state(app, AppState.STARTING)
        return app

    def _to_paas_app(self, item: Mapping[str, Any]) -> PaasApp:
        name = str(item.get("name", ""))
        region = item.get("region") or self.region
        status = item.get("status")
        # `url` may follow a custom domain pointed at paastis itself; base_url cannot loop.
        upstream = item.get("base_url") or f"https://{name}.{region}.scalingo.io"
        return PaasApp(
            name=name,
            provider=PROVIDER,
            state=STATES.get(str(status), AppState.UNKNOWN),
            upstream_url=upstream,
            id=item.get("id"),
            region=region,
            created_at=parse_time(item.get("created_at")),
            updated_at=parse_time(item.get("updated_at")),
            last_deployed_at=parse_time(item.get("last_deployed_at")),
            force_https=_optional_bool(item.get("force_https")),
            sticky_session=_optional_bool(item.get("sticky_session")),
            git_url=item.get("git_url"),
            status=None if status is None else str(status),
        )

    # -- starting -----------------------------------------------------------------------

    async def start(self, name: str, formation: Formation | None) -> None:
        wanted = {kind: n for kind, n in (formation or {}).items() if n > 0}
        deadline = asyncio.timeout(self.operation_timeout)
        started = time.monotonic()
        try:
            async with deadline:
                if not wanted:
                    wanted = await self._default_formation(name)
                try:
                    location = await self._scale(name, wanted) if wanted else None
                except OperationFailed as refused:
                    wanted = await self._formation_that_still_fits(name, wanted, refused)
                    location = await self._scale(name, wanted)
                if location is None:  # the formation is already there: it may have crashed
                    location = await self._restart_if_crashed(name)
                if location is not None:
                    await self._wait_operation(name, location)
                await self._wait_containers(name, wanted or {"web": 1})
        except TimeoutError:
            if not deadline.expired():
                raise
            raise WakeTimeout(
                f"scalingo app {name} did not run within {self.operation_timeout:g}s",
                provider=PROVIDER,
                app=name,
            ) from None
        log.info("scalingo app %s runs (%.1fs)", name, time.monotonic() - started)

    async def _formation_that_still_fits(
        self, name: str, wanted: Formation, refused: OperationFailed
    ) -> Formation:
        """`wanted` without the process types the app no longer has (a deployment while it
        slept may have removed one); raises `refused` when that changes nothing."""
        response = await self._call(
            "GET", _app_path(name, "containers"), operation="containers", app=name
        )
        existing = _formation(response)
        kept = {kind: n for kind, n in wanted.items() if kind in existing}
        if "web" not in kept and "web" in existing:
            kept["web"] = 1
        if not kept or kept == wanted:
            raise refused
        log.warning(
            "scalingo app %s no longer has the process types %s; starting %s instead",
            name, sorted(set(wanted) - set(kept)), kept,
        )  # fmt: skip
        return kept

    async def _restart_if_crashed(self, name: str) -> str | None:
        """Restarts a crashed app (scaling it changes nothing); returns the operation's
        Location, None when the app has not crashed."""
        app = await self.get_app(name)
        if app.status != "crashed":
            return None
        log.warning("scalingo app %s has crashed; restarting it", name)
        response = await self._call(
            "POST", _app_path(name, "restart"), operation="restart", app=name, json={}
        )
        return response.headers.get("Location") or None

    async def _default_formation(self, name: str) -> Formation:
        """web x 1, or nothing to scale when web already has containers.

        Without a remembered formation, blindly asking for web x 1 would scale a running
        web x 3 down to one container, should our view of the app be stale.
        """
        response = await self._call(
            "GET", _app_path(name, "containers"), operation="containers", app=name
        )
        return {} if _formation(response).get("web", 0) > 0 else {"web": 1}

    async def _wait_containers(self, name: str, wanted: Formation) -> None:
        """Polls /ps until the web containers (or, without web, the wanted types) all run."""
        kinds = {"web"} if "web" in wanted else set(wanted)
        while True:
            states = await self._container_states(name, kinds)
            if states and all(state == "running" for state in states):
                return
            await asyncio.sleep(self.poll_interval)

    async def _web_states(self, name: str) -> list[str]:
        return await self._container_states(name, {"web"})

    async def _container_states(self, name: str, kinds: set[str]) -> list[str]:
        response = await self._call("GET", _app_path(name, "ps"), operation="ps", app=name)
        containers = _body(response).get("containers", [])
        return [str(c.get("state")) for c in containers if c.get("type") in kinds]

    # -- stopping -----------------------------------------------------------------------

    async def stop(self, name: str) -> Formation | None:
        response = await self._call(
            "GET", _app_path(name, "containers"), operation="containers", app=name
        )
        current = _formation(response)
        running = {kind: n for kind, n in current.items() if n > 0}
        if not running:
            return None
        deadline = asyncio.timeout(self.operation_timeout)
        try:
            async with deadline:
                location = await self._scale(name, dict.fromkeys(current, 0))
                if location is not None:
                    await self._wait_operation(name, location)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise OperationFailed(
                f"scalingo app {name} did not finish stopping within {self.operation_timeout:g}s",
                provider=PROVIDER,
                app=name,
            ) from None
        log.info("scalingo app %s stopped (formation was %s)", name, running)
        return running

    # -- scaling and operations ---------------------------------------------------------

    async def _scale(self, name: str, formation: Formation) -> str | None:
        """Asks for `formation`; returns the operation's Location, None when nothing to follow.

        An app busy with another operation answers 422: wait and ask again (the caller's
        deadline bounds it). "No change" means the app already has this formation.
        """
        body = {"containers": [{"name": kind, "amount": n} for kind, n in formation.items()]}
        while True:
            response = await self._call(
                "POST", _app_path(name, "scale"), operation="scale", app=name, json=body,
                ok=(200, 202, 400, 404, 422),
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
            log.info("scalingo app %s is busy; retrying the scale in %gs", name, self.poll_interval)
            await asyncio.sleep(self.poll_interval)

    async def _fail_if_never_deployed(self, name: str) -> None:
        app = await self.get_app(name)
        if app.status == "new":
            raise OperationFailed(
                f"scalingo app {name} has never been deployed, so there is nothing to start",
                provider=PROVIDER,
                app=name,
            )

    async def _wait_operation(self, name: str, location: str) -> None:
        """Polls the operation every poll_interval until done; raises on `error`."""
        # Rebuilt from the id on our own API base, so the JWT never goes to another host.
        operation_id = location.rstrip("/").rsplit("/", 1)[-1]
        path = _app_path(name, "operations", operation_id)
        while True:
            await asyncio.sleep(self.poll_interval)
            response = await self._call("GET", path, operation="operation", app=name)
            operation = _body(response).get("operation", {})
            status = operation.get("status")
            if status == "done":
                return
            if status == "error":
                raise OperationFailed(
                    f"scalingo operation on {name} failed: {operation.get('error') or 'error'}",
                    provider=PROVIDER,
                    app=name,
                )

    # -- authenticated calls ------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        app: str | None = None,
        json: Any = None,
        ok: tuple[int, ...] = (200, 201, 202, 204),
    ) -> ApiResponse:
        """One API call with a fresh JWT; a 401 re-exchanges the token once and retries."""
        jwt = await self._bearer()
        response = await self._api.request(
            method, path, operation=operation, app=app, json=json, ok=(*ok, 401),
            headers={"Authorization": f"Bearer {jwt}"},
        )  # fmt: skip
        if response.status != 401:
            return response
        log.info("scalingo %s got 401; exchanging the API token again", operation)
        jwt = await self._bearer(rejected=jwt)
        response = await self._api.request(
            method, path, operation=operation, app=app, json=json, ok=(*ok, 401),
            headers={"Authorization": f"Bearer {jwt}"},
        )  # fmt: skip
        if response.status == 401:
            raise ProviderAuthError(
                f"scalingo rejected a freshly exchanged token on {operation}",
                provider=PROVIDER,
                app=app,
            )
        return response

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
                "POST", "/v1/tokens/exchange", operation="exchange_token", json={}
            )
        except ProviderAuthError:
            raise ProviderAuthError(
                "the Scalingo API token was rejected by the token exchange "
                "(check PROVIDER_SCALINGO_API_TOKEN)",
                provider=PROVIDER,
            ) from None
        token = _body(response).get("token")
        if not isinstance(token, str) or not token:
            raise ProviderError("scalingo token exchange returned no token", provider=PROVIDER)
        return token

    async def _basic_headers(self) -> Mapping[str, str]:
        credentials = base64.b64encode(f":{self._api_token}".encode()).decode()
        return {"Authorization": f"Basic {credentials}"}


async def _no_headers() -> Mapping[str, str]:
    return {}


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


def _formation(response: ApiResponse) -> Formation:
    """{type: amount} from a `/containers` answer."""
    return {
        str(c["name"]): int(c.get("amount") or 0)
        for c in _body(response).get("containers", [])
        if isinstance(c, dict) and c.get("name")
    }


def _body(response: ApiResponse) -> Mapping[str, Any]:
    return response.body if isinstance(response.body, dict) else {}


def _optional_bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _with_state(app: PaasApp, state: AppState) -> PaasApp:
    return replace(app, state=state)


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
