"""The system API through real sockets: every route, both token headers, and its errors
(Scalingo API emulator, test upstreams on loopback)."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import url_of
from harness import SYSTEM_API, SYSTEM_TOKEN, scalingo_env, system_headers
from waiting import eventually

DESIGN_FIELDS = {
    "name",
    "id",
    "region",
    "status",
    "url",
    "created_at",
    "updated_at",
    "last_deployed_at",
    "force_https",
    "sticky_session",
    "git_url",
    "provider",
    "is_monitored",
    "max_idle_time",
    "last_accessed_at",
}
# Added for the dashboard (documented in the OpenAPI document).
EXTRA_FIELDS = {
    "state",
    "stop_due_at",
    "kept_awake",
    "cold_starts",
    "asleep_seconds",
    "requests_in_flight",
}
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def system_api_env(api_url: str, **extra: str) -> dict[str, str]:
    """Scalingo with the system API enabled: what every test here starts from."""
    return scalingo_env(api_url, **SYSTEM_API, **extra)


async def call(proxy, method: str, path: str, headers: dict[str, str] | None = None):
    """A system API call on the main listener; returns (status, JSON body or None, headers)."""
    async with proxy.request(
        method,
        "whatever.example.net",
        path,
        headers=system_headers() if headers is None else headers,
    ) as response:
        body = await response.json() if response.content_type == "application/json" else None
        return response.status, body, response.headers


async def wait_for_event(proxy, name: str, oid: str) -> list[dict]:
    async with asyncio.timeout(10):
        while True:
            _, events, _ = await call(proxy, "GET", "/events")
            if any(e["name"] == name and e["oid"] == oid for e in events):
                return events
            await asyncio.sleep(0.05)


# --- GET /apps and /apps/{name} ---------------------------------------------------------------


async def test_apps_lists_every_provider_app_with_every_documented_field(scalingo, paastis):
    emulator, api_url = scalingo
    emulator.add_app("front")
    emulator.add_app("sleepy", status="stopped")
    proxy = await paastis(
        system_api_env(api_url), rules="rules:\n  - pattern: front\n    app_max_idle_time: 45\n"
    )
    await proxy.tick()

    status, apps, headers = await call(proxy, "GET", "/apps")

    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    by_name = {app["name"]: app for app in apps}
    assert set(by_name) == {"front", "sleepy"}
    for app in apps:
        assert set(app) == DESIGN_FIELDS | EXTRA_FIELDS
    front = by_name["front"]
    assert front["id"] == emulator.apps["front"].id
    assert front["region"] == "osc-fr1"
    assert front["status"] == "running"
    assert front["provider"] == "scalingo"
    assert front["git_url"] == "git@ssh.osc-fr1.scalingo.com:front.git"
    assert front["force_https"] is False and front["sticky_session"] is False
    assert front["is_monitored"] is True
    assert front["max_idle_time"] == 45
    for key in ("created_at", "updated_at", "last_deployed_at", "last_accessed_at"):
        assert ISO_UTC.match(front[key]), (key, front[key])


async def test_app_that_is_not_monitored_has_no_last_access(scalingo, paastis):
    emulator, api_url = scalingo
    emulator.add_app("sleepy", status="stopped")
    proxy = await paastis(system_api_env(api_url, START_AND_STOP_MAX_IDLE_TIME="20"))
    await proxy.tick()

    status, app, _ = await call(proxy, "GET", "/apps/sleepy")

    assert status == 200
    assert app["is_monitored"] is False
    assert app["last_accessed_at"] is None
    assert app["max_idle_time"] == 20
    assert app["status"] == "stopped"


async def test_one_app_is_described_like_in_the_list(scalingo, paastis):
    emulator, api_url = scalingo
    emulator.add_app("front")
    proxy = await paastis(system_api_env(api_url))
    await proxy.tick()

    _, listed, _ = await call(proxy, "GET", "/apps")
    status, app, _ = await call(proxy, "GET", "/apps/front")

    assert status == 200
    assert app == listed[0]


async def test_unknown_app_is_404_with_a_json_error(scalingo, paastis):
    _emulator, api_url = scalingo
    proxy = await paastis(system_api_env(api_url))

    status, body, _ = await call(proxy, "GET", "/apps/ghost")

    assert status == 404
    assert set(body) == {"error"} and "ghost" in body["error"]


async def test_system_api_answers_whatever_the_host(scalingo, paastis):
    emulator, api_url = scalingo
    emulator.add_app("front")
    proxy = await paastis(system_api_env(api_url))

    async with proxy.get("127.0.0.1", "/apps", headers=system_headers()) as response:
        assert response.status == 200
        assert [app["name"] for app in await response.json()] == ["front"]


async def test_provider_failure_while_listing_is_502_with_a_json_error(scalingo, paastis):
    emulator, api_url = scalingo
    emulator.add_app("front")
    emulator.fail_next("list_apps", 500, times=100)
    proxy = await paastis(system_api_env(api_url))
    await proxy.tick()  # the listing fails: there is no list to answer from

    status, body, _ = await call(proxy, "GET", "/apps")

    assert status == 502
    assert set(body) == {"error"}


async def test_polling_the_app_list_reuses_a_recent_listing(scalingo, paastis):
    emulator, api_url = scalingo
    emulator.add_app("front")
    proxy = await paastis(system_api_env(api_url))
    await proxy.tick()
    listings = emulator.count("list_apps")

    for _ in range(10):
        status, body, _ = await call(proxy, "GET", "/apps")
        assert status == 200
        assert [app["name"] for app in body] == ["front"]

    assert emulator.count("list_apps") == listings


# --- DELETE /apps, GET /events ----------------------------------------------------------------


async def test_delete_apps_forgets_every_registered_app(scalingo, paastis):
    emulator, api_url = scalingo
    emulator.add_app("one")
    emulator.add_app("two")
    proxy = await paastis(system_api_env(api_url))
    await proxy.tick()
    assert len(await proxy.server.registry.list()) == 2

    status, body, _ = await call(proxy, "DELETE", "/apps")

    assert (status, body) == (204, None)
    assert await proxy.server.registry.list() == []
    _, apps, _ = await call(proxy, "GET", "/apps")
    assert [app["is_monitored"] for app in apps] == [False, False]
    assert {emulator.status_of("one"), emulator.status_of("two")} == {"running"}


async def test_events_are_listed_oldest_first(scalingo, upstream_factory, paastis):
    emulator, api_url = scalingo
    _upstream, server = await upstream_factory("story")
    emulator.add_app("story", base_url=url_of(server))
    proxy = await paastis(system_api_env(api_url, START_AND_STOP_MAX_IDLE_TIME="0"))
    await proxy.tick()  # registers
    await proxy.tick()  # stops
    async with proxy.get("story.example.net") as response:  # wakes
        assert response.status == 200

    status, events, _ = await call(proxy, "GET", "/events")

    assert status == 200
    assert [set(event) for event in events] == [{"oid", "name", "date"}] * len(events)
    assert [e["name"] for e in events if e["oid"] == "story"] == [
        "APP_REGISTERED",
        "APP_STOPPED",
        "APP_UNREGISTERED",
        "APP_REGISTERED",
        "APP_STARTED",
    ]
    assert all(ISO_UTC.match(e["date"]) for e in events)
    dates = [datetime.fromisoformat(e["date"].replace("Z", "+00:00")) for e in events]
    assert dates == sorted(dates)


# --- POST start / stop ------------------------------------------------------------------------


async def test_start_wakes_the_app_with_hooks_and_an_event(
    scalingo, upstream_factory, paastis, tmp_path: Path
):
    emulator, api_url = scalingo
    _upstream, server = await upstream_factory("sleepy")
    emulator.add_app("sleepy", status="stopped", base_url=url_of(server))
    hook_log = tmp_path / "hooks.log"
    line = f'echo "$PAASTIS_HOOK $PAASTIS_APP_NAME" >> {hook_log}'
    proxy = await paastis(system_api_env(api_url, HOOKS_BEFORE_START=line, HOOKS_AFTER_START=line))

    status, body, _ = await call(proxy, "POST", "/apps/sleepy/start")

    assert status == 202
    assert body["app"] == "sleepy"
    await wait_for_event(proxy, "APP_STARTED", "sleepy")
    assert emulator.status_of("sleepy") == "running"
    assert emulator.count("scale", app="sleepy") == 1
    assert hook_log.read_text().splitlines() == ["before_start sleepy", "after_start sleepy"]
    assert await proxy.server.registry.get("sleepy") is not None


async def test_stop_stops_the_app_with_hooks_and_events(scalingo, paastis, tmp_path: Path):
    emulator, api_url = scalingo
    emulator.add_app("busy")
    hook_log = tmp_path / "hooks.log"
    line = f'echo "$PAASTIS_HOOK $PAASTIS_APP_NAME" >> {hook_log}'
    proxy = await paastis(system_api_env(api_url, HOOKS_BEFORE_STOP=line, HOOKS_AFTER_STOP=line))
    await proxy.tick()  # registers: its idle time (15 minutes) is far away

    status, body, _ = await call(proxy, "POST", "/apps/busy/stop")

    assert status == 202
    assert body["app"] == "busy"
    events = await wait_for_event(proxy, "APP_UNREGISTERED", "busy")
    assert [e["name"] for e in events if e["oid"] == "busy"] == [
        "APP_REGISTERED",
        "APP_STOPPED",
        "APP_UNREGISTERED",
    ]
    assert emulator.status_of("busy") == "stopped"
    assert hook_log.read_text().splitlines() == ["before_stop busy", "after_stop busy"]


@pytest.mark.parametrize("action", ["start", "stop"])
async def test_start_or_stop_of_an_unknown_app_is_404(scalingo, paastis, action):
    emulator, api_url = scalingo
    proxy = await paastis(system_api_env(api_url))

    status, body, _ = await call(proxy, "POST", f"/apps/ghost/{action}")

    assert status == 404
    assert "error" in body
    assert emulator.count("scale") == 0


# --- the token --------------------------------------------------------------------------------


async def test_bearer_token_is_accepted(scalingo, paastis):
    emulator, api_url = scalingo
    emulator.add_app("front")
    proxy = await paastis(system_api_env(api_url))

    status, apps, _ = await call(
        proxy,
        "GET",
        "/apps",
        {"PaastisProxyTarget": "system", "Authorization": f"Bearer {SYSTEM_TOKEN}"},
    )

    assert status == 200
    assert [app["name"] for app in apps] == ["front"]


@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"PaastisProxySystemApiToken": "not-the-system-token-at-all"},
        {"PaastisProxySystemApiToken": SYSTEM_TOKEN[:-1]},
        {"PaastisProxySystemApiToken": ""},
        {"Authorization": "Bearer wrong-token-of-some-length"},
        {"Authorization": f"Basic {SYSTEM_TOKEN}"},
        {"Authorization": "Bearer"},
    ],
    ids=["missing", "wrong", "prefix", "empty", "wrong-bearer", "not-bearer", "bare-bearer"],
)
async def test_missing_or_wrong_token_is_401_with_a_json_error(scalingo, paastis, credentials):
    _emulator, api_url = scalingo
    proxy = await paastis(system_api_env(api_url))

    status, body, _ = await call(
        proxy, "GET", "/apps", {"PaastisProxyTarget": "system", **credentials}
    )

    assert status == 401
    assert set(body) == {"error"}


@pytest.mark.parametrize("path", ["/apps", "/nowhere", "/apps/front/start"])
async def test_token_is_checked_before_anything_else(scalingo, paastis, path):
    _emulator, api_url = scalingo
    proxy = await paastis(system_api_env(api_url))

    status, body, _ = await call(proxy, "POST", path, system_headers(token="nope-nope-nope-nope"))

    assert status == 401
    assert "error" in body


async def test_token_that_is_not_utf8_is_401(scalingo, paastis):
    _emulator, api_url = scalingo
    proxy = await paastis(system_api_env(api_url))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.main_port)
    try:
        writer.write(
            b"GET /apps HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"PaastisProxyTarget: system\r\nPaastisProxySystemApiToken: \xff\xfe-token\r\n\r\n"
        )
        answer = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()

    assert answer.startswith(b"HTTP/1.1 401")


# --- routing errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/nowhere", "/apps/front/restart", "/events/1"])
async def test_unknown_path_is_404_with_a_json_error(scalingo, paastis, path):
    _emulator, api_url = scalingo
    proxy = await paastis(system_api_env(api_url))

    status, body, headers = await call(proxy, "GET", path)

    assert status == 404
    assert headers["Content-Type"].startswith("application/json")
    assert set(body) == {"error"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/apps"),
        ("PUT", "/apps"),
        ("POST", "/events"),
        ("DELETE", "/apps/front"),
        ("GET", "/apps/front/start"),
        ("GET", "/apps/front/stop"),
        ("POST", "/metrics"),
    ],
)
async def test_wrong_method_is_405_with_a_json_error(scalingo, paastis, method, path):
    emulator, api_url = scalingo
    emulator.add_app("front")
    proxy = await paastis(system_api_env(api_url))

    status, body, headers = await call(proxy, method, path)

    assert status == 405
    assert set(body) == {"error"}
    assert headers["Allow"]
    assert emulator.count("scale") == 0


# --- metrics, and the API switched off --------------------------------------------------------


async def test_metrics_are_served_in_prometheus_text(scalingo, paastis):
    emulator, api_url = scalingo
    emulator.add_app("front")
    proxy = await paastis(system_api_env(api_url))
    await proxy.tick()

    async with proxy.get("x", "/metrics", headers=system_headers()) as response:
        text = await response.text()

    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "# TYPE paastis_requests_total counter" in text
    assert re.search(r'^paastis_provider_calls_total\{.*provider="scalingo"', text, re.M)


async def test_metrics_need_the_token_too(scalingo, paastis):
    _emulator, api_url = scalingo
    proxy = await paastis(system_api_env(api_url))

    async with proxy.get("x", "/metrics", headers=system_headers(token=None)) as response:
        assert response.status == 401


async def test_disabled_system_api_proxies_system_requests_like_any_other(
    scalingo, upstream_factory, paastis
):
    emulator, api_url = scalingo
    _upstream, server = await upstream_factory("front")
    emulator.add_app("front", base_url=url_of(server))
    env = system_api_env(api_url)
    del env["ROUTING_SYSTEM_API_ENABLED"], env["ROUTING_SYSTEM_API_TOKEN"]
    proxy = await paastis(env)

    async with proxy.request(
        "DELETE", "front.example.net", "/apps", headers=system_headers()
    ) as response:
        record = await response.json()

    assert response.status == 200
    assert (record["app"], record["method"], record["path"]) == ("front", "DELETE", "/apps")
    assert "PaastisProxyTarget" not in record["headers"]
    assert "PaastisProxySystemApiToken" not in record["headers"]


# --- the app's status right after a change (DESIGN §6, last sentence) --------------------------


async def status_of(proxy, name: str) -> str:
    status, app, _ = await call(proxy, "GET", f"/apps/{name}")
    assert status == 200
    return app["status"]


async def test_status_is_running_as_soon_as_a_start_by_the_api_completed(
    scalingo, upstream_factory, paastis
):
    emulator, api_url = scalingo
    _upstream, server = await upstream_factory("sleepy")
    emulator.add_app("sleepy", status="stopped", base_url=url_of(server))
    proxy = await paastis(system_api_env(api_url))
    assert await status_of(proxy, "sleepy") == "stopped"

    await call(proxy, "POST", "/apps/sleepy/start")
    await wait_for_event(proxy, "APP_STARTED", "sleepy")

    assert await status_of(proxy, "sleepy") == "running"


async def test_status_is_stopped_as_soon_as_a_stop_by_the_api_began(scalingo, paastis):
    emulator, api_url = scalingo
    emulator.add_app("busy")
    proxy = await paastis(system_api_env(api_url))
    assert await status_of(proxy, "busy") == "running"

    await call(proxy, "POST", "/apps/busy/stop")
    await wait_for_event(proxy, "APP_STOPPED", "busy")

    assert await status_of(proxy, "busy") == "stopped"


async def test_status_follows_a_wake_by_a_request_and_a_stop_by_a_tick(
    scalingo, upstream_factory, paastis
):
    emulator, api_url = scalingo
    _upstream, server = await upstream_factory("story")
    emulator.add_app("story", base_url=url_of(server))
    proxy = await paastis(system_api_env(api_url, START_AND_STOP_MAX_IDLE_TIME="0"))
    await proxy.tick()  # registers
    await proxy.tick()  # stops

    assert await status_of(proxy, "story") == "stopped"
    async with proxy.get("story.example.net") as response:  # wakes
        assert response.status == 200
    assert await status_of(proxy, "story") == "running"


# --- the dashboard's extra fields -------------------------------------------------------------


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def describe(proxy, name: str) -> dict:
    status, app, _ = await call(proxy, "GET", f"/apps/{name}")
    assert status == 200
    return app


def wait_for_file(path: Path) -> str:
    """A hook that holds the start or stop until the test creates `path` (bounded)."""
    return f"for i in $(seq 600); do [ -f {path} ] && break; sleep 0.05; done"


async def test_state_is_waking_while_paastis_wakes_the_app_then_running(
    scalingo, upstream_factory, paastis, tmp_path: Path
):
    emulator, api_url = scalingo
    _upstream, server = await upstream_factory("sleepy")
    emulator.add_app("sleepy", status="stopped", base_url=url_of(server))
    go = tmp_path / "go"
    proxy = await paastis(system_api_env(api_url, HOOKS_BEFORE_START=wait_for_file(go)))
    assert (await describe(proxy, "sleepy"))["state"] == "sleeping"

    await call(proxy, "POST", "/apps/sleepy/start")

    await eventually(lambda: proxy.server.lifecycle.is_waking("sleepy"), what="the wake begun")
    assert (await describe(proxy, "sleepy"))["state"] == "waking"
    go.touch()
    await wait_for_event(proxy, "APP_STARTED", "sleepy")
    woken = await describe(proxy, "sleepy")
    assert (woken["state"], woken["cold_starts"]) == ("running", 1)


async def test_state_is_stopping_while_paastis_stops_the_app_then_sleeping(
    scalingo, paastis, tmp_path: Path
):
    emulator, api_url = scalingo
    emulator.add_app("busy")
    go = tmp_path / "go"
    proxy = await paastis(system_api_env(api_url, HOOKS_BEFORE_STOP=wait_for_file(go)))
    assert (await describe(proxy, "busy"))["state"] == "running"

    await call(proxy, "POST", "/apps/busy/stop")

    await eventually(lambda: proxy.server.lifecycle.is_stopping("busy"), what="the stop begun")
    stopping = await describe(proxy, "busy")
    assert (stopping["state"], stopping["status"]) == ("stopping", "stopped")
    go.touch()
    await wait_for_event(proxy, "APP_STOPPED", "busy")
    assert (await describe(proxy, "busy"))["state"] == "sleeping"


async def test_stop_due_at_is_the_first_tick_after_the_max_idle_time(scalingo, paastis):
    emulator, api_url = scalingo
    emulator.add_app("front")
    emulator.add_app("sleepy", status="stopped")
    proxy = await paastis(
        system_api_env(
            api_url,
            START_AND_STOP_CHECKING_INTERVAL_CRON="0 * * * *",
            START_AND_STOP_MAX_IDLE_TIME="90",
        )
    )
    await proxy.tick()

    front = await describe(proxy, "front")
    idle_from = parse_iso(front["last_accessed_at"]) + timedelta(minutes=90)
    due = parse_iso(front["stop_due_at"])
    assert due >= idle_from and due - idle_from < timedelta(hours=1)
    assert (due.minute, due.second, due.tzinfo) == (0, 0, UTC)
    assert (await describe(proxy, "sleepy"))["stop_due_at"] is None


async def test_an_app_kept_awake_by_its_office_hours_is_not_due_to_stop(scalingo, paastis):
    emulator, api_url = scalingo
    emulator.add_app("front")
    emulator.add_app("back")
    emulator.add_app("other")
    rules = """
rules:
  - pattern: '^front$'
    keep_awake: '* * * * *'
    linked_apps: ['back']
"""
    proxy = await paastis(system_api_env(api_url, START_AND_STOP_MAX_IDLE_TIME="0"), rules=rules)
    await proxy.tick()

    status, apps, _ = await call(proxy, "GET", "/apps")

    assert status == 200
    shown = {app["name"]: (app["kept_awake"], app["stop_due_at"]) for app in apps}
    assert shown["front"] == (True, None)
    assert shown["back"] == (True, None)  # linked to an app whose window is open
    assert shown["other"][0] is False and shown["other"][1] is not None
    assert (await describe(proxy, "back"))["kept_awake"] is True


async def test_an_overdue_app_is_due_at_the_next_tick(scalingo, paastis):
    emulator, api_url = scalingo
    emulator.add_app("front")
    proxy = await paastis(
        system_api_env(
            api_url,
            START_AND_STOP_CHECKING_INTERVAL_CRON="*/10 * * * *",
            START_AND_STOP_MAX_IDLE_TIME="0",
        )
    )
    before = datetime.now(UTC)

    due = parse_iso((await describe(proxy, "front"))["stop_due_at"])

    assert before <= due <= before + timedelta(minutes=10)
    assert due.minute % 10 == 0 and due.second == 0


async def test_time_asleep_and_cold_starts_add_up_over_a_stop_and_a_wake(
    scalingo, upstream_factory, paastis
):
    emulator, api_url = scalingo
    _upstream, server = await upstream_factory("story")
    emulator.add_app("story", base_url=url_of(server))
    proxy = await paastis(system_api_env(api_url, START_AND_STOP_MAX_IDLE_TIME="0"))
    assert (await describe(proxy, "story"))["asleep_seconds"] == 0
    await proxy.tick()  # stops

    await eventually(
        lambda: proxy.server.lifecycle.asleep_seconds_of("story") >= 0.1, what="0.1 s asleep"
    )
    asleep = (await describe(proxy, "story"))["asleep_seconds"]
    async with proxy.get("story.example.net") as response:  # wakes
        assert response.status == 200
    woken = await describe(proxy, "story")

    assert asleep >= 0.1
    assert woken["cold_starts"] == 1
    assert woken["asleep_seconds"] >= asleep
    later = await describe(proxy, "story")
    assert later["asleep_seconds"] == woken["asleep_seconds"]  # awake: the total stays


async def test_requests_in_flight_are_counted(scalingo, upstream_factory, paastis):
    emulator, api_url = scalingo
    upstream, server = await upstream_factory("web")
    emulator.add_app("web", base_url=url_of(server))
    proxy = await paastis(system_api_env(api_url))

    async def hold() -> int:
        async with proxy.get("web.example.net", "/hold") as response:
            return response.status

    held = asyncio.ensure_future(hold())
    try:
        await eventually(lambda: upstream.received, what="the held request")
        assert (await describe(proxy, "web"))["requests_in_flight"] == 1
    finally:
        upstream.release.set()
    assert await held == 200
    await eventually(lambda: proxy.server.lifecycle.activity.count("web") == 0)
    assert (await describe(proxy, "web"))["requests_in_flight"] == 0
