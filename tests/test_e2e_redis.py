"""End to end with REGISTRY_TYPE=redis: several paastis instances, one real redis-server, one
Scalingo API emulator, test upstreams."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis

from clock import ManualClock
from conftest import url_of
from harness import SCALINGO_TOKEN, SYSTEM_API, RunningPaastis, scalingo_env, system_headers
from paastis.config import CommandLine, load_settings
from paastis.errors import ConfigError
from paastis.registry.redis import to_micros
from waiting import eventually

if TYPE_CHECKING:
    from redis_support import RedisDatabase, RedisServer

# The redis-server fixtures (redis_db, redis_server_factory) come from conftest.

PREFIX = "e2e:paastis:"
WAIT = 10.0  # seconds: the bound of every wait on something asynchronous

# Idle times pass on a manual wall clock: a minute's idle time, then `clock.advance(IDLE_PAST)`.
IDLE = "1"  # minutes
IDLE_PAST = 61.0  # seconds

StartPaastis = Callable[..., Awaitable[RunningPaastis]]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def scalingo_boot_delay() -> float:
    return 0.2  # long enough that requests on several instances all arrive during one wake


def redis_env(api_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    return scalingo_env(
        api_url,
        REGISTRY_TYPE="redis",
        REGISTRY_REDIS_URL=redis_url,
        REGISTRY_REDIS_PREFIX=PREFIX,
        **SYSTEM_API,
        **extra,
    )


@pytest.fixture
async def redis_client() -> AsyncIterator[Callable[[str], aioredis.Redis]]:
    """The test's own view of Redis (never paastis' code)."""
    made: list[aioredis.Redis] = []

    def connect(url: str) -> aioredis.Redis:
        client = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=2.0)
        made.append(client)
        return client

    yield connect
    for client in made:
        await client.aclose()


async def start_three(paastis: StartPaastis, env: dict[str, str], **kwargs: Any):
    return [await paastis(env, **kwargs) for _ in range(3)]


async def settle(proxies: list[RunningPaastis]) -> None:
    """Waits for the start-up ticks (each instance lists the apps, one registers them)."""
    for proxy in proxies:
        await proxy.tick()


async def get_json(proxy: RunningPaastis, path: str) -> Any:
    async with proxy.get("system", path, headers=system_headers()) as response:
        assert response.status == 200, await response.text()
        return await response.json()


# --- several instances, one decision ---------------------------------------------------------


async def test_idle_app_is_stopped_exactly_once_by_three_instances_ticking(
    scalingo, redis_db: RedisDatabase, paastis, clock
):
    emulator, api_url = scalingo
    emulator.add_app("idle")
    proxies = await start_three(
        paastis,
        redis_env(api_url, redis_db.url, START_AND_STOP_MAX_IDLE_TIME=IDLE),
        wall_clock=clock.wall,
    )
    await settle(proxies)
    assert await proxies[0].server.registry.get("idle") is not None
    clock.advance(IDLE_PAST)

    reports = []
    for _ in range(3):  # all three at the same time, then one after the other
        reports += await asyncio.gather(*(proxy.tick() for proxy in proxies))
        for proxy in proxies:
            reports.append(await proxy.tick())

    assert [name for report in reports for name in report.stopped] == ["idle"]
    assert emulator.count("scale", app="idle") == 1
    assert emulator.status_of("idle") == "stopped"


async def test_sleeping_app_is_started_once_by_concurrent_requests_through_three_instances(
    scalingo, redis_db: RedisDatabase, upstream_factory, paastis
):
    emulator, api_url = scalingo
    _upstream, upstream_server = await upstream_factory("sleepy")
    emulator.add_app("sleepy", status="stopped", base_url=url_of(upstream_server))
    proxies = await start_three(paastis, redis_env(api_url, redis_db.url))

    async def one(proxy: RunningPaastis, index: int) -> tuple[int, str | None]:
        async with proxy.get("sleepy.example.net", f"/n/{index}") as response:
            await response.read()
            return response.status, response.headers.get("X-Paastis-Cold-Start")

    answers = await asyncio.gather(*(one(proxy, index) for index in range(10) for proxy in proxies))

    assert [status for status, _ in answers] == [200] * 30
    assert emulator.count("scale", app="sleepy") == 1
    started = [e for e in await get_json(proxies[0], "/events") if e["name"] == "APP_STARTED"]
    assert len(started) == 1  # one instance woke it; the others waited
    assert {cold for _, cold in answers} == {"true"}
    assert emulator.status_of("sleepy") == "running"


async def test_every_instance_lists_the_same_stop_and_start_events(
    scalingo, redis_db: RedisDatabase, upstream_factory, paastis, clock
):
    emulator, api_url = scalingo
    _upstream, upstream_server = await upstream_factory("story")
    emulator.add_app("story", base_url=url_of(upstream_server))
    a, b, c = await start_three(
        paastis,
        redis_env(api_url, redis_db.url, START_AND_STOP_MAX_IDLE_TIME=IDLE),
        wall_clock=clock.wall,
    )
    await settle([a, b, c])
    clock.advance(IDLE_PAST)
    assert (await a.tick()).stopped == ["story"]
    async with b.get("story.example.net") as response:
        assert response.status == 200

    seen = [await get_json(proxy, "/events") for proxy in (a, b, c)]

    assert seen[0] == seen[1] == seen[2]
    names = [event["name"] for event in seen[0] if event["oid"] == "story"]
    assert names.count("APP_STOPPED") == 1
    assert names.count("APP_STARTED") == 1
    assert names.index("APP_STOPPED") < names.index("APP_STARTED")


async def test_instance_that_did_not_stop_the_app_wakes_it_on_the_next_request(
    scalingo, redis_db: RedisDatabase, upstream_factory, paastis, clock
):
    emulator, api_url = scalingo
    _upstream, upstream_server = await upstream_factory("shared")
    emulator.add_app("shared", base_url=url_of(upstream_server))
    a, b, c = await start_three(
        paastis,
        redis_env(api_url, redis_db.url, START_AND_STOP_MAX_IDLE_TIME=IDLE),
        wall_clock=clock.wall,
    )
    await settle([a, b, c])
    async with b.get("shared.example.net") as response:  # B knows the app, running
        assert response.status == 200
        assert "X-Paastis-Cold-Start" not in response.headers
    clock.advance(IDLE_PAST)
    assert (await a.tick()).stopped == ["shared"]
    provider_calls = len(emulator.log)

    async def b_knows_it_sleeps() -> bool:
        return b.server.catalog.lookup("shared").state.value == "stopped"

    await eventually(b_knows_it_sleeps, timeout=WAIT, what="instance B hears of the stop")
    assert len(emulator.log) == provider_calls, "B learnt it from the event, not the provider"
    async with b.get("shared.example.net") as response:
        assert response.status == 200
        assert response.headers.get("X-Paastis-Cold-Start") == "true"
    assert emulator.count("scale", app="shared") == 2  # A's stop, B's start
    assert emulator.status_of("shared") == "running"


async def test_request_on_another_instance_during_a_stop_waits_for_it_then_wakes_the_app(
    scalingo, redis_db: RedisDatabase, upstream_factory, paastis, clock
):
    emulator, api_url = scalingo
    _upstream, upstream_server = await upstream_factory("racy")
    emulator.add_app("racy", base_url=url_of(upstream_server))
    env = redis_env(api_url, redis_db.url, START_AND_STOP_MAX_IDLE_TIME=IDLE)
    a, b = (
        await paastis(env, wall_clock=clock.wall),
        await paastis(env, wall_clock=clock.wall),
    )
    await settle([a, b])
    clock.advance(IDLE_PAST)
    emulator.boot_delay = 1.0  # A's stop takes a second
    stopping = asyncio.ensure_future(a.tick())

    async def b_knows_a_stop_began() -> bool:
        return b.server.catalog.lookup("racy").state.value == "stopped"

    await eventually(b_knows_a_stop_began, timeout=WAIT, what="instance B hears that a stop began")
    assert not stopping.done(), "the stop should still be under way"
    emulator.boot_delay = 0.2
    async with b.get("racy.example.net") as response:
        assert response.status == 200
        # Held until A's stop ended, then woken: never forwarded to containers going down.
        assert response.headers.get("X-Paastis-Cold-Start") == "true"
    assert (await asyncio.wait_for(stopping, WAIT)).stopped == ["racy"]
    assert emulator.count("scale", app="racy") == 2  # A's stop, then B's start
    assert emulator.status_of("racy") == "running"


# --- keys, restart, stamping cost ------------------------------------------------------------


async def test_every_key_paastis_writes_is_under_the_prefix_and_it_never_scans_or_flushes(
    scalingo, redis_server_factory, upstream_factory, paastis, redis_client
):
    emulator, api_url = scalingo
    server: RedisServer = redis_server_factory()
    server.start()  # private: INFO commandstats covers every command paastis ever sent it
    _upstream, upstream_server = await upstream_factory("web")
    emulator.add_app("web", base_url=url_of(upstream_server))
    emulator.add_app("big", formation={"web": 2, "worker": 1})
    rules = "rules:\n  - pattern: '^big$'\n    app_max_idle_time: 0\n"
    proxy = await paastis(redis_env(api_url, server.url), rules=rules)
    for _ in range(2):
        await proxy.tick()  # registers both, then stops big (its formation remembered)
    assert emulator.status_of("big") == "stopped"
    async with proxy.get("web.example.net") as response:
        assert response.status == 200
    async with proxy.request("DELETE", "system", "/apps", headers=system_headers()) as response:
        assert response.status == 204
    await proxy.stop()  # flushes what it kept in process
    store = redis_client(server.url)

    commands = set(await command_calls(store))
    keys = sorted([key async for key in store.scan_iter(count=100)])

    assert keys == sorted(PREFIX + key for key in ("formations", "events"))
    assert not commands & {"keys", "flushdb", "flushall", "scan"}, commands


async def test_delete_apps_forgets_every_app_and_spares_a_foreign_key(
    scalingo, redis_db: RedisDatabase, paastis, redis_client
):
    emulator, api_url = scalingo
    emulator.add_app("web")
    emulator.add_app("api")
    proxy = await paastis(redis_env(api_url, redis_db.url))
    store = redis_client(redis_db.url)
    await store.set("paastis:foreign", "not paastis'")  # the default prefix: not ours here
    await store.set(PREFIX.rstrip(":"), "a neighbour without the separator")
    await settle([proxy])
    assert await store.hlen(PREFIX + "apps") == 2

    async with proxy.request("DELETE", "system", "/apps", headers=system_headers()) as response:
        assert response.status == 204

    assert await store.get("paastis:foreign") == "not paastis'"
    assert await store.get(PREFIX.rstrip(":")) == "a neighbour without the separator"
    assert await store.exists(PREFIX + "apps", PREFIX + "last_access") == 0
    assert [app["is_monitored"] for app in await get_json(proxy, "/apps")] == [False, False]


async def has_last_access(store: aioredis.Redis, name: str) -> bool:
    return await store.zscore(PREFIX + "last_access", name) is not None


async def test_restarted_instance_finds_registered_apps_and_remembered_formation(
    scalingo, redis_db: RedisDatabase, upstream_factory, paastis
):
    emulator, api_url = scalingo
    _, kept_server = await upstream_factory("kept")
    _, big_server = await upstream_factory("big")
    emulator.add_app("kept", base_url=url_of(kept_server))
    emulator.add_app("big", formation={"web": 2, "worker": 1}, base_url=url_of(big_server))
    rules = "rules:\n  - pattern: '^big$'\n    app_max_idle_time: 0\n"
    env = redis_env(api_url, redis_db.url)
    first = await paastis(env, rules=rules)
    for _ in range(2):
        await first.tick()  # registers both, then stops big
    assert emulator.status_of("big") == "stopped"
    async with first.get("kept.example.net") as response:
        assert response.status == 200
    before = await first.server.registry.get("kept")
    await first.stop()  # flushes the stamp it kept in process

    second = await paastis(env, rules=rules)
    found = {app.name: app for app in await second.server.registry.list()}

    assert set(found) == {"kept"}
    assert found["kept"].last_accessed_at == before.last_accessed_at
    assert found["kept"].started_at == before.started_at
    assert emulator.apps["big"].formation == {"web": 0, "worker": 0}
    async with second.get("big.example.net") as response:
        assert response.status == 200
    assert emulator.apps["big"].formation == {"web": 2, "worker": 1}


async def test_a_thousand_requests_cost_fewer_than_fifty_redis_commands(
    scalingo, redis_server_factory, upstream_factory, paastis, redis_client
):
    emulator, api_url = scalingo
    server: RedisServer = redis_server_factory()
    server.start()  # private: INFO commandstats counts the whole server
    _upstream, upstream_server = await upstream_factory("hot")
    emulator.add_app("hot", base_url=url_of(upstream_server))
    proxy = await paastis(redis_env(api_url, server.url))
    await proxy.tick()
    store = redis_client(server.url)
    await eventually(
        lambda: has_last_access(store, "hot"), timeout=WAIT, what="the app is registered"
    )
    await asyncio.sleep(1.2)  # let start-up writes settle
    before = await command_calls(store)
    started = datetime.now(UTC)

    async def one(index: int) -> int:
        async with proxy.get("hot.example.net", f"/{index}") as response:
            await response.read()
            return response.status

    statuses: list[int] = []
    for batch in range(20):
        statuses += await asyncio.gather(*(one(batch * 50 + i) for i in range(50)))
    await asyncio.sleep(1.5)  # the flusher's interval (1 s) and a margin
    after = await command_calls(store)
    spent = {name: after[name] - before.get(name, 0) for name in after}
    spent = {name: calls for name, calls in spent.items() if calls}
    total = sum(spent.values())

    print(f"\n1,000 requests cost {total} redis commands: {spent}")
    assert statuses == [200] * 1000
    assert total < 50, spent
    stored = await store.zscore(PREFIX + "last_access", "hot")
    assert stored >= to_micros(started), "the stamps reached redis"


async def command_calls(store: aioredis.Redis) -> dict[str, int]:
    """Calls per command since the server started, without the test's own INFO."""
    stats = await store.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(values["calls"])
        for name, values in stats.items()
        if name != "cmdstat_info"
    }


# --- Redis failing ---------------------------------------------------------------------------


async def test_redis_killed_mid_traffic_fails_no_request_and_stops_nothing_until_back(
    scalingo, redis_server_factory, upstream_factory, paastis, redis_client, caplog
):
    caplog.set_level(logging.INFO, logger="paastis")
    emulator, api_url = scalingo
    server: RedisServer = redis_server_factory()
    server.start()
    _upstream, upstream_server = await upstream_factory("busy")
    emulator.add_app("busy", base_url=url_of(upstream_server))
    emulator.add_app("idle")
    # Real time: the test compares the stamps of real traffic with when it was sent.
    rules = "rules:\n  - pattern: '^idle$'\n    app_max_idle_time: 0.005\n"  # 0.3 s
    proxy = await paastis(redis_env(api_url, server.url), rules=rules)
    store = redis_client(server.url)
    await proxy.tick()
    await eventually(lambda: has_last_access(store, "idle"), timeout=WAIT, what="apps registered")

    statuses: list[int] = []
    during_outage: list[datetime] = []
    stop_traffic = asyncio.Event()

    async def traffic() -> None:
        while not stop_traffic.is_set():
            sent = datetime.now(UTC)
            async with proxy.get("busy.example.net") as response:
                await response.read()
                statuses.append(response.status)
            if not server.running:
                during_outage.append(sent)
            await asyncio.sleep(0.01)

    sender = asyncio.ensure_future(traffic())
    try:
        await asyncio.sleep(0.4)  # traffic flows; idle is now past its idle time
        server.command("SAVE")  # what a Redis with persistence has on disk when it dies
        server.stop(persist=False)  # SIGKILL
        outage_ticks = []
        for _ in range(3):
            outage_ticks.append(await proxy.tick())
            await asyncio.sleep(0.3)
        server.start()
        restarted = time.monotonic()
        await eventually(
            lambda: proxy.server.registry.available, timeout=WAIT, what="redis is back"
        )
        caught_up = time.monotonic() - restarted
        await asyncio.sleep(0.3)  # traffic goes on after the recovery too
    finally:
        stop_traffic.set()
        await asyncio.wait_for(sender, WAIT)

    print(
        f"\n{len(statuses)} requests, {len(during_outage)} during the outage; "
        f"caught up {caught_up:.2f} s after redis restarted"
    )
    assert len(during_outage) > 10
    assert statuses == [200] * len(statuses)
    assert [(r.stopped, r.skipped) for r in outage_ticks] == [([], "registry unavailable")] * 3
    assert emulator.count("scale", app="idle") == 0
    store = redis_client(server.url)  # the test's old connection died with the server
    stored = await store.zscore(PREFIX + "last_access", "busy")
    assert stored >= to_micros(max(during_outage)), "the outage's stamps reached redis"
    messages = [r.getMessage() for r in caplog.records if r.name == "paastis.redis"]
    assert sum("redis unreachable" in m for m in messages) == 1, messages
    assert sum("redis is back" in m for m in messages) == 1, messages
    # Nothing else complained per request (the scheduler says once per tick why it waits).
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name not in ("paastis.redis", "paastis.scheduler")
    ]
    assert warnings == []
    assert (await proxy.tick()).stopped == ["idle"]  # normal operation, without a restart


async def test_paastis_starts_without_redis_serves_and_catches_up_when_it_comes(
    scalingo, redis_server_factory, upstream_factory, paastis, redis_client, caplog
):
    caplog.set_level(logging.INFO, logger="paastis")
    emulator, api_url = scalingo
    server: RedisServer = redis_server_factory()  # its port is reserved, nothing listens yet
    _, web_server = await upstream_factory("web")
    _, sleepy_server = await upstream_factory("sleepy")
    emulator.add_app("web", base_url=url_of(web_server))
    emulator.add_app("sleepy", status="stopped", base_url=url_of(sleepy_server))

    proxy = await paastis(redis_env(api_url, server.url))
    async with proxy.get("web.example.net") as response:
        assert response.status == 200
    async with proxy.get("sleepy.example.net") as response:  # woken while redis is away
        assert response.status == 200
    assert any("redis unreachable" in r.getMessage() for r in caplog.records)

    server.start()
    await eventually(lambda: proxy.server.registry.available, timeout=WAIT, what="redis is reached")
    store = redis_client(server.url)
    assert await store.hexists(PREFIX + "apps", "sleepy")
    await proxy.tick()
    assert await store.hexists(PREFIX + "apps", "web")
    events = [(e["oid"], e["name"]) for e in await get_json(proxy, "/events")]
    assert ("sleepy", "APP_STARTED") in events
    assert await store.xlen(PREFIX + "events") == len(events)


# --- configuration ---------------------------------------------------------------------------


async def test_redis_url_with_password_and_database_number_is_used(
    scalingo, redis_server_factory, paastis, caplog
):
    caplog.set_level(logging.DEBUG, logger="paastis")
    emulator, api_url = scalingo
    server: RedisServer = redis_server_factory(password="pw-0123456789")
    server.start()
    emulator.add_app("web")
    url = server.url_for_db(3)
    assert url.startswith("redis://:pw-0123456789@127.0.0.1:") and url.endswith("/3")

    proxy = await paastis(redis_env(api_url, url))
    await proxy.tick()

    assert proxy.server.registry.available
    assert server.command("HEXISTS", PREFIX + "apps", "web", db=3) == ":1"
    assert server.command("EXISTS", PREFIX + "apps", db=0) == ":0"
    assert "pw-0123456789" not in caplog.text


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379",
        "127.0.0.1:6379",
        "redis://:pw-0123456789@127.0.0.1:6379/not-a-db",
        "redis://:pw-0123456789@127.0.0.1:6379/1/2",
        "redis://:pw-0123456789@127.0.0.1:99999/0",
        "unix:///tmp/redis.sock?db=three",
    ],
)
def test_bad_redis_url_is_a_configuration_error_that_hides_the_password(tmp_path: Path, url: str):
    env = {
        "PROVIDER_NAME": "scalingo",
        "PROVIDER_SCALINGO_API_TOKEN": SCALINGO_TOKEN,
        "REGISTRY_TYPE": "redis",
        "REGISTRY_REDIS_URL": url,
    }
    with pytest.raises(ConfigError, match="REGISTRY_REDIS_URL") as raised:
        load_settings(CommandLine(), env, cwd=tmp_path)
    assert "pw-0123456789" not in str(raised.value)
