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
    AppState,
    Backoff,
    OperationFailed,
    ProviderAuthError,
    ProviderUnavailable,
)
from paastis.providers.api import ProviderCallCounter, RetryPolicy
from paastis.providers.heroku import RESERVE, HerokuProvider
from paastis.providers.kit import start_and_wait

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
        "poll": Backoff(0.05, factor=1.0, cap=0.05, min_gap=0.05),
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
    assert emulator.count(method="GET", route="/apps") == 3


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

    apps = await make_provider(server, session, regions=["eu"]).list_apps()

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


# -- start and stop --------------------------------------------------------------------------


async def test_start_restores_the_formation_in_one_patch_and_returns_once_web_is_up(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    emulator.add_app("shop", formation={"web": 0, "worker": 0})

    await start_and_wait(
        make_provider(server, session), "shop", {"formation": {"web": 2, "worker": 1}}
    )

    assert emulator.count(method="PATCH", route=FORMATION, app="shop") == 1
    assert emulator.apps["shop"].formation == {"web": 2, "worker": 1}
    assert ("web", "up") in emulator.dyno_states("shop")


async def test_start_without_a_remembered_formation_runs_one_web_dyno(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    emulator.add_app("shop", formation={"web": 0, "worker": 0})

    await start_and_wait(make_provider(server, session), "shop", None)

    assert emulator.apps["shop"].formation == {"web": 1, "worker": 0}


async def test_start_drops_a_process_type_the_app_no_longer_has(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    emulator.add_app("shop", formation={"web": 0})

    await start_and_wait(
        make_provider(server, session), "shop", {"formation": {"web": 1, "clock": 1}}
    )

    assert emulator.apps["shop"].formation == {"web": 1}
    assert ("web", "up") in emulator.dyno_states("shop")


async def test_start_polls_the_dynos_no_faster_than_the_poll_interval(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    emulator = HerokuEmulator(token=TOKEN, boot_delay=0.5)
    emulator.add_app("shop", formation={"web": 0})
    server = await aiohttp_server(emulator.app())

    poll = Backoff(0.2, factor=1.0, cap=0.2, min_gap=0.2)
    await start_and_wait(make_provider(server, session, poll=poll), "shop", None)

    polls = [call.at for call in emulator.calls(DYNOS, method="GET")]
    assert len(polls) >= 2
    assert min(b - a for a, b in itertools.pairwise(polls)) >= 0.19


async def test_start_fails_when_the_web_dynos_crash(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    emulator.add_app("shop", formation={"web": 0}).boot_outcome = "crashed"

    with pytest.raises(OperationFailed):
        await start_and_wait(make_provider(server, session), "shop", None)


async def test_stop_remembers_the_formation_and_scales_everything_to_zero_in_one_patch(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    emulator.add_app("shop", formation={"web": 2, "worker": 1, "clock": 0})

    remembered = await make_provider(server, session).stop("shop")

    assert remembered == {"formation": {"web": 2, "worker": 1}}
    assert emulator.count(method="PATCH", route=FORMATION, app="shop") == 1
    assert emulator.apps["shop"].formation == {"web": 0, "worker": 0, "clock": 0}
    assert emulator.dyno_states("shop") == []


async def test_stop_of_an_app_with_nothing_running_returns_none_without_scaling(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    emulator.add_app("shop", formation={"web": 0})

    remembered = await make_provider(server, session).stop("shop")

    assert remembered is None
    assert emulator.count(method="PATCH", route=FORMATION, app="shop") == 0


async def test_own_start_and_stop_update_the_state_without_refresh_calls(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    emulator.add_app("shop", formation={"web": 1})
    clock = ManualClock()
    provider = make_provider(server, session, clock=clock)

    await provider.stop("shop")
    [app] = await provider.list_apps()

    assert app.state is AppState.STOPPED
    assert emulator.count(method="GET", route=DYNOS, app="shop") == 0


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["", "wrong-token"])
async def test_a_missing_or_wrong_token_raises_provider_auth_error(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession, token: str
) -> None:
    emulator.add_app("shop")

    with pytest.raises(ProviderAuthError, match="the Heroku credentials were rejected"):
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
    assert emulator.count(method="GET", route="/apps") == 4


async def test_a_persistent_500_raises_provider_unavailable(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    emulator.add_app("shop")
    emulator.fail_next("/apps/{app}", 500, times=100)

    with pytest.raises(ProviderUnavailable):
        await make_provider(server, session).get_app("shop")


async def test_a_403_two_factor_says_a_second_factor_is_required(
    emulator: HerokuEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    body = {"id": "two_factor", "message": "A second authentication factor is required."}
    emulator.fail_next("/apps", 403, body=body)

    with pytest.raises(ProviderAuthError) as caught:
        await make_provider(server, session).list_apps()

    message = str(caught.value)
    assert "second factor" in message and "two_factor" in message
    assert "credentials were rejected" not in message


# -- states within the account's pool -------------------------------------------------------


def two_hundred_apps(emulator: HerokuEmulator) -> None:
    for index in range(200):
        emulator.add_app(f"app-{index:03d}", formation={"web": index % 2})


async def test_the_first_listing_of_200_apps_knows_every_state(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    emulator = HerokuEmulator(token=TOKEN, clock=ManualClock())
    two_hundred_apps(emulator)
    server = await aiohttp_server(emulator.app())

    apps = await make_provider(server, session).list_apps()

    expected = {True: AppState.RUNNING, False: AppState.STOPPED}
    assert {app.name: app.state for app in apps} == {
        name: expected[app.formation["web"] > 0] for name, app in emulator.apps.items()
    }
    assert emulator.count(method="GET", route=DYNOS) == 200


async def test_200_apps_listed_every_minute_cost_260_calls_in_the_first_hour(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    emulator = HerokuEmulator(token=TOKEN, clock=clock)
    two_hundred_apps(emulator)
    server = await aiohttp_server(emulator.app())
    provider = make_provider(server, session, clock=clock)
    calls_per_tick: list[int] = []

    for _ in range(120):  # two simulated hours of a one-minute cron
        before = emulator.total_calls
        await provider.list_apps()
        calls_per_tick.append(emulator.total_calls - before)
        clock.advance(60)

    # One listing a minute, and each state once an hour (max_state_age).
    hourly = [sum(calls_per_tick[start : start + 60]) for start in range(61)]
    assert hourly[0] == 60 + 200
    assert max(hourly) == 60 + 200


async def test_every_state_stays_known_and_true_without_being_fetched_at_every_tick(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    emulator = HerokuEmulator(token=TOKEN, clock=clock)
    two_hundred_apps(emulator)
    server = await aiohttp_server(emulator.app())
    provider = make_provider(server, session, clock=clock)
    oldest_ages: list[float] = []
    wrong_states: list[str] = []

    for _ in range(90):
        apps = await provider.list_apps()
        fetched = emulator.last_call_times(DYNOS, method="GET")
        oldest_ages.append(max(clock() - fetched.get(app.name, float("-inf")) for app in apps))
        expected = {True: AppState.RUNNING, False: AppState.STOPPED}
        wrong_states += [
            app.name
            for app in apps
            if app.state is not expected[emulator.apps[app.name].formation["web"] > 0]
        ]
        clock.advance(60)

    assert max(oldest_ages) <= 3600
    assert wrong_states == []


async def test_a_low_pool_is_spent_down_to_the_reserve_and_no_further(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    emulator = HerokuEmulator(token=TOKEN, clock=clock, rate_limit_per_minute=0)
    emulator.rate_limit.tokens = 600
    two_hundred_apps(emulator)
    server = await aiohttp_server(emulator.app())

    await run_ticks(make_provider(server, session, clock=clock), clock, ticks=11)

    assert 0 < emulator.count(method="GET", route=DYNOS) <= 600 - RESERVE
    assert emulator.rate_limit.tokens >= RESERVE - 11  # what the listings themselves cost


async def test_a_nearly_empty_pool_pauses_the_state_fetches(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    emulator = HerokuEmulator(token=TOKEN, clock=clock, rate_limit_per_minute=0)
    emulator.rate_limit.tokens = 400  # under the reserve
    two_hundred_apps(emulator)
    server = await aiohttp_server(emulator.app())

    await run_ticks(make_provider(server, session, clock=clock), clock, ticks=11)

    assert emulator.count(method="GET", route=DYNOS) == 0


async def test_a_small_account_fetches_each_state_once_an_hour(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    emulator = HerokuEmulator(token=TOKEN, clock=clock)
    for index in range(5):
        emulator.add_app(f"app-{index}")
    server = await aiohttp_server(emulator.app())

    await run_ticks(make_provider(server, session, clock=clock), clock, ticks=60)

    assert emulator.count(method="GET", route=DYNOS) == 5


async def test_a_state_older_than_max_state_age_is_reported_unknown(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    emulator = HerokuEmulator(token=TOKEN, clock=clock, rate_limit_per_minute=0)
    emulator.add_app("shop")
    server = await aiohttp_server(emulator.app())
    provider = make_provider(server, session, clock=clock)
    await provider.get_app("shop")
    emulator.rate_limit.tokens = 400  # nothing to spare for a fresh look

    clock.advance(3601)
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
