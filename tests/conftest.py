"""Fixtures shared by the whole suite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from daemons import app_pids, start_daemon  # noqa: F401
from emulators.raw_upstream import RawUpstream
from emulators.scalingo import ScalingoEmulator
from emulators.upstream import UpstreamApp
from harness import RunningPaastis, start_paastis
from redis_support import redis_db, redis_server, redis_server_factory  # noqa: F401

StartPaastis = Callable[..., Awaitable[RunningPaastis]]

# The proxy's byte-level tests run on uvloop too (the `speed` extra): its transports are not
# asyncio's classes, only alike.
BOTH_EVENT_LOOPS = {"test_proxy_fidelity", "test_proxy_websocket_fidelity"}


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item):  # type: ignore[no-untyped-def]
    factories = {"asyncio": asyncio.new_event_loop}
    module = getattr(item, "module", None)
    if module is None or module.__name__ not in BOTH_EVENT_LOOPS:
        return factories
    try:
        import uvloop
    except ImportError:
        return factories
    factories["uvloop"] = uvloop.new_event_loop
    return factories


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that keeps no cookies and never follows redirects on its own."""
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        yield session


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session, to hand to a provider adapter under test."""
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
async def paastis(http: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[StartPaastis]:
    """Starts paastis servers; each is shut down at the end of the test."""
    started: list[RunningPaastis] = []

    async def start(env: dict[str, str], **kwargs: Any) -> RunningPaastis:
        instance = await start_paastis(env, tmp_path=tmp_path, session=http, **kwargs)
        started.append(instance)
        return instance

    yield start
    for instance in reversed(started):
        await instance.stop()


@pytest.fixture
async def upstream_factory(
    aiohttp_server,
) -> Callable[[str], Awaitable[tuple[UpstreamApp, TestServer]]]:
    """Starts test upstream apps on loopback; returns (app, server)."""

    async def start(name: str = "upstream") -> tuple[UpstreamApp, TestServer]:
        upstream = UpstreamApp(name=name)
        server = await aiohttp_server(upstream.app(), host="127.0.0.1")
        return upstream, server

    return start


@pytest.fixture
async def raw_upstreams() -> AsyncIterator[Callable[..., Awaitable[RawUpstream]]]:
    """Starts raw upstreams (writing `answer`, or what a script of theirs writes) and stops
    them all at the end."""
    started: list[RawUpstream] = []

    async def start(answer=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") -> RawUpstream:
        upstream = await RawUpstream(answer).start()
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        await upstream.stop()


@pytest.fixture
def scalingo_boot_delay() -> float:
    """Seconds a Scalingo emulator app takes to boot; a test module overrides it to need more."""
    return 0.05


@pytest.fixture
async def scalingo(aiohttp_server, scalingo_boot_delay: float) -> tuple[ScalingoEmulator, str]:
    """A Scalingo API emulator on loopback: (emulator, its URL)."""
    emulator = ScalingoEmulator(boot_delay=scalingo_boot_delay)
    server = await aiohttp_server(emulator.app(), host="127.0.0.1")
    return emulator, url_of(server)


def url_of(server: TestServer | web.Application) -> str:
    return str(server.make_url("")).rstrip("/")
