"""The Redis registry, event log and locks, against a real redis-server started by the suite."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from paastis.events import APP_STARTED, APP_STOPPED, Event
from paastis.registry import RunningApp
from paastis.registry.redis import RedisRegistry, to_micros
from paastis.registry.redis_connection import RedisConnection
from paastis.registry.redis_events import RedisEventLog
from paastis.urls import mask_url
from waiting import eventually

if TYPE_CHECKING:
    from redis_support import RedisDatabase, RedisServer

# The redis-server fixtures (redis_server, redis_db, redis_server_factory).

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
WAIT = 5.0  # upper bound of every wait; the happy path takes a fraction of it


def running_app(name: str = "hello", last_access: datetime = T0) -> RunningApp:
    return RunningApp(
        provider="scalingo",
        region="osc-fr1",
        name=name,
        max_idle_time=15,
        linked_apps=(),
        started_at=T0 - timedelta(hours=1),
        last_accessed_at=last_access,
    )


@dataclass
class Instance:
    """What one paastis instance builds for REGISTRY_TYPE=redis: one connection, two users."""

    connection: RedisConnection
    registry: RedisRegistry
    events: RedisEventLog
    heard: list[Event] = field(default_factory=list)


class Instances:
    def __init__(self) -> None:
        self._started: list[Instance] = []

    async def start(
        self,
        url: str,
        *,
        prefix: str = "paastis:",
        flush_interval: float = 0.05,
        maxlen: int = 10_000,
    ) -> Instance:
        connection = RedisConnection(url, retry_min=0.05, retry_max=0.2, connect_timeout=0.5)
        instance = Instance(
            connection,
            RedisRegistry(connection, prefix=prefix, flush_interval=flush_interval),
            RedisEventLog(connection, prefix=prefix, maxlen=maxlen, block_time=0.05),
        )
        instance.events.subscribe(instance.heard.append)
        await instance.registry.start()
        await instance.events.start()
        self._started.append(instance)
        return instance

    async def close(self, instance: Instance) -> None:
        if instance in self._started:
            self._started.remove(instance)
            await instance.events.close()
            await instance.registry.close()

    async def close_all(self) -> None:
        for instance in list(self._started):
            await self.close(instance)


@pytest.fixture
async def instances() -> AsyncIterator[Instances]:
    made = Instances()
    try:
        yield made
    finally:
        await made.close_all()


@pytest.fixture
async def raw(redis_db: RedisDatabase) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the test's database, to look at what paastis wrote."""
    client = aioredis.Redis.from_url(redis_db.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def all_keys(raw: aioredis.Redis) -> set[str]:
    return {key async for key in raw.scan_iter(count=100)}


async def stored_last_access(raw: aioredis.Redis, name: str, prefix: str = "paastis:") -> float:
    return await raw.zscore(f"{prefix}last_access", name) or 0.0


async def is_available(instance: Instance) -> bool:
    return instance.registry.available


def command_calls(stats: dict[str, dict[str, int]]) -> int:
    """Commands run by the server, except the INFO calls that measure them."""
    return sum(s["calls"] for name, s in stats.items() if name != "cmdstat_info")


# --- key layout -------------------------------------------------------------------------------


async def test_every_key_paastis_writes_starts_with_the_prefix(
    instances: Instances, redis_db: RedisDatabase, raw: aioredis.Redis
) -> None:
    paastis = await instances.start(redis_db.url)
    await paastis.registry.register(running_app())
    paastis.registry.stamp("hello", T0 + timedelta(minutes=1))
    await paastis.registry.flush()
    await paastis.registry.remember_formation("sleepy", {"web": 2})
    await paastis.events.record(APP_STARTED, "hello")

    async with paastis.registry.lock("wake:hello", ttl=5):
        keys = await all_keys(raw)

    assert keys == {
        "paastis:apps",
        "paastis:last_access",
        "paastis:formations",
        "paastis:events",
        "paastis:lock:wake:hello",
    }


async def test_a_custom_prefix_is_used_for_every_key(
    instances: Instances, redis_db: RedisDatabase, raw: aioredis.Redis
) -> None:
    paastis = await instances.start(redis_db.url, prefix="team-a/paastis:")
    await paastis.registry.register(running_app())
    await paastis.registry.remember_formation("hello", {"web": 1})
    await paastis.events.record(APP_STARTED, "hello")

    keys = await all_keys(raw)

    assert keys and all(key.startswith("team-a/paastis:") for key in keys)


async def test_clear_keeps_a_foreign_key_of_the_same_database(
    instances: Instances, redis_db: RedisDatabase, raw: aioredis.Redis
) -> None:
    await raw.set("other-app:session", "keep me")
    await raw.set("paastis-lookalike", "keep me too")
    paastis = await instances.start(redis_db.url)
    await paastis.registry.register(running_app())

    await paastis.registry.clear()

    assert await paastis.registry.list() == []
    assert await raw.get("other-app:session") == "keep me"
    assert await raw.get("paastis-lookalike") == "keep me too"


async def test_clear_leaves_the_apps_of_another_prefix_registered(
    instances: Instances, redis_db: RedisDatabase
) -> None:
    ours = await instances.start(redis_db.url, prefix="paastis:")
    theirs = await instances.start(redis_db.url, prefix="staging:")
    await ours.registry.register(running_app("ours"))
    await theirs.registry.register(running_app("theirs"))

    await ours.registry.clear()

    assert [app.name for app in await theirs.registry.list()] == ["theirs"]


# --- persistence and sharing ------------------------------------------------------------------


async def test_a_restarted_registry_finds_every_app_with_its_last_access_and_formation(
    instances: Instances, redis_db: RedisDatabase
) -> None:
    before = await instances.start(redis_db.url)
    await before.registry.register(running_app("hello"))
    await before.registry.register(running_app("other"))
    before.registry.stamp("hello", T0 + timedelta(minutes=7))
    await before.registry.remember_formation("sleepy", {"web": 2, "worker": 1})
    await instances.close(before)

    after = await instances.start(redis_db.url)

    assert sorted(await after.registry.list(), key=lambda app: app.name) == [
        running_app("hello", last_access=T0 + timedelta(minutes=7)),
        running_app("other"),
    ]
    assert await after.registry.formation("sleepy") == {"web": 2, "worker": 1}


async def test_an_app_registered_by_one_instance_is_known_to_another(
    instances: Instances, redis_db: RedisDatabase
) -> None:
    first = await instances.start(redis_db.url)
    second = await instances.start(redis_db.url)

    await first.registry.register(running_app())

    assert await second.registry.register(running_app()) is False
    assert await second.registry.get("hello") == running_app()


async def test_an_older_stamp_from_another_instance_never_overwrites_a_newer_one(
    instances: Instances, redis_db: RedisDatabase, raw: aioredis.Redis
) -> None:
    first = await instances.start(redis_db.url, flush_interval=60)
    second = await instances.start(redis_db.url, flush_interval=60)
    await first.registry.register(running_app())
    newer, older = T0 + timedelta(minutes=5), T0 + timedelta(minutes=2)
    first.registry.stamp("hello", newer)

    async def newer_written() -> bool:
        return await stored_last_access(raw, "hello") == to_micros(newer)

    await eventually(newer_written, timeout=WAIT)
    second.registry.stamp("hello", older)
    await instances.close(second)  # every write of the second instance is done

    assert await stored_last_access(raw, "hello") == to_micros(newer)
    app = await first.registry.get("hello")
    assert app is not None and app.last_accessed_at == newer


async def test_stamps_reach_redis_in_the_background_within_a_flush_interval(
    instances: Instances, redis_db: RedisDatabase, raw: aioredis.Redis
) -> None:
    paastis = await instances.start(redis_db.url, flush_interval=0.05)
    await paastis.registry.register(running_app())
    later = T0 + timedelta(minutes=1)

    paastis.registry.stamp("hello", later)

    async def written() -> bool:
        return await stored_last_access(raw, "hello") == to_micros(later)

    await eventually(written, timeout=1.0)


async def test_a_stamp_of_an_unregistered_app_writes_nothing(
    instances: Instances, redis_db: RedisDatabase, raw: aioredis.Redis
) -> None:
    paastis = await instances.start(redis_db.url)

    paastis.registry.stamp("nobody", T0)
    await paastis.registry.flush()

    assert await all_keys(raw) == set()


async def test_close_writes_the_stamps_not_yet_flushed(
    instances: Instances, redis_db: RedisDatabase, raw: aioredis.Redis
) -> None:
    paastis = await instances.start(redis_db.url, flush_interval=60)
    await paastis.registry.register(running_app())
    paastis.registry.stamp("hello", T0 + timedelta(minutes=1))  # flushed at once, then a pause

    async def first_written() -> bool:
        return await stored_last_access(raw, "hello") == to_micros(T0 + timedelta(minutes=1))

    await eventually(first_written, timeout=WAIT)
    paastis.registry.stamp("hello", T0 + timedelta(minutes=2))  # waits for the next interval

    await instances.close(paastis)

    assert await stored_last_access(raw, "hello") == to_micros(T0 + timedelta(minutes=2))


async def test_a_thousand_stamps_of_a_running_app_cost_fewer_than_fifty_redis_commands(
    redis_db: RedisDatabase, raw: aioredis.Redis
) -> None:
    # The registry alone, with the production flush interval: the event log's tail is not stamping.
    registry = RedisRegistry(RedisConnection(redis_db.url), flush_interval=1.0)
    await registry.start()
    await registry.register(running_app())
    before = await raw.info("commandstats")
    last = T0

    for request in range(1_000):  # 1,000 proxied requests over about two seconds
        last = T0 + timedelta(milliseconds=request)
        registry.stamp("hello", last)
        await asyncio.sleep(0.002)
    await registry.close()  # writes the stamps of the last interval

    cost = command_calls(await raw.info("commandstats")) - command_calls(before)
    print(f"\n1,000 stamps cost {cost} Redis commands")
    assert await stored_last_access(raw, "hello") == to_micros(last)
    assert cost < 50, f"1,000 stamps cost {cost} Redis commands"


# --- locks ------------------------------------------------------------------------------------


async def test_a_lock_held_by_one_instance_is_refused_to_another(
    instances: Instances, redis_db: RedisDatabase
) -> None:
    first = await instances.start(redis_db.url)
    second = await instances.start(redis_db.url)

    async with (
        first.registry.lock("wake:hello", ttl=5) as mine,
        second.registry.lock("wake:hello", ttl=5) as theirs,
    ):
        assert (mine, theirs) == (True, False)


async def test_a_released_lock_is_free_for_another_instance(
    instances: Instances, redis_db: RedisDatabase, raw: aioredis.Redis
) -> None:
    first = await instances.start(redis_db.url)
    second = await instances.start(redis_db.url)
    async with first.registry.lock("wake:hello", ttl=5):
        pass

    async with second.registry.lock("wake:hello", ttl=5) as theirs:
        assert theirs is True


async def test_the_lock_of_a_holder_that_died_expires_after_its_ttl(
    instances: Instances, redis_db: RedisDatabase
) -> None:
    first = await instances.start(redis_db.url)
    second = await instances.start(redis_db.url)

    async with first.registry.lock("tick", ttl=0.1):  # never released in time: a dead holder
        await asyncio.sleep(0.2)
        async with second.registry.lock("tick", ttl=5) as theirs:
            assert theirs is True


async def test_a_holder_whose_lock_expired_does_not_release_the_next_holders_lock(
    instances: Instances, redis_db: RedisDatabase
) -> None:
    first = await instances.start(redis_db.url)
    second = await instances.start(redis_db.url)
    third = await instances.start(redis_db.url)
    late = first.registry.lock("tick", ttl=0.05)
    assert await late.__aenter__() is True
    await asyncio.sleep(0.1)  # first's lock expires while it still works

    async with second.registry.lock("tick", ttl=5) as theirs:
        await late.__aexit__(None, None, None)
        async with third.registry.lock("tick", ttl=5) as third_gets:
            assert (theirs, third_gets) == (True, False)


# --- events -----------------------------------------------------------------------------------


async def test_events_recorded_by_one_instance_are_listed_by_another_oldest_first(
    instances: Instances, redis_db: RedisDatabase
) -> None:
    first = await instances.start(redis_db.url)
    second = await instances.start(redis_db.url)

    await first.events.record(APP_STOPPED, "hello")
    await second.events.record(APP_STARTED, "hello")

    listed = await second.events.list()
    assert [(event.name, event.oid) for event in listed] == [
        (APP_STOPPED, "hello"),
        (APP_STARTED, "hello"),
    ]
    assert listed[0].date <= listed[1].date and listed[0].date.tzinfo is not None


async def test_listeners_of_every_instance_hear_each_event_exactly_once(
    instances: Instances, redis_db: RedisDatabase
) -> None:
    first = await instances.start(redis_db.url)
    second = await instances.start(redis_db.url)

    await first.events.record(APP_STOPPED, "one")
    await second.events.record(APP_STARTED, "two")

    async def both_heard_both() -> bool:
        return len(first.heard) >= 2 and len(second.heard) >= 2

    await eventually(both_heard_both, timeout=WAIT)
    await asyncio.sleep(0.2)  # several tail rounds: a duplicate would show by now
    expected = {(APP_STOPPED, "one"), (APP_STARTED, "two")}
    for instance in (first, second):
        heard = [(event.name, event.oid) for event in instance.heard]
        assert sorted(heard) == sorted(expected)


async def test_the_event_stream_is_capped(
    instances: Instances, redis_db: RedisDatabase, raw: aioredis.Redis
) -> None:
    paastis = await instances.start(redis_db.url, maxlen=100)

    for number in range(1_000):
        await paastis.events.record(APP_STARTED, f"app-{number}")

    # MAXLEN ~ trims whole stream nodes (100 entries each by default): approximately 100.
    assert await raw.xlen("paastis:events") <= 300


# --- outages ----------------------------------------------------------------------------------


async def test_calls_raise_nothing_while_redis_is_down(
    instances: Instances, redis_server_factory: type[RedisServer]
) -> None:
    server = redis_server_factory()
    server.start()
    paastis = await instances.start(server.url)
    await paastis.registry.register(running_app())
    server.stop()

    known = await paastis.registry.get("hello")
    listed = await paastis.registry.list()
    new = await paastis.registry.register(running_app("new"))
    await paastis.registry.remember_formation("hello", {"web": 2})
    formation = await paastis.registry.formation("hello")
    await paastis.registry.unregister("new")
    await paastis.events.record(APP_STARTED, "hello")
    async with paastis.registry.lock("wake:hello", ttl=5) as alone:
        pass

    assert known == running_app()
    assert [app.name for app in listed] == ["hello"]
    assert (new, formation, alone) == (True, {"web": 2}, True)
    assert paastis.registry.available is False


async def test_availability_turns_false_when_redis_is_lost_and_true_when_back(
    instances: Instances, redis_server_factory: type[RedisServer]
) -> None:
    server = redis_server_factory()
    server.start()
    paastis = await instances.start(server.url)
    server.stop()
    await paastis.registry.list()  # the first call that meets the outage
    lost = paastis.registry.available

    server.start()

    await eventually(lambda: is_available(paastis), timeout=WAIT)
    assert lost is False


async def test_stamps_made_while_redis_is_down_are_written_once_it_is_back(
    instances: Instances, redis_server_factory: type[RedisServer]
) -> None:
    server = redis_server_factory()
    server.start()
    paastis = await instances.start(server.url)
    await paastis.registry.register(running_app())
    server.stop()
    await paastis.registry.list()
    paastis.registry.stamp("hello", T0 + timedelta(minutes=9))

    server.start()

    observer = await instances.start(server.url)

    async def written() -> bool:
        app = await observer.registry.get("hello")
        return app is not None and app.last_accessed_at == T0 + timedelta(minutes=9)

    await eventually(written, timeout=WAIT)


async def test_writes_made_while_redis_is_down_are_written_once_it_is_back(
    instances: Instances, redis_server_factory: type[RedisServer]
) -> None:
    server = redis_server_factory()
    server.start()
    paastis = await instances.start(server.url)
    await paastis.registry.register(running_app("stopped-meanwhile"))
    server.stop()
    await paastis.registry.list()
    await paastis.registry.register(running_app("discovered-meanwhile"))
    await paastis.registry.unregister("stopped-meanwhile")
    await paastis.registry.remember_formation("stopped-meanwhile", {"web": 3})

    server.start()
    await eventually(lambda: is_available(paastis), timeout=WAIT)
    observer = await instances.start(server.url)

    assert [app.name for app in await observer.registry.list()] == ["discovered-meanwhile"]
    assert await observer.registry.formation("stopped-meanwhile") == {"web": 3}


async def test_a_registry_started_while_redis_is_down_catches_up_when_it_comes_up(
    instances: Instances, redis_server_factory: type[RedisServer]
) -> None:
    server = redis_server_factory()  # not started yet: its port refuses connections

    paastis = await instances.start(server.url)
    await paastis.registry.register(running_app())
    paastis.registry.stamp("hello", T0 + timedelta(minutes=4))
    down_at_start = paastis.registry.available
    server.start()

    await eventually(lambda: is_available(paastis), timeout=WAIT)
    observer = await instances.start(server.url)
    assert down_at_start is False
    assert await observer.registry.get("hello") == running_app(
        last_access=T0 + timedelta(minutes=4)
    )


async def test_an_outage_is_logged_once_when_lost_and_once_when_back_without_password(
    instances: Instances,
    redis_server_factory: type[RedisServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = redis_server_factory(password="s3cret-pass")
    server.start()
    paastis = await instances.start(server.url)
    server.stop()
    caplog.set_level(logging.INFO, logger="paastis.redis")

    for _ in range(20):
        await paastis.registry.get("hello")
        paastis.registry.stamp("hello", T0)
        await paastis.events.record(APP_STARTED, "hello")
    server.start()
    await eventually(lambda: is_available(paastis), timeout=WAIT)

    lines = [record.getMessage() for record in caplog.records if record.name == "paastis.redis"]
    assert [line.split(" at ")[0] for line in lines] == ["redis unreachable", "redis is back"]
    assert f"127.0.0.1:{server.port}" in lines[0]
    assert "s3cret-pass" not in caplog.text


async def test_an_event_recorded_while_redis_is_down_reaches_the_other_instances_when_back(
    instances: Instances, redis_server_factory: type[RedisServer]
) -> None:
    server = redis_server_factory()
    server.start()
    recorder = await instances.start(server.url)
    listener = await instances.start(server.url)
    server.stop()
    await recorder.events.record(APP_STOPPED, "hello")
    heard_at_once = [(event.name, event.oid) for event in recorder.heard]

    server.start()

    async def heard_elsewhere() -> bool:
        return len(listener.heard) >= 1

    await eventually(heard_elsewhere, timeout=WAIT)
    await asyncio.sleep(0.2)
    assert heard_at_once == [(APP_STOPPED, "hello")]
    assert [(event.name, event.oid) for event in listener.heard] == [(APP_STOPPED, "hello")]
    assert [(event.name, event.oid) for event in recorder.heard] == [(APP_STOPPED, "hello")]


# --- connection -------------------------------------------------------------------------------


async def test_a_unix_socket_url_with_a_database_number_works(
    instances: Instances, redis_db: RedisDatabase, raw: aioredis.Redis
) -> None:
    paastis = await instances.start(redis_db.unix_url)

    await paastis.registry.register(running_app())

    assert await raw.hexists("paastis:apps", "hello")


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:s3cret@cache:6379/2", "redis://:***@cache:6379/2"),
        ("rediss://paastis:s3cret@cache:6380/0", "rediss://paastis:***@cache:6380/0"),
        ("unix:///run/redis.sock?db=1&password=s3cret", "unix:///run/redis.sock?db=1&password=***"),
        ("redis://cache:6379", "redis://cache:6379"),
    ],
)
def test_the_url_in_logs_never_shows_the_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked
