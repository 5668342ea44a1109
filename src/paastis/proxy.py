"""The reverse proxy: Host -> app, wake when needed, stream the request and the answer."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from paastis.lifecycle import Lifecycle
from paastis.metrics import Metrics
from paastis.providers import AppNotFound, AppState, PaasApp, ProviderError, WakeTimeout
from paastis.rules import Route
from paastis.waiting_page import is_browser_navigation, waiting_page

access_log = logging.getLogger("paastis.access")
log = logging.getLogger("paastis.proxy")

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Trailers",
        "Transfer-Encoding",
        "Upgrade",
    )
)
SYSTEM_HEADERS = frozenset({"paastisproxytarget", "paastisproxysystemapitoken"})
# Set for the upstream hop by paastis itself: `Host` from the upstream URL, and `Expect`
# answered to the client before the body is streamed.
OWN_HEADERS = frozenset({"host", "expect"})
RETRY_AFTER_ON_WAKE_TIMEOUT = "10"
# Bodies up to this size (with a Content-Length) are sent with the headers in one write.
SMALL_BODY = 64 * 1024

SystemHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ProxyPolicy:
    ignored_apps: frozenset[str]
    wake_strategy: str  # "auto" or "blocking"
    no_wake_user_agents: re.Pattern[str] | None
    connect_timeout: float
    read_timeout: float
    max_connection_lifetime: float | None


class Proxy:
    def __init__(
        self,
        *,
        lifecycle: Lifecycle,
        policy: ProxyPolicy,
        http: aiohttp.ClientSession,
        metrics: Metrics,
        system_api: SystemHandler | None,
    ) -> None:
        self._lifecycle = lifecycle
        self._policy = policy
        self._http = http
        self._metrics = metrics
        self._system_api = system_api
        # PROXY_READ_TIMEOUT bounds the wait for the answer's first byte only (see
        # _forward_http): a stream may then stay quiet as long as it likes, within
        # PROXY_MAX_CONNECTION_LIFETIME.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=policy.connect_timeout)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self._system_api and request.headers.get("PaastisProxyTarget", "").lower() == "system":
            return await self._system_api(request)
        started = time.monotonic()
        key = app_key(request.host)
        if key is None:
            return text_response(400, "paastis: the request has no usable Host header\n")
        route = self._lifecycle.rules.resolve(key)
        app_name = route.app_name
        outcome = RequestOutcome(app=app_name, route=route)
        try:
            response = await self._serve(request, app_name, outcome)
            outcome.status = response.status
        except asyncio.CancelledError:
            outcome.status = 499  # the client went away
            raise
        finally:
            self._record(request, outcome, time.monotonic() - started)
        return response

    async def _serve(
        self, request: web.Request, app_name: str, outcome: RequestOutcome
    ) -> web.StreamResponse:
        lifecycle = self._lifecycle
        try:
            app = lifecycle.catalog.lookup(app_name) or await lifecycle.catalog.find(app_name)
        except ProviderError as exc:
            log.error("cannot list the apps of %s: %s", exc.provider, exc)
            return text_response(502, f"paastis: cannot reach the provider for {app_name}\n")
        if app is None:
            outcome.app = ""  # unknown hosts must not create metric series
            return text_response(404, f"paastis: no app named {app_name}\n")
        app_name = outcome.app = app.name
        if app.state is AppState.UNKNOWN:
            # A waiting page or a monitor's 503 for an app that in fact runs would be wrong.
            try:
                app = await lifecycle.catalog.fetch(app_name)
            except AppNotFound:
                return text_response(404, f"paastis: no app named {app_name}\n")
            except ProviderError as exc:
                log.error("cannot get the state of %s: %s", app_name, exc)
                return text_response(502, f"paastis: cannot reach the provider for {app_name}\n")
        if app_name in self._policy.ignored_apps:
            if app.state is not AppState.RUNNING:
                return text_response(503, f"paastis: {app_name} is not running\n")
            return await self._forward(request, app, outcome.route, managed=False)
        if app.state is not AppState.RUNNING:
            early = await self._wake(request, app_name, outcome)
            if early is not None:
                return early
            app = lifecycle.catalog.lookup(app_name) or app
        # A monitor's request is served but is not activity: it must not keep the app awake.
        managed = not self._is_monitor(request)
        return await self._forward(request, app, outcome.route, managed=managed, cold=outcome.cold)

    def _is_monitor(self, request: web.BaseRequest) -> bool:
        pattern = self._policy.no_wake_user_agents
        agent = request.headers.get("User-Agent")
        return pattern is not None and bool(agent) and pattern.search(agent) is not None

    async def _wake(
        self, request: web.Request, app_name: str, outcome: RequestOutcome
    ) -> web.StreamResponse | None:
        """Wakes the app, or answers at once; returns the early answer, if any."""
        if self._is_monitor(request):
            response = text_response(503, f"paastis: {app_name} is asleep\n")
            response.headers["Retry-After"] = RETRY_AFTER_ON_WAKE_TIMEOUT
            response.headers["X-Paastis-App-State"] = "sleeping"
            return response
        if self._policy.wake_strategy == "auto" and is_browser_navigation(request):
            self._lifecycle.wake_in_background(app_name, outcome.route.linked_apps)
            return waiting_page(app_name)
        try:
            outcome.cold = await self._lifecycle.ensure_running(app_name, outcome.route.linked_apps)
        except AppNotFound:
            return text_response(404, f"paastis: no app named {app_name}\n")
        except WakeTimeout:
            response = text_response(503, f"paastis: {app_name} did not wake up in time\n")
            response.headers["Retry-After"] = RETRY_AFTER_ON_WAKE_TIMEOUT
            return response
        except ProviderError:
            return text_response(502, f"paastis: the provider failed to wake {app_name}\n")
        return None

    async def _forward(
        self,
        request: web.Request,
        app: PaasApp,
        route: Route,
        *,
        managed: bool,
        cold: bool = False,
    ) -> web.StreamResponse:
        lifecycle = self._lifecycle
        try:
            # The request key's rule first: it may name the app differently.
            base = route.upstream or await lifecycle.resolve_upstream(app)
        except ProviderError as exc:
            log.error("no upstream for %s: %s", app.name, exc)
            return text_response(502, f"paastis: no upstream known for {app.name}\n")
        linked = lifecycle.linked_apps(app.name, route) if managed else ()
        if managed:
            lifecycle.touch(app.name, linked)
        lifecycle.activity.begin(app.name)
        self._metrics.in_flight.labels(app.name).inc()
        try:
            if is_websocket_upgrade(request):
                return await self._forward_websocket(request, base)
            return await self._forward_http(request, base, cold)
        finally:
            lifecycle.activity.end(app.name)
            self._metrics.in_flight.labels(app.name).dec()
            if managed:
                lifecycle.touch(app.name, linked)

    async def _forward_http(
        self, request: web.Request, base: str, cold: bool
    ) -> web.StreamResponse:
        url = upstream_url(base, request)
        headers = upstream_headers(request, url)
        body = request.content if request.body_exists else None
        await send_continue_if_expected(request)
        try:
            async with asyncio.timeout(self._policy.read_timeout):
                upstream = await self._http.request(
                    request.method,
                    url,
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    timeout=self._timeout,
                )
        except (TimeoutError, aiohttp.ServerTimeoutError):
            return text_response(504, "paastis: the app did not answer in time\n")
        except aiohttp.ClientError as exc:
            log.warning("upstream %s unreachable: %s", url.origin(), exc)
            return text_response(502, "paastis: the app is unreachable\n")
        async with upstream:
            headers = downstream_headers(upstream.headers, URL(base), request)
            if cold:
                headers["X-Paastis-Cold-Start"] = "true"
            length = upstream.content_length
            known_length = length is not None and "Content-Length" in upstream.headers
            if known_length and length <= SMALL_BODY and request.method != "HEAD":
                # A small body goes out with the headers in one write (one syscall).
                try:
                    body = await upstream.read()
                except (aiohttp.ClientError, ConnectionResetError) as exc:
                    # Nothing was sent yet, so the client can still get a clean error.
                    log.warning("upstream answer broke: %s", exc)
                    return text_response(502, "paastis: the app's answer broke off\n")
                return web.Response(
                    status=upstream.status, reason=upstream.reason, headers=headers, body=body
                )
            response = web.StreamResponse(
                status=upstream.status, reason=upstream.reason, headers=headers
            )
            if known_length:
                response.content_length = length
            await response.prepare(request)
            await self._stream_body(request, upstream, response)
            return response

    async def _stream_body(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
    ) -> None:
        lifetime = self._policy.max_connection_lifetime
        try:
            async with asyncio.timeout(lifetime):
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
        except TimeoutError:
            log.info("closing a stream open for longer than %ss", lifetime)
            abort_answer(request)
            return
        except (aiohttp.ClientError, ConnectionResetError) as exc:
            log.warning("upstream stream broke: %s", exc)
            abort_answer(request)
            return
        await response.write_eof()

    async def _forward_websocket(self, request: web.Request, base: str) -> web.StreamResponse:
        url = upstream_url(base, request)
        ws_url = url.with_scheme("wss" if url.scheme == "https" else "ws")
        headers = upstream_headers(request, url, websocket=True)
        offered = request.headers.get("Sec-WebSocket-Protocol", "").split(",")
        protocols = [p.strip() for p in offered if p.strip()]
        # ws_connect takes no request timeout: bound the handshake as a request's headers are.
        handshake = self._policy.connect_timeout + self._policy.read_timeout
        try:
            async with asyncio.timeout(handshake):
                upstream = await self._http.ws_connect(
                    ws_url,
                    headers=headers,
                    protocols=protocols,
                    timeout=aiohttp.ClientWSTimeout(ws_close=10),
                    autoping=True,
                )
        except aiohttp.WSServerHandshakeError as exc:
            status = exc.status if exc.status and exc.status >= 400 else 502
            return text_response(status, "paastis: the app refused the WebSocket\n")
        except TimeoutError:
            return text_response(504, "paastis: the app did not answer in time\n")
        except aiohttp.ClientError as exc:
            log.warning("upstream WebSocket %s unreachable: %s", ws_url.origin(), exc)
            return text_response(502, "paastis: the app is unreachable\n")
        client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else ())
        await client.prepare(request)
        try:
            async with asyncio.timeout(self._policy.max_connection_lifetime):
                await pump_both_ways(client, upstream)
        except TimeoutError:
            log.info("closing a WebSocket open for longer than the maximum lifetime")
        finally:
            await upstream.close()
            await client.close()
        return client

    def _record(self, request: web.Request, outcome: RequestOutcome, duration: float) -> None:
        self._metrics.requests.labels(outcome.app, f"{outcome.status // 100}xx").inc()
        self._metrics.request_duration.observe(duration)
        access_log.info(
            "%s %s %s -> %s in %.3fs%s",
            outcome.app or "-",
            request.method,
            request.path,
            outcome.status,
            duration,
            " (cold start)" if outcome.cold else "",
            extra={
                "app": outcome.app,
                "method": request.method,
                "path": request.path,
                "status": outcome.status,
                "duration": round(duration, 4),
                "cold_start": outcome.cold,
            },
        )


@dataclass
class RequestOutcome:
    app: str
    route: Route
    status: int = 500
    cold: bool = False


WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def relay(source: WebSocket, sink: WebSocket) -> None:
    """Copies text and binary messages from `source` to `sink`; closes `sink` as `source` closed."""
    async for message in source:
        if message.type is WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type is WSMsgType.BINARY:
            await sink.send_bytes(message.data)
    await sink.close(code=source.close_code or 1000)


async def pump_both_ways(
    client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
) -> None:
    """Copies messages both ways until either side closes."""
    tasks = [
        asyncio.ensure_future(relay(client, upstream)),
        asyncio.ensure_future(relay(upstream, client)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@functools.lru_cache(maxsize=4096)
def app_key(host: str | None) -> str | None:
    """The first label of the host name, lowercased, without port; None for an IP or nothing."""
    if not host:
        return None
    host = host.strip()
    if host.startswith("["):
        return None  # an IPv6 literal
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    # A host name never ends with a digit (TLDs are letters): only then can it be an IPv4.
    if not name or ":" in name or (name[-1].isdigit() and is_ip_address(name)):
        return None
    key = name.split(".", 1)[0].lower()
    return key or None


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_websocket_upgrade(request: web.BaseRequest) -> bool:
    return (
        request.headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in request.headers.get("Connection", "").lower()
    )


def upstream_url(base: str, request: web.BaseRequest) -> URL:
    """The upstream base (its path a prefix) plus the request's path and query, as sent."""
    return URL(base.rstrip("/") + request.raw_path, encoded=True)


def connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    """Headers named in `Connection`, hop-by-hop for this hop only."""
    return {
        token.strip().lower()
        for value in headers.getall("Connection", [])
        for token in value.split(",")
        if token.strip()
    }


def is_hop_by_hop(name: str, named_in_connection: set[str]) -> bool:
    lowered = name.lower()
    return (
        lowered in HOP_BY_HOP
        or lowered in named_in_connection
        # Proxy-Authorization, Proxy-Connection, ...: meant for a proxy, never for the app.
        or lowered.startswith("proxy-")
    )


def upstream_headers(
    request: web.BaseRequest, url: URL, *, websocket: bool = False
) -> CIMultiDict[str]:
    named = connection_tokens(request.headers)
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        lowered = name.lower()
        if is_hop_by_hop(lowered, named) or lowered in SYSTEM_HEADERS or lowered in OWN_HEADERS:
            continue
        if websocket and lowered.startswith("sec-websocket-"):
            continue  # aiohttp's WebSocket client writes its own handshake headers
        headers.add(name, value)
    remote = request.remote or ""
    previous = ", ".join(request.headers.getall("X-Forwarded-For", []))
    headers["X-Forwarded-For"] = f"{previous}, {remote}" if previous else remote
    # A load balancer in front (TLS terminated there) knows the client's scheme better.
    claimed = request.headers.get("X-Forwarded-Proto", "").strip().lower()
    headers["X-Forwarded-Proto"] = claimed if claimed in ("http", "https") else request.scheme
    headers["X-Forwarded-Host"] = request.host
    origin = request.headers.get("Origin")
    if origin and origin == f"{request.scheme}://{request.host}":
        headers["Origin"] = str(url.origin())
    return headers


def downstream_headers(
    upstream: CIMultiDictProxy[str], base: URL, request: web.BaseRequest
) -> CIMultiDict[str]:
    """The upstream's answer headers for the client; `base` is the app's upstream URL."""
    named = connection_tokens(upstream)
    headers: CIMultiDict[str] = CIMultiDict(
        (name, value)
        for name, value in upstream.items()
        if not is_hop_by_hop(name, named) and name.lower() != "content-length"
    )
    location = headers.get("Location")
    if location:
        headers["Location"] = rewrite_location(location, base, request)
    return headers


def rewrite_location(location: str, base: URL, request: web.BaseRequest) -> str:
    """A redirect to the app's own origin (under its path prefix) stays behind paastis."""
    try:
        target = URL(location, encoded=True)
        if not target.absolute or target.origin() != base.origin():
            return location
    except ValueError:
        return location
    path = target.raw_path
    prefix = base.raw_path.rstrip("/")
    if prefix and (path == prefix or path.startswith(prefix + "/")):
        path = path[len(prefix) :] or "/"
    query = f"?{target.raw_query_string}" if target.raw_query_string else ""
    fragment = f"#{target.raw_fragment}" if target.raw_fragment else ""
    return f"{request.scheme}://{request.host}{path}{query}{fragment}"


async def send_continue_if_expected(request: web.BaseRequest) -> None:
    """Answers `Expect: 100-continue` (as aiohttp's router would), once the app is ready to
    take the body; the client would otherwise wait, or stall, before sending it."""
    expect = request.headers.get("Expect", "")
    if request.version >= aiohttp.HttpVersion11 and expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not started


def abort_answer(request: web.BaseRequest) -> None:
    """Closes the client's connection mid-answer: the headers are gone already, and ending the
    body cleanly would pass a truncated answer off as complete (or leave the client waiting
    for the rest of a Content-Length)."""
    if request.transport is not None:
        request.transport.close()


def text_response(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, headers={"Cache-Control": "no-store"})
