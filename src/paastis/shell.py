"""Shell commands run without blocking the event loop: output logged line by line, bounded time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass

# How much of a command's output the result keeps (the end of it, where errors usually are).
OUTPUT_TAIL_BYTES = 64 * 1024
# Longer lines are logged in pieces, so one endless line cannot grow memory without bound.
MAX_LOG_LINE_BYTES = 8 * 1024
READ_CHUNK_BYTES = 4096
# After a command exits, how long its output may still be read: a background process it left
# behind can keep the pipe open forever, and must not hold the caller.
DRAIN_TIMEOUT = 1.0
# After SIGKILL, how long to wait for the kernel to let the process go before giving up on it.
REAP_TIMEOUT = 5.0


@dataclass(frozen=True)
class ShellResult:
    # None only when the process could not be reaped after being killed; negative: killed by
    # that signal (asyncio's convention).
    returncode: int | None
    output: str  # stdout and stderr interleaved, at most the last OUTPUT_TAIL_BYTES
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


class OutputTail:
    """The last `limit` bytes of a stream."""

    def __init__(self, limit: int = OUTPUT_TAIL_BYTES) -> None:
        self._limit = limit
        self._buffer = bytearray()

    def add(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > self._limit:
            del self._buffer[: len(self._buffer) - self._limit]

    def text(self) -> str:
        return self._buffer.decode(errors="replace")


async def spawn_shell(
    command: str, *, env: Mapping[str, str] | None = None
) -> asyncio.subprocess.Process:
    """Start `command` through /bin/sh in a new session (its own process group).

    stdout and stderr share one pipe, so their lines keep their order; stdin is /dev/null so
    a command waiting for input cannot hang forever.
    """
    spawning = asyncio.ensure_future(
        asyncio.create_subprocess_shell(
            command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **env} if env else None,
            # A session of its own: the whole tree the shell starts can be signalled at once.
            start_new_session=True,
        )
    )
    try:
        return await asyncio.shield(spawning)
    except asyncio.CancelledError:
        # The shell may already run and have started children; cancelled, asyncio would
        # kill only the shell and orphan them: kill the whole group instead.
        with contextlib.suppress(OSError):
            proc = await spawning
            signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), REAP_TIMEOUT)  # reaped, not left to the GC
        raise


async def log_output(
    stream: asyncio.StreamReader,
    *,
    logger: logging.Logger,
    label: str,
    level: int = logging.INFO,
    tail: OutputTail | None = None,
) -> None:
    """Read `stream` to its end, logging each line as it comes, prefixed with `label`."""
    pending = bytearray()
    while chunk := await stream.read(READ_CHUNK_BYTES):
        if tail is not None:
            tail.add(chunk)
        pending += chunk
        while (end := pending.find(b"\n")) >= 0 or len(pending) >= MAX_LOG_LINE_BYTES:
            cut = end + 1 if end >= 0 else MAX_LOG_LINE_BYTES
            _log_line(logger, level, label, bytes(pending[:cut]))
            del pending[:cut]
    if pending:
        _log_line(logger, level, label, bytes(pending))


def _log_line(logger: logging.Logger, level: int, label: str, raw: bytes) -> None:
    logger.log(level, "%s: %s", label, raw.decode(errors="replace").rstrip("\r\n"))


def signal_group(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    """Send `sig` to the process group `proc` leads; a group already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


async def terminate_group(proc: asyncio.subprocess.Process, *, grace: float) -> int | None:
    """SIGTERM the process group, SIGKILL it after `grace` seconds; returns the exit code.

    The group is SIGKILLed even when its leader went at once, so that no straggler that
    ignored SIGTERM (a child of the shell) keeps running, or keeps a port, after its leader.
    """
    signal_group(proc, signal.SIGTERM)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace)
    finally:
        # Cancelled too (a shutdown's deadline): nothing paastis spawned may outlive it.
        signal_group(proc, signal.SIGKILL)
    try:
        return await asyncio.wait_for(proc.wait(), REAP_TIMEOUT)
    except TimeoutError:
        return None


async def finish_reading(task: asyncio.Task[None], *, bound: float = DRAIN_TIMEOUT) -> bool:
    """Wait a bounded time for an output-reading task to reach the end; cancel it past that.

    Returns whether it reached the end of the stream.
    """
    done, _ = await asyncio.wait({task}, timeout=bound)
    if done:
        return True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return False


async def run_shell(
    command: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float,
    logger: logging.Logger,
    label: str,
    output_level: int = logging.INFO,
    kill_grace: float = 2.0,
) -> ShellResult:
    """Run `command` through the shell, with `env` added to this process' environment.

    Past `timeout` seconds the whole process group is killed (SIGTERM, then SIGKILL after
    `kill_grace`) and the result says `timed_out`. If the caller is cancelled, the group is
    killed at once. Processes the command leaves running in the background (`server &`) are
    not waited for, but should not keep its output open: it is read for at most
    DRAIN_TIMEOUT seconds after the command exits.
    """
    proc = await spawn_shell(command, env=env)
    assert proc.stdout is not None  # spawn_shell always pipes stdout
    tail = OutputTail()
    reader = asyncio.create_task(
        log_output(proc.stdout, logger=logger, label=label, level=output_level, tail=tail)
    )
    timed_out = False
    try:
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            timed_out = True
            await terminate_group(proc, grace=kill_grace)
        if not await finish_reading(reader):
            logger.warning(
                "%s: output still held open by a process left in the background; "
                "redirect its output (e.g. > logfile 2>&1)",
                label,
            )
    except BaseException:
        # Cancelled (e.g. an outer timeout or shutdown): leave nothing running behind us.
        signal_group(proc, signal.SIGKILL)
        reader.cancel()
        raise
    return ShellResult(returncode=proc.returncode, output=tail.text(), timed_out=timed_out)
