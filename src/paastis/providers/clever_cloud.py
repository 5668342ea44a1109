"""The Clever Cloud adapter: every app of the account, woken by redeploy, stopped by undeploy.

A wake is a full deployment, which may take minutes: a wake joins the deployment already in
progress (its own, or one the app shows) instead of starting another, and `POST …/instances`
is never resent on its own; after an answer that leaves its outcome unknown, the adapter
looks at the deployments first (clever-cloud.md, "A wake is a redeploy").

The summary carries no domain, and looking one up costs a call or two: a stop (which no
request waits for) looks it up and hands it to the next wake with what it remembers, so that
a wake spends its calls on the start alone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp

from paastis.providers import (
    AppNotFound,
    AppState,
    Backoff,
    OperationFailed,
    PaasApp,
    ProviderError,
    ProviderUnavailable,
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
from paastis.providers.kit import expect_list, expect_object, objects, text

log = logging.getLogger("paastis.provider.clever_cloud")

PROVIDER = "clever-cloud"

# The summary carries only the desired state; get_app refines it with instances and deployments.
SUMMARY_STATES = {
    "SHOULD_BE_DOWN": AppState.STOPPED,
    "WANTS_TO_BE_UP": AppState.STARTING,
    "SHOULD_BE_UP": AppState.RUNNING,
}

# The statuses of clever-client's `getStatus`. Restarts keep serving (RUNNING) unless homogeneous.
STATUS_STATES = {
    "stopped": AppState.STOPPED,
    "starting": AppState.STARTING,
    "start-failed": AppState.FAILED,
    "restarting-with-downtime": AppState.STARTING,
    "restarting": AppState.RUNNING,
    "restart-failed": AppState.RUNNING,
    "running": AppState.RUNNING,
    "unknown": AppState.UNKNOWN,
}

FAILED_DEPLOYMENT_STATES = frozenset({"FAIL", "CANCELLED"})
# Rate limits are not documented; clever-tools follows a deployment every 5 s.
POLL = Backoff(first=3.0, factor=2.0, cap=10.0)


@dataclass(frozen=True)
class CleverOAuthCredentials:
    """The four OAuth 1 values `clever login` produces; the secrets stay out of any repr."""

    consumer_key: str
    consumer_secret: str = field(repr=False)
    token: str = field(repr=False)
    token_secret: str = field(repr=False)


def _pct(value: str) -> str:
    return quote(value, safe="-._~")


def oauth_plaintext_header(credentials: CleverOAuthCredentials) -> str:
    """The Authorization header of @clevercloud/client >= 11 (PLAINTEXT, no nonce nor timestamp)."""
    signature = f"{_pct(credentials.consumer_secret)}&{_pct(credentials.token_secret)}"
    return (
        f'OAuth oauth_consumer_key="{_pct(credentials.consumer_key)}", '
        f'oauth_token="{_pct(credentials.token)}", '
        f'oauth_signature="{_pct(signature)}"'
    )


def dns_alias(app_id: str) -> str:
    """`app_<uuid>` -> `app-<uuid>`, the form an app id takes in a host name."""
    return app_id.replace("_", "-", 1)


def app_status(
    state: str | None, homogeneous: bool, instances: list[Any], last_deployment: str | None
) -> str:
    """A port of @clevercloud/client `utils/app-status.js` `getStatus`."""
    up = sum(1 for i in instances if isinstance(i, dict) and i.get("state") == "UP")
    if state == "SHOULD_BE_DOWN":
        return "stopped"
    if state == "WANTS_TO_BE_UP":
        return {"WIP": "starting", "FAIL": "start-failed"}.get(last_deployment or "", "unknown")
    if state == "SHOULD_BE_UP":
        if last_deployment == "WIP":
            if homogeneous:
                return "restarting-with-downtime"
            return "restarting" if up > 0 else "unknown"
        if up > 0:
            return "restart-failed" if last_deployment == "FAIL" else "running"
    return "unknown"


def upstream_from_fqdn(fqdn: str) -> str:
    """The upstream URL of a vhost (`example.com/api/` -> `https://example.com/api`)."""
    value = fqdn.strip().rstrip("/")
    if value.startswith(("http://", "https://")):
        return value
    host = value.split("/", 1)[0]
    return f"{'http' if _serves_plain_http(host) else 'https'}://{value}"


def _serves_plain_http(host: str) -> bool:
    name = host.rsplit(":", 1)[0].strip("[]").lower()
    # Clever's certificate covers only *.cleverapps.io: deeper sub-domains are HTTP only.
    if name.endswith(".cleverapps.io"):
        return name.count(".") > 2
    # Clever never reports a loopback vhost; tests point apps at local upstreams this way.
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_test_domain(fqdn: str) -> bool:
    host = fqdn.strip().rstrip("/").split("/", 1)[0].lower()
    return host.endswith(".cleverapps.io") and host.count(".") == 2


def _parse_date(value: Any) -> datetime | None:
    """Clever dates come as epoch milliseconds (creationDate) or ISO 8601 strings."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1000, UTC)
    return parse_time(value)


@dataclass
class _Known:
    """One app of the latest listing, with the API path its owner dictates."""

    id: str
    name: str
    path: str  # /v2/self/applications/app_… or /v2/organisations/orga_…/applications/app_…
    state: str | None
    zone: str | None
    display: str = ""  # the name, or `app-<uuid>` when another app shares it


class CleverCloudProvider:
    """One Clever Cloud account: its personal space and every organisation it belongs to."""

    name = PROVIDER

    def __init__(
        self,
        *,
        api_host: str,
        session: aiohttp.ClientSession,
        counter: ProviderCallCounter,
        oauth: CleverOAuthCredentials | None = None,
        api_token: str | None = None,
        region: str | None = None,
        operation_timeout: float = 60.0,
        poll: Backoff = POLL,
        retry: RetryPolicy | None = None,
    ) -> None:
        if (oauth is None) == (not api_token):
            raise ValueError(
                "Clever Cloud needs either OAuth credentials or an API token, not both"
            )
        if oauth is not None:
            authorization = oauth_plaintext_header(oauth)
            hint = (
                "check PROVIDER_CLEVER_OAUTH_CONSUMER_KEY/_SECRET, PROVIDER_CLEVER_TOKEN and "
                "PROVIDER_CLEVER_SECRET"
            )
        else:
            authorization = f"Bearer {api_token}"
            hint = "check PROVIDER_CLEVER_API_TOKEN"
        self._authorization = {"Authorization": authorization}
        self.region = region
        self.operation_timeout = operation_timeout
        self.poll = poll
        self._api = ApiClient(
            provider=PROVIDER,
            base_url=api_host,
            session=session,
            counter=counter,
            headers=self._headers,
            retry=retry,
            label="Clever Cloud",
            auth_hint=hint,
        )
        self._known: dict[str, _Known] = {}  # request key (name, alias, id) -> app
        self._ambiguous: frozenset[str] = frozenset()
        self._collisions: frozenset[tuple[str, tuple[str, ...]]] = frozenset()
        self._fetched: dict[str, PaasApp] = {}  # app id -> last get_app answer
        # app id -> upstream URL, looked up by get_app or a stop, or handed back by a wake.
        self._upstreams: dict[str, str] = {}
        # app id -> the deployment a wake is waiting for (ours, or one seen in progress).
        self._deploying: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"CleverCloudProvider(api_host={self._api.base_url!r}, region={self.region!r})"

    async def _headers(self) -> dict[str, str]:
        return self._authorization

    async def close(self) -> None:
        """Nothing to release: the session belongs to the caller."""

    # Listing and resolution

    async def list_apps(self) -> list[PaasApp]:
        return [self._listed_app(known) for known in await self._load_listing()]

    def _listed_app(self, known: _Known) -> PaasApp:
        fetched = self._fetched.get(known.id)
        state = SUMMARY_STATES.get(known.state or "", AppState.UNKNOWN)
        if fetched is None:
            return PaasApp(
                name=known.display,
                provider=PROVIDER,
                state=state,
                upstream_url=self._upstreams.get(known.id),
                id=known.id,
                region=known.zone,
                aliases=(dns_alias(known.id),),
                status=known.state,
            )
        return replace(
            fetched,
            name=known.display,
            state=state,
            upstream_url=self._upstreams.get(known.id, fetched.upstream_url),
            region=known.zone or fetched.region,
            status=known.state,
        )

    async def _load_listing(self) -> list[_Known]:
        response = await self._call("GET", "/v2/summary", "list_apps")
        summary = expect_object(response, PROVIDER, "list_apps")
        user = summary.get("user") or {}
        user_id = user.get("id")
        owners: list[tuple[str, Any]] = [("/v2/self", user.get("applications"))]
        for orga in summary.get("organisations") or []:
            # The personal space shows up again among the organisations.
            if isinstance(orga, dict) and orga.get("id") and orga.get("id") != user_id:
                owners.append((f"/v2/organisations/{orga['id']}", orga.get("applications")))
        listing: dict[str, _Known] = {}
        for prefix, apps in owners:
            for app in apps or []:
                if isinstance(app, dict) and app.get("id") and app["id"] not in listing:
                    listing[app["id"]] = _Known(
                        id=app["id"],
                        name=str(app.get("name") or ""),
                        path=f"{prefix}/applications/{app['id']}",
                        state=app.get("state"),
                        zone=app.get("zone"),
                    )
        self._index(list(listing.values()))
        return list(listing.values())

    def _index(self, listing: list[_Known]) -> None:
        by_name: dict[str, list[_Known]] = defaultdict(list)
        for known in listing:
            if known.name:
                by_name[known.name].append(known)
        keys: dict[str, _Known] = {}
        for known in listing:
            unique = len(by_name.get(known.name, ())) == 1
            known.display = known.name if unique else dns_alias(known.id)
            if unique:
                keys[known.name] = known
        for known in listing:  # ids win over a name that happens to look like one
            keys[dns_alias(known.id)] = known
            keys[known.id] = known
        self._known = keys
        shared = {name: apps for name, apps in by_name.items() if len(apps) > 1}
        self._ambiguous = frozenset(shared)
        self._warn_collisions(shared)

    def _warn_collisions(self, shared: dict[str, list[_Known]]) -> None:
        collisions = frozenset(
            (name, tuple(sorted(dns_alias(k.id) for k in apps))) for name, apps in shared.items()
        )
        if collisions and collisions != self._collisions:
            log.warning(
                "Clever Cloud apps share a name, so they are addressed by id only: %s",
                "; ".join(f"{name!r} = {', '.join(ids)}" for name, ids in sorted(collisions)),
            )
        self._collisions = collisions

    async def _resolve(self, key: str) -> _Known:
        """The app a request key names (name, `app-<uuid>` or `app_<uuid>`); lists again once."""
        for attempt in range(2):
            if key in self._ambiguous:
                raise AppNotFound(
                    f"several Clever Cloud apps are named {key!r}: address one as app-<uuid>",
                    provider=PROVIDER,
                    app=key,
                )
            known = self._known.get(key)
            if known is not None:
                return known
            if attempt == 0:
                await self._load_listing()
        raise AppNotFound(f"Clever Cloud has no app {key!r}", provider=PROVIDER, app=key)

    # One app

    async def get_app(self, name: str) -> PaasApp:
        known = await self._resolve(name)
        response = await self._call("GET", known.path, "get_app", known)
        raw = expect_object(response, PROVIDER, "get_app")
        state = raw.get("state")
        instances, last_deployment = await self._runtime(known, state)
        status = app_status(
            state, bool(raw.get("homogeneous")), instances, _state_of(last_deployment)
        )
        cached = self._fetched.get(known.id)
        upstream = self._upstreams.get(known.id)
        if upstream is None:
            upstream = self._upstreams[known.id] = await self._resolve_upstream(known, raw)
        deployment = raw.get("deployment") if isinstance(raw.get("deployment"), dict) else {}
        app = PaasApp(
            name=known.display,
            provider=PROVIDER,
            state=STATUS_STATES[status],
            upstream_url=upstream,
            id=known.id,
            region=raw.get("zone") or known.zone,
            aliases=(dns_alias(known.id),),
            created_at=_parse_date(raw.get("creationDate")),
            last_deployed_at=_parse_date((last_deployment or {}).get("date"))
            or (cached.last_deployed_at if cached else None),
            force_https=_flag(raw.get("forceHttps")),
            sticky_session=_flag(raw.get("stickySessions")),
            git_url=deployment.get("url") or raw.get("deployUrl"),
            status=status,
        )
        self._fetched[known.id] = app
        known.state = state
        return app

    async def _runtime(self, known: _Known, state: Any) -> tuple[list[Any], dict[str, Any] | None]:
        """The instances and the last deployment, fetched only when the status logic needs them."""
        if state == "SHOULD_BE_UP":
            instances, deployments = await asyncio.gather(
                self._instances(known), self._deployments(known, limit=1)
            )
        elif state == "WANTS_TO_BE_UP":
            instances, deployments = [], await self._deployments(known, limit=1)
        else:
            return [], None
        last = deployments[0] if deployments else None
        if last is not None and last.get("state") == "WIP" and text(last.get("uuid")):
            self._deploying[known.id] = last["uuid"]
        return instances, last

    async def _instances(self, known: _Known) -> list[Any]:
        response = await self._call("GET", f"{known.path}/instances", "get_instances", known)
        return expect_list(response, PROVIDER, "get_instances")

    async def _deployments(self, known: _Known, *, limit: int) -> list[dict[str, Any]]:
        path = f"{known.path}/deployments?limit={limit}"
        response = await self._call("GET", path, "get_deployments", known)
        return objects(expect_list(response, PROVIDER, "get_deployments"))

    async def _resolve_upstream(self, known: _Known, raw: dict[str, Any]) -> str:
        """Favourite vhost, else the *.cleverapps.io vhost, else the default test domain."""
        response = await self._call(
            "GET", f"{known.path}/vhosts/favourite", "get_favourite_vhost", known, ok=(200, 404)
        )
        if response.status == 200 and isinstance(response.body, dict):
            favourite = response.body.get("fqdn")
            if isinstance(favourite, str) and favourite.strip("/ "):
                return upstream_from_fqdn(favourite)
        vhosts = raw.get("vhosts")
        if not isinstance(vhosts, list):  # the app object usually lists them; spare a call then
            response = await self._call("GET", f"{known.path}/vhosts", "get_vhosts", known)
            vhosts = expect_list(response, PROVIDER, "get_vhosts")
        for vhost in vhosts:
            fqdn = vhost.get("fqdn") if isinstance(vhost, dict) else None
            if isinstance(fqdn, str) and _is_test_domain(fqdn):
                return upstream_from_fqdn(fqdn)
        return f"https://{dns_alias(known.id)}.cleverapps.io"

    # Start and stop

    async def start(self, name: str, remembered: Remembered | None) -> Startup:
        """Redeploys the app (Clever has no formation to restore), or joins the deployment
        already in progress; returns once Clever accepted it."""
        known = await self._resolve(name)
        upstream = text((remembered or {}).get("upstream_url"))
        if upstream is not None:  # what a stop looked up, maybe before a restart of paastis
            self._upstreams.setdefault(known.id, upstream)
        deployment = self._deploying.pop(known.id, None)
        if deployment is not None and await self._deployment_state(known, deployment) != "WIP":
            deployment = None  # it ended since (the app may have been undeployed elsewhere)
        if deployment is None and known.state == "WANTS_TO_BE_UP":
            deployment = await self._deployment_in_progress(known)
        if deployment is not None:
            log.info("Clever Cloud app %s: joining deployment %s", known.display, deployment)
        else:
            deployment = await self._redeploy(known)
        if deployment is not None:
            self._deploying[known.id] = deployment
        return Startup(running=lambda: self._runs(known, deployment))

    async def _redeploy(self, known: _Known) -> str | None:
        try:
            response = await self._call("POST", f"{known.path}/instances", "start", known)
        except ProviderUnavailable:
            # The POST may have started a deployment all the same: join it if there is one.
            deployment = await self._deployment_in_progress(known)
            if deployment is None:
                raise
            return deployment
        body = response.body if isinstance(response.body, dict) else {}
        deployment = text(str(body.get("deploymentId") or ""))
        if deployment is None:
            log.warning(
                "Clever Cloud gave no deployment id for %s; watching instances", known.display
            )
        return deployment

    async def _deployment_in_progress(self, known: _Known) -> str | None:
        deployments = await self._deployments(known, limit=1)
        last = deployments[0] if deployments else {}
        return text(last.get("uuid")) if last.get("state") == "WIP" else None

    async def _runs(self, known: _Known, deployment: str | None) -> bool:
        """One look: the deployment left WIP (a failed one raises), or without a deployment
        id, an instance is UP."""
        if deployment is None:
            instances = await self._instances(known)
            return any(isinstance(i, dict) and i.get("state") == "UP" for i in instances)
        state = await self._deployment_state(known, deployment)
        if state == "WIP":
            return False
        self._deploying.pop(known.id, None)
        if state in FAILED_DEPLOYMENT_STATES:
            raise OperationFailed(
                f"the Clever Cloud deployment of {known.display} ended {state}",
                provider=PROVIDER,
                app=known.display,
            )
        known.state = "SHOULD_BE_UP"
        return True

    async def _deployment_state(self, known: _Known, deployment: str) -> str | None:
        path = f"{known.path}/deployments/{deployment}"
        # 404: the deployment may not be visible yet just after the POST.
        response = await self._call("GET", path, "get_deployment", known, ok=(200, 404))
        return _state_of(response.body) if response.status == 200 else "WIP"

    async def stop(self, name: str) -> Remembered | None:
        """Undeploys the app, then remembers its upstream for the next wake (there is no
        formation to remember)."""
        known = await self._resolve(name)
        await self._call("DELETE", f"{known.path}/instances", "stop", known)
        known.state = "SHOULD_BE_DOWN"
        self._deploying.pop(known.id, None)
        upstream = await self._upstream_for_next_wake(known)
        return {"upstream_url": upstream} if upstream else None

    async def _upstream_for_next_wake(self, known: _Known) -> str | None:
        """The app's upstream, looked up again: a domain changed while the app ran is
        followed at its next sleep. A failed lookup leaves the stop done (the wake then
        looks the upstream up itself, or uses the one known before)."""
        try:
            self._upstreams[known.id] = await self._resolve_upstream(known, {})
        except ProviderError as exc:
            log.warning(
                "Clever Cloud app %s stopped, but its domain could not be looked up for the "
                "next wake: %s",
                known.display,
                exc,
            )
        return self._upstreams.get(known.id)

    # Plumbing

    async def _call(
        self,
        method: str,
        path: str,
        operation: str,
        known: _Known | None = None,
        *,
        ok: tuple[int, ...] = (200, 201, 202, 204),
    ) -> ApiResponse:
        app = known.display if known else None
        return await self._api.request(method, path, operation=operation, ok=ok, app=app)


def _state_of(deployment: Any) -> str | None:
    return deployment.get("state") if isinstance(deployment, dict) else None


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.upper() == "ENABLED"
    return None
