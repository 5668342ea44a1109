"""End to end with the Clever Cloud adapter: real paastis, Clever Cloud API emulator, upstreams.

Apps point their favourite vhost at a loopback test upstream (plain HTTP, as the adapter
allows for loopback only). The OAuth API and the Bearer API bridge are the same emulator.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from clock import ManualClock
from conftest import url_of
from emulators.clever_cloud import CleverEmulator
from harness import RunningPaastis

CONSUMER_KEY = "e2e-consumer-key"
CONSUMER_SECRET = "e2e-consumer-secret-0123456789"
TOKEN = "e2e-oauth-token-0123456789"
TOKEN_SECRET = "e2e-oauth-token-secret-0123456789"
API_TOKEN = "e2e-bridge-api-token-0123456789"
WRONG_SECRET = "e2e-wrong-token-secret-9876543210"


@pytest.fixture
def emulator() -> CleverEmulator:
    return CleverEmulator(
        consumer_key=CONSUMER_KEY,
        consumer_secret=CONSUMER_SECRET,
        token=TOKEN,
        token_secret=TOKEN_SECRET,
        api_token=API_TOKEN,
        boot_delay=0.15,
    )


@pytest.fixture
async def api_url(aiohttp_server, emulator: CleverEmulator) -> str:
    return url_of(await aiohttp_server(emulator.web_app(), host="127.0.0.1"))


@pytest.fixture
async def bridge_url(aiohttp_server, emulator: CleverEmulator) -> str:
    return url_of(await aiohttp_server(emulator.web_app(bridge=True), host="127.0.0.1"))


@pytest.fixture
def start(paastis, api_url: str):
    """Starts paastis on the emulator with the four OAuth values, as a user configures it."""

    async def start_clever(token_secret: str = TOKEN_SECRET, **kwargs: Any) -> RunningPaastis:
        env = {
            "PROVIDER_NAME": "clever-cloud",
            "PROVIDER_CLEVER_OAUTH_CONSUMER_KEY": CONSUMER_KEY,
            "PROVIDER_CLEVER_OAUTH_CONSUMER_SECRET": CONSUMER_SECRET,
            "PROVIDER_CLEVER_TOKEN": TOKEN,
            "PROVIDER_CLEVER_SECRET": token_secret,
            "PROVIDER_CLEVER_API_HOST": api_url,
            "PROVIDER_CLEVER_OPERATION_TIMEOUT": "5",
            **kwargs.pop("env", {}),
        }
        return await paastis(env, **kwargs)

    return start_clever


def favourite(server, prefix: str = "") -> str:
    """A vhost as Clever reports it (no scheme, trailing slash) for a loopback upstream."""
    return f"127.0.0.1:{server.port}{prefix}/"


def dns_id(app_id: str) -> str:
    return app_id.replace("_", "-", 1)


async def registered_names(proxy: RunningPaastis) -> list[str]:
    return sorted(app.name for app in await proxy.server.registry.list())


async def test_sleeping_app_is_woken_once_by_twenty_concurrent_requests(
    emulator, start, upstream_factory
):
    _upstream, upstream_server = await upstream_factory("review-1")
    app_id = emulator.add_app(
        "review-1", state="SHOULD_BE_DOWN", favourite=favourite(upstream_server)
    )
    proxy = await start()

    async def one(index: int):
        async with proxy.get("review-1.example.net", f"/items/{index}") as response:
            return response.status, await response.json(), response.headers

    answers = await asyncio.gather(*(one(i) for i in range(20)))

    assert emulator.count("instances", method="POST", app=app_id) == 1
    assert [status for status, _, _ in answers] == [200] * 20
    assert sorted(body["path"] for _, body, _ in answers) == sorted(
        f"/items/{i}" for i in range(20)
    )
    assert all(headers["X-Paastis-Cold-Start"] == "true" for _, _, headers in answers)
    assert emulator.apps[app_id].state == "SHOULD_BE_UP"
    assert [i["state"] for i in emulator.apps[app_id].instances] == ["UP"]


async def test_api_token_against_the_bridge_wakes_an_app(
    emulator, paastis, bridge_url, upstream_factory
):
    _upstream, upstream_server = await upstream_factory("bridged")
    app_id = emulator.add_app(
        "bridged", state="SHOULD_BE_DOWN", favourite=favourite(upstream_server)
    )
    proxy = await paastis(
        {
            "PROVIDER_NAME": "clever-cloud",
            "PROVIDER_CLEVER_API_TOKEN": API_TOKEN,
            "PROVIDER_CLEVER_API_HOST": bridge_url,
            "PROVIDER_CLEVER_OPERATION_TIMEOUT": "5",
        }
    )

    async with proxy.get("bridged.example.net", "/hello") as response:
        body = await response.json()

    assert response.status == 200
    assert response.headers["X-Paastis-Cold-Start"] == "true"
    assert body["app"] == "bridged"
    assert emulator.count("instances", method="POST", app=app_id) == 1
    assert all(call.status != 401 for call in emulator.log)


async def test_discovery_registers_running_apps_of_the_personal_space_and_organisations(
    emulator, start
):
    emulator.add_app("front")
    emulator.add_app("sleepy", state="SHOULD_BE_DOWN")
    emulator.add_app("team-api", owner="orga_e2e")
    proxy = await start()

    report = await proxy.tick()

    assert report.listed == 3
    assert await registered_names(proxy) == ["front", "team-api"]
    assert emulator.count("summary", method="GET") >= 1
    assert emulator.count("instances", method="GET") == 0, "the summary alone tells who runs"


async def test_idle_app_is_stopped_once_after_its_max_idle_time_with_hooks_in_order(
    emulator, start, tmp_path: Path
):
    idle_id = emulator.add_app("idle-app")
    busy_id = emulator.add_app("busy-app")
    hook_log = tmp_path / "hooks.log"
    variables = "$PAASTIS_HOOK $PAASTIS_APP_NAME $PAASTIS_APP_PROVIDER $PAASTIS_APP_REGION"
    line = f'echo "{variables}" >> {hook_log}'
    clock = ManualClock()
    proxy = await start(
        env={
            "START_AND_STOP_MAX_IDLE_TIME": "1",
            "HOOKS_BEFORE_STOP": line,
            "HOOKS_AFTER_STOP": line,
            # The summary carries no zone: an app never fetched gets the configured region.
            "PROVIDER_REGION": "par",
        },
        rules="rules:\n  - pattern: busy-app\n    app_max_idle_time: 60\n",
        wall_clock=clock.wall,
    )
    await proxy.tick()  # discovery
    assert (await proxy.tick()).stopped == []
    clock.advance(61)
    reports = [await proxy.tick() for _ in range(3)]

    assert [r.stopped for r in reports] == [["idle-app"], [], []]
    assert emulator.count("instances", method="DELETE", app=idle_id) == 1
    assert emulator.count("instances", method="DELETE", app=busy_id) == 0
    assert emulator.apps[idle_id].state == "SHOULD_BE_DOWN"
    assert emulator.apps[busy_id].state == "SHOULD_BE_UP"
    assert hook_log.read_text().splitlines() == [
        "before_stop idle-app clever-cloud par",
        "after_stop idle-app clever-cloud par",
    ]


async def test_app_stopped_when_idle_runs_its_instances_again_on_the_next_request(
    emulator, start, upstream_factory
):
    _upstream, upstream_server = await upstream_factory("big")
    app_id = emulator.add_app("big", min_instances=2, favourite=favourite(upstream_server))
    proxy = await start(env={"START_AND_STOP_MAX_IDLE_TIME": "0"})
    await proxy.tick()  # registers
    report = await proxy.tick()  # idle for 0 minutes: stops
    assert report.stopped == ["big"]
    assert emulator.apps[app_id].instances == []

    async with proxy.get("big.example.net") as response:
        assert response.status == 200
        assert response.headers["X-Paastis-Cold-Start"] == "true"
    assert [i["state"] for i in emulator.apps[app_id].instances] == ["UP", "UP"]
    assert emulator.count("instances", method="POST", app=app_id) == 1
    assert await registered_names(proxy) == ["big"]


# The calls that look up where an app answers: the app object (its vhosts) and its domains.
LOOKUPS = ("application", "favourite", "vhosts")


def lookups_since(emulator: CleverEmulator, mark: int, app_id: str) -> list[str]:
    return [
        f"{c.method} {c.route}"
        for c in emulator.log[mark:]
        if c.app == app_id and c.route in LOOKUPS
    ]


async def stop_when_idle(proxy: RunningPaastis, name: str) -> None:
    await proxy.tick()  # registers
    assert (await proxy.tick()).stopped == [name]  # idle for 0 minutes: stops


async def test_a_wake_of_an_app_paastis_stopped_costs_the_start_calls_only(
    emulator, start, upstream_factory
):
    _upstream, upstream_server = await upstream_factory("review-2")
    app_id = emulator.add_app("review-2", favourite=favourite(upstream_server))
    proxy = await start(env={"START_AND_STOP_MAX_IDLE_TIME": "0"})
    await stop_when_idle(proxy, "review-2")
    mark = emulator.total_calls

    async with proxy.get("review-2.example.net", "/hello") as response:
        body = await response.json()

    assert (response.status, response.headers["X-Paastis-Cold-Start"]) == (200, "true")
    assert body["app"] == "review-2"
    assert lookups_since(emulator, mark, app_id) == []
    calls = [f"{c.method} {c.route}" for c in emulator.log[mark:]]
    assert calls[0] == "POST instances" and set(calls[1:]) <= {"GET deployment"}, calls


async def test_the_upstream_a_stop_looked_up_survives_a_restart_with_a_state_file(
    emulator, start, upstream_factory, tmp_path: Path
):
    _upstream, upstream_server = await upstream_factory("review-3")
    app_id = emulator.add_app("review-3", favourite=favourite(upstream_server))
    env = {"START_AND_STOP_MAX_IDLE_TIME": "0", "REGISTRY_STATE_FILE": str(tmp_path / "s.json")}
    first = await start(env=env)
    await stop_when_idle(first, "review-3")
    await first.stop()
    mark = emulator.total_calls

    second = await start(env=env)
    async with second.get("review-3.example.net", "/hello") as response:
        body = await response.json()

    assert (response.status, response.headers["X-Paastis-Cold-Start"]) == (200, "true")
    assert body["app"] == "review-3"
    assert lookups_since(emulator, mark, app_id) == []
    assert emulator.count("instances", method="POST", app=app_id) == 1


async def test_requests_land_on_the_favourite_vhost_with_its_path_prefix(
    emulator, start, upstream_factory
):
    _upstream, upstream_server = await upstream_factory("shop")
    emulator.add_app(
        "shop",
        vhosts=["app-shop.cleverapps.io", favourite(upstream_server, "/prefix")],
        favourite=favourite(upstream_server, "/prefix"),
    )
    proxy = await start()

    async with proxy.get("shop.example.net", "/api/items?page=2") as response:
        body = await response.json()

    assert response.status == 200
    assert "X-Paastis-Cold-Start" not in response.headers
    assert body["app"] == "shop"
    assert body["raw_path"] == "/prefix/api/items?page=2"
    assert body["headers"]["Host"] == f"127.0.0.1:{upstream_server.port}"
    assert body["headers"]["X-Forwarded-Host"] == "shop.example.net"
    assert emulator.count("instances", method="POST") == 0


async def test_app_addressed_by_its_dns_id_is_woken_and_registered_under_its_name(
    emulator, start, upstream_factory
):
    _upstream, upstream_server = await upstream_factory("by-id")
    app_id = emulator.add_app("by-id", state="SHOULD_BE_DOWN", favourite=favourite(upstream_server))
    proxy = await start()

    async with proxy.get(f"{dns_id(app_id)}.example.net", "/hello") as response:
        body = await response.json()

    assert response.status == 200
    assert response.headers["X-Paastis-Cold-Start"] == "true"
    assert body["app"] == "by-id"
    assert emulator.count("instances", method="POST", app=app_id) == 1
    assert await registered_names(proxy) == ["by-id"]


async def test_apps_sharing_a_name_are_each_served_by_their_dns_id(
    emulator, start, upstream_factory
):
    _, first_server = await upstream_factory("twin-personal")
    _, second_server = await upstream_factory("twin-team")
    first = emulator.add_app("twin", favourite=favourite(first_server))
    second = emulator.add_app("twin", owner="orga_e2e", favourite=favourite(second_server))
    proxy = await start()

    answers = {}
    for app_id in (first, second):
        async with proxy.get(f"{dns_id(app_id)}.example.net") as response:
            answers[app_id] = (response.status, (await response.json())["app"])
    async with proxy.get("twin.example.net") as response:
        ambiguous = response.status

    assert answers == {first: (200, "twin-personal"), second: (200, "twin-team")}
    assert ambiguous == 404


async def test_rejected_credentials_give_502_and_a_log_line_without_secrets(
    emulator, start, upstream_factory, http, caplog
):
    caplog.set_level(logging.DEBUG)
    _upstream, upstream_server = await upstream_factory("shop")
    emulator.add_app("shop", favourite=favourite(upstream_server))
    proxy = await start(token_secret=WRONG_SECRET, admin=True)

    statuses = []
    for _ in range(2):
        async with proxy.get("shop.example.net") as response:
            statuses.append(response.status)
    async with http.get(proxy.admin_url + "/health") as health:
        assert health.status == 200
    report = await proxy.tick()

    assert statuses == [502, 502]
    assert report.skipped == "listing failed"
    assert "the Clever Cloud credentials were rejected" in caplog.text
    for secret in (WRONG_SECRET, CONSUMER_SECRET, TOKEN):
        assert secret not in caplog.text


async def test_paastis_with_the_right_credentials_serves_beside_one_with_rejected_ones(
    emulator, start, upstream_factory
):
    _upstream, upstream_server = await upstream_factory("shop")
    emulator.add_app("shop", favourite=favourite(upstream_server))
    rejected = await start(token_secret=WRONG_SECRET)
    accepted = await start()

    async with rejected.get("shop.example.net") as response:
        assert response.status == 502
    async with accepted.get("shop.example.net") as response:
        assert response.status == 200


async def test_wrong_api_token_on_the_bridge_gives_502_without_the_token_in_logs(
    emulator, paastis, bridge_url, caplog
):
    caplog.set_level(logging.DEBUG)
    emulator.add_app("shop")
    wrong = "e2e-wrong-bridge-token-9876543210"
    proxy = await paastis(
        {
            "PROVIDER_NAME": "clever-cloud",
            "PROVIDER_CLEVER_API_TOKEN": wrong,
            "PROVIDER_CLEVER_API_HOST": bridge_url,
        }
    )

    async with proxy.get("shop.example.net") as response:
        assert response.status == 502
    assert "the Clever Cloud credentials were rejected" in caplog.text
    assert "check PROVIDER_CLEVER_API_TOKEN" in caplog.text
    assert wrong not in caplog.text


async def test_wake_survives_a_storm_of_429_on_the_start_call(emulator, start, upstream_factory):
    _upstream, upstream_server = await upstream_factory("stormy")
    app_id = emulator.add_app(
        "stormy", state="SHOULD_BE_DOWN", favourite=favourite(upstream_server)
    )
    proxy = await start()
    await proxy.tick()
    emulator.fail_next("instances", 429, times=2, method="POST", retry_after=0)

    async with proxy.get("stormy.example.net") as response:
        assert response.status == 200
    assert emulator.count("instances", method="POST", app=app_id) == 3  # two refused, one done
    assert emulator.apps[app_id].state == "SHOULD_BE_UP"


async def test_tick_survives_a_storm_of_429_on_the_listing(emulator, start):
    proxy = await start()
    await proxy.tick()
    emulator.add_app("front")  # created since that tick
    listings = emulator.count("summary", method="GET")
    emulator.fail_next("summary", 429, times=2, retry_after=0)

    report = await proxy.tick()

    assert report.skipped is None
    assert report.registered == ["front"]
    assert emulator.count("summary", method="GET") == listings + 3


async def test_provider_error_on_start_is_502_while_a_running_app_is_served(
    emulator, start, upstream_factory
):
    _, ok_server = await upstream_factory("healthy")
    emulator.add_app("healthy", favourite=favourite(ok_server))
    broken_id = emulator.add_app("broken", state="SHOULD_BE_DOWN")
    proxy = await start()
    await proxy.tick()
    emulator.fail_next("instances", 500, times=10, method="POST")

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
    assert emulator.apps[broken_id].state == "SHOULD_BE_DOWN"
