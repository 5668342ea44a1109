"""The rules seen from outside: what a request's app key decides for the app it routes to
(DESIGN §4), through real sockets in front of the Scalingo API emulator."""

from __future__ import annotations

from typing import Any

from conftest import url_of
from harness import SYSTEM_API, RunningPaastis, scalingo_env, system_headers
from waiting import eventually

# The original project's own case.
REVIEW_RULE = (
    "rules:\n"
    "  - pattern: 'app-review-pr(\\d+)-(back|front)'\n"
    "    app_name: 'renamed-app-pr$1-$2'\n"
    "    app_max_idle_time: 30\n"
    "    linked_apps: ['app-review-pr$1-front']\n"
)


async def described(proxy: RunningPaastis, name: str) -> dict[str, Any]:
    async with proxy.get("system", f"/apps/{name}", headers=system_headers()) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_a_request_registers_the_renamed_app_with_every_field_of_the_key_rules(
    scalingo, upstream_factory, paastis
):
    emulator, api_url = scalingo
    _, back = await upstream_factory("back")
    emulator.add_app("renamed-app-pr123-back", status="stopped", base_url=url_of(back))
    emulator.add_app("app-review-pr123-front", status="stopped")
    proxy = await paastis(
        scalingo_env(api_url, PROXY_READINESS_PATH="", **SYSTEM_API), rules=REVIEW_RULE
    )

    async with proxy.get("app-review-pr123-back.example.net") as response:
        assert response.status == 200
        assert response.headers.get("X-Paastis-Cold-Start") == "true"

    app = await described(proxy, "renamed-app-pr123-back")
    assert (app["is_monitored"], app["max_idle_time"]) == (True, 30)
    registered = await proxy.server.registry.get("renamed-app-pr123-back")
    assert registered is not None
    assert registered.linked_apps == ("app-review-pr123-front",)
    assert emulator.status_of("app-review-pr123-front") == "running"


async def test_an_app_found_by_discovery_gets_the_rules_of_its_provider_name(scalingo, paastis):
    emulator, api_url = scalingo
    emulator.add_app("renamed-app-pr7-back")
    rules = REVIEW_RULE + "  - pattern: '^renamed-'\n    app_max_idle_time: 45\n"
    proxy = await paastis(scalingo_env(api_url, **SYSTEM_API), rules=rules)

    await proxy.tick()

    assert (await described(proxy, "renamed-app-pr7-back"))["max_idle_time"] == 45


async def test_a_later_request_updates_the_registered_app_with_its_key_fields(
    scalingo, upstream_factory, paastis
):
    emulator, api_url = scalingo
    _, back = await upstream_factory("back")
    emulator.add_app("renamed-app-pr7-back", base_url=url_of(back))
    proxy = await paastis(scalingo_env(api_url, **SYSTEM_API), rules=REVIEW_RULE)
    await proxy.tick()
    assert (await described(proxy, "renamed-app-pr7-back"))["max_idle_time"] == 15

    async with proxy.get("app-review-pr7-back.example.net") as response:
        assert response.status == 200

    async def updated() -> bool:
        return (await described(proxy, "renamed-app-pr7-back"))["max_idle_time"] == 30

    await eventually(updated, what="the key's max idle time applies to the registered app")


async def test_the_target_rules_fill_in_what_the_key_rules_leave_unset(
    scalingo, upstream_factory, paastis
):
    emulator, api_url = scalingo
    upstream, server = await upstream_factory("blog")
    emulator.add_app("my-blog-prod", status="stopped", base_url=url_of(server))
    rules = (
        "rules:\n"
        "  - pattern: '^blog$'\n    app_name: my-blog-prod\n    app_max_idle_time: 30\n"
        "  - pattern: '^my-blog-prod$'\n    app_max_idle_time: 99\n"
        "    readiness_path: '/health'\n"
    )
    proxy = await paastis(scalingo_env(api_url, **SYSTEM_API), rules=rules)

    async with proxy.get("blog.example.net") as response:
        assert response.status == 200

    assert upstream.health_checks > 0  # the target's readiness_path
    assert (await described(proxy, "my-blog-prod"))["max_idle_time"] == 30  # the key's
