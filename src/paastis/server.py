"""Builds everything from the configuration, serves, and shuts down gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from paastis.catalog import AppCatalog
from paastis.config import ProviderSettings, Settings
from paastis.dashboard import dashboard_response
from paastis.events import EventLog, InMemoryEventLog
from paastis.hooks import Hooks
from paastis.lifecycle import Lifecycle, UpstreamPolicy
from paastis.metrics import Metrics
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


class Server:
    def __init__(
        self,
        settings: Settings,
        *,
        shutdown_grace: float = 30.0,
        provider_tuning: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.provider_tuning = provider_tuning
        self.shutdown_grace = shutdown_grace
        self.shutting_down = False
        self._stop_requested = asyncio.Event()
        self._runners: list[web.BaseRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.main_port: int | None = None
        self.admin_port: int | None = None

    def request_shutdown(self) -> None:
        if not self._stop_requested.is_set():
            log.info(
                "shutting down: finishing in-flight requests (at most %ss)", self.shutdown_grace
            )
        self.shutting_down = True
        self._stop_requested.set()

    async def run(self) -> None:
        """Serves until SIGTERM/SIGINT (or `request_shutdown()`), then shuts down."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_shutdown)
        try:
            await self.start()
            await self._stop_requested.wait()
        finally:
            await self.shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def start(self) -> None:
        s = self.settings
        self.counter = ProviderCallCounter()
        self.metrics = Metrics()
        self.metrics.watch_provider_calls(self.counter)
        self.api_http = aiohttp.ClientSession(trust_env=False)
        self.upstream_http = upstream_session(s)
        self.provider = build_provider(
            s.provider,
            local_apps=s.local_apps,
            session=self.api_http,
            counter=self.counter,
            tuning=self.provider_tuning,
        )
        self.registry, self.event_log = build_registry(s)
        await self.registry.start()
        await self.event_log.start()
        self.catalog = AppCatalog(self.provider)
        self.lifecycle = Lifecycle(
            provider=self.provider,
            registry=self.registry,
            event_log=self.event_log,
            hooks=Hooks(s.hooks, s.hooks_timeout),
            catalog=self.catalog,
            rules=s.rules,
            upstream=UpstreamPolicy(s.upstream_url_template, s.readiness_path),
            http=self.upstream_http,
            metrics=self.metrics,
        )
        self.metrics.watch_apps(self._apps_by_state, self.lifecycle.asleep_seconds)
        system_api = SystemApi(
            lifecycle=self.lifecycle,
            token=s.system_api_token or "",
            metrics=self.metrics,
            cron=s.cron,
        )
        self.upstream_pool = UpstreamPool(
            connect_timeout=s.connect_timeout, tls_verify=s.upstream_tls_verify
        )
        self.proxy = Proxy(
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
            system_api=system_api.handle if s.system_api_enabled else None,
        )
        self.system_api = system_api
        self.scheduler = Scheduler(
            lifecycle=self.lifecycle,
            cron=s.cron,
            ignored_apps=s.ignored_apps,
            metrics=self.metrics,
        )
        if s.admin_port is not None:
            admin = web.Server(self._admin, handler_cancellation=True)
            self.admin_port = await self._listen(admin, s.admin_host, s.admin_port)
        main = ProxyServer(self.proxy.handle, head_timeout=s.header_timeout)
        self.main_port = await self._listen(main, s.host, s.port)
        log.info(
            "paastis listening on %s:%s (provider %s, registry %s)",
            s.host, self.main_port, s.provider.name, s.registry_type,
        )  # fmt: skip
        self._tasks = [
            asyncio.ensure_future(self.scheduler.run()),
            asyncio.ensure_future(self._stamp_open_connections()),
        ]

    async def _listen(self, server: web.Server, host: str, port: int) -> int:
        runner = web.ServerRunner(
            server,
            shutdown_timeout=self.shutdown_grace,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runners.append(runner)
        return runner.addresses[0][1]

    async def shutdown(self) -> None:
        self.shutting_down = True
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.stop()
        # The main listener first: stop accepting, let in-flight requests finish (bounded);
        # the admin listener answers /health with 503 meanwhile.
        main, *admin = reversed(self._runners) if self._runners else (None,)
        if main is not None:
            await main.cleanup()
        lifecycle = getattr(self, "lifecycle", None)
        if lifecycle is not None:
            await lifecycle.drain(self.shutdown_grace)
        if self._tasks:
            scheduler_task, stamping_task = self._tasks
            stamping_task.cancel()
            # The scheduler ends after the tick under way, if any (bounded).
            _, pending = await asyncio.wait([scheduler_task], timeout=self.shutdown_grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for runner in admin:
            await runner.cleanup()
        for closer in ("event_log", "registry", "provider"):
            component = getattr(self, closer, None)
            if component is not None:
                await self._close(closer, component.close())
        pool = getattr(self, "upstream_pool", None)
        if pool is not None:
            await pool.close()
        for session in ("api_http", "upstream_http"):
            client = getattr(self, session, None)
            if client is not None:
                await client.close()
        log.info("paastis stopped")

    async def _close(self, name: str, closing) -> None:
        try:
            await asyncio.wait_for(closing, timeout=self.shutdown_grace)
        except Exception:
            log.exception("closing the %s failed", name)

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
            now = datetime.now(UTC)
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
    """The client for upstream apps: streams bodies as they are, keeps no cookies."""
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
            region=settings.region or "osc-fr1",
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
            region=settings.region,
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
    return InMemoryRegistry(), InMemoryEventLog()
