"""The Scalingo adapter against the Scalingo emulator, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from emulators.scalingo import ScalingoEmulator
from paastis.providers import (
    AppNotFound,
    AppState,
    Backoff,
    OperationFailed,
    ProviderAuthError,
    ProviderUnavailable,
)
from paastis.providers.api import ProviderCallCounter, RetryPolicy
from paastis.providers.kit import start_and_wait
from paastis.providers.ratelimit import SlidingWindow
from paastis.providers.scalingo import ScalingoProvider

TOKEN = "tk-us-emulated-token"
POLL = 0.05
BOOT = 0.2

MakeProvider = Callable[..., ScalingoProvider]


@pytest.fixture
def emulator() -> ScalingoEmulator:
    return ScalingoEmulator(valid_tokens=(TOKEN,), boot_delay=BOOT)


@pytest.fixture
async def server(aiohttp_server: Any, emulator: ScalingoEmulator) -> TestServer:
    return await aiohttp_server(emulator.app())


@pytest.fixture
def make_provider(server: TestServer, session: aiohttp.ClientSession) -> MakeProvider:
    base = str(server.make_url("/")).rstrip("/")

    def make(**overrides: Any) -> ScalingoProvider:
        options: dict[str, Any] = {
            "api_token": TOKEN,
            "api_url": base,
            "auth_url": base,
            "session": session,
            "counter": ProviderCallCounter(),
            "poll": Backoff(POLL, factor=1.0, cap=POLL, min_gap=POLL),
            "operation_timeout": 5.0,
            "retry": RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05),
            # Scalingo's window, shrunk: a 429 holds the callers for 0.1 s, not a minute.
            "limiter": SlidingWindow(1000, 0.1),
        }
        options.update(overrides)
        return ScalingoProvider(**options)

    return make


@pytest.fixture
def provider(make_provider: MakeProvider) -> ScalingoProvider:
    return make_provider()


def api_calls(emulator: ScalingoEmulator) -> int:
    """Calls to the regional API (the token exchange excluded)."""
    return sum(1 for call in emulator.log if call.route != "exchange_token")


# -- listing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("running", AppState.RUNNING),
        ("stopped", AppState.STOPPED),
        ("scaling", AppState.STARTING),
        ("crashed", AppState.FAILED),
        ("new", AppState.STOPPED),
        ("something-else", AppState.UNKNOWN),
    ],
)
async def test_list_apps_maps_scalingo_status_to_state(
    emulator: ScalingoEmulator, provider: ScalingoProvider, status: str, state: AppState
) -> None:
    emulator.add_app("my-app", status=status)

    [app] = await provider.list_apps()

    assert (app.state, app.status) == (state, status)


@pytest.mark.parametrize("status", ["booting", "restarting"])
async def test_an_app_deploying_while_its_web_runs_is_running_not_asleep(
    emulator: ScalingoEmulator, provider: ScalingoProvider, status: str
) -> None:
    emulator.add_app("serving", {"web": 1}, status=status)
    emulator.add_app("booting-web", {"web": 1}, status=status)
    emulator.apps["booting-web"].containers[0].ready_at = asyncio.get_running_loop().time() + 60

    listed = {app.name: app.state for app in await provider.list_apps()}
    fetched = {name: (await provider.get_app(name)).state for name in listed}

    expected = {"serving": AppState.RUNNING, "booting-web": AppState.STARTING}
    assert listed == fetched == expected
    assert emulator.count("ps") == 4  # the containers were read, at the listing and each get


async def test_list_apps_is_a_single_api_call(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    for i in range(5):
        emulator.add_app(f"app-{i}")

    apps = await provider.list_apps()

    assert len(apps) == 5
    assert api_calls(emulator) == 1


async def test_list_apps_uses_base_url_not_custom_domain_url(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", base_url="http://127.0.0.1:9999", url="https://shop.example.com")

    [app] = await provider.list_apps()

    assert app.upstream_url == "http://127.0.0.1:9999"


async def test_list_apps_falls_back_to_the_default_domain_without_base_url(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", base_url=None, region="osc-secnum-fr1")

    [app] = await provider.list_apps()

    assert app.upstream_url == "https://shop.osc-secnum-fr1.scalingo.io"


async def test_list_apps_reports_metadata_with_aware_datetimes(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulated = emulator.add_app("shop")
    emulated.force_https = True

    [app] = await provider.list_apps()

    assert (app.id, app.region, app.provider) == (emulated.id, "osc-fr1", "scalingo")
    assert app.created_at is not None and app.created_at.utcoffset() is not None
    assert app.last_deployed_at is not None and app.last_deployed_at.utcoffset() is not None
    assert (app.force_https, app.sticky_session) == (True, False)
    assert app.git_url == emulated.git_url


# -- one app ----------------------------------------------------------------------------


async def test_get_app_of_running_app_confirms_web_containers_in_two_calls(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 2})

    app = await provider.get_app("shop")

    assert app.state is AppState.RUNNING
    assert api_calls(emulator) == 2


async def test_get_app_of_running_app_with_booting_web_is_starting(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 2})
    emulator.apps["shop"].containers[1].ready_at = asyncio.get_running_loop().time() + 60

    app = await provider.get_app("shop")

    assert (app.status, app.state) == ("running", AppState.STARTING)


async def test_get_app_with_only_a_worker_running_is_stopped_for_http(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 0, "worker": 1})

    app = await provider.get_app("shop")

    assert (app.status, app.state) == ("running", AppState.STOPPED)


# -- start ------------------------------------------------------------------------------


async def test_start_restores_the_remembered_formation(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 2, "worker": 1}, status="stopped")

    await start_and_wait(provider, "shop", {"formation": {"web": 2, "worker": 1}})

    assert emulator.apps["shop"].formation == {"web": 2, "worker": 1}


async def test_start_reads_a_formation_remembered_by_an_earlier_version(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 2, "worker": 1}, status="stopped")

    await start_and_wait(provider, "shop", {"web": 2, "worker": 1})  # flat, as Redis may hold

    assert emulator.apps["shop"].formation == {"web": 2, "worker": 1}


async def test_start_returns_only_once_web_containers_run(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 2, "worker": 1}, status="stopped")
    began = time.monotonic()

    await start_and_wait(provider, "shop", {"formation": {"web": 2, "worker": 1}})

    assert time.monotonic() - began >= BOOT
    assert emulator.web_states("shop") == ["running", "running"]
    assert emulator.status_of("shop") == "running"


async def test_start_returns_once_the_platform_accepted_the_scale(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 1}, status="stopped")

    startup = await provider.start("shop", None)

    assert emulator.statuses("scale") == [202]
    assert emulator.web_states("shop") == ["booting"]
    assert await startup.running() is False


async def test_a_stopped_app_without_operation_runs_once_its_web_containers_run(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    # Scaled by someone else meanwhile: "no change", so the containers tell.
    emulator.container_boot_lag = 0.2
    emulator.add_app("shop", {"web": 1}, status="stopped")
    await provider.start("shop", None)
    startup = await provider.start("shop", {"formation": {"web": 1}})

    assert await startup.running() is False
    await asyncio.sleep(BOOT + 0.25)
    assert await startup.running() is True


async def test_start_without_formation_scales_web_to_one(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 3, "worker": 2}, status="stopped")

    await start_and_wait(provider, "shop", None)

    assert emulator.apps["shop"].formation == {"web": 1, "worker": 0}


async def test_start_without_formation_never_scales_down_a_running_web(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 3})

    await start_and_wait(provider, "shop", None)

    assert emulator.apps["shop"].formation == {"web": 3}
    assert emulator.count("scale") == 0


async def test_app_name_cannot_escape_its_api_path(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop")

    with pytest.raises(AppNotFound):
        await provider.get_app("shop/ps")

    assert emulator.count("ps") == 0


async def test_start_of_running_app_treats_no_change_as_success(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 1})

    await start_and_wait(provider, "shop", {"formation": {"web": 1}})

    assert emulator.statuses("scale") == [400]
    assert emulator.count("operation") == 0


async def test_start_retries_while_the_app_is_busy(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 1}, status="stopped")
    emulator.make_busy("shop", 0.4)

    await start_and_wait(provider, "shop", {"formation": {"web": 1}})

    statuses = emulator.statuses("scale")
    assert statuses[0] == 422 and statuses[-1] == 202
    assert emulator.web_states("shop") == ["running"]


@pytest.mark.parametrize("status", [404, 422])
async def test_start_drops_remembered_types_the_app_no_longer_has(
    emulator: ScalingoEmulator, provider: ScalingoProvider, status: int
) -> None:
    # A deployment while the app slept removed its `clock` process type.
    emulator.unknown_type_status = status
    emulator.add_app("shop", {"web": 1, "worker": 1}, status="stopped")

    await start_and_wait(provider, "shop", {"formation": {"web": 2, "worker": 1, "clock": 1}})

    assert emulator.apps["shop"].formation == {"web": 2, "worker": 1}


async def test_start_refused_for_a_formation_that_fits_raises_operation_failed(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 1}, status="stopped")
    refusal = {"errors": {"containers": ["amount is over the plan's limit"]}}
    emulator.fail_next("scale", 422, body=refusal, times=5)

    with pytest.raises(OperationFailed):
        await start_and_wait(provider, "shop", {"formation": {"web": 1}})

    assert emulator.count("scale", app="shop") == 1


async def test_start_raises_operation_failed_when_the_operation_errors(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 1}, status="stopped")
    emulator.apps["shop"].next_operation_error = "container failed to boot"

    with pytest.raises(OperationFailed, match="container failed to boot"):
        await start_and_wait(provider, "shop", None)


async def test_start_of_never_deployed_app_raises_operation_failed(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("fresh", {"web": 0}, status="new")

    with pytest.raises(OperationFailed, match="never been deployed"):
        await start_and_wait(provider, "fresh", None)


async def test_start_polls_no_faster_than_poll_interval(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 1}, status="stopped")

    await start_and_wait(provider, "shop", None)

    polls = [c.at for c in emulator.log if c.route == "operation"]
    assert len(polls) >= 2
    assert all(b - a >= POLL * 0.9 for a, b in itertools.pairwise(polls))


async def test_one_wake_makes_a_bounded_number_of_api_calls(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 2, "worker": 1}, status="stopped")

    await start_and_wait(provider, "shop", {"formation": {"web": 2, "worker": 1}})

    # One scale, one operation poll per interval of the boot (plus one late), one /ps.
    assert api_calls(emulator) <= 1 + math.ceil(BOOT / POLL) + 1 + 2


async def test_concurrent_wakes_keep_within_the_sliding_window(
    emulator: ScalingoEmulator, make_provider: MakeProvider
) -> None:
    emulator.boot_delay = 0.0
    for i in range(4):
        emulator.add_app(f"app-{i}", {"web": 1}, status="stopped")
    provider = make_provider(limiter=SlidingWindow(3, 0.2))

    await asyncio.gather(*(start_and_wait(provider, f"app-{i}", None) for i in range(4)))

    # 4 wakes x (containers, scale, operation) + 1 exchange, never more than 3 in 0.2 s.
    arrivals = [call.at for call in emulator.log]
    assert len(arrivals) == 13
    assert max(sum(1 for t in arrivals if start <= t < start + 0.2) for start in arrivals) <= 3


# -- stop -------------------------------------------------------------------------------


async def test_stop_returns_the_running_formation(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 2, "worker": 1, "clock": 0})

    remembered = await provider.stop("shop")

    assert remembered == {"formation": {"web": 2, "worker": 1}}


async def test_stop_of_stopped_app_returns_none_without_scaling(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 1}, status="stopped")

    assert await provider.stop("shop") is None
    assert emulator.count("scale") == 0


async def test_stop_longer_than_operation_timeout_raises_operation_failed(
    emulator: ScalingoEmulator, make_provider: MakeProvider
) -> None:
    emulator.boot_delay = 2.0
    emulator.add_app("shop", {"web": 1})
    provider = make_provider(operation_timeout=0.3)

    with pytest.raises(OperationFailed, match="did not finish stopping"):
        await provider.stop("shop")


async def test_stop_then_start_restores_the_same_formation(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 2, "worker": 1})

    await start_and_wait(provider, "shop", await provider.stop("shop"))

    assert emulator.apps["shop"].formation == {"web": 2, "worker": 1}
    assert emulator.web_states("shop") == ["running", "running"]


# -- authentication ---------------------------------------------------------------------


async def test_jwt_is_reused_while_fresh(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    await provider.list_apps()
    await provider.list_apps()

    assert emulator.count("exchange_token") == 1


async def test_jwt_near_expiry_is_renewed(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.token_lifetime = 299  # under the 5-minute renewal margin from the start

    await provider.list_apps()
    await provider.list_apps()

    assert emulator.count("exchange_token") == 2


async def test_concurrent_calls_share_one_token_exchange(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    await asyncio.gather(*(provider.list_apps() for _ in range(5)))

    assert emulator.count("exchange_token") == 1


async def test_401_from_the_api_triggers_exactly_one_reexchange(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop")
    await provider.list_apps()
    emulator.revoke_jwts()

    [app] = await provider.list_apps()

    assert app.name == "shop"
    assert emulator.count("exchange_token") == 2


async def test_401_after_reexchange_raises_provider_auth_error(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.fail_next("list_apps", 401, times=2)

    with pytest.raises(ProviderAuthError):
        await provider.list_apps()

    assert emulator.count("exchange_token") == 2


async def test_rejected_api_token_raises_provider_auth_error(
    make_provider: MakeProvider,
) -> None:
    provider = make_provider(api_token="tk-us-wrong")

    with pytest.raises(ProviderAuthError, match="the Scalingo API token was rejected") as caught:
        await provider.list_apps()

    assert "tk-us-wrong" not in str(caught.value)


async def test_tokens_never_appear_in_logs(
    emulator: ScalingoEmulator, provider: ScalingoProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator.add_app("shop", {"web": 1}, status="stopped")
    emulator.fail_next("scale", 500)
    await provider.list_apps()
    emulator.revoke_jwts()

    await start_and_wait(provider, "shop", None)

    assert caplog.records, "the retry and re-exchange should have logged something"
    secrets = [TOKEN, *emulator.issued_jwts]
    assert not any(secret in caplog.text for secret in secrets)


# -- resilience -------------------------------------------------------------------------


async def test_a_single_500_is_retried(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop")
    emulator.fail_next("list_apps", 500)

    [app] = await provider.list_apps()

    assert app.name == "shop"
    assert emulator.statuses("list_apps") == [500, 200]


async def test_persistent_500_raises_provider_unavailable(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.fail_next("list_apps", 500, times=100)

    with pytest.raises(ProviderUnavailable):
        await provider.list_apps()


async def test_plain_text_429_is_retried(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 1}, status="stopped")
    emulator.fail_next("scale", 429, body="Retry later", times=2)

    await start_and_wait(provider, "shop", None)

    assert emulator.statuses("scale") == [429, 429, 202]


async def test_emulator_rate_limit_answers_429_retry_later(
    emulator: ScalingoEmulator, server: TestServer, session: aiohttp.ClientSession
) -> None:
    emulator.rate_limit_per_minute = 2
    statuses = []
    for _ in range(3):
        async with session.get(server.make_url("/v1/regions")) as response:
            statuses.append((response.status, await response.text()))

    assert [status for status, _ in statuses] == [401, 401, 429]
    assert statuses[-1][1] == "Retry later"


async def test_start_restarts_a_crashed_app(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 1}, status="crashed")

    await start_and_wait(provider, "shop", None)

    assert emulator.count("restart", app="shop") == 1
    assert emulator.count("scale", app="shop") == 0
    assert emulator.web_states("shop") == ["running"]
    assert emulator.status_of("shop") == "running"


async def test_start_of_a_stopped_app_does_not_restart_it(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 1}, status="stopped")

    await start_and_wait(provider, "shop", None)

    assert emulator.count("restart") == 0


# -- autoscalers ------------------------------------------------------------------------


async def test_stop_remembers_the_enabled_autoscalers_that_scaling_down_disables(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 3, "worker": 1})
    web = emulator.add_autoscaler("shop", "web", min_containers=2)
    emulator.add_autoscaler("shop", "worker", min_containers=2, disabled=True)

    remembered = await provider.stop("shop")

    assert remembered == {
        "formation": {"web": 3, "worker": 1},
        "autoscalers": [{"id": web.id, "container_type": "web", "min_containers": 2}],
    }
    assert [a.disabled for a in emulator.apps["shop"].autoscalers] == [True, True]


async def test_a_wake_enables_exactly_the_autoscalers_the_stop_disabled(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 3, "worker": 1})
    emulator.add_autoscaler("shop", "web", min_containers=2)
    emulator.add_autoscaler("shop", "worker", min_containers=2, disabled=True)  # the user's

    await start_and_wait(provider, "shop", await provider.stop("shop"))

    assert [a.disabled for a in emulator.apps["shop"].autoscalers] == [False, True]
    assert emulator.apps["shop"].formation == {"web": 3, "worker": 1}
    # Enabled only once the scale operation was done: "no other operation" meanwhile.
    [patch] = [c for c in emulator.log if c.route == "autoscaler"]
    [done] = [c for c in emulator.log if c.route == "operation"][-1:]
    assert patch.at >= done.at and patch.status == 200


async def test_a_wake_scales_an_autoscaled_type_to_at_least_its_minimum(
    emulator: ScalingoEmulator, provider: ScalingoProvider
) -> None:
    emulator.add_app("shop", {"web": 1}, status="stopped")
    autoscaler = emulator.add_autoscaler("shop", "web", min_containers=2, disabled=True)
    remembered = {
        "formation": {"web": 1},
        "autoscalers": [{"id": autoscaler.id, "container_type": "web", "min_containers": 2}],
    }

    await start_and_wait(provider, "shop", remembered)

    assert emulator.apps["shop"].formation == {"web": 2}
    assert autoscaler.disabled is False


async def test_an_autoscaler_that_cannot_be_enabled_again_leaves_the_app_running_and_logged(
    emulator: ScalingoEmulator, provider: ScalingoProvider, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.add_app("shop", {"web": 2})
    emulator.add_autoscaler("shop", "web", min_containers=2)
    remembered = await provider.stop("shop")
    emulator.fail_next("autoscaler", 500, times=10)

    await start_and_wait(provider, "shop", remembered)

    assert emulator.web_states("shop") == ["running", "running"]
    assert "autoscaler could not be enabled again" in caplog.text


# -- several regions --------------------------------------------------------------------

REGIONS = ("osc-fr1", "osc-secnum-fr1")


@pytest.fixture
async def regional(aiohttp_server: Any, emulator: ScalingoEmulator, make_provider: MakeProvider):
    """One provider over two regions, each served by its own emulated regional API."""
    server = await aiohttp_server(emulator.regional_app(REGIONS))
    base = str(server.make_url("")).rstrip("/")
    return make_provider(regions=REGIONS, api_url=base + "/{region}", auth_url=base + "/auth")


async def test_the_apps_of_every_listed_region_are_listed_through_their_region_api(
    emulator: ScalingoEmulator, regional: ScalingoProvider
) -> None:
    emulator.add_app("paris", region="osc-fr1")
    emulator.add_app("secure", region="osc-secnum-fr1")

    apps = {app.name: app.region for app in await regional.list_apps()}

    assert apps == {"paris": "osc-fr1", "secure": "osc-secnum-fr1"}
    assert sorted(c.path for c in emulator.log if c.route == "list_apps") == [
        "/osc-fr1/v1/apps",
        "/osc-secnum-fr1/v1/apps",
    ]


async def test_an_app_is_started_and_stopped_through_its_own_region_api(
    emulator: ScalingoEmulator, regional: ScalingoProvider
) -> None:
    emulator.add_app("secure", {"web": 2}, region="osc-secnum-fr1")

    await start_and_wait(regional, "secure", await regional.stop("secure"))

    assert emulator.apps["secure"].formation == {"web": 2}
    paths = {c.path.split("/")[1] for c in emulator.log if c.app == "secure"}
    assert paths == {"osc-secnum-fr1"}


async def test_an_app_of_no_listed_region_is_not_found(
    emulator: ScalingoEmulator, regional: ScalingoProvider
) -> None:
    emulator.add_app("elsewhere", region="osc-other")

    with pytest.raises(AppNotFound):
        await regional.get_app("elsewhere")


# -- the rate limit ---------------------------------------------------------------------


async def test_a_burst_of_calls_stays_inside_the_window_and_meets_no_429(
    emulator: ScalingoEmulator, make_provider: MakeProvider
) -> None:
    # Scalingo's 60 calls a minute, shrunk to 5 calls in 0.5 s on both sides.
    emulator.rate_limit_per_minute, emulator.rate_limit_window = 5, 0.5
    emulator.add_app("shop")
    provider = make_provider(limiter=SlidingWindow(5, 0.5))

    await asyncio.gather(*(provider.list_apps() for _ in range(12)))

    assert 429 not in emulator.statuses()
    assert emulator.count("list_apps") == 12


async def test_after_a_429_every_call_waits_a_whole_window(
    emulator: ScalingoEmulator, make_provider: MakeProvider
) -> None:
    emulator.add_app("shop")
    provider = make_provider(limiter=SlidingWindow(1000, 0.4))
    await provider.list_apps()  # the token exchanged, so that the next call is the 429
    emulator.fail_next("list_apps", 429)

    async def another_call_meanwhile() -> None:
        await asyncio.sleep(0.1)  # once the 429 came back
        await provider.get_app("shop")

    await asyncio.gather(provider.list_apps(), another_call_meanwhile())

    refused = next(c for c in emulator.log if c.status == 429)
    later = [c.at for c in emulator.log if c.at > refused.at]
    assert later and min(later) - refused.at >= 0.4 * 0.95
