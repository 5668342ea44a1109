"""The Registry contract, checked on the in-memory registry and on the Redis registry alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from paastis.registry import Registry, RunningApp
from paastis.registry.memory import InMemoryRegistry
from paastis.registry.redis import RedisRegistry
from paastis.registry.redis_connection import RedisConnection

if TYPE_CHECKING:
    from redis_support import RedisDatabase

# The redis-server fixtures (redis_server, redis_db, redis_server_factory).

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def running_app(name: str = "hello", last_access: datetime = T0) -> RunningApp:
    return RunningApp(
        provider="scalingo",
        region="osc-fr1",
        name=name,
        max_idle_time=0.5,
        linked_apps=("hello-db", "hello-worker"),
        started_at=T0 - timedelta(hours=1),
        last_accessed_at=last_access,
    )


@pytest.fixture(params=["in-memory", "redis"])
async def registry(request: pytest.FixtureRequest) -> AsyncIterator[Registry]:
    if request.param == "in-memory":
        store: Registry = InMemoryRegistry()
    else:
        database: RedisDatabase = request.getfixturevalue("redis_db")
        connection = RedisConnection(database.url, retry_min=0.05, retry_max=0.2)
        store = RedisRegistry(connection, flush_interval=0.05)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


async def test_registry_is_available_once_started(registry: Registry) -> None:
    assert registry.available


async def test_registering_a_new_app_says_it_was_new(registry: Registry) -> None:
    assert await registry.register(running_app()) is True


async def test_registering_a_known_app_again_says_it_was_not_new(registry: Registry) -> None:
    await registry.register(running_app())

    assert await registry.register(running_app(last_access=T0 + timedelta(minutes=5))) is False


async def test_registering_a_known_app_again_keeps_the_first_registration(
    registry: Registry,
) -> None:
    await registry.register(running_app())
    await registry.register(running_app(last_access=T0 - timedelta(minutes=5)))

    assert await registry.get("hello") == running_app()


async def test_a_registered_app_is_read_back_with_every_field(registry: Registry) -> None:
    await registry.register(running_app())

    assert await registry.get("hello") == running_app()


async def test_an_unknown_app_is_none(registry: Registry) -> None:
    assert await registry.get("nobody") is None


async def test_list_returns_every_registered_app(registry: Registry) -> None:
    await registry.register(running_app("one"))
    await registry.register(running_app("two"))

    assert sorted(app.name for app in await registry.list()) == ["one", "two"]


async def test_an_unregistered_app_is_forgotten(registry: Registry) -> None:
    await registry.register(running_app("one"))
    await registry.register(running_app("two"))

    await registry.unregister("one")

    assert await registry.get("one") is None
    assert [app.name for app in await registry.list()] == ["two"]


async def test_unregistering_an_unknown_app_is_harmless(registry: Registry) -> None:
    await registry.unregister("nobody")

    assert await registry.list() == []


async def test_an_update_changes_the_idle_time_and_linked_apps_and_nothing_else(
    registry: Registry,
) -> None:
    await registry.register(running_app())
    registry.stamp("hello", T0 + timedelta(minutes=3))

    assert await registry.update("hello", max_idle_time=30, linked_apps=("hello-front",))

    app = await registry.get("hello")
    assert app == replace(
        running_app(last_access=T0 + timedelta(minutes=3)),
        max_idle_time=30,
        linked_apps=("hello-front",),
    )


async def test_an_update_to_no_linked_apps_is_read_back_empty(registry: Registry) -> None:
    await registry.register(running_app())

    await registry.update("hello", max_idle_time=0.5, linked_apps=())

    app = await registry.get("hello")
    assert app is not None and app.linked_apps == ()


async def test_an_update_of_an_unregistered_app_registers_nothing(registry: Registry) -> None:
    await registry.update("nobody", max_idle_time=30, linked_apps=())

    assert await registry.list() == []


async def test_clear_forgets_every_registered_app(registry: Registry) -> None:
    await registry.register(running_app("one"))
    await registry.register(running_app("two"))

    await registry.clear()

    assert await registry.list() == []


async def test_an_app_can_be_registered_again_after_clear(registry: Registry) -> None:
    await registry.register(running_app())
    await registry.clear()

    assert await registry.register(running_app()) is True


async def test_a_stamp_moves_the_last_access_forward_at_once(registry: Registry) -> None:
    await registry.register(running_app())
    later = T0 + timedelta(minutes=3)

    registry.stamp("hello", later)

    app = await registry.get("hello")
    assert app is not None
    assert app.last_accessed_at == later


async def test_a_stamp_shows_in_the_list(registry: Registry) -> None:
    await registry.register(running_app())
    later = T0 + timedelta(minutes=3)

    registry.stamp("hello", later)

    assert [app.last_accessed_at for app in await registry.list()] == [later]


async def test_an_older_stamp_never_moves_the_last_access_back(registry: Registry) -> None:
    await registry.register(running_app())

    registry.stamp("hello", T0 + timedelta(minutes=3))
    registry.stamp("hello", T0 + timedelta(minutes=1))

    app = await registry.get("hello")
    assert app is not None
    assert app.last_accessed_at == T0 + timedelta(minutes=3)


async def test_a_stamp_of_an_unregistered_app_registers_nothing(registry: Registry) -> None:
    registry.stamp("nobody", T0)

    assert await registry.get("nobody") is None
    assert await registry.list() == []


async def test_a_remembered_formation_is_read_back(registry: Registry) -> None:
    await registry.remember_formation("hello", {"web": 2, "worker": 1})

    assert await registry.formation("hello") == {"web": 2, "worker": 1}


async def test_an_app_without_a_remembered_formation_has_none(registry: Registry) -> None:
    assert await registry.formation("hello") is None


async def test_remembering_no_formation_forgets_the_previous_one(registry: Registry) -> None:
    await registry.remember_formation("hello", {"web": 2})

    await registry.remember_formation("hello", None)

    assert await registry.formation("hello") is None


async def test_the_formation_of_a_stopped_app_outlives_its_registration(
    registry: Registry,
) -> None:
    await registry.register(running_app())
    await registry.remember_formation("hello", {"web": 3})

    await registry.unregister("hello")
    await registry.clear()

    assert await registry.formation("hello") == {"web": 3}


async def test_a_held_lock_is_refused_to_a_second_taker(registry: Registry) -> None:
    async with (
        registry.lock("wake:hello", ttl=5) as first,
        registry.lock("wake:hello", ttl=5) as second,
    ):
        assert (first, second) == (True, False)


async def test_a_released_lock_can_be_taken_again(registry: Registry) -> None:
    async with registry.lock("wake:hello", ttl=5):
        pass

    async with registry.lock("wake:hello", ttl=5) as again:
        assert again is True


async def test_locks_of_different_keys_do_not_exclude_each_other(registry: Registry) -> None:
    async with registry.lock("wake:one", ttl=5) as one, registry.lock("wake:two", ttl=5) as two:
        assert (one, two) == (True, True)
