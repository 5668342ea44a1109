"""The composition root: builds every piece from the settings, serves, and tears the pieces down
in reverse order under one shutdown deadline."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web

from paastis.catalog import AppCatalog
from paastis.clock import WallClock, utc_now
from paastis.config import ProviderSettings, Settings, read_rules
from paastis.dashboard import dashboard_response
from paastis.errors import ConfigError
from paastis.events import EventLog, InMemoryEventLog
from paastis.hooks import Hooks
from paastis.lifecycle import Lifecycle, UpstreamPolicy
from paastis.listener import Listener
from paastis.metrics import Metrics
from paastis.office_hours import OfficeHours
from paastis.providers import AppState, Provider
from paastis.providers.api import ProviderCallCounter
from paastis.providers.local import LocalProvider
from paastis.proxy import (
    Forwarder,
    Proxy,
    ProxyPolicy,
    ProxyServer,
    RequestRecorder,
    Timeouts,
    UpstreamPool,
)
from paastis.registry import Registry
from paastis.registry.memory import InMemoryRegistry
from paastis.rules import LocalAppSpec
from paastis.scheduler import Scheduler
from paastis.system_api import SystemApi, error, metrics_response

log = logging.getLogger("paastis.server")

# While connections are open, their apps are stamped this often, so a long WebSocket keeps its
# app awake (and other instances see it).
ACTIVITY_STAMP_INTERVAL = 5.0
# The end of the shutdown deadline kept for closing the pieces (flushing Redis writes,
# terminating local app processes) once the waiting for in-flight work is over.
CLOSE_RESERVE = 2.0


class Deadline:
    """One instant that every phase of a shutdown shares."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._end = clock() + seconds

    def remaining(self, *, keep: float = 0.0) -> float:
        """Seconds left, minus `keep` seconds set aside for what comes after."""
        return max(0.0, self._end - keep - self._clock())


class Server:
    def __init__(
        self,
        settings: Settings,
        *,
        provider_tuning: Mapping[str, Any] | None = None,
        wall_clock: WallClock = utc_now,
    ) -> None:
        self.settings = settings
        self.provider_tuning = provider_tuning
        self._wall_clock = wall_clock
        self.shutting_down = False
        self.main_port: int | None = None
        self.admin_port: int | None = None
        self._stop_requested = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self._stack: AsyncExitStack | None = None
        self._deadline = Deadline(settings.shutdown_timeout)

    # --- the visible lifecycle: run, start, shutdown ----------------------------------------

    async def run(self) -> None:
        """Serves until SIGTERM/SIGINT (or `request_shutdown()`), then shuts down."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_shutdown)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            await self.start()
            await self._stop_requested.wait()
        finally:
            await self.shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def request_shutdown(self) -> None:
        if not self._stop_requested.is_set():
            log.info(
                "shutting down: finishing in-flight work (at most %gs)",
                self.settings.shutdown_timeout,
            )
        self._stop_requested.set()

    def request_reload(self) -> None:
        """SIGHUP: the rules file is read again as soon as the loop gets to it."""
        self._reload_requested.set()

    async def reload(self) -> bool:
        """Reads the rules file again and applies it to new requests and the next tick;
        nothing restarts, no connection is dropped, the registry is kept. A file that no
        longer validates changes nothing. True when the new rules apply."""
        s = self.settings
        if s.rules_file is None:
            log.warning("reload asked for, but paastis started without a rules file: nothing to do")
            return False
        try:
            rules, local_apps = read_rules(s.rules_file, s.provider.name, s.max_idle_time)
        except ConfigError as exc:
            message = " ".join(line.strip() for line in str(exc).splitlines())
            log.error("reload failed, the previous rules stay: %s", message)
            return False
        self.lifecycle.use_rules(rules)
        if isinstance(self.provider, LocalProvider):
            await self.provider.reconfigure(local_apps)
            await self.catalog.refresh()  # apps added or removed are known at once
        self.settings = replace(s, rules=rules, local_apps=local_apps)
        log.info(
            "reloaded %s: %d rule(s)%s",
            s.rules_file, len(rules.rules),
            f", {len(local_apps)} local app(s)" if isinstance(self.provider, LocalProvider) else "",
        )  # fmt: skip
        return True

    async def _reloads(self) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            try:
                await self.reload()
            except Exception:  # the next SIGHUP must still be heard
                log.exception("reload failed")

    async def start(self) -> None:
        """Builds and starts every piece; on failure, what was started is torn down again."""
        stack = AsyncExitStack()
        try:
            await self._build(stack)
        except BaseException:
            self._deadline = Deadline(self.settings.shutdown_timeout)
            await stack.aclose()
            raise
        self._stack = stack

    async def shutdown(self) -> None:
        """Tears everything down in reverse order of building, within SHUTDOWN_TIMEOUT."""
        stack, self._stack = self._stack, None
        if stack is None:
            return
        self.shutting_down = True
        self._deadline = Deadline(self.settings.shutdown_timeout)
        self.scheduler.stop()  # now, so a tick under way ends while requests finish
        await stack.aclose()
        log.info("paastis stopped")

    # --- building: each piece registers its own teardown --------------------------------------

    async def _build(self, stack: AsyncExitStack) -> None:
        s = self.settings
        self.metrics = Metrics()
        counter = ProviderCallCounter()
        self.metrics.watch_provider_calls(counter)
        self.api_http = await stack.enter_async_context(aiohttp.ClientSession(trust_env=False))
        self.upstream_http = await stack.enter_async_context(upstream_session(s))
        self.provider = self._build_provider(counter)
        self._on_close(stack, "provider", self.provider.close)
        self.registry, self.event_log = build_registry(s)
        await self.registry.start()
        self._on_close(stack, "registry", self.registry.close)
        await self.event_log.start()
        self._on_close(stack, "event log", self.event_log.close)
        self.catalog = AppCatalog(self.provider)
        self.lifecycle = self._build_lifecycle()
        self.metrics.watch_apps(self._apps_by_state, self.lifecycle.asleep_seconds)
        self.scheduler = Scheduler(
            lifecycle=self.lifecycle,
            cron=s.cron,
            ignored_apps=s.ignored_apps,
            metrics=self.metrics,
            wall_clock=self._wall_clock,
            office_hours=OfficeHours(s.schedule_timezone),
        )
        self.system_api = SystemApi(
            lifecycle=self.lifecycle,
            token=s.system_api_token or "",
            metrics=self.metrics,
            cron=s.cron,
            kept_awake=self.scheduler.kept_awake,
        )
        self.upstream_pool = UpstreamPool(
            connect_timeout=s.connect_timeout, tls_verify=s.upstream_tls_verify
        )
        self._on_close(stack, "upstream connections", self.upstream_pool.close)
        self.proxy = self._build_proxy()
        if s.admin_port is not None:
            admin = await Listener.open(self._admin, s.admin_host, s.admin_port)
            stack.push_async_callback(self._until_deadline, admin.close)
            self.admin_port = admin.port
        main = await self._listen()
        # Torn down in reverse: the main listener drains first, then the wakes under way,
        # then the scheduler's tick.
        self._background(stack, self.scheduler.run(), stop=self.scheduler.stop)
        self._background(stack, self._stamp_open_connections())
        self._background(stack, self._reloads())
        stack.push_async_callback(self._until_deadline, self.lifecycle.drain)
        stack.push_async_callback(self._until_deadline, main.close)
        self.main_port = main.port
        self._log_listening()
        log_platform(s)

    def _build_provider(self, counter: ProviderCallCounter) -> Provider:
        return build_provider(
            self.settings.provider,
            local_apps=self.settings.local_apps,
            session=self.api_http,
            counter=counter,
            tuning=self.provider_tuning,
        )

    def _build_lifecycle(self) -> Lifecycle:
        s = self.settings
        return Lifecycle(
            provider=self.provider,
            registry=self.registry,
            event_log=self.event_log,
            hooks=Hooks(s.hooks, s.hooks_timeout),
            catalog=self.catalog,
            rules=s.rules,
            upstream=UpstreamPolicy(s.upstream_url_template, s.readiness_path),
            http=self.upstream_http,
            metrics=self.metrics,
            wall_clock=self._wall_clock,
        )

    def _build_proxy(self) -> Proxy:
        s = self.settings
        return Proxy(
            lifecycle=self.lifecycle,
            policy=ProxyPolicy(
                ignored_apps=s.ignored_apps,
                wake_strategy=s.wake_strategy,
                no_wake_user_agents=s.no_wake_user_agents,
            ),
            forwarder=Forwarder(
                self.upstream_pool,
                Timeouts(s.connect_timeout, s.read_timeout, s.max_connection_lifetime),
            ),
            recorder=RequestRecorder(self.metrics),
            system_api=self.system_api.handle if s.system_api_enabled else None,
        )

    async def _listen(self) -> Listener:
        """The main listener, where the proxied traffic arrives."""
        s = self.settings
        return await Listener.open(
            self.proxy.handle,
            s.host,
            s.port,
            server=lambda handler: ProxyServer(handler, head_timeout=s.header_timeout),
        )

    def _log_listening(self) -> None:
        s = self.settings
        system_api = "on (PaastisProxyTarget: system)" if s.system_api_enabled else "off"
        admin = f"{s.admin_host}:{self.admin_port}" if self.admin_port is not None else "off"
        log.info(
            "paastis listening on %s:%s (provider %s, registry %s, system API %s, "
            "admin listener %s)",
            s.host, self.main_port, s.provider.name, s.registry_type, system_api, admin,
        )  # fmt: skip

    # --- teardown helpers ---------------------------------------------------------------------

    async def _until_deadline(self, phase: Callable[[float], Awaitable[None]]) -> None:
        """Runs a waiting phase of the shutdown with the time left before the close reserve."""
        await phase(self._deadline.remaining(keep=self._close_reserve()))

    def _close_reserve(self) -> float:
        return min(CLOSE_RESERVE, self.settings.shutdown_timeout / 4)

    def _on_close(
        self, stack: AsyncExitStack, name: str, close: Callable[[], Awaitable[None]]
    ) -> None:
        async def closing() -> None:
            try:
                # At least a moment, so a Redis flush is tried even when the waits used it all.
                async with asyncio.timeout(max(self._deadline.remaining(), 0.1)):
                    await close()
            except Exception:
                log.exception("closing the %s failed", name)

        stack.push_async_callback(closing)

    def _background(
        self,
        stack: AsyncExitStack,
        work: Coroutine[Any, Any, None],
        *,
        stop: Callable[[], None] | None = None,
    ) -> None:
        """Runs `work` as a task. At shutdown, a task that can be asked to `stop` may end on its
        own until the deadline; the others are cancelled at once."""
        task = asyncio.ensure_future(work)

        async def end(within: float) -> None:
            if stop is not None:
                stop()
                await asyncio.wait([task], timeout=within)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        stack.push_async_callback(self._until_deadline, end)

    # --- what the pieces ask of the server ----------------------------------------------------

    async def _admin(self, request: web.BaseRequest) -> web.StreamResponse:
        """The admin listener: the dashboard, health and metrics without a token, the system
        API (its OpenAPI document without one) with one."""
        if request.path == "/" and request.method in ("GET", "HEAD"):
            return dashboard_response()
        if request.path == "/health":
            if request.method not in ("GET", "HEAD"):
                return error(405, "method not allowed")
            if self.shutting_down:
                return web.json_response({"status": "shutting down"}, status=503)
            return web.json_response({"status": "ok"})
        if request.path == "/metrics" and request.method == "GET":
            return metrics_response(self.metrics)
        return await self.system_api.handle(request)

    async def _stamp_open_connections(self) -> None:
        while True:
            await asyncio.sleep(ACTIVITY_STAMP_INTERVAL)
            now = self.lifecycle.now()
            for app in self.lifecycle.activity.apps():
                self.registry.stamp(app, now)

    def _apps_by_state(self) -> dict[str, int]:
        # DESIGN §11 names a stopped app "sleeping".
        states = Counter(
            "sleeping" if app.state is AppState.STOPPED else app.state.value
            for app in self.catalog.all()
        )
        states["registered"] = self.scheduler.registered_count
        return dict(states)


def upstream_session(settings: Settings) -> aiohttp.ClientSession:
    """The client of the readiness checks (proxied requests go through the proxy's own
    UpstreamPool): keeps no cookies, decompresses nothing."""
    if not settings.upstream_tls_verify:
        log.warning("UPSTREAM_TLS_VERIFY=false: upstream TLS certificates are NOT verified")
    connector = aiohttp.TCPConnector(
        ssl=None if settings.upstream_tls_verify else False,
        limit=0,
        ttl_dns_cache=60,
        enable_cleanup_closed=True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
    )


def build_provider(
    settings: ProviderSettings,
    *,
    local_apps: Mapping[str, LocalAppSpec],
    session: aiohttp.ClientSession,
    counter: ProviderCallCounter,
    tuning: Mapping[str, Any] | None = None,
) -> Provider:
    """`tuning` passes adapter-specific keywords (poll intervals, retry policy) through."""
    extra = dict(tuning or {})
    if settings.name == "scalingo":
        from paastis.providers.scalingo import ScalingoProvider

        assert settings.scalingo_api_token is not None  # checked by the configuration
        return ScalingoProvider(
            api_token=settings.scalingo_api_token,
            regions=settings.regions or ("osc-fr1",),
            api_url=settings.scalingo_api_url,
            auth_url=settings.scalingo_auth_url,
            operation_timeout=settings.operation_timeout,
            session=session,
            counter=counter,
            **extra,
        )
    if settings.name == "heroku":
        from paastis.providers.heroku import HerokuProvider

        assert settings.heroku_api_token is not None
        return HerokuProvider(
            api_token=settings.heroku_api_token,
            api_url=settings.heroku_api_url,
            regions=settings.regions,
            operation_timeout=settings.operation_timeout,
            session=session,
            counter=counter,
            **extra,
        )
    if settings.name == "clever-cloud":
        from paastis.providers.clever_cloud import CleverCloudProvider, CleverOAuthCredentials

        oauth = None
        if not settings.clever_api_token:
            oauth = CleverOAuthCredentials(
                consumer_key=settings.clever_consumer_key or "",
                consumer_secret=settings.clever_consumer_secret or "",
                token=settings.clever_token or "",
                token_secret=settings.clever_secret or "",
            )
        return CleverCloudProvider(
            api_host=settings.clever_api_host,
            session=session,
            counter=counter,
            oauth=oauth,
            api_token=settings.clever_api_token,
            region=settings.region,
            operation_timeout=settings.operation_timeout,
            **extra,
        )
    return LocalProvider(local_apps, operation_timeout=settings.operation_timeout, **extra)


def log_platform(settings: Settings) -> None:
    """What paastis knows of the platform it runs on, and the risks it sees there."""
    platform = settings.platform
    if platform is None:
        return
    if platform.name == settings.provider.name:
        if platform.own_apps:
            log.info(
                "paastis runs on %s as %s: an ignored app, never stopped (paastis never manages "
                "itself)",
                platform.label, " / ".join(platform.own_apps),
            )  # fmt: skip
        else:
            log.warning(
                "paastis runs on %s but cannot tell as which app (%s): list its app in "
                "REGISTRY_IGNORED_APPS, or paastis may stop itself",
                platform.label, platform.hint,
            )  # fmt: skip
    if settings.registry_type == "in-memory" and settings.registry_state_file is None:
        log.warning(
            "in-memory registry on %s: a restart of paastis forgets the formations of the apps "
            "it stopped (they wake with one web process); use REGISTRY_TYPE=redis with a Redis "
            "add-on",
            platform.label,
        )


def build_registry(settings: Settings) -> tuple[Registry, EventLog]:
    if settings.registry_type == "redis":
        from paastis.registry.redis import RedisRegistry
        from paastis.registry.redis_connection import RedisConnection
        from paastis.registry.redis_events import RedisEventLog

        assert settings.redis_url is not None  # checked by the configuration
        connection = RedisConnection(settings.redis_url)
        return (
            RedisRegistry(connection, prefix=settings.redis_prefix),
            RedisEventLog(connection, prefix=settings.redis_prefix),
        )
    return InMemoryRegistry(settings.registry_state_file), InMemoryEventLog()
