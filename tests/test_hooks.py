"""Hooks: real shell commands, their environment, failures and timeouts never raised."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from paastis.hooks import Hooks
from processes import group_running, process_running, read, read_pid
from waiting import eventually


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    return tmp_path / "trace.txt"


async def test_hooks_run_in_order_with_their_environment(trace: Path) -> None:
    env_vars = "$PAASTIS_HOOK $PAASTIS_APP_NAME $PAASTIS_APP_PROVIDER $PAASTIS_APP_REGION"
    line = f'echo "{env_vars}" >> {trace}'
    hooks = Hooks(
        {"before_start": line, "after_start": line, "before_stop": line, "after_stop": line}
    )

    for hook in ("before_start", "after_start", "before_stop", "after_stop"):
        await hooks.run(hook, app_name="hello", provider="scalingo", region="osc-fr1")

    assert (read(trace) or "").splitlines() == [
        "before_start hello scalingo osc-fr1",
        "after_start hello scalingo osc-fr1",
        "before_stop hello scalingo osc-fr1",
        "after_stop hello scalingo osc-fr1",
    ]


async def test_region_is_an_empty_string_when_the_app_has_none(trace: Path) -> None:
    hooks = Hooks({"before_stop": f'printf "[%s]" "$PAASTIS_APP_REGION" > {trace}'})

    await hooks.run("before_stop", app_name="hello", provider="local", region=None)

    assert read(trace) == "[]"


async def test_an_unset_hook_runs_nothing(trace: Path, caplog: pytest.LogCaptureFixture) -> None:
    hooks = Hooks({"before_start": f"touch {trace}", "after_start": None, "before_stop": "  "})
    caplog.set_level(logging.DEBUG, logger="paastis.hooks")

    await hooks.run("after_start", app_name="hello", provider="local", region=None)
    await hooks.run("before_stop", app_name="hello", provider="local", region=None)

    assert read(trace) is None
    assert caplog.records == []


async def test_app_name_with_shell_metacharacters_is_passed_verbatim(tmp_path: Path) -> None:
    out = tmp_path / "name.txt"
    injected = tmp_path / "injected"
    name = f'x\'; touch {injected}; echo "$(touch {injected})" `touch {injected}` $HOME'
    hooks = Hooks({"before_start": f'printf "%s" "$PAASTIS_APP_NAME" > {out}'})

    await hooks.run("before_start", app_name=name, provider="local", region=None)

    assert read(out) == name
    assert read(injected) is None


async def test_hook_output_is_logged_line_by_line(caplog: pytest.LogCaptureFixture) -> None:
    hooks = Hooks({"after_stop": "echo first; echo second >&2"})
    caplog.set_level(logging.INFO, logger="paastis.hooks")

    await hooks.run("after_stop", app_name="hello", provider="local", region=None)

    messages = [r.getMessage() for r in caplog.records]
    assert "hook after_stop [hello]: first" in messages
    assert "hook after_stop [hello]: second" in messages


async def test_a_successful_run_logs_one_info_line_with_its_duration(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks = Hooks({"before_start": "true"})
    caplog.set_level(logging.INFO, logger="paastis.hooks")

    await hooks.run("before_start", app_name="hello", provider="local", region=None)

    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert "before_start" in record.getMessage()
    assert "hello" in record.getMessage()
    assert record.getMessage().endswith("s")  # "ran in 0.01s"


async def test_a_failing_hook_is_logged_as_a_warning_and_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks = Hooks({"before_stop": "exit 7"})
    caplog.set_level(logging.INFO, logger="paastis.hooks")

    await hooks.run("before_stop", app_name="hello", provider="local", region=None)

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "before_stop" in warnings[0]
    assert "hello" in warnings[0]
    assert "exit code 7" in warnings[0]


async def test_a_hook_past_its_timeout_is_killed_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pidfile = tmp_path / "pid"
    hooks = Hooks({"after_start": f"echo $$ > {pidfile}; sleep 30; echo late"}, timeout=0.3)
    caplog.set_level(logging.INFO, logger="paastis.hooks")

    began = time.monotonic()
    await hooks.run("after_start", app_name="hello", provider="local", region=None)

    assert time.monotonic() - began < 5
    pid = await read_pid(pidfile)
    assert not process_running(pid)
    assert not group_running(pid)  # the `sleep` child went with its shell
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "after_start" in warnings[0]
    assert "hello" in warnings[0]
    assert "timed out" in warnings[0]


async def test_a_hook_ignoring_sigterm_is_killed_anyway(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    hooks = Hooks({"after_start": f"trap '' TERM; echo $$ > {pidfile}; sleep 30"}, timeout=0.2)

    async with asyncio.timeout(10):
        await hooks.run("after_start", app_name="hello", provider="local", region=None)

    pid = await read_pid(pidfile)
    assert not group_running(pid)


async def test_a_running_hook_does_not_block_the_event_loop() -> None:
    hooks = Hooks({"before_start": "sleep 0.3"})
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        await hooks.run("before_start", app_name="hello", provider="local", region=None)
    finally:
        ticker.cancel()

    assert ticks >= 10


async def test_cancelling_a_hook_kills_its_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    hooks = Hooks({"before_stop": f"echo $$ > {pidfile}; sleep 30"})
    task = asyncio.create_task(
        hooks.run("before_stop", app_name="hello", provider="local", region=None)
    )
    pid = await read_pid(pidfile)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await eventually(lambda: not group_running(pid))


def test_an_unknown_hook_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="before_wake"):
        Hooks({"before_wake": "true"})
