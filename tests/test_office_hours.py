"""Office hours (DESIGN §4 `keep_awake`, §3 SCHEDULE_TIMEZONE): while the window is open an app
and its linked apps are never stopped for idleness and a tick wakes them; outside it, the max
idle time applies. Time passes on a manual wall clock that starts on a Monday at 10:00 UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from clock import ManualClock
from conftest import url_of
from harness import scalingo_env
from paastis.office_hours import OfficeHours

OFFICE_HOURS = "* 8-18 * * 1-5"
HOUR = 3600.0
RULES = (
    f"rules:\n  - pattern: '^front$'\n    keep_awake: '{OFFICE_HOURS}'\n    linked_apps: [back]\n"
)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.mark.parametrize(
    ("utc", "zone", "open_"),
    [
        (datetime(2025, 3, 3, 10, 0, tzinfo=UTC), "UTC", True),
        (datetime(2025, 3, 3, 7, 30, tzinfo=UTC), "Europe/Paris", True),  # 08:30 in Paris
        (datetime(2025, 3, 3, 7, 30, tzinfo=UTC), "UTC", False),
        (datetime(2025, 3, 3, 10, 0, tzinfo=UTC), "America/New_York", False),  # 05:00 there
        (datetime(2025, 3, 8, 10, 0, tzinfo=UTC), "UTC", False),  # a Saturday
        (datetime(2025, 3, 3, 18, 59, tzinfo=UTC), "UTC", True),
        (datetime(2025, 3, 3, 19, 0, tzinfo=UTC), "UTC", False),
    ],
)
def test_a_window_is_open_while_the_minute_matches_in_the_schedule_time_zone(
    utc: datetime, zone: str, open_: bool
) -> None:
    assert OfficeHours(ZoneInfo(zone)).is_open(OFFICE_HOURS, utc) is open_


async def test_an_idle_app_and_its_linked_app_are_not_stopped_during_office_hours(
    scalingo, paastis, clock
) -> None:
    emulator, api_url = scalingo
    for name in ("front", "back", "other"):
        emulator.add_app(name)
    env = scalingo_env(api_url, START_AND_STOP_MAX_IDLE_TIME="1")
    proxy = await paastis(env, rules=RULES, wall_clock=clock.wall)
    await proxy.tick()  # registers them
    clock.advance(2 * 60)

    report = await proxy.tick()

    assert report.stopped == ["other"]
    assert emulator.status_of("front") == emulator.status_of("back") == "running"


async def test_outside_office_hours_the_max_idle_time_applies_again(
    scalingo, paastis, clock
) -> None:
    emulator, api_url = scalingo
    for name in ("front", "back"):
        emulator.add_app(name)
    env = scalingo_env(api_url, START_AND_STOP_MAX_IDLE_TIME="1")
    proxy = await paastis(env, rules=RULES, wall_clock=clock.wall)
    await proxy.tick()
    clock.advance(9 * HOUR)  # 19:00

    report = await proxy.tick()

    assert report.stopped == ["back", "front"]


async def test_a_tick_wakes_the_sleeping_apps_of_an_open_window(
    scalingo, upstream_factory, paastis, clock
) -> None:
    emulator, api_url = scalingo
    _, front = await upstream_factory("front")
    _, back = await upstream_factory("back")
    emulator.add_app("front", status="stopped", base_url=url_of(front))
    emulator.add_app("back", status="stopped", base_url=url_of(back))
    emulator.add_app("sleeper", status="stopped")
    proxy = await paastis(scalingo_env(api_url), rules=RULES, wall_clock=clock.wall)

    report = await proxy.tick()
    await proxy.server.lifecycle.drain(10)  # the wakes run in the background

    assert sorted(report.woken) == ["back", "front"]
    assert emulator.status_of("front") == emulator.status_of("back") == "running"
    assert emulator.status_of("sleeper") == "stopped"
    events = [(e.name, e.oid) for e in await proxy.server.event_log.list()]
    assert ("APP_STARTED", "front") in events and ("APP_STARTED", "back") in events


async def test_the_window_is_read_in_schedule_timezone(scalingo, paastis, clock) -> None:
    emulator, api_url = scalingo
    emulator.add_app("front")
    env = scalingo_env(
        api_url, START_AND_STOP_MAX_IDLE_TIME="1", SCHEDULE_TIMEZONE="America/New_York"
    )
    proxy = await paastis(env, rules=RULES, wall_clock=clock.wall)  # 05:00 in New York
    await proxy.tick()
    clock.advance(2 * 60)

    assert (await proxy.tick()).stopped == ["front"]
