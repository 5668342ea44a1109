"""The Clever Cloud adapter against the Clever Cloud API emulator."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from emulators.clever_cloud import CleverEmulator
from paastis.providers import (
    AppNotFound,
    AppState,
    Backoff,
    OperationFailed,
    ProviderAuthError,
    ProviderUnavailable,
)
from paastis.providers.api import ProviderCallCounter, RetryPolicy
from paastis.providers.clever_cloud import (
    CleverCloudProvider,
    CleverOAuthCredentials,
    oauth_plaintext_header,
)
from paastis.providers.kit import start_and_wait
from waiting import eventually

pytestmark = pytest.mark.timeout(10)

OAUTH = CleverOAuthCredentials(
    consumer_key="ck", consumer_secret="cs", token="tok", token_secret="ts"
)

MakeProvider = Callable[..., CleverCloudProvider]


@pytest.fixture
def emulator() -> CleverEmulator:
    return CleverEmulator(boot_delay=0.05)


@pytest.fixture
async def api(aiohttp_server: Any, emulator: CleverEmulator) -> TestServer:
    return await aiohttp_server(emulator.web_app())


@pytest.fixture
async def bridge(aiohttp_server: Any, emulator: CleverEmulator) -> TestServer:
    return await aiohttp_server(emulator.web_app(bridge=True))


@pytest.fixture
def make_provider(api: TestServer, session: aiohttp.ClientSession) -> MakeProvider:
    def make(**overrides: Any) -> CleverCloudProvider:
        options: dict[str, Any] = {
            "api_host": str(api.make_url("/")),
            "session": session,
            "counter": ProviderCallCounter(),
            "oauth": OAUTH,
            "operation_timeout": 3.0,
            "poll": Backoff(0.02, factor=1.0, cap=0.02, min_gap=0.02),
            "retry": RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05),
        }
        options.update(overrides)
        return CleverCloudProvider(**options)

    return make


@pytest.fixture
def provider(make_provider: MakeProvider) -> CleverCloudProvider:
    return make_provider()


def paths(emulator: CleverEmulator, app_id: str) -> list[str]:
    return [c.path for c in emulator.log if c.app == app_id]


# Authentication


def test_oauth_header_is_the_plaintext_form_of_the_official_client() -> None:
    assert oauth_plaintext_header(OAUTH) == (
        'OAuth oauth_consumer_key="ck", oauth_token="tok", oauth_signature="cs%26ts"'
    )


def test_provider_needs_exactly_one_kind_of_credentials(session: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError):
        CleverCloudProvider(
            api_host="http://127.0.0.1:1",
            session=session,
            counter=ProviderCallCounter(),
            oauth=OAUTH,
            api_token="token",
        )


async def test_oauth_credentials_are_accepted(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    emulator.add_app("front")

    apps = await provider.list_apps()

    assert [a.name for a in apps] == ["front"]


async def test_wrong_oauth_secret_is_rejected_with_an_auth_error(
    make_provider: MakeProvider,
) -> None:
    wrong = CleverOAuthCredentials(
        consumer_key="ck", consumer_secret="cs", token="tok", token_secret="not-ts"
    )
    provider = make_provider(oauth=wrong)

    with pytest.raises(ProviderAuthError, match="the Clever Cloud credentials were rejected"):
        await provider.list_apps()


async def test_auth_error_message_and_repr_carry_no_secret(make_provider: MakeProvider) -> None:
    wrong = CleverOAuthCredentials(
        consumer_key="ck", consumer_secret="s3cret-cs", token="s3cret-tok", token_secret="s3cret-ts"
    )
    provider = make_provider(oauth=wrong)

    with pytest.raises(ProviderAuthError) as caught:
        await provider.list_apps()

    shown = f"{caught.value} {caught.value.__cause__} {wrong!r} {provider!r}"
    assert "s3cret" not in shown


async def test_secrets_with_reserved_characters_are_percent_encoded(
    aiohttp_server: Any, session: aiohttp.ClientSession
) -> None:
    emulator = CleverEmulator(consumer_secret="c&s/+=", token_secret="t s%~")
    emulator.add_app("front")
    server = await aiohttp_server(emulator.web_app())
    credentials = CleverOAuthCredentials(
        consumer_key="ck", consumer_secret="c&s/+=", token="tok", token_secret="t s%~"
    )
    provider = CleverCloudProvider(
        api_host=str(server.make_url("/")),
        session=session,
        counter=ProviderCallCounter(),
        oauth=credentials,
    )

    assert [a.name for a in await provider.list_apps()] == ["front"]


async def test_bearer_token_is_accepted_by_the_bridge(
    make_provider: MakeProvider, bridge: TestServer, emulator: CleverEmulator
) -> None:
    emulator.add_app("front")
    provider = make_provider(api_host=str(bridge.make_url("/")), oauth=None, api_token="api-token")

    assert [a.name for a in await provider.list_apps()] == ["front"]


async def test_wrong_bearer_token_is_rejected_with_an_auth_error(
    make_provider: MakeProvider, bridge: TestServer
) -> None:
    provider = make_provider(api_host=str(bridge.make_url("/")), oauth=None, api_token="nope")

    with pytest.raises(ProviderAuthError, match="the Clever Cloud credentials were rejected"):
        await provider.list_apps()


# Listing


async def test_one_summary_call_lists_personal_and_organisation_apps(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    emulator.add_app("personal")
    emulator.add_app("shared", owner="orga_acme")

    apps = await provider.list_apps()

    assert sorted(a.name for a in apps) == ["personal", "shared"]
    assert len(emulator.log) == 1 and emulator.count("summary", method="GET") == 1


async def test_listing_maps_the_summary_state(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    emulator.add_app("up", state="SHOULD_BE_UP")
    emulator.add_app("down", state="SHOULD_BE_DOWN")
    emulator.add_app("booting", state="WANTS_TO_BE_UP")
    emulator.add_app("blocked", state="MODERATED")

    states = {a.name: a.state for a in await provider.list_apps()}

    assert states == {
        "up": AppState.RUNNING,
        "down": AppState.STOPPED,
        "booting": AppState.STARTING,
        "blocked": AppState.UNKNOWN,
    }


async def test_listed_app_carries_its_ids(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    app_id = emulator.add_app("front")

    [app] = await provider.list_apps()

    assert app.id == app_id
    assert app.aliases == (app_id.replace("app_", "app-"),)
    assert app.provider == "clever-cloud"


async def test_organisation_app_calls_use_the_organisation_path(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    app_id = emulator.add_app("shared", owner="orga_acme")
    await provider.list_apps()

    await provider.get_app("shared")
    await provider.stop("shared")

    app_paths = paths(emulator, app_id)
    assert app_paths
    assert all(p.startswith("/v2/organisations/orga_acme/applications/") for p in app_paths)


async def test_personal_app_calls_use_the_self_path(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    app_id = emulator.add_app("personal")

    await provider.get_app("personal")

    assert all(p.startswith("/v2/self/applications/") for p in paths(emulator, app_id))


async def test_colliding_names_are_listed_by_dns_id(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    first = emulator.add_app("api")
    second = emulator.add_app("api", owner="orga_acme")
    emulator.add_app("front")

    names = sorted(a.name for a in await provider.list_apps())

    assert names == sorted(["front", first.replace("_", "-"), second.replace("_", "-")])


async def test_colliding_name_does_not_address_any_app(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    emulator.add_app("api")
    emulator.add_app("api", owner="orga_acme")
    await provider.list_apps()

    with pytest.raises(AppNotFound, match="app-<uuid>"):
        await provider.get_app("api")


async def test_name_collision_is_warned_once_per_change(
    provider: CleverCloudProvider, emulator: CleverEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.add_app("api")
    emulator.add_app("api", owner="orga_acme")
    caplog.set_level(logging.WARNING, logger="paastis.provider.clever_cloud")

    await provider.list_apps()
    await provider.list_apps()
    emulator.add_app("api", owner="orga_other")
    await provider.list_apps()

    assert len([r for r in caplog.records if "share a name" in r.getMessage()]) == 2


@pytest.mark.parametrize("form", ["name", "dns alias", "id"])
async def test_app_is_addressed_by_name_dns_alias_or_id(
    provider: CleverCloudProvider, emulator: CleverEmulator, form: str
) -> None:
    app_id = emulator.add_app("front")
    key = {"name": "front", "dns alias": app_id.replace("_", "-"), "id": app_id}[form]

    app = await provider.get_app(key)

    assert (app.id, app.name) == (app_id, "front")


async def test_app_created_after_the_listing_is_found_by_listing_again(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    await provider.list_apps()
    emulator.add_app("new")

    app = await provider.get_app("new")

    assert app.name == "new"


async def test_unknown_app_lists_again_once_then_is_not_found(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    await provider.list_apps()

    with pytest.raises(AppNotFound):
        await provider.get_app("ghost")

    assert emulator.count("summary", method="GET") == 2


async def test_calls_are_counted_under_the_provider_name(
    make_provider: MakeProvider, emulator: CleverEmulator
) -> None:
    counter = ProviderCallCounter()
    provider = make_provider(counter=counter)

    await provider.list_apps()

    assert counter.calls[("clever-cloud", "list_apps", "200")] == 1


# One app: state


async def test_stopped_app_is_stopped_without_reading_instances(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    emulator.add_app("front", state="SHOULD_BE_DOWN")

    app = await provider.get_app("front")

    assert app.state is AppState.STOPPED
    assert emulator.count(route="instances") == emulator.count(route="deployments") == 0


async def test_app_with_a_deployment_in_progress_is_starting(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    app_id = emulator.add_app("front", state="SHOULD_BE_DOWN")
    emulator.boot_delay = 5.0
    emulator.redeploy(app_id)

    app = await provider.get_app("front")

    assert (app.state, app.status) == (AppState.STARTING, "starting")


async def test_app_whose_start_failed_is_failed(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    emulator.add_app("front", state="SHOULD_BE_DOWN")
    emulator.fail_deployments = True
    with pytest.raises(OperationFailed):
        await start_and_wait(provider, "front", None)

    app = await provider.get_app("front")

    assert (app.state, app.status) == (AppState.FAILED, "start-failed")


async def test_get_app_reports_the_zone_as_region(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    emulator.add_app("front", zone="rbx")

    assert (await provider.get_app("front")).region == "rbx"


async def test_get_app_takes_at_most_four_calls(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    app_id = emulator.add_app("front")
    await provider.list_apps()

    await provider.get_app("front")

    assert emulator.count(app=app_id) <= 4


# One app: upstream


async def test_upstream_is_the_favourite_vhost(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    emulator.add_app(
        "front", vhosts=["www.example.com", "front.cleverapps.io"], favourite="www.example.com/"
    )

    assert (await provider.get_app("front")).upstream_url == "https://www.example.com"


async def test_upstream_is_the_cleverapps_vhost_without_favourite(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    emulator.add_app("front", vhosts=["www.example.com", "front.cleverapps.io"])

    assert (await provider.get_app("front")).upstream_url == "https://front.cleverapps.io"


async def test_upstream_is_the_cleverapps_vhost_from_the_vhosts_endpoint(
    aiohttp_server: Any, make_provider: MakeProvider
) -> None:
    emulator = CleverEmulator(vhosts_in_app=False)
    emulator.add_app("front", vhosts=["www.example.com", "front.cleverapps.io"])
    server = await aiohttp_server(emulator.web_app())
    provider = make_provider(api_host=str(server.make_url("/")))

    assert (await provider.get_app("front")).upstream_url == "https://front.cleverapps.io"
    assert emulator.count("vhosts", method="GET") == 1


async def test_upstream_defaults_to_the_app_test_domain(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    app_id = emulator.add_app("front", vhosts=[])

    app = await provider.get_app("front")

    assert app.upstream_url == f"https://{app_id.replace('_', '-')}.cleverapps.io"


async def test_upstream_keeps_the_path_prefix_without_trailing_slash(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    emulator.add_app("front", vhosts=["example.com/api/"], favourite="example.com/api/")

    assert (await provider.get_app("front")).upstream_url == "https://example.com/api"


async def test_upstream_on_a_loopback_vhost_is_plain_http(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    emulator.add_app("front", vhosts=["127.0.0.1:8081"], favourite="127.0.0.1:8081/")

    assert (await provider.get_app("front")).upstream_url == "http://127.0.0.1:8081"


async def test_upstream_is_cached_after_the_first_get_app(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    emulator.add_app("front", favourite="www.example.com/")
    await provider.get_app("front")

    await provider.get_app("front")

    assert emulator.count("favourite", method="GET") == 1


async def test_listing_reports_the_upstream_once_get_app_resolved_it(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    emulator.add_app("front", favourite="www.example.com/")
    [before] = await provider.list_apps()
    await provider.get_app("front")

    [after] = await provider.list_apps()

    assert (before.upstream_url, after.upstream_url) == (None, "https://www.example.com")


# Start and stop


async def test_start_follows_the_deployment_and_returns_once_an_instance_is_up(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    app_id = emulator.add_app("front", state="SHOULD_BE_DOWN", min_instances=2)

    await start_and_wait(provider, "front", {"formation": {"web": 3}})

    app = emulator.apps[app_id]
    assert app.state == "SHOULD_BE_UP"
    assert [i["state"] for i in app.instances] == ["UP", "UP"]
    assert emulator.count("instances", method="POST", app=app_id) == 1
    assert emulator.count("deployment", method="GET", app=app_id) >= 1


async def test_start_returns_once_clever_accepted_the_redeploy(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    app_id = emulator.add_app("front", state="SHOULD_BE_DOWN")
    emulator.boot_delay = 5.0

    startup = await provider.start("front", None)

    assert emulator.apps[app_id].deployments[0]["state"] == "WIP"
    assert await startup.running() is False


async def test_a_wake_joins_its_own_deployment_still_in_progress(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    app_id = emulator.add_app("front", state="SHOULD_BE_DOWN")
    emulator.boot_delay = 0.3
    await provider.start("front", None)  # a wake that timed out, say

    await start_and_wait(provider, "front", None)

    assert emulator.count("instances", method="POST", app=app_id) == 1
    assert emulator.apps[app_id].state == "SHOULD_BE_UP"


async def test_a_wake_after_its_deployment_ended_elsewhere_redeploys(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    app_id = emulator.add_app("front", state="SHOULD_BE_DOWN")
    emulator.boot_delay = 0.05
    await provider.start("front", None)  # a wake that timed out, say
    await eventually(lambda: emulator.apps[app_id].state == "SHOULD_BE_UP")
    emulator.undeploy(app_id)  # stopped from the console meanwhile

    await start_and_wait(provider, "front", None)

    assert emulator.count("instances", method="POST", app=app_id) == 2
    assert emulator.is_serving(app_id)


async def test_a_wake_joins_a_deployment_the_app_shows_in_progress(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    app_id = emulator.add_app("front", state="SHOULD_BE_DOWN")
    emulator.boot_delay = 0.3
    emulator.redeploy(app_id)  # started elsewhere: another paastis, the console
    await provider.list_apps()

    await start_and_wait(provider, "front", None)

    assert emulator.count("instances", method="POST", app=app_id) == 0
    assert emulator.apps[app_id].state == "SHOULD_BE_UP"


async def test_a_redeploy_whose_answer_failed_joins_the_deployment_it_started(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    app_id = emulator.add_app("front", state="SHOULD_BE_DOWN")
    emulator.boot_delay = 0.2
    emulator.fail_next("instances", 502, method="POST", after_handling=True)

    await start_and_wait(provider, "front", None)

    assert emulator.count("instances", method="POST", app=app_id) == 1
    assert emulator.apps[app_id].state == "SHOULD_BE_UP"


async def test_a_redeploy_answered_500_is_not_resent(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    app_id = emulator.add_app("front", state="SHOULD_BE_DOWN")
    emulator.fail_next("instances", 500, times=5, method="POST")

    with pytest.raises(ProviderUnavailable, match="not resent"):
        await provider.start("front", None)

    assert emulator.count("instances", method="POST", app=app_id) == 1


async def test_organisation_app_is_started_through_the_organisation_path(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    app_id = emulator.add_app("shared", owner="orga_acme", state="SHOULD_BE_DOWN")

    await start_and_wait(provider, "shared", None)

    posts = [c.path for c in emulator.log if c.method == "POST"]
    assert posts == [f"/v2/organisations/orga_acme/applications/{app_id}/instances"]


async def test_failed_deployment_fails_the_start_without_waiting_for_the_timeout(
    make_provider: MakeProvider, emulator: CleverEmulator
) -> None:
    emulator.add_app("front", state="SHOULD_BE_DOWN")
    emulator.fail_deployments = True
    provider = make_provider(operation_timeout=5.0)
    started = time.monotonic()

    with pytest.raises(OperationFailed, match="FAIL"):
        await start_and_wait(provider, "front", None)

    assert time.monotonic() - started < 1.0


async def test_stop_undeploys_the_app(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    app_id = emulator.add_app("front", state="SHOULD_BE_UP")

    remembered = await provider.stop("front")

    app = emulator.apps[app_id]
    assert remembered == {"upstream_url": f"https://{app_id.replace('_', '-')}.cleverapps.io"}
    assert (app.state, app.instances) == ("SHOULD_BE_DOWN", [])
    assert (app.deployments[0]["action"], app.deployments[0]["state"]) == ("UNDEPLOY", "OK")


# Stop: the upstream handed to the next wake


async def test_a_stop_remembers_the_favourite_vhost_for_the_next_wake(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    emulator.add_app("front", vhosts=["www.example.com"], favourite="www.example.com/")

    remembered = await provider.stop("front")

    assert remembered == {"upstream_url": "https://www.example.com"}
    assert emulator.count("favourite", method="GET") == 1


async def test_a_stop_without_favourite_remembers_the_cleverapps_vhost(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    emulator.add_app("front", vhosts=["www.example.com", "front.cleverapps.io"])

    remembered = await provider.stop("front")

    assert remembered == {"upstream_url": "https://front.cleverapps.io"}
    assert emulator.count("vhosts", method="GET") == 1


async def test_the_listing_after_a_stop_carries_the_upstream_it_looked_up(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    emulator.add_app("front", favourite="www.example.com/")
    [before] = await provider.list_apps()
    await provider.stop("front")

    [after] = await provider.list_apps()

    assert (before.upstream_url, after.upstream_url) == (None, "https://www.example.com")
    assert after.state is AppState.STOPPED


async def test_a_domain_changed_while_the_app_ran_is_followed_at_its_stop(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    app_id = emulator.add_app("front", favourite="old.example.com/")
    assert (await provider.get_app("front")).upstream_url == "https://old.example.com"
    emulator.apps[app_id].favourite = "new.example.com/"

    remembered = await provider.stop("front")

    assert remembered == {"upstream_url": "https://new.example.com"}
    assert (await provider.get_app("front")).upstream_url == "https://new.example.com"


async def test_a_stop_whose_domain_lookup_fails_is_still_a_stop(
    provider: CleverCloudProvider, emulator: CleverEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    app_id = emulator.add_app("front", state="SHOULD_BE_UP", favourite="www.example.com/")
    emulator.fail_next("favourite", 500, times=10)

    with caplog.at_level(logging.WARNING, logger="paastis.provider.clever_cloud"):
        remembered = await provider.stop("front")

    assert remembered is None
    assert emulator.apps[app_id].state == "SHOULD_BE_DOWN"
    assert any("could not be looked up" in r.getMessage() for r in caplog.records)


async def test_a_failed_lookup_at_a_stop_hands_on_the_upstream_known_before(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    emulator.add_app("front", favourite="www.example.com/")
    await provider.get_app("front")
    emulator.fail_next("favourite", 500, times=10)

    assert await provider.stop("front") == {"upstream_url": "https://www.example.com"}


async def test_a_wake_handed_the_remembered_upstream_looks_up_no_domain(
    make_provider: MakeProvider, emulator: CleverEmulator
) -> None:
    emulator.add_app("front", state="SHOULD_BE_UP", favourite="www.example.com/")
    remembered = await make_provider().stop("front")
    looked_up = emulator.count("favourite") + emulator.count("vhosts")
    restarted = make_provider()  # a restart of paastis: only the registry remembers

    await start_and_wait(restarted, "front", remembered)
    app = await restarted.get_app("front")

    assert app.upstream_url == "https://www.example.com"
    assert app.state is AppState.RUNNING
    assert emulator.count("favourite") + emulator.count("vhosts") == looked_up


# Resilience


async def test_server_errors_are_retried(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    emulator.add_app("front")
    emulator.fail_next("summary", 503, times=2)

    apps = await provider.list_apps()

    assert [a.name for a in apps] == ["front"]
    assert emulator.count("summary", method="GET") == 3


async def test_start_survives_a_storm_of_429(
    make_provider: MakeProvider, emulator: CleverEmulator
) -> None:
    app_id = emulator.add_app("front", state="SHOULD_BE_DOWN")
    for route in ("summary", "instances", "deployment"):
        emulator.fail_next(route, 429, times=3, retry_after=1)
    provider = make_provider(retry=RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.02))

    await start_and_wait(provider, "front", None)

    assert emulator.apps[app_id].state == "SHOULD_BE_UP"
    assert sum(1 for c in emulator.log if c.status == 429) == 9


async def test_concurrent_get_app_calls_are_independent(
    provider: CleverCloudProvider, emulator: CleverEmulator
) -> None:
    emulator.add_app("front")
    emulator.add_app("back", state="SHOULD_BE_DOWN")

    front, back = await asyncio.gather(provider.get_app("front"), provider.get_app("back"))

    assert (front.state, back.state) == (AppState.RUNNING, AppState.STOPPED)
