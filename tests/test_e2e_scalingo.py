"""End to end with the Scalingo adapter: real paastis, Scalingo API emulator, test upstreams."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from clock import ManualClock
from conftest import url_of
from harness import SYSTEM_API, scalingo_env, system_headers


@pytest.fixture
def scalingo_boot_delay() -> float:
    return 0.2  # long enough that concurrent requests all arrive during one wake


async def test_sleeping_app_is_woken_once_by_twenty_concurrent_requests(
    scalingo, upstream_factory, paastis
):
    emulator, api_url = scalingo
    _upstream, upstream_server = await upstream_factory("review-1")
    emulator.add_app("review-1", status="stopped", base_url=url_of(upstream_server))
    proxy = await paastis(scalingo_env(api_url))

    async def one(index: int):
        async with proxy.get("review-1.example.net", f"/items/{index}") as response:
            return response.status, await response.json(), response.headers

    answers = await asyncio.gather(*(one(i) for i in range(20)))

    assert emulator.count("scale", app="review-1") == 1
    assert [status for status, _, _ in answers] == [200] * 20
    assert sorted(body["path"] for _, body, _ in answers) == sorted(
        f"/items/{i}" for i in range(20)
    )
    assert all(headers["X-Paastis-Cold-Start"] == "true" for _, _, headers in answers)
    assert emulator.status_of("review-1") == "running"


async def test_running_app_is_proxied_with_request_intact_and_no_provider_call(
    scalingo, upstream_factory, paastis
):
    emulator, api_url = scalingo
    _upstream, upstream_server = await upstream_factory("shop")
    emulator.add_app("shop", base_url=url_of(upstream_server))
    proxy = await paastis(scalingo_env(api_url))
    await proxy.tick()
    calls_before = len(emulator.log)

    async with proxy.request(
        "PUT",
        "shop.example.net",
        "/api/v1/carts/42?coupon=a%20b&x=1&x=2",
        data=b'{"qty": 3}',
        headers={"Content-Type": "application/json", "X-Custom": "kept"},
    ) as response:
        body = await response.json()

    assert response.status == 200
    assert "X-Paastis-Cold-Start" not in response.headers
    assert body["method"] == "PUT"
    assert body["raw_path"] == "/api/v1/carts/42?coupon=a%20b&x=1&x=2"
    assert body["body"] == '{"qty": 3}'
    assert body["headers"]["X-Custom"] == "kept"
    assert body["headers"]["Content-Type"] == "application/json"
    assert body["headers"]["Host"] == upstream_server.make_url("").host + f":{upstream_server.port}"
    assert body["headers"]["X-Forwarded-Host"] == "shop.example.net"
    assert body["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert body["headers"]["X-Forwarded-Proto"] == "http"
    assert len(emulator.log) == calls_before, "the hot path must not call the provider"


async def test_discovery_registers_running_apps_at_a_tick(scalingo, upstream_factory, paastis):
    emulator, api_url = scalingo
    emulator.add_app("front")
    emulator.add_app("sleepy", status="stopped")
    proxy = await paastis(scalingo_env(api_url, **SYSTEM_API))
    await proxy.tick()

    async with proxy.get("any", "/apps", headers=system_headers()) as response:
        apps = {app["name"]: app for app in await response.json()}
    assert apps["front"]["is_monitored"] is True
    assert apps["front"]["last_accessed_at"].endswith("Z")
    assert apps["sleepy"]["is_monitored"] is False
    events = await (
        await proxy.session.get(proxy.url + "/events", headers={"Host": "x", **system_headers()})
    ).json()
    assert {"oid": "front", "name": "APP_REGISTERED"} in [
        {"oid": e["oid"], "name": e["name"]} for e in events
    ]


async def test_idle_app_is_stopped_once_after_its_max_idle_time_with_hooks_in_order(
    scalingo, paastis, tmp_path: Path
):
    emulator, api_url = scalingo
    emulator.add_app("idle-app")
    emulator.add_app("busy-app")
    hook_log = tmp_path / "hooks.log"
    variables = "$PAASTIS_HOOK $PAASTIS_APP_NAME $PAASTIS_APP_PROVIDER $PAASTIS_APP_REGION"
    line = f'echo "{variables}" >> {hook_log}'
    clock = ManualClock()
    proxy = await paastis(
        scalingo_env(
            api_url,
            START_AND_STOP_MAX_IDLE_TIME="1",
            HOOKS_BEFORE_STOP=line,
            HOOKS_AFTER_STOP=line,
        ),
        rules="rules:\n  - pattern: busy-app\n    app_max_idle_time: 60\n",
        wall_clock=clock.wall,
    )
    await proxy.tick()  # discovery
    first = await proxy.tick()
    assert first.stopped == []
    clock.advance(61)
    reports = [await proxy.tick() for _ in range(3)]

    assert [r.stopped for r in reports] == [["idle-app"], [], []]
    assert emulator.count("scale", app="idle-app") == 1
    assert emulator.count("scale", app="busy-app") == 0
    assert emulator.status_of("idle-app") == "stopped"
    assert hook_log.read_text().splitlines() == [
        "before_stop idle-app scalingo osc-fr1",
        "after_stop idle-app scalingo osc-fr1",
    ]


async def test_ignored_apps_are_never_registered_woken_or_stopped(
    scalingo, upstream_factory, paastis
):
    emulator, api_url = scalingo
    _upstream, upstream_server = await upstream_factory("kept")
    emulator.add_app("kept", base_url=url_of(upstream_server))
    emulator.add_app("asleep", status="stopped")
    proxy = await paastis(
        scalingo_env(
            api_url, REGISTRY_IGNORED_APPS=" kept , asleep", START_AND_STOP_MAX_IDLE_TIME="0"
        )
    )
    for _ in range(2):
        report = await proxy.tick()
        assert report.registered == [] and report.stopped == []

    async with proxy.get("kept.example.net") as response:
        assert response.status == 200
    async with proxy.get("asleep.example.net") as response:
        assert response.status == 503
    assert emulator.count("scale") == 0


async def test_linked_apps_are_woken_together(scalingo, upstream_factory, paastis):
    emulator, api_url = scalingo
    _, front_server = await upstream_factory("pr7-front")
    _, back_server = await upstream_factory("pr7-back")
    emulator.add_app("pr7-front", status="stopped", base_url=url_of(front_server))
    emulator.add_app("pr7-back", status="stopped", base_url=url_of(back_server))
    rules = (
        "rules:\n"
        "  - pattern: 'pr(\\d+)-front'\n"
        "    linked_apps: ['pr$1-back']\n"
        "  - pattern: 'pr(\\d+)-back'\n"
        "    linked_apps: ['pr$1-front']\n"  # a cycle must end
    )
    proxy = await paastis(scalingo_env(api_url), rules=rules)

    async with proxy.get("pr7-front.example.net") as response:
        assert response.status == 200

    assert emulator.count("scale", app="pr7-front") == 1
    assert emulator.count("scale", app="pr7-back") == 1
    assert emulator.status_of("pr7-back") == "running"


async def test_a_linked_app_that_fails_to_wake_is_the_one_named_in_the_warning(
    scalingo, upstream_factory, paastis, caplog
):
    emulator, api_url = scalingo
    _, front_server = await upstream_factory("pr8-front")
    emulator.add_app("pr8-front", status="stopped", base_url=url_of(front_server))
    emulator.add_app("pr8-awake")  # runs already: nothing to wake
    emulator.add_app("pr8-broken", status="stopped")
    emulator.fail_next("scale", 500, times=10, app="pr8-broken")
    rules = "rules:\n  - pattern: 'pr8-front'\n    linked_apps: ['pr8-awake', 'pr8-broken']\n"
    proxy = await paastis(scalingo_env(api_url), rules=rules)
    await proxy.tick()

    async with proxy.get("pr8-front.example.net") as response:
        assert response.status == 200

    warnings = [r.getMessage() for r in caplog.records if "did not wake" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith("linked app pr8-broken of pr8-front did not wake")


async def test_app_name_rule_routes_a_host_to_another_app(scalingo, upstream_factory, paastis):
    emulator, api_url = scalingo
    _upstream, upstream_server = await upstream_factory("app-review-pr12-back")
    emulator.add_app("app-review-pr12-back", base_url=url_of(upstream_server))
    rules = "rules:\n  - pattern: '^pr(\\d+)-api$'\n    app_name: 'app-review-pr$1-back'\n"
    proxy = await paastis(scalingo_env(api_url), rules=rules)

    async with proxy.get("pr12-api.review.example.net", "/hello") as response:
        body = await response.json()
    assert response.status == 200
    assert body["app"] == "app-review-pr12-back"


async def test_formation_is_restored_after_stop_and_wake(scalingo, upstream_factory, paastis):
    emulator, api_url = scalingo
    _upstream, upstream_server = await upstream_factory("big")
    emulator.add_app("big", formation={"web": 2, "worker": 1}, base_url=url_of(upstream_server))
    proxy = await paastis(scalingo_env(api_url, START_AND_STOP_MAX_IDLE_TIME="0"))
    await proxy.tick()  # registers
    report = await proxy.tick()  # idle for 0 minutes: stops
    assert report.stopped == ["big"]
    assert emulator.apps["big"].formation == {"web": 0, "worker": 0}

    async with proxy.get("big.example.net") as response:
        assert response.status == 200
    assert emulator.apps["big"].formation == {"web": 2, "worker": 1}


async def test_wake_timeout_is_answered_503_with_retry_after(scalingo, upstream_factory, paastis):
    emulator, api_url = scalingo
    emulator.boot_delay = 10
    emulator.add_app("slow", status="stopped")
    proxy = await paastis(scalingo_env(api_url, PROVIDER_SCALINGO_OPERATION_TIMEOUT="1"))

    async with proxy.get("slow.example.net") as response:
        text = await response.text()
    assert response.status == 503
    assert "Retry-After" in response.headers
    assert "slow" in text


async def test_provider_error_is_answered_502_while_other_apps_are_served(
    scalingo, upstream_factory, paastis
):
    emulator, api_url = scalingo
    _, ok_server = await upstream_factory("healthy")
    emulator.add_app("healthy", base_url=url_of(ok_server))
    emulator.add_app("broken", status="stopped")
    proxy = await paastis(scalingo_env(api_url))
    await proxy.tick()
    emulator.fail_next("scale", 500, times=10, app="broken")

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


async def test_unknown_app_is_404_and_not_registered(scalingo, paastis):
    emulator, api_url = scalingo
    emulator.add_app("real")
    proxy = await paastis(scalingo_env(api_url))
    await proxy.tick()
    for _ in range(5):
        async with proxy.get("ghost.example.net") as response:
            assert response.status == 404
    # The listing is refreshed on a miss at most every few seconds, not once per request.
    assert emulator.count("list_apps") <= 3
    assert await proxy.server.registry.get("ghost") is None


@pytest.mark.parametrize("host", ["", "127.0.0.1", "127.0.0.1:3000", "[::1]:3000"])
async def test_request_without_a_usable_host_is_400(scalingo, paastis, host):
    _emulator, api_url = scalingo
    proxy = await paastis(scalingo_env(api_url))
    async with proxy.get(host) as response:
        assert response.status == 400


async def test_events_tell_the_story_of_a_stop_and_a_wake(scalingo, upstream_factory, paastis):
    emulator, api_url = scalingo
    _, upstream_server = await upstream_factory("story")
    emulator.add_app("story", base_url=url_of(upstream_server))
    proxy = await paastis(
        scalingo_env(
            api_url,
            START_AND_STOP_MAX_IDLE_TIME="0",
            **SYSTEM_API,
        )
    )
    await proxy.tick()
    await proxy.tick()
    async with proxy.get("story.example.net") as response:
        assert response.status == 200
    async with proxy.get("x", "/events", headers=system_headers()) as response:
        events = await response.json()
    names = [e["name"] for e in events if e["oid"] == "story"]
    assert names == [
        "APP_REGISTERED",
        "APP_STOPPED",
        "APP_UNREGISTERED",
        "APP_REGISTERED",
        "APP_STARTED",
    ]
    assert json.dumps(events)  # plain JSON


async def test_a_renaming_rule_wakes_its_own_linked_apps(scalingo, upstream_factory, paastis):
    emulator, api_url = scalingo
    _, blog_server = await upstream_factory("my-blog-prod")
    emulator.add_app("my-blog-prod", status="stopped", base_url=url_of(blog_server))
    emulator.add_app("my-blog-db", status="stopped")
    rules = (
        "rules:\n  - pattern: '^blog$'\n    app_name: my-blog-prod\n    linked_apps: [my-blog-db]\n"
    )
    proxy = await paastis(scalingo_env(api_url, PROXY_READINESS_PATH=""), rules=rules)

    async with proxy.get("blog.example.net") as response:
        assert response.status == 200

    assert emulator.count("scale", app="my-blog-db") == 1
    assert emulator.status_of("my-blog-db") == "running"


async def test_a_wake_forwards_only_once_the_app_answers_though_the_operation_is_done(
    scalingo, upstream_factory, paastis
):
    emulator, api_url = scalingo
    emulator.container_boot_lag = 0.5  # containers still booting after the operation ends
    upstream, upstream_server = await upstream_factory("laggy")
    upstream.booted = lambda: emulator.is_serving("laggy")
    emulator.add_app("laggy", status="stopped", base_url=url_of(upstream_server))
    proxy = await paastis(scalingo_env(api_url))

    async with proxy.get("laggy.example.net", "/page") as response:
        body = await response.json()

    assert response.status == 200 and body["path"] == "/page"
    assert upstream.refused >= 1, "the readiness check met the booting app first"
    assert [r["path"] for r in upstream.received] == ["/", "/page"]  # readiness, then the request


async def test_a_wake_forwards_only_once_the_provider_agrees_though_the_app_answers(
    scalingo, upstream_factory, paastis
):
    emulator, api_url = scalingo
    emulator.boot_delay = 0.6
    _upstream, upstream_server = await upstream_factory("early")  # answers from the start
    emulator.add_app("early", status="stopped", base_url=url_of(upstream_server))
    proxy = await paastis(scalingo_env(api_url))
    began = time.monotonic()

    async with proxy.get("early.example.net") as response:
        assert response.status == 200

    # The upstream answered at once, yet the request waited for the operation to be done.
    assert time.monotonic() - began >= 0.6
    assert emulator.status_of("early") == "running"
