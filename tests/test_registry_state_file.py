"""REGISTRY_STATE_FILE: what the in-memory registry must remember for the next wakes survives a
restart of paastis; a bad file is named at start-up."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from conftest import url_of
from harness import scalingo_env
from paastis.errors import ConfigError
from paastis.registry.memory import InMemoryRegistry

REMEMBERED = {
    "formation": {"web": 2, "worker": 1},
    "autoscalers": [{"id": "au-1", "container_type": "web", "min_containers": 2}],
}


async def restarted(path: Path) -> InMemoryRegistry:
    registry = InMemoryRegistry(path)
    await registry.start()
    return registry


async def test_what_a_stop_remembered_is_read_back_after_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    first = await restarted(state)
    await first.remember_formation("shop", REMEMBERED)
    await first.close()

    second = await restarted(state)

    assert await second.formation("shop") == REMEMBERED


async def test_a_formation_forgotten_stays_forgotten_after_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    first = await restarted(state)
    await first.remember_formation("shop", REMEMBERED)
    await first.remember_formation("shop", None)

    assert await (await restarted(state)).formation("shop") is None


async def test_the_file_is_replaced_whole_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    registry = await restarted(state)
    for amount in range(1, 4):
        await registry.remember_formation("shop", {"formation": {"web": amount}})

    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    assert json.loads(state.read_text()) == {
        "version": 1,
        "remembered": {"shop": {"formation": {"web": 3}}},
    }


async def test_a_missing_file_is_a_first_start_and_is_created(tmp_path: Path) -> None:
    state = tmp_path / "state.json"

    registry = await restarted(state)

    assert await registry.formation("shop") is None
    assert state.is_file()


@pytest.mark.parametrize("content", ["{not json", '{"version": 99}', "[]", "\xff\xfe"])
async def test_a_corrupt_file_is_moved_aside_with_a_warning_and_paastis_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str
) -> None:
    state = tmp_path / "state.json"
    state.write_text(content, encoding="latin-1")

    registry = await restarted(state)

    assert await registry.formation("shop") is None
    assert (tmp_path / "state.json.corrupt").read_text(encoding="latin-1") == content
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("REGISTRY_STATE_FILE" in w and "moved aside" in w for w in warnings), warnings


async def test_a_file_that_cannot_be_read_is_a_configuration_error(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.mkdir()

    with pytest.raises(ConfigError, match=r"REGISTRY_STATE_FILE=.*cannot read it"):
        await restarted(state)


async def test_a_file_that_cannot_be_written_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"REGISTRY_STATE_FILE=.*cannot write it"):
        await restarted(tmp_path / "gone" / "state.json")


async def test_a_stopped_app_wakes_with_its_formation_after_paastis_restarts(
    scalingo, upstream_factory, paastis, tmp_path: Path
) -> None:
    emulator, api_url = scalingo
    _, shop = await upstream_factory("shop")
    emulator.add_app("shop", {"web": 2, "worker": 1}, base_url=url_of(shop))
    env = scalingo_env(
        api_url,
        REGISTRY_STATE_FILE=str(tmp_path / "paastis-state.json"),
        START_AND_STOP_MAX_IDLE_TIME="0",
        PROXY_READINESS_PATH="",
    )
    first = await paastis(env)
    await first.tick()  # registers it
    assert (await first.tick()).stopped == ["shop"]
    assert emulator.apps["shop"].formation == {"web": 0, "worker": 0}
    await first.stop()

    second = await paastis(env)
    async with second.get("shop.example.net") as response:
        assert response.status == 200

    assert emulator.apps["shop"].formation == {"web": 2, "worker": 1}
