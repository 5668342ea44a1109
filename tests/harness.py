"""Starts real paastis servers on loopback ports for end-to-end tests."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from paastis.clock import WallClock, utc_now
from paastis.config import CommandLine, load_settings
from paastis.providers import Backoff
from paastis.providers.api import RetryPolicy
from paastis.scheduler import TickReport
from paastis.server import Server

# Fast but faithful adapters: the same code, shorter waits.
FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
FAST_POLL = Backoff(first=0.05, factor=1.0, cap=0.05, min_gap=0.02)
FAST_TUNING: dict[str, dict[str, Any]] = {
    "scalingo": {"poll": FAST_POLL, "retry": FAST_RETRY},
    "heroku": {"poll": FAST_POLL, "retry": FAST_RETRY},
    "clever-cloud": {"poll": FAST_POLL, "retry": FAST_RETRY},
    "local": {"poll": FAST_POLL, "spawn_grace": 0.05, "stop_grace": 2.0},
}

# The Scalingo emulator takes any token; a system API token must have 16 characters or more.
SCALINGO_TOKEN = "tk-us-emulated-token"
SYSTEM_TOKEN = "s3cret-system-token-0123"
SYSTEM_API = {"ROUTING_SYSTEM_API_ENABLED": "true", "ROUTING_SYSTEM_API_TOKEN": SYSTEM_TOKEN}


def scalingo_env(api_url: str, **extra: str) -> dict[str, str]:
    """The environment of a paastis in front of the Scalingo API at `api_url`; `extra` wins."""
    return {
        "PROVIDER_NAME": "scalingo",
        "PROVIDER_SCALINGO_API_TOKEN": SCALINGO_TOKEN,
        "PROVIDER_SCALINGO_API_URL": api_url,
        "PROVIDER_SCALINGO_AUTH_URL": api_url,
        "PROVIDER_SCALINGO_OPERATION_TIMEOUT": "5",
        **extra,
    }


def system_headers(token: str | None = SYSTEM_TOKEN) -> dict[str, str]:
    """Headers sending a request on the main listener to the system API (token None: omitted)."""
    headers = {"PaastisProxyTarget": "system"}
    if token is not None:
        headers["PaastisProxySystemApiToken"] = token
    return headers


@dataclasses.dataclass
class RunningPaastis:
    server: Server
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.main_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.server.admin_port}"

    def request(
        self, method: str, host: str, path: str = "/", **kwargs: Any
    ) -> aiohttp.client._RequestContextManager:
        """A request to paastis as if sent to `host` (its Host header)."""
        headers = {"Host": host, **kwargs.pop("headers", {})}
        return self.session.request(method, self.url + path, headers=headers, **kwargs)

    def get(self, host: str, path: str = "/", **kwargs: Any):
        return self.request("GET", host, path, **kwargs)

    async def tick(self) -> TickReport:
        """Runs one scheduler tick (after the one under way, if any)."""
        for _ in range(500):
            report = await self.server.scheduler.tick()
            if report.skipped != "the previous tick is still running":
                return report
            await asyncio.sleep(0.01)
        raise TimeoutError("the scheduler stayed busy")

    async def stop(self) -> None:
        await self.server.shutdown()


async def start_paastis(
    env: Mapping[str, str],
    *,
    tmp_path: Path,
    rules: str | None = None,
    session: aiohttp.ClientSession,
    admin: bool = False,
    tuning: Mapping[str, Any] | None = None,
    shutdown_grace: float = 5.0,
    wall_clock: WallClock = utc_now,
) -> RunningPaastis:
    """Starts paastis in this process on a free port. The scheduler's first tick runs at once;
    its cron defaults to once a year so tests drive ticks themselves with `tick()`. Idle times
    are measured on `wall_clock` (a `ManualClock.wall` lets a test move time by hand)."""
    environ = {"START_AND_STOP_CHECKING_INTERVAL_CRON": "0 0 1 1 *", **env}
    config = None
    if rules is not None:
        config = tmp_path / f"paastis-{len(list(tmp_path.glob('paastis-*.yml')))}.yml"
        config.write_text(rules)
    settings = load_settings(CommandLine(config=config), environ, cwd=tmp_path)
    settings = dataclasses.replace(
        settings,
        host="127.0.0.1",
        port=0,
        admin_port=0 if admin else None,
        shutdown_timeout=shutdown_grace,
    )
    provider_tuning = FAST_TUNING.get(settings.provider.name, {}) if tuning is None else tuning
    server = Server(settings, provider_tuning=provider_tuning, wall_clock=wall_clock)
    await server.start()
    return RunningPaastis(server, session)
