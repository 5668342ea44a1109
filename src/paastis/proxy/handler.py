"""The proxy's request handler: check the request, route it to its app, wake the app when it
sleeps, then forward the request (or answer it with one of paastis' own answers)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import HttpVersion10, HttpVersion11, web
from yarl import URL

from paastis.lifecycle import Lifecycle
from paastis.providers import AppNotFound, AppState, PaasApp, ProviderError, WakeTimeout
from paastis.proxy.access_log import RequestOutcome, RequestRecorder
from paastis.proxy.answer import own_answer
from paastis.proxy.failures import ALLOWED_METHODS, Failure
from paastis.proxy.forward import Forwarder
from paastis.proxy.headers import Client, carries_our_via
from paastis.proxy.routing import BadTarget, Target, request_target
from paastis.proxy.upstream import UpstreamBroke, UpstreamTimeout, UpstreamUnreachable
from paastis.proxy.waiting_page import is_browser_navigation, waiting_page
from paastis.rules import Route

log = logging.getLogger("paastis.proxy")

SystemHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ProxyPolicy:
    ignored_apps: frozenset[str]
    wake_strategy: str  # "auto" or "blocking"
    no_wake_user_agents: re.Pattern[str] | None


class Proxy:
    def __init__(
        self,
        *,
        lifecycle: Lifecycle,
        policy: ProxyPolicy,
        forwarder: Forwarder,
        recorder: RequestRecorder,
        system_api: SystemHandler | None,
    ) -> None:
        self._lifecycle = lifecycle
        self._policy = policy
        self._forwarder = forwarder
        self._recorder = recorder
        self._system_api = system_api

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if self._system_api and request.headers.get("PaastisProxyTarget", "").lower() == "system":
            return await self._system_api(request)
        started = time.monotonic()
        outcome = RequestOutcome()
        try:
            response = await self._serve(request, outcome, started)
            outcome.status = response.status
        except asyncio.CancelledError:
            outcome.status = 499  # the client went away
            raise
        finally:
            self._recorder.record(request, outcome, time.monotonic() - started)
        return response

    async def _serve(
        self, request: web.BaseRequest, outcome: RequestOutcome, started: float
    ) -> web.StreamResponse:
        refused = refuse(request)
        if refused is not None:
            return refused
        try:
            target = request_target(
                request.method, request.raw_path, request.headers.getall("Host", [])
            )
        except BadTarget as exc:
            return answer(request, Failure.BAD_HOST, detail=f"{exc}")
        if target.path == "*":
            return own_answer(request, 200, "", headers=(("Allow", ALLOWED_METHODS),))
        key = target.authority.app_key
        if key is None:
            return answer(
                request, Failure.BAD_HOST, detail="paastis routes by host name, not by IP address"
            )
        route = self._lifecycle.route(key)
        if carries_our_via(request.headers.getall("Via", [])):
            log.warning(
                "forwarding loop for %s: the request came back through paastis", route.app_name
            )
            return answer(request, Failure.LOOP, route.app_name)
        try:
            app = await self._lifecycle.known_app(route.app_name)
        except ProviderError as exc:
            log.error("cannot reach %s for %s: %s", exc.provider, route.app_name, exc)
            return answer(request, Failure.PROVIDER_UNREACHABLE, route.app_name)
        if app is None:
            return answer(request, Failure.UNKNOWN_APP, route.app_name)
        outcome.app = app.name
        if app.name in self._policy.ignored_apps:
            if app.state is not AppState.RUNNING:
                return answer(request, Failure.NOT_RUNNING, app.name)
            return await self._forward(request, target, app, route, outcome, started, managed=False)
        if app.state is not AppState.RUNNING:
            early = await self._wake(request, app.name, route, outcome)
            if early is not None:
                return early
            app = await self._lifecycle.known_app(app.name) or app
        # A monitor's request is served but is not activity: it must not keep the app awake.
        managed = not self._is_monitor(request)
        return await self._forward(request, target, app, route, outcome, started, managed=managed)

    async def _wake(
        self, request: web.BaseRequest, app_name: str, route: Route, outcome: RequestOutcome
    ) -> web.StreamResponse | None:
        """Wakes the app, or answers at once; returns the early answer, if any."""
        if self._is_monitor(request):
            return answer(request, Failure.ASLEEP, app_name)
        if self._policy.wake_strategy == "auto" and is_browser_navigation(request):
            self._lifecycle.wake_in_background(app_name, route.linked_apps)
            return waiting_page(request, app_name)
        try:
            outcome.cold = await self._lifecycle.ensure_running(app_name, route.linked_apps)
        except AppNotFound:
            return answer(request, Failure.UNKNOWN_APP, app_name)
        except WakeTimeout:
            return answer(request, Failure.WAKE_TIMEOUT, app_name)
        except ProviderError:
            return answer(request, Failure.WAKE_FAILED, app_name)
        return None

    async def _forward(
        self,
        request: web.BaseRequest,
        target: Target,
        app: PaasApp,
        route: Route,
        outcome: RequestOutcome,
        started: float,
        *,
        managed: bool,
    ) -> web.StreamResponse:
        lifecycle = self._lifecycle
        try:
            # The request key's rule first: it may name the app differently.
            base = URL(route.upstream or await lifecycle.resolve_upstream(app))
        except ProviderError as exc:
            log.error("no upstream for %s: %s", app.name, exc)
            return answer(request, Failure.NO_UPSTREAM, app.name)
        client = Client(request.remote or "", request.scheme, target.authority.text)
        if managed:
            lifecycle.request_started(app.name, route)
        in_flight = self._recorder.in_flight(app.name)
        in_flight.inc()
        try:
            return await self._forwarder.forward(
                request, target.path, base, client, cold=outcome.cold, started=started
            )
        except UpstreamTimeout as exc:
            log.warning("%s did not answer in time: %s", app.name, exc)
            return answer(request, Failure.UPSTREAM_TIMEOUT, app.name)
        except UpstreamUnreachable as exc:
            log.warning("%s is unreachable: %s", app.name, exc)
            return answer(request, Failure.UPSTREAM_UNREACHABLE, app.name)
        except UpstreamBroke as exc:
            log.warning("the answer of %s broke off: %s", app.name, exc)
            return answer(request, Failure.UPSTREAM_BROKE, app.name)
        finally:
            in_flight.dec()
            if managed:
                lifecycle.request_ended(app.name, route)

    def _is_monitor(self, request: web.BaseRequest) -> bool:
        pattern = self._policy.no_wake_user_agents
        agent = request.headers.get("User-Agent")
        return pattern is not None and bool(agent) and pattern.search(agent) is not None


def refuse(request: web.BaseRequest) -> web.StreamResponse | None:
    """Requests paastis never forwards: CONNECT, other HTTP versions, unknown codings."""
    if request.method == "CONNECT":
        return answer(request, Failure.METHOD_NOT_ALLOWED, detail="CONNECT")
    if request.version not in (HttpVersion10, HttpVersion11):
        version = f"{request.version.major}.{request.version.minor}"
        return answer(request, Failure.VERSION, detail=version, reusable=False)
    codings = request.headers.getall("Transfer-Encoding", [])
    if codings and [c.strip().lower() for c in ",".join(codings).split(",")] != ["chunked"]:
        shown = ", ".join(codings)
        # The body cannot be read past a coding paastis does not know: close after answering.
        return answer(request, Failure.TRANSFER_CODING, detail=shown, reusable=False)
    return None


def answer(
    request: web.BaseRequest,
    failure: Failure,
    app: str = "",
    *,
    detail: str = "",
    reusable: bool = True,
) -> web.StreamResponse:
    """paastis' own answer for `failure`, logged as the access log's status only."""
    if failure.status == 400:
        log.warning("bad request from %s: %s", request.remote, detail)
    return own_answer(
        request,
        failure.status,
        failure.text(app, detail),
        reusable=reusable,
        headers=failure.value.headers,
    )
