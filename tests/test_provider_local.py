"""The `local` provider, with real processes: a spawned HTTP server, shell start/stop/status."""

from __future__ import annotations

import asyncio
import logging
import shlex
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness import FAST_POLL
from paastis.providers import AppNotFound, AppState, OperationFailed, WakeTimeout
from paastis.providers.kit import start_and_wait
from paastis.providers.local import LocalProvider
from paastis.rules import LocalAppSpec
from processes import (
    accepts_connections,
    free_port,
    group_running,
    process_running,
    read,
    read_pid,
)
from waiting import eventually

PYTHON = shlex.quote(sys.executable)


# Helpers ---------------------------------------------------------------------------------


async def http_status(port: int, within: float = 10.0) -> int:
    """The status of GET / once the server answers, retrying while it is not listening yet."""
    timeout = aiohttp.ClientTimeout(total=2)
    async with asyncio.timeout(within), aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/") as response:
                    return response.status
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)


def make_provider(*specs: LocalAppSpec, **options: float) -> LocalProvider:
    settings: dict[str, Any] = {"operation_timeout": 2.0, "command_timeout": 5.0}
    settings.update({"stop_grace": 2.0, "poll": FAST_POLL, "spawn_grace": 0.05, **options})
    return LocalProvider({spec.name: spec for spec in specs}, **settings)


@pytest.fixture
async def providers() -> AsyncIterator[list[LocalProvider]]:
    """Providers made by a test are closed after it, so no process outlives a failed test."""
    made: list[LocalProvider] = []
    yield made
    for provider in made:
        await provider.close()


@pytest.fixture
def provider_of(providers: list[LocalProvider]) -> Callable[..., LocalProvider]:
    def build(*specs: LocalAppSpec, **options: float) -> LocalProvider:
        provider = make_provider(*specs, **options)
        providers.append(provider)
        return provider

    return build


def http_server_app(name: str, port: int, pidfile: Path) -> LocalAppSpec:
    # `exec` makes the server the process whose pid is written, and the group's leader.
    command = f"echo $$ > {pidfile}; exec {PYTHON} -m http.server {port} --bind 127.0.0.1"
    return LocalAppSpec(name=name, upstream=f"http://127.0.0.1:{port}", command=command)


def file_app(name: str, flag: Path, *, status: str | None = "default") -> LocalAppSpec:
    return LocalAppSpec(
        name=name,
        upstream="http://127.0.0.1:9",
        start=f"touch {flag}",
        stop=f"rm -f {flag}",
        status=f"test -f {flag}" if status == "default" else status,
    )


# `command` apps --------------------------------------------------------------------------


async def test_starting_a_command_app_spawns_a_server_that_answers(
    provider_of: Callable[..., LocalProvider], tmp_path: Path
) -> None:
    port = free_port()
    provider = provider_of(http_server_app("hello", port, tmp_path / "pid"))

    await start_and_wait(provider, "hello", None)

    assert await http_status(port) == 200
    assert (await provider.get_app("hello")).state is AppState.RUNNING


async def test_stopping_a_command_app_kills_its_process_and_closes_its_port(
    provider_of: Callable[..., LocalProvider], tmp_path: Path
) -> None:
    port = free_port()
    provider = provider_of(http_server_app("hello", port, tmp_path / "pid"))
    await start_and_wait(provider, "hello", None)
    await http_status(port)
    pid = await read_pid(tmp_path / "pid")

    assert await provider.stop("hello") is None

    assert not process_running(pid)
    assert not accepts_connections(port)
    assert (await provider.get_app("hello")).state is AppState.STOPPED


async def test_a_process_ignoring_sigterm_is_killed_after_stop_grace(
    provider_of: Callable[..., LocalProvider], tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    stubborn = LocalAppSpec(
        name="stubborn",
        upstream="http://127.0.0.1:9",
        command=f"trap '' TERM; echo $$ > {pidfile}; sleep 30",
    )
    provider = provider_of(stubborn, stop_grace=0.3)
    await start_and_wait(provider, "stubborn", None)
    pid = await read_pid(pidfile)

    began = time.monotonic()
    await provider.stop("stubborn")
    took = time.monotonic() - began

    assert 0.3 <= took < 5
    assert not group_running(pid)


async def test_a_command_that_exits_at_once_fails_the_start_with_its_exit_code(
    provider_of: Callable[..., LocalProvider],
) -> None:
    provider = provider_of(
        LocalAppSpec(name="broken", upstream="http://127.0.0.1:9", command="echo oops; exit 3")
    )

    with pytest.raises(OperationFailed, match="code 3"):
        await start_and_wait(provider, "broken", None)

    assert (await provider.get_app("broken")).state is AppState.FAILED


async def test_a_command_app_that_dies_later_shows_as_failed(
    provider_of: Callable[..., LocalProvider],
) -> None:
    provider = provider_of(
        LocalAppSpec(name="flaky", upstream="http://127.0.0.1:9", command="sleep 0.3; exit 4")
    )
    await start_and_wait(provider, "flaky", None)
    states: list[AppState] = []

    async def failed() -> bool:
        states.append((await provider.get_app("flaky")).state)
        return states[-1] is AppState.FAILED

    async with asyncio.timeout(5):
        while True:
            if await failed():
                break
            await asyncio.sleep(0.05)

    assert states[0] is AppState.RUNNING


async def test_starting_a_running_command_app_does_not_spawn_it_twice(
    provider_of: Callable[..., LocalProvider], tmp_path: Path
) -> None:
    starts = tmp_path / "starts"
    provider = provider_of(
        LocalAppSpec(
            name="once", upstream="http://127.0.0.1:9", command=f"echo $$ >> {starts}; sleep 30"
        )
    )

    await start_and_wait(provider, "once", None)
    await read_pid(starts)  # the first one is up

    await start_and_wait(provider, "once", None)

    await asyncio.sleep(0.2)  # time enough for a second process to write its line
    assert len((read(starts) or "").split()) == 1


async def test_a_stopped_command_app_can_be_started_again(
    provider_of: Callable[..., LocalProvider], tmp_path: Path
) -> None:
    port = free_port()
    provider = provider_of(http_server_app("hello", port, tmp_path / "pid"))
    await start_and_wait(provider, "hello", None)
    await provider.stop("hello")

    await start_and_wait(provider, "hello", None)

    assert await http_status(port) == 200


async def test_a_command_apps_output_is_logged_with_its_name(
    provider_of: Callable[..., LocalProvider], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="paastis.provider.local")
    provider = provider_of(
        LocalAppSpec(
            name="chatty", upstream="http://127.0.0.1:9", command="echo hello-there; sleep 30"
        )
    )

    await start_and_wait(provider, "chatty", None)

    await eventually(lambda: "chatty: hello-there" in [r.getMessage() for r in caplog.records])


async def test_close_terminates_every_spawned_process(tmp_path: Path) -> None:
    specs = [
        LocalAppSpec(
            name=f"app{i}",
            upstream="http://127.0.0.1:9",
            command=f"echo $$ > {tmp_path / str(i)}; sleep 30",
        )
        for i in range(2)
    ]
    provider = make_provider(*specs)
    for spec in specs:
        await start_and_wait(provider, spec.name, None)
    pids = [await read_pid(tmp_path / str(i)) for i in range(2)]

    await provider.close()

    # SIGKILLed before close() returned; the kernel may take a moment to take them away.
    await eventually(lambda: not any(group_running(pid) for pid in pids), timeout=2)


async def test_close_cut_short_still_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    # A shutdown's deadline may cancel close() during the grace SIGTERM gets: the group is
    # SIGKILLed then rather than left running.
    spec = LocalAppSpec(
        name="stubborn",
        upstream="http://127.0.0.1:9",
        command=f"trap '' TERM; echo $$ > {tmp_path / 'pid'}; while :; do sleep 1; done",
    )
    provider = make_provider(spec, stop_grace=30.0)
    await start_and_wait(provider, spec.name, None)
    pid = await read_pid(tmp_path / "pid")

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await provider.close()

    await eventually(lambda: not group_running(pid), timeout=2)


async def test_a_closed_provider_refuses_to_start_apps(tmp_path: Path) -> None:
    provider = make_provider(
        LocalAppSpec(name="late", upstream="http://127.0.0.1:9", command="sleep 30")
    )
    await provider.close()

    with pytest.raises(OperationFailed, match="closed"):
        await start_and_wait(provider, "late", None)


# `start` / `stop` / `status` apps -----------------------------------------------------------


async def test_start_runs_the_start_command_until_status_reports_running(
    provider_of: Callable[..., LocalProvider], tmp_path: Path
) -> None:
    flag = tmp_path / "running"
    provider = provider_of(file_app("db-admin", flag))
    assert (await provider.get_app("db-admin")).state is AppState.STOPPED

    await start_and_wait(provider, "db-admin", None)

    assert read(flag) is not None
    assert (await provider.get_app("db-admin")).state is AppState.RUNNING


async def test_stop_runs_the_stop_command(
    provider_of: Callable[..., LocalProvider], tmp_path: Path
) -> None:
    flag = tmp_path / "running"
    provider = provider_of(file_app("db-admin", flag))
    await start_and_wait(provider, "db-admin", None)

    assert await provider.stop("db-admin") is None

    assert read(flag) is None
    assert (await provider.get_app("db-admin")).state is AppState.STOPPED


async def test_start_waits_for_a_status_that_reports_running_late(
    provider_of: Callable[..., LocalProvider], tmp_path: Path
) -> None:
    flag = tmp_path / "running"
    # The start command returns at once; the app comes up a little later, in the background.
    spec = LocalAppSpec(
        name="slow",
        upstream="http://127.0.0.1:9",
        start=f"(sleep 0.3; touch {flag}) > /dev/null 2>&1 &",
        stop=f"rm -f {flag}",
        status=f"test -f {flag}",
    )
    provider = provider_of(spec)

    await start_and_wait(provider, "slow", None)

    assert read(flag) is not None


@pytest.mark.parametrize("printed", ["false", "0", "no", "stopped", " False\n"])
async def test_a_status_printing_a_negative_word_means_stopped(
    provider_of: Callable[..., LocalProvider], printed: str
) -> None:
    spec = LocalAppSpec(
        name="x",
        upstream="http://127.0.0.1:9",
        start="true",
        stop="true",
        status=f"printf {printed!r}",
    )

    assert (await provider_of(spec).get_app("x")).state is AppState.STOPPED


async def test_a_status_printing_true_means_running(
    provider_of: Callable[..., LocalProvider],
) -> None:
    spec = LocalAppSpec(
        name="x", upstream="http://127.0.0.1:9", start="true", stop="true", status="echo true"
    )

    assert (await provider_of(spec).get_app("x")).state is AppState.RUNNING


async def test_start_times_out_when_status_never_reports_running(
    provider_of: Callable[..., LocalProvider],
) -> None:
    spec = LocalAppSpec(
        name="never", upstream="http://127.0.0.1:9", start="true", stop="true", status="echo no"
    )
    provider = provider_of(spec, operation_timeout=0.3)

    began = time.monotonic()
    with pytest.raises(WakeTimeout):
        await start_and_wait(provider, "never", None)

    assert time.monotonic() - began < 3


async def test_a_failing_start_command_raises_operation_failed(
    provider_of: Callable[..., LocalProvider],
) -> None:
    spec = LocalAppSpec(
        name="x", upstream="http://127.0.0.1:9", start="echo no docker; exit 2", stop="true"
    )

    with pytest.raises(OperationFailed, match="code 2"):
        await start_and_wait(provider_of(spec), "x", None)


async def test_a_failing_stop_command_raises_operation_failed(
    provider_of: Callable[..., LocalProvider],
) -> None:
    spec = LocalAppSpec(name="x", upstream="http://127.0.0.1:9", start="true", stop="exit 5")

    with pytest.raises(OperationFailed, match="code 5"):
        await provider_of(spec).stop("x")


async def test_without_status_the_state_follows_the_last_action(
    provider_of: Callable[..., LocalProvider], tmp_path: Path
) -> None:
    provider = provider_of(file_app("plain", tmp_path / "flag", status=None))
    states = [(await provider.get_app("plain")).state]

    await start_and_wait(provider, "plain", None)
    states.append((await provider.get_app("plain")).state)
    await provider.stop("plain")
    states.append((await provider.get_app("plain")).state)

    assert states == [AppState.STOPPED, AppState.RUNNING, AppState.STOPPED]


# Listing and lookup ----------------------------------------------------------------------


async def test_list_apps_reports_every_declared_app_with_its_state_and_upstream(
    provider_of: Callable[..., LocalProvider], tmp_path: Path
) -> None:
    port = free_port()
    provider = provider_of(
        http_server_app("hello", port, tmp_path / "pid"),
        file_app("db-admin", tmp_path / "flag"),
        file_app("plain", tmp_path / "plain", status=None),
    )
    await start_and_wait(provider, "hello", None)

    apps = {app.name: app for app in await provider.list_apps()}

    assert {name: app.state for name, app in apps.items()} == {
        "hello": AppState.RUNNING,
        "db-admin": AppState.STOPPED,
        "plain": AppState.STOPPED,
    }
    assert apps["hello"].upstream_url == f"http://127.0.0.1:{port}"
    assert {app.provider for app in apps.values()} == {"local"}


async def test_an_undeclared_app_is_not_found(provider_of: Callable[..., LocalProvider]) -> None:
    provider = provider_of(
        LocalAppSpec(name="hello", upstream="http://127.0.0.1:9", command="true")
    )

    with pytest.raises(AppNotFound):
        await provider.get_app("nope")
    with pytest.raises(AppNotFound):
        await start_and_wait(provider, "nope", None)


# The spec ----------------------------------------------------------------------------------


def test_a_spec_with_both_command_and_start_is_rejected() -> None:
    with pytest.raises(ValueError, match="either `command`"):
        LocalAppSpec(name="x", upstream="http://127.0.0.1:9", command="a", start="b", stop="c")


def test_a_spec_with_start_but_no_stop_is_rejected() -> None:
    with pytest.raises(ValueError, match="`stop`"):
        LocalAppSpec(name="x", upstream="http://127.0.0.1:9", start="b")


def test_a_spec_without_any_command_is_rejected() -> None:
    with pytest.raises(ValueError, match="x"):
        LocalAppSpec(name="x", upstream="http://127.0.0.1:9")
