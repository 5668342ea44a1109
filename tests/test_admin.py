"""The admin listener through real sockets: health (and 503 while shutting down), Prometheus
metrics, and the system API without the PaastisProxyTarget header."""

from __future__ import annotations

import asyncio
import re

import pytest

from conftest import url_of
from harness import SYSTEM_API, SYSTEM_TOKEN, scalingo_env
from waiting import eventually


async def admin_get(proxy, path: str, headers: dict[str, str] | None = None):
    async with proxy.session.get(proxy.admin_url + path, headers=headers or {}) as response:
        return response.status, await response.text(), response.headers


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the Prometheus text, or None when absent."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if match is None or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[2] or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match[3])
    return None


# --- health -----------------------------------------------------------------------------------


async def test_health_is_200(scalingo, paastis):
    _emulator, api_url = scalingo
    proxy = await paastis(scalingo_env(api_url), admin=True)

    status, body, headers = await admin_get(proxy, "/health")

    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert '"ok"' in body


async def test_health_is_503_while_shutting_down_with_a_request_in_flight(
    scalingo, upstream_factory, paastis
):
    emulator, api_url = scalingo
    upstream, server = await upstream_factory("web")
    emulator.add_app("web", base_url=url_of(server))
    proxy = await paastis(scalingo_env(api_url), admin=True)

    async def hold() -> tuple[int, str]:
        async with proxy.get("web.example.net", "/hold") as response:
            return response.status, await response.text()

    held = asyncio.ensure_future(hold())
    await eventually(lambda: upstream.received)
    shutdown = asyncio.ensure_future(proxy.stop())
    try:
        await eventually(lambda: proxy.server.shutting_down)
        status, body, _ = await admin_get(proxy, "/health")
        assert not held.done()
    finally:
        upstream.release.set()
    await asyncio.wait_for(shutdown, timeout=10)

    assert status == 503
    assert "shutting down" in body
    assert await asyncio.wait_for(held, timeout=5) == (200, "released")


async def test_health_refuses_other_methods(scalingo, paastis):
    _emulator, api_url = scalingo
    proxy = await paastis(scalingo_env(api_url), admin=True)

    async with proxy.session.post(proxy.admin_url + "/health") as response:
        body = await response.json()

    assert response.status == 405
    assert "error" in body


# --- metrics ----------------------------------------------------------------------------------


async def test_metrics_cover_requests_wakes_stops_apps_provider_calls_and_ticks(
    scalingo, upstream_factory, paastis
):
    emulator, api_url = scalingo
    _upstream, server = await upstream_factory("web")
    emulator.add_app("web", base_url=url_of(server))
    emulator.add_app("idle")
    emulator.add_app("asleep", status="stopped", base_url=url_of(server))
    proxy = await paastis(
        scalingo_env(api_url),
        admin=True,
        rules="rules:\n  - pattern: idle\n    app_max_idle_time: 0\n",
    )
    await proxy.tick()  # registers web and idle
    await proxy.tick()  # stops idle
    for host in ("web.example.net", "web.example.net", "ghost.example.net"):
        async with proxy.get(host, "/items") as response:
            await response.read()
    async with proxy.get("asleep.example.net") as response:  # wakes it
        assert response.status == 200
    await proxy.tick()  # lists again, after the wake

    status, text, headers = await admin_get(proxy, "/metrics")

    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert sample(text, "paastis_requests_total", app="web", status_class="2xx") == 2
    assert sample(text, "paastis_request_duration_seconds_count") == 4
    assert "# TYPE paastis_request_duration_seconds histogram" in text
    assert sample(text, "paastis_wakes_total", app="asleep", outcome="success") == 1
    assert sample(text, "paastis_wake_duration_seconds_count") == 1
    assert sample(text, "paastis_stops_total", app="idle", outcome="success") == 1
    assert sample(text, "paastis_apps", state="running") == 2
    assert sample(text, "paastis_apps", state="sleeping") == 1
    assert sample(text, "paastis_apps", state="registered") == 2
    assert "# TYPE paastis_requests_in_flight gauge" in text
    assert sample(text, "paastis_provider_calls_total", provider="scalingo") is not None
    assert re.search(
        r'^paastis_provider_calls_total\{(?=.*operation="list_apps")(?=.*status="200").*\} ',
        text,
        re.M,
    )
    assert sample(text, "paastis_scheduler_tick_duration_seconds_count") >= 3
    assert sample(text, "paastis_app_asleep_seconds_total", app="idle") > 0


async def test_metrics_count_a_request_in_flight(scalingo, upstream_factory, paastis):
    emulator, api_url = scalingo
    upstream, server = await upstream_factory("web")
    emulator.add_app("web", base_url=url_of(server))
    proxy = await paastis(scalingo_env(api_url), admin=True)

    async def hold() -> int:
        async with proxy.get("web.example.net", "/hold") as response:
            return response.status

    held = asyncio.ensure_future(hold())
    try:
        await eventually(lambda: upstream.received)
        _, during, _ = await admin_get(proxy, "/metrics")
    finally:
        upstream.release.set()
    assert await asyncio.wait_for(held, timeout=5) == 200
    _, after, _ = await admin_get(proxy, "/metrics")

    assert sample(during, "paastis_requests_in_flight", app="web") == 1
    assert sample(after, "paastis_requests_in_flight", app="web") == 0


async def test_metrics_need_no_token_on_the_admin_listener(scalingo, paastis):
    _emulator, api_url = scalingo
    proxy = await paastis(
        scalingo_env(api_url, **SYSTEM_API),
        admin=True,
    )

    status, text, _ = await admin_get(proxy, "/metrics")

    assert status == 200
    assert "paastis_apps" in text


# --- the system API on the admin listener -----------------------------------------------------


async def test_system_api_is_served_without_the_target_header(scalingo, paastis):
    emulator, api_url = scalingo
    emulator.add_app("front")
    proxy = await paastis(
        scalingo_env(api_url, **SYSTEM_API),
        admin=True,
    )

    async with proxy.session.get(
        proxy.admin_url + "/apps", headers={"PaastisProxySystemApiToken": SYSTEM_TOKEN}
    ) as response:
        apps = await response.json()

    assert response.status == 200
    assert [app["name"] for app in apps] == ["front"]


async def test_system_api_on_the_admin_listener_takes_a_bearer_token(scalingo, paastis):
    emulator, api_url = scalingo
    emulator.add_app("front")
    proxy = await paastis(scalingo_env(api_url, ROUTING_SYSTEM_API_TOKEN=SYSTEM_TOKEN), admin=True)

    async with proxy.session.get(
        proxy.admin_url + "/apps/front", headers={"Authorization": f"Bearer {SYSTEM_TOKEN}"}
    ) as response:
        app = await response.json()

    assert response.status == 200
    assert app["name"] == "front"


@pytest.mark.parametrize(
    "headers",
    [{}, {"PaastisProxySystemApiToken": "wrong-token-but-long-enough"}],
    ids=["missing", "wrong"],
)
async def test_system_api_on_the_admin_listener_requires_the_token(scalingo, paastis, headers):
    emulator, api_url = scalingo
    emulator.add_app("front")
    proxy = await paastis(
        scalingo_env(api_url, **SYSTEM_API),
        admin=True,
    )

    async with proxy.session.post(
        proxy.admin_url + "/apps/front/stop", headers=headers
    ) as response:
        body = await response.json()

    assert response.status == 401
    assert "error" in body
    assert emulator.count("scale") == 0


async def test_system_api_on_the_admin_listener_is_closed_without_a_configured_token(
    scalingo, paastis
):
    emulator, api_url = scalingo
    emulator.add_app("front")
    proxy = await paastis(scalingo_env(api_url), admin=True)

    for headers in ({}, {"PaastisProxySystemApiToken": ""}, {"Authorization": "Bearer "}):
        async with proxy.session.delete(proxy.admin_url + "/apps", headers=headers) as response:
            assert response.status == 401


async def test_system_api_errors_on_the_admin_listener_are_json(scalingo, paastis):
    _emulator, api_url = scalingo
    proxy = await paastis(scalingo_env(api_url, ROUTING_SYSTEM_API_TOKEN=SYSTEM_TOKEN), admin=True)
    token = {"PaastisProxySystemApiToken": SYSTEM_TOKEN}

    async with proxy.session.get(proxy.admin_url + "/nowhere", headers=token) as missing:
        missing_body = await missing.json()
    async with proxy.session.put(proxy.admin_url + "/events", headers=token) as wrong:
        wrong_body = await wrong.json()

    assert (missing.status, set(missing_body)) == (404, {"error"})
    assert (wrong.status, set(wrong_body)) == (405, {"error"})


async def test_admin_listener_does_not_proxy_to_apps(scalingo, upstream_factory, paastis):
    emulator, api_url = scalingo
    upstream, server = await upstream_factory("web")
    emulator.add_app("web", base_url=url_of(server))
    proxy = await paastis(scalingo_env(api_url, ROUTING_SYSTEM_API_TOKEN=SYSTEM_TOKEN), admin=True)

    async with proxy.session.get(
        proxy.admin_url + "/items", headers={"Host": "web.example.net"}
    ) as response:
        await response.read()

    assert response.status in (401, 404)
    assert upstream.received == []
