"""End to end with the Heroku adapter: real paastis, Heroku API emulator, test upstreams.

The adapter learns each app's state (`GET /dynos`) once, paid from what the account's pool
holds (`RateLimit-Remaining`), and keeps it; a state older than an hour is asked again. These
tests give it a manual clock so that `minute_later()` is the next tick of a one-minute cron.
Dynos boot on the event loop's real clock.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from clock import ManualClock
from conftest import url_of
from emulators.heroku import HerokuEmulator
from harness import FAST_TUNING, RunningPaastis

TOKEN = "heroku-e2e-token-0123456789"
WRONG_TOKEN = "heroku-wrong-token-9876543210"
FORMATION = "/apps/{app}/formation"
# The Heroku adapter spends no state fetch while the account's pool holds less than this.
NEARLY_EMPTY_POOL = 400


@pytest.fixture
async def heroku(aiohttp_server):
    emulator = HerokuEmulator(token=TOKEN, boot_delay=0.15)
    server = await aiohttp_server(emulator.app(), host="127.0.0.1")
    return emulator, url_of(server)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def start(paastis, heroku, clock):
    """Starts paastis on the Heroku emulator with the adapter on the manual clock."""
    _emulator, api_url = heroku

    async def start_heroku(token: str = TOKEN, **kwargs: Any) -> RunningPaastis:
        env = {
            "PROVIDER_NAME": "heroku",
            "PROVIDER_HEROKU_API_TOKEN": token,
            "PROVIDER_HEROKU_API_URL": api_url,
            "PROVIDER_HEROKU_OPERATION_TIMEOUT": "5",
            **kwargs.pop("env", {}),
        }
        tuning = {**FAST_TUNING["heroku"], "clock": clock}
        return await paastis(env, tuning=tuning, **kwargs)

    return start_heroku


async def minute_later(proxy: RunningPaastis, clock: ManualClock):
    """The next tick of a one-minute cron, as far as the adapter's budget can tell."""
    clock.advance(60)
    return await proxy.tick()


async def discovered(proxy: RunningPaastis, clock: ManualClock, *names: str) -> None:
    """Ticks (bounded) until every app named is registered."""
    for _ in range(5):
        await minute_later(proxy, clock)
        registered = {app.name for app in await proxy.server.registry.list()}
        if set(names) <= registered:
            return
    raise AssertionError(f"{names} never registered; registered: {registered}")


def web_url(server) -> str:
    # Heroku's web_url ends with a slash; paastis must not double it.
    return url_of(server) + "/"


async def test_sleeping_app_is_woken_once_by_twenty_concurrent_requests(
    heroku, start, upstream_factory
):
    emulator, _ = heroku
    _upstream, upstream_server = await upstream_factory("review-1")
    emulator.add_app("review-1", formation={"web": 0}, web_url=web_url(upstream_server))
    proxy = await start()

    async def one(index: int):
        async with proxy.get("review-1.example.net", f"/items/{index}") as response:
            return response.status, await response.json(), response.headers

    answers = await asyncio.gather(*(one(i) for i in range(20)))

    assert emulator.count(method="PATCH", route=FORMATION, app="review-1") == 1
    assert [status for status, _, _ in answers] == [200] * 20
    assert sorted(body["path"] for _, body, _ in answers) == sorted(
        f"/items/{i}" for i in range(20)
    )
    assert all(headers["X-Paastis-Cold-Start"] == "true" for _, _, headers in answers)
    assert emulator.dyno_states("review-1") == [("web", "up")]


async def test_concurrent_requests_for_an_app_of_unknown_state_ask_its_state_once(
    heroku, start, upstream_factory
):
    emulator, _ = heroku
    _upstream, upstream_server = await upstream_factory("fresh")
    emulator.add_app("fresh", web_url=web_url(upstream_server))
    emulator.rate_limit.per_minute = 0
    emulator.rate_limit.tokens = NEARLY_EMPTY_POOL
    proxy = await start()
    await proxy.tick()  # listed, state unknown: the pool spares nothing for states

    async def one():
        async with proxy.get("fresh.example.net") as response:
            return response.status

    assert await asyncio.gather(*(one() for _ in range(20))) == [200] * 20
    assert emulator.count(method="GET", route="/apps/{app}", app="fresh") == 1
    assert emulator.count(method="GET", route="/apps/{app}/dynos", app="fresh") == 1
    assert emulator.count(method="PATCH", route=FORMATION) == 0


async def test_the_first_tick_registers_every_running_app(heroku, start):
    emulator, _ = heroku
    emulator.add_app("front")
    emulator.add_app("sleepy", formation={"web": 0})
    proxy = await start()

    first = await proxy.tick()

    assert (first.listed, first.registered) == (2, ["front"])
    assert [app.name for app in await proxy.server.registry.list()] == ["front"]
    assert emulator.count(method="GET", route="/apps/{app}/dynos", app="sleepy") == 1


async def test_twenty_apps_are_registered_at_the_first_tick_and_later_ticks_fetch_no_state(
    heroku, start, clock
):
    emulator, _ = heroku
    for index in range(20):
        emulator.add_app(f"app-{index:02}")
    proxy = await start()

    reports = [await proxy.tick()] + [await minute_later(proxy, clock) for _ in range(3)]

    assert [len(r.registered) for r in reports] == [20, 0, 0, 0]
    assert emulator.count(method="GET", route="/apps/{app}/dynos") == 20
    assert len(await proxy.server.registry.list()) == 20


async def test_two_hundred_apps_are_registered_at_the_first_tick_inside_the_pool(heroku, start):
    emulator, _ = heroku
    for index in range(200):
        emulator.add_app(f"app-{index:03}", formation={"web": index % 2})
    emulator.rate_limit.per_minute = 0  # what the tick spends shows in what the pool holds
    proxy = await start()

    report = await proxy.tick()

    assert len(report.registered) == 100  # every running one
    assert emulator.count("/apps/{app}/dynos", method="GET") == 200
    assert emulator.total_calls == 201  # and one listing
    assert emulator.rate_limit.tokens >= 4500 - 201


async def test_idle_app_is_stopped_once_after_its_max_idle_time_with_hooks_in_order(
    heroku, start, clock, tmp_path: Path
):
    emulator, _ = heroku
    emulator.add_app("idle-app")
    emulator.add_app("busy-app")
    hook_log = tmp_path / "hooks.log"
    variables = "$PAASTIS_HOOK $PAASTIS_APP_NAME $PAASTIS_APP_PROVIDER $PAASTIS_APP_REGION"
    line = f'echo "{variables}" >> {hook_log}'
    proxy = await start(
        env={
            "START_AND_STOP_MAX_IDLE_TIME": "1",
            "HOOKS_BEFORE_STOP": line,
            "HOOKS_AFTER_STOP": line,
        },
        rules="rules:\n  - pattern: busy-app\n    app_max_idle_time: 60\n",
        wall_clock=clock.wall,
    )
    await discovered(proxy, clock, "idle-app", "busy-app")
    assert (await proxy.tick()).stopped == []
    clock.advance(61)
    reports = [await proxy.tick() for _ in range(3)]

    assert [r.stopped for r in reports] == [["idle-app"], [], []]
    assert emulator.count(method="PATCH", route=FORMATION, app="idle-app") == 1
    assert emulator.count(method="PATCH", route=FORMATION, app="busy-app") == 0
    assert emulator.apps["idle-app"].formation == {"web": 0}
    assert emulator.dyno_states("busy-app") == [("web", "up")]
    assert hook_log.read_text().splitlines() == [
        "before_stop idle-app heroku us",
        "after_stop idle-app heroku us",
    ]


async def test_formation_is_restored_after_stop_and_wake(heroku, start, clock, upstream_factory):
    emulator, _ = heroku
    _upstream, upstream_server = await upstream_factory("big")
    emulator.add_app("big", formation={"web": 2, "worker": 1}, web_url=web_url(upstream_server))
    proxy = await start(env={"START_AND_STOP_MAX_IDLE_TIME": "0"})
    await discovered(proxy, clock, "big")
    report = await proxy.tick()  # idle for 0 minutes: stops
    assert report.stopped == ["big"]
    assert emulator.apps["big"].formation == {"web": 0, "worker": 0}

    async with proxy.get("big.example.net") as response:
        assert response.status == 200
        assert response.headers["X-Paastis-Cold-Start"] == "true"
    assert emulator.apps["big"].formation == {"web": 2, "worker": 1}
    assert emulator.count(method="PATCH", route=FORMATION, app="big") == 2


async def test_requests_land_on_the_apps_web_url(heroku, start, upstream_factory):
    emulator, _ = heroku
    _upstream, upstream_server = await upstream_factory("shop")
    # The host name has nothing to do with the app's name, as for apps created since 2023.
    emulator.add_app("shop", web_url=web_url(upstream_server))
    proxy = await start()

    async with proxy.get("shop.example.net", "/api/items?page=2") as response:
        body = await response.json()

    assert response.status == 200
    assert "X-Paastis-Cold-Start" not in response.headers
    assert body["app"] == "shop"
    assert body["raw_path"] == "/api/items?page=2"
    assert body["headers"]["Host"] == f"127.0.0.1:{upstream_server.port}"
    assert body["headers"]["X-Forwarded-Host"] == "shop.example.net"
    assert emulator.count(method="PATCH", route=FORMATION) == 0


async def test_rejected_token_gives_502_and_a_log_line_without_the_token(
    heroku, start, upstream_factory, http, caplog
):
    caplog.set_level(logging.DEBUG)
    emulator, _ = heroku
    _upstream, upstream_server = await upstream_factory("shop")
    emulator.add_app("shop", web_url=web_url(upstream_server))
    proxy = await start(token=WRONG_TOKEN, admin=True)

    statuses = []
    for _ in range(2):
        async with proxy.get("shop.example.net") as response:
            statuses.append(response.status)
    async with http.get(proxy.admin_url + "/health") as health:
        assert health.status == 200
    report = await proxy.tick()

    assert statuses == [502, 502]
    assert report.skipped == "listing failed"
    assert "the Heroku credentials were rejected" in caplog.text
    assert WRONG_TOKEN not in caplog.text
    assert emulator.count(method="PATCH", route=FORMATION) == 0


async def test_paastis_with_the_right_token_serves_beside_one_with_a_rejected_token(
    heroku, start, upstream_factory
):
    emulator, _ = heroku
    _upstream, upstream_server = await upstream_factory("shop")
    emulator.add_app("shop", web_url=web_url(upstream_server))
    rejected = await start(token=WRONG_TOKEN)
    accepted = await start()

    async with rejected.get("shop.example.net") as response:
        assert response.status == 502
    async with accepted.get("shop.example.net") as response:
        assert response.status == 200


async def test_token_revoked_while_running_fails_the_wake_with_502(
    heroku, start, upstream_factory, caplog
):
    emulator, _ = heroku
    _upstream, upstream_server = await upstream_factory("asleep")
    emulator.add_app("asleep", formation={"web": 0}, web_url=web_url(upstream_server))
    proxy = await start()
    await proxy.tick()
    emulator.token = "a-new-token-the-old-one-is-revoked"

    async with proxy.get("asleep.example.net") as response:
        text = await response.text()

    assert response.status == 502
    assert "asleep" in text
    assert "the Heroku credentials were rejected" in caplog.text
    assert TOKEN not in caplog.text


async def test_wake_survives_a_storm_of_429_on_the_scale_call(heroku, start, upstream_factory):
    emulator, _ = heroku
    _upstream, upstream_server = await upstream_factory("stormy")
    emulator.add_app("stormy", formation={"web": 0}, web_url=web_url(upstream_server))
    proxy = await start()
    await proxy.tick()
    emulator.fail_next(FORMATION, 429, times=2, method="PATCH", retry_after="0")

    async with proxy.get("stormy.example.net") as response:
        assert response.status == 200
    assert (
        emulator.count(method="PATCH", route=FORMATION, app="stormy") == 3
    )  # two refused, one done
    assert emulator.dyno_states("stormy") == [("web", "up")]


async def test_tick_survives_a_storm_of_429_on_the_listing(heroku, start, clock):
    emulator, _ = heroku
    proxy = await start()
    await proxy.tick()
    listings = emulator.count(method="GET", route="/apps")
    emulator.add_app("front")
    emulator.fail_next("/apps", 429, times=2, retry_after="0")

    report = await minute_later(proxy, clock)

    assert report.skipped is None
    assert report.registered == ["front"]
    assert emulator.count(method="GET", route="/apps") == listings + 3


async def test_provider_error_on_start_is_502_while_a_running_app_is_served(
    heroku, start, upstream_factory
):
    emulator, _ = heroku
    _, ok_server = await upstream_factory("healthy")
    emulator.add_app("healthy", web_url=web_url(ok_server))
    emulator.add_app("broken", formation={"web": 0})
    proxy = await start()
    await proxy.tick()
    emulator.fail_next(FORMATION, 500, times=10, method="PATCH")

    async def broken():
        async with proxy.get("broken.example.net") as response:
            return response.status, await response.text()

    async def healthy():
        async with proxy.get("healthy.example.net") as response:
            return response.status

    (status, text), *healthy_statuses = await asyncio.gather(
        broken(), *(healthy() for _ in range(5))
    )
    assert status == 502
    assert "broken" in text
    assert healthy_statuses == [200] * 5
    assert emulator.apps["broken"].formation == {"web": 0}
