"""The Heroku adapter against the Heroku API emulator, over loopback HTTP."""

from __future__ import annotations

import base64
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from clock import ManualClock
from emulators.heroku import ACCEPT, HerokuEmulator
from paastis.providers import (
    AppNotFound,
    AppState,
    OperationFailed,
    ProviderAuthError,
    ProviderUnavailable,
    WakeTimeout,
)
from paastis.providers.api import ProviderCallCounter, RetryPolicy
from paastis.providers.heroku import HerokuProvider

TOKEN = "heroku-test-token-5f3c"
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)
DYNOS = "/apps/{app}/dynos"
FORMATION = "/apps/{app}/formation"

ServerFactory = Callable[[Any], Awaitable[TestServer]]


@pytest.fixture
def emulator() -> HerokuEmulator:
    return HerokuEmulator(token=TOKEN, boot_delay=0.1)


@pytest.fixture
async def server(aiohttp_server: ServerFactory, emulator: HerokuEmulator) -> TestServer:
    return await aiohttp_server(emulator.app())


def make_provider(
    server: TestServer, session: aiohttp.ClientSession, **overrides: Any
) -> HerokuProvider:
    options: dict[str, Any] = {
        "api_token": TOKEN,
        "api_url": str(server.make_url("")),
        "session": session,
        "counter": ProviderCallCounter(),
        "poll_interval": 0.05,
        "operation_timeout": 5.0,
        "retry": FAST_RETRY,
        **overrides,
    }
    return HerokuProvider(**options)


async def run_ticks(
    provider: HerokuProvider, clock: ManualClock, ticks: int, every: float = 60.0
) -> None:
    for _ in range(ticks):
        await provider.list_apps()
        clock.advance(every)


# -- listing ---------------------------------------------------------------------------------


async def test_listing_follows_next_range_to_the_last_page(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    emulator = HerokuEmulator(token=TOKEN, max_page_size=200)
    for index in range(450):
        emulator.add_app(f"app-{index:03d}")
    server = await aiohttp_server(emulator.app())

    apps = await make_provider(server, session).list_apps()

    assert sorted(app.name for app in apps) == sorted(emulator.apps)
    assert emulator.count("GET", "/apps") == 3


async def test_a_failed_page_raises_instead_of_returning_a_partial_list(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    emulator = HerokuEmulator(token=TOKEN, max_page_size=200)
    for index in range(450):
        emulator.add_app(f"app-{index:03d}")
    emulator.fail_next("/apps", 500, times=10, skip=1)
    server = await aiohttp_server(emulator.app())

    with pytest.raises(ProviderUnavailable):
        await make_provider(server, session).list_apps()


async def test_web_url_is_the_upstream_verbatim_for_new_and_legacy_hosts(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    new = emulator.add_app("shop")
    emulator.add_app("old-shop", web_url="https://old-shop.herokuapp.com/")

    apps = {app.name: app for app in await make_provider(server, session).list_apps()}

    assert apps["shop"].upstream_url == new.web_url
    assert apps["shop"].upstream_url != "https://shop.herokuapp.com/"
    assert apps["old-shop"].upstream_url == "https://old-shop.herokuapp.com/"


async def test_listed_apps_carry_id_region_dates_and_git_url(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    emulated = emulator.add_app("shop", region="eu")

    [app] = await make_provider(server, session).list_apps()

    assert (app.provider, app.id, app.region) == ("heroku", emulated.id, "eu")
    assert app.git_url == "https://git.heroku.com/shop.git"
    assert app.created_at is not None and app.created_at.tzinfo is not None
    assert app.last_deployed_at is not None and app.last_deployed_at.tzinfo is not None


async def test_a_configured_region_keeps_only_its_apps(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    emulator.add_app("in-eu", region="eu")
    emulator.add_app("in-us", region="us")

    apps = await make_provider(server, session, region="eu").list_apps()

    assert [app.name for app in apps] == ["in-eu"]


# -- one app ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("formation", "booted", "outcome", "expected"),
    [
        ({"web": 1}, True, "up", AppState.RUNNING),
        ({"web": 0, "worker": 1}, True, "up", AppState.STOPPED),
        ({}, True, "up", AppState.STOPPED),
        ({"web": 1}, False, "up", AppState.STARTING),
        ({"web": 1}, True, "crashed", AppState.FAILED),
    ],
)
async def test_get_app_reads_the_state_from_the_web_dynos(
    emulator: HerokuEmulator,
    server: TestServer,
    session: aiohttp.ClientSession,
    formation: dict[str, int],
    booted: bool,
    outcome: str,
    expected: AppState,
) -> None:
    emulated = emulator.add_app("shop", formation=formation, booted=booted)
    for dyno in emulated.dynos:
        dyno.outcome = outcome

    app = await make_provider(server, session).get_app("shop")

    assert app.state is expected


async def test_get_app_of_an_unknown_app_raises_app_not_found(
    server: TestServer, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(AppNotFound):
        await make_provider(server, session).get_app("nope")


# -- start and stop --------------------------------------------------------------------------


async def test_start_restores_the_formation_in_one_patch_and_returns_once_web_is_up(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    emulator.add_app("shop", formation={"web": 0, "worker": 0})

    await make_provider(server, session).start("shop", {"web": 2, "worker": 1})

    assert emulator.count("PATCH", FORMATION, app="shop") == 1
    assert emulator.apps["shop"].formation == {"web": 2, "worker": 1}
    assert ("web", "up") in emulator.dyno_states("shop")


async def test_start_without_a_remembered_formation_runs_one_web_dyno(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    emulator.add_app("shop", formation={"web": 0, "worker": 0})

    await make_provider(server, session).start("shop", None)

    assert emulator.apps["shop"].formation == {"web": 1, "worker": 0}


async def test_start_drops_a_process_type_the_app_no_longer_has(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    emulator.add_app("shop", formation={"web": 0})

    await make_provider(server, session).start("shop", {"web": 1, "clock": 1})

    assert emulator.apps["shop"].formation == {"web": 1}
    assert ("web", "up") in emulator.dyno_states("shop")


async def test_start_polls_the_dynos_no_faster_than_the_poll_interval(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    emulator = HerokuEmulator(token=TOKEN, boot_delay=0.5)
    emulator.add_app("shop", formation={"web": 0})
    server = await aiohttp_server(emulator.app())

    await make_provider(server, session, poll_interval=0.2).start("shop", None)

    polls = [at for at, method, route, _ in emulator.log if (method, route) == ("GET", DYNOS)]
    assert len(polls) >= 2
    assert min(b - a for a, b in itertools.pairwise(polls)) >= 0.19


async def test_start_fails_when_the_web_dynos_crash(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    emulator.add_app("shop", formation={"web": 0}).boot_outcome = "crashed"

    with pytest.raises(OperationFailed):
        await make_provider(server, session).start("shop", None)


async def test_start_past_the_operation_timeout_raises_wake_timeout(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    emulator = HerokuEmulator(token=TOKEN, boot_delay=30)
    emulator.add_app("shop", formation={"web": 0})
    server = await aiohttp_server(emulator.app())

    with pytest.raises(WakeTimeout):
        await make_provider(server, session, operation_timeout=0.3).start("shop", None)


async def test_stop_remembers_the_formation_and_scales_everything_to_zero_in_one_patch(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    emulator.add_app("shop", formation={"web": 2, "worker": 1, "clock": 0})

    remembered = await make_provider(server, session).stop("shop")

    assert remembered == {"web": 2, "worker": 1}
    assert emulator.count("PATCH", FORMATION, app="shop") == 1
    assert emulator.apps["shop"].formation == {"web": 0, "worker": 0, "clock": 0}
    assert emulator.dyno_states("shop") == []


async def test_stop_of_an_app_with_nothing_running_returns_none_without_scaling(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    emulator.add_app("shop", formation={"web": 0})

    remembered = await make_provider(server, session).stop("shop")

    assert remembered is None
    assert emulator.count("PATCH", FORMATION, app="shop") == 0


async def test_own_start_and_stop_update_the_state_without_refresh_calls(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    emulator.add_app("shop", formation={"web": 1})
    clock = ManualClock()
    provider = make_provider(server, session, clock=clock, state_refresh_budget_per_hour=0)

    await provider.stop("shop")
    [app] = await provider.list_apps()

    assert app.state is AppState.STOPPED
    assert emulator.count("GET", DYNOS, app="shop") == 0


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["", "wrong-token"])
async def test_a_missing_or_wrong_token_raises_provider_auth_error(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession, token: str
) -> None:
    emulator.add_app("shop")

    with pytest.raises(ProviderAuthError, match="the Heroku API token was rejected"):
        await make_provider(server, session, api_token=token).list_apps()


async def test_the_token_never_appears_in_logs(
    emulator: HerokuEmulator,
    server: TestServer,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    emulator.fail_next("/apps", 500, times=10)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(ProviderUnavailable):
        await make_provider(server, session).list_apps()

    assert caplog.records
    assert TOKEN not in caplog.text


async def test_a_storm_of_429_with_retry_after_is_survived(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    emulator.add_app("shop")
    emulator.fail_next("/apps", 429, times=3, retry_after="0", body={"id": "rate_limit"})

    apps = await make_provider(server, session).list_apps()

    assert [app.name for app in apps] == ["shop"]
    assert emulator.count("GET", "/apps") == 4


async def test_a_persistent_500_raises_provider_unavailable(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    emulator.add_app("shop")
    emulator.fail_next("/apps/{app}", 500, times=100)

    with pytest.raises(ProviderUnavailable):
        await make_provider(server, session).get_app("shop")


# -- state freshness within the rate-limit budget --------------------------------------------


async def test_two_hundred_apps_listed_every_minute_cost_at_most_900_calls_in_any_hour(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    emulator = HerokuEmulator(token=TOKEN, clock=clock)
    for index in range(200):
        emulator.add_app(f"app-{index:03d}", formation={"web": index % 2})
    server = await aiohttp_server(emulator.app())
    provider = make_provider(server, session, clock=clock)
    calls_per_tick: list[int] = []

    for _ in range(120):  # two simulated hours: the warm-up one and a steady one
        before = emulator.total_calls
        await provider.list_apps()
        calls_per_tick.append(emulator.total_calls - before)
        clock.advance(60)

    hourly = [sum(calls_per_tick[start : start + 60]) for start in range(61)]
    assert max(hourly) <= 900


async def test_after_warm_up_every_app_state_is_known_and_under_15_minutes_old_at_every_tick(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    emulator = HerokuEmulator(token=TOKEN, clock=clock)
    for index in range(200):
        emulator.add_app(f"app-{index:03d}", formation={"web": index % 2})
    server = await aiohttp_server(emulator.app())
    provider = make_provider(server, session, clock=clock)
    warm_up_ticks = 15  # 200 apps at 14 refreshes a minute
    await run_ticks(provider, clock, ticks=warm_up_ticks)
    oldest_ages: list[float] = []
    wrong_states: list[str] = []

    for _ in range(60):
        apps = await provider.list_apps()
        fetched = emulator.last_call_times("GET", DYNOS)
        oldest_ages.append(max(clock() - fetched.get(app.name, float("-inf")) for app in apps))
        expected = {True: AppState.RUNNING, False: AppState.STOPPED}
        wrong_states += [
            app.name
            for app in apps
            if app.state is not expected[emulator.apps[app.name].formation["web"] > 0]
        ]
        clock.advance(60)

    assert max(oldest_ages) <= 900
    assert wrong_states == []


async def test_a_low_rate_limit_remaining_slows_the_state_refreshes(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    emulator = HerokuEmulator(token=TOKEN, clock=clock, rate_limit_per_minute=0)
    emulator.rate_limit.tokens = 900  # 20 % of the account's pool
    for index in range(200):
        emulator.add_app(f"app-{index:03d}")
    server = await aiohttp_server(emulator.app())

    await run_ticks(make_provider(server, session, clock=clock), clock, ticks=11)

    full_pace = 10 * 14  # ten minutes of 840 refreshes an hour
    assert 0 < emulator.count("GET", DYNOS) <= full_pace // 3


async def test_a_nearly_empty_rate_limit_pool_pauses_the_state_refreshes(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    emulator = HerokuEmulator(token=TOKEN, clock=clock, rate_limit_per_minute=0)
    emulator.rate_limit.tokens = 400  # under 10 % of the account's pool
    for index in range(200):
        emulator.add_app(f"app-{index:03d}")
    server = await aiohttp_server(emulator.app())

    await run_ticks(make_provider(server, session, clock=clock), clock, ticks=11)

    assert emulator.count("GET", DYNOS) == 0


async def test_a_small_account_does_not_refresh_settled_states_every_tick(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    emulator = HerokuEmulator(token=TOKEN, clock=clock)
    for index in range(5):
        emulator.add_app(f"app-{index}")
    server = await aiohttp_server(emulator.app())

    await run_ticks(make_provider(server, session, clock=clock), clock, ticks=60)

    # Each app at most once per 5 minutes (max_state_age / 3), not 60 times an hour.
    assert emulator.count("GET", DYNOS) <= 5 * 12


async def test_a_state_older_than_max_state_age_is_reported_unknown(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    emulator.add_app("shop")
    clock = ManualClock()
    provider = make_provider(server, session, clock=clock, state_refresh_budget_per_hour=0)
    await provider.get_app("shop")

    clock.advance(901)
    [app] = await provider.list_apps()

    assert app.state is AppState.UNKNOWN


# -- the emulator's own contract -------------------------------------------------------------


async def test_emulator_requires_the_heroku_accept_header(
    server: TestServer, session: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}

    async with session.get(server.make_url("/apps"), headers=headers) as response:
        body = await response.json()

    assert (response.status, body["id"]) == (406, "not_acceptable")


async def test_emulator_accepts_basic_auth_with_an_empty_user(
    server: TestServer, session: aiohttp.ClientSession
) -> None:
    basic = base64.b64encode(f":{TOKEN}".encode()).decode()
    headers = {"Authorization": f"Basic {basic}", "Accept": ACCEPT}

    async with session.get(server.make_url("/apps"), headers=headers) as response:
        assert response.status == 200
        assert "RateLimit-Remaining" in response.headers


async def test_emulator_scales_with_string_quantities_and_keeps_entries_at_zero(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    emulator.add_app("shop", formation={"web": 1, "worker": 1})
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": ACCEPT}
    updates = {"updates": [{"type": "web", "quantity": "3"}, {"type": "worker", "quantity": 0}]}

    url = server.make_url("/apps/shop/formation")
    async with session.patch(url, json=updates, headers=headers) as response:
        body = await response.json()

    assert response.status == 200
    assert {entry["type"]: entry["quantity"] for entry in body} == {"web": 3, "worker": 0}
