"""The idle arithmetic of a registered app: absolute time, whatever the length of the limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from paastis.registry import RunningApp

T0 = datetime(2024, 5, 1, 23, 50, 0, tzinfo=UTC)  # close to midnight, on purpose


def app(max_idle_time: float, last_access: datetime = T0) -> RunningApp:
    return RunningApp(
        provider="scalingo",
        region="osc-fr1",
        name="hello",
        max_idle_time=max_idle_time,
        linked_apps=(),
        started_at=T0 - timedelta(hours=2),
        last_accessed_at=last_access,
    )


def test_ninety_minute_limit_is_not_reached_before_ninety_minutes() -> None:
    assert not app(90).is_idle(T0 + timedelta(minutes=89, seconds=59))


def test_ninety_minute_limit_is_reached_at_ninety_minutes() -> None:
    # The JavaScript original compared minutes modulo 60: a 90-minute limit never fired.
    assert app(90).is_idle(T0 + timedelta(minutes=90))


def test_ninety_minute_limit_stays_reached_long_after() -> None:
    assert app(90).is_idle(T0 + timedelta(hours=5, minutes=1))


@pytest.mark.parametrize("max_idle_time", [15, 59, 60, 61, 119, 120, 1439, 1440, 1441])
def test_limit_is_reached_exactly_at_its_duration_across_hour_and_day_boundaries(
    max_idle_time: float,
) -> None:
    limit = timedelta(minutes=max_idle_time)

    assert not app(max_idle_time).is_idle(T0 + limit - timedelta(microseconds=1))
    assert app(max_idle_time).is_idle(T0 + limit)


def test_fractional_minutes_are_counted_in_seconds() -> None:
    tenth = app(0.1)  # 6 seconds

    assert not tenth.is_idle(T0 + timedelta(seconds=5.9))
    assert tenth.is_idle(T0 + timedelta(seconds=6))


def test_days_long_limit_is_reached_after_those_days() -> None:
    three_days = app(3 * 24 * 60)

    assert not three_days.is_idle(T0 + timedelta(days=2, hours=23, minutes=59))
    assert three_days.is_idle(T0 + timedelta(days=3))


def test_zero_limit_is_reached_at_once() -> None:
    assert app(0).is_idle(T0)


def test_idle_duration_of_a_stamp_in_the_future_is_zero_not_negative() -> None:
    # Another instance's clock may run ahead of ours.
    ahead = app(15, last_access=T0 + timedelta(minutes=10))

    assert ahead.idle_for(T0) == timedelta(0)


def test_app_stamped_in_the_future_is_not_idle() -> None:
    ahead = app(15, last_access=T0 + timedelta(minutes=10))

    assert not ahead.is_idle(T0 + timedelta(minutes=5))


def test_idle_duration_is_measured_from_the_last_access() -> None:
    assert app(15).idle_for(T0 + timedelta(minutes=7, seconds=30)) == timedelta(
        minutes=7, seconds=30
    )


def test_stamping_moves_the_last_access_forward() -> None:
    later = T0 + timedelta(minutes=3)

    assert app(15).stamped(later).last_accessed_at == later


def test_stamping_never_moves_the_last_access_backwards() -> None:
    assert app(15).stamped(T0 - timedelta(minutes=3)).last_accessed_at == T0


def test_stamping_restarts_the_idle_clock() -> None:
    stamped = app(90).stamped(T0 + timedelta(minutes=60))

    assert not stamped.is_idle(T0 + timedelta(minutes=120))
    assert stamped.is_idle(T0 + timedelta(minutes=150))
