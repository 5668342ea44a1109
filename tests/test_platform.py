"""paastis on the PaaS it manages (DESIGN §2): it never stops its own app, and it says at
start-up what it recognised and what a restart would lose."""

from __future__ import annotations

import logging

import pytest

from harness import scalingo_env
from processes import free_port

ON_SCALINGO = {"CONTAINER": "web-1", "APP": "paastis-prod"}


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


async def test_paastis_never_stops_the_app_it_runs_as(scalingo, paastis, caplog) -> None:
    caplog.set_level(logging.INFO, logger="paastis")
    emulator, api_url = scalingo
    emulator.add_app("paastis-prod")
    emulator.add_app("review-app")
    proxy = await paastis(scalingo_env(api_url, START_AND_STOP_MAX_IDLE_TIME="0", **ON_SCALINGO))
    await proxy.tick()

    report = await proxy.tick()

    assert report.stopped == ["review-app"]
    assert emulator.status_of("paastis-prod") == "running"
    assert any(
        "runs on Scalingo as paastis-prod: an ignored app" in m
        for m in messages(caplog, logging.INFO)
    )


async def test_on_a_platform_the_in_memory_registry_warns_that_a_restart_forgets(
    scalingo, paastis, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="paastis")
    _, api_url = scalingo

    await paastis(scalingo_env(api_url, **ON_SCALINGO))

    warnings = messages(caplog, logging.WARNING)
    assert any("a restart of paastis forgets" in m and "REGISTRY_TYPE=redis" in m for m in warnings)


async def test_with_a_state_file_nothing_is_said_about_forgetting(
    scalingo, paastis, caplog, tmp_path
) -> None:
    caplog.set_level(logging.INFO, logger="paastis")
    _, api_url = scalingo

    await paastis(
        scalingo_env(api_url, REGISTRY_STATE_FILE=str(tmp_path / "state.json"), **ON_SCALINGO)
    )

    assert not any("forgets" in m for m in messages(caplog, logging.WARNING))


async def test_heroku_without_its_app_name_asks_for_registry_ignored_apps(paastis, caplog) -> None:
    caplog.set_level(logging.INFO, logger="paastis")
    env = {
        "PROVIDER_NAME": "heroku",
        "PROVIDER_HEROKU_API_TOKEN": "heroku-token-0123456789",
        # Nothing listens there: the start-up tick fails and is logged; paastis serves on.
        "PROVIDER_HEROKU_API_URL": f"http://127.0.0.1:{free_port()}",
        "DYNO": "web.1",
    }

    await paastis(env, tuning={})

    warnings = messages(caplog, logging.WARNING)
    assert any(
        "runs on Heroku but cannot tell as which app" in m and "REGISTRY_IGNORED_APPS" in m
        for m in warnings
    ), warnings
