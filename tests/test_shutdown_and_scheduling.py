"""A graceful shutdown lets background work finish; the scheduler stops idle apps together."""

from __future__ import annotations

import asyncio

import pytest

from conftest import url_of
from harness import scalingo_env
from waiting import eventually

NAVIGATION = {"Accept": "text/html,application/xhtml+xml", "Sec-Fetch-Mode": "navigate"}


@pytest.fixture
def scalingo_boot_delay() -> float:
    return 0.5


async def test_shutdown_lets_a_wake_started_for_a_waiting_page_finish(
    scalingo, upstream_factory, paastis
):
    emulator, api_url = scalingo
    _, upstream_server = await upstream_factory("docs")
    emulator.add_app("docs", status="stopped", base_url=url_of(upstream_server))
    proxy = await paastis(scalingo_env(api_url, PROXY_READINESS_PATH=""))

    async with proxy.get("docs.example.net", headers=NAVIGATION) as response:
        assert response.status == 503  # the waiting page; the wake goes on in the background
    await proxy.stop()

    assert emulator.status_of("docs") == "running"
    events = [event.name for event in await proxy.server.event_log.list()]
    assert "APP_STARTED" in events
    assert "APP_START_FAILED" not in events


async def test_idle_apps_of_one_tick_are_stopped_together_not_one_after_another(scalingo, paastis):
    emulator, api_url = scalingo
    names = ["idle-a", "idle-b", "idle-c"]
    for name in names:
        emulator.add_app(name)
    proxy = await paastis(scalingo_env(api_url, START_AND_STOP_MAX_IDLE_TIME="0"))
    await proxy.tick()  # registers them

    report = await proxy.tick()

    assert report.stopped == names
    scale_calls = [call.at for call in emulator.log if call.route == "scale"]
    assert len(scale_calls) == 3
    # Every stop was asked for before the first one (0.5 s of operation) could have ended.
    assert max(scale_calls) - min(scale_calls) < emulator.boot_delay


async def test_request_arriving_during_the_readiness_check_joins_the_wake(
    scalingo, upstream_factory, paastis
):
    emulator, api_url = scalingo
    emulator.boot_delay = 0.05
    upstream, upstream_server = await upstream_factory("api")
    upstream.health_status = 503  # the app runs but is not ready yet
    emulator.add_app("api", status="stopped", base_url=url_of(upstream_server))
    proxy = await paastis(scalingo_env(api_url, PROXY_READINESS_PATH="/health"))

    async def get() -> tuple[int, str | None]:
        async with proxy.get("api.example.net", "/data") as response:
            return response.status, response.headers.get("X-Paastis-Cold-Start")

    first = asyncio.ensure_future(get())
    # The provider says it runs and the readiness check has begun.
    await eventually(lambda: upstream.health_checks > 0, timeout=10)
    second = asyncio.ensure_future(get())
    await asyncio.sleep(0.2)
    assert not second.done(), "a request must not reach an app that is not ready"
    upstream.health_status = 200

    assert await asyncio.wait_for(asyncio.gather(first, second), 10) == [(200, "true")] * 2


async def test_read_timeout_bounds_the_first_byte_not_the_silences_of_a_stream(
    scalingo, upstream_factory, paastis
):
    # Server-sent events and long polls go quiet between messages: only the wait for the
    # answer's first byte is bounded by PROXY_READ_TIMEOUT.
    emulator, api_url = scalingo
    _, upstream_server = await upstream_factory("events")
    emulator.add_app("events", base_url=url_of(upstream_server))
    proxy = await paastis(scalingo_env(api_url, PROXY_READ_TIMEOUT="0.2"))

    async with proxy.get("events.example.net", "/stream?chunks=3&gap=0.4") as response:
        body = await asyncio.wait_for(response.read(), 10)

    assert response.status == 200
    assert body == b"chunk 0\nchunk 1\nchunk 2\n"
