"""The `local` provider: apps that are processes on this machine, declared under `apps:`.

Two kinds of app:

- `command`: paastis spawns the command (through the shell, in its own process group) to
  start the app and terminates the group to stop it. The app is RUNNING while that process
  lives. A process that ended on its own shows as STOPPED when it exited with 0, FAILED
  otherwise (status "exited with code N").
- `start` / `stop` / `status`: something managed elsewhere (a container, a service). The
  status command reports the state: the app runs when it exits with 0 and its output,
  stripped and lowercased, is none of "false", "0", "no", "stopped" (so `test -f pidfile`
  and `docker inspect -f {{.State.Running}} x` both work); a status command that times out
  gives UNKNOWN. Without `status`, the state is the last action's result: STOPPED at
  start-up, RUNNING after a start, STOPPED after a stop, FAILED after a failed start (a
  failed stop leaves it as it was).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field

from paastis.providers import (
    AppNotFound,
    AppState,
    Backoff,
    OperationFailed,
    PaasApp,
    Remembered,
    Startup,
)
from paastis.rules import LocalAppSpec
from paastis.shell import (
    ShellResult,
    finish_reading,
    log_output,
    run_shell,
    signal_group,
    spawn_shell,
    terminate_group,
)

log = logging.getLogger("paastis.provider.local")

PROVIDER_NAME = "local"
# What a status command may print to say "not running" while exiting with 0.
NOT_RUNNING_OUTPUTS = frozenset({"false", "0", "no", "stopped"})
# Looking costs no API call here (a process, a status command): look often.
POLL = Backoff(first=0.25, factor=1.0, cap=0.25, min_gap=0.1)


@dataclass
class _Child:
    """A process spawned for a `command` app, and the tasks that follow it."""

    proc: asyncio.subprocess.Process
    output: asyncio.Task[None]  # logs its lines until the pipe closes
    watcher: asyncio.Task[None] | None = None  # notices an exit we did not ask for
    stopping: bool = False

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        return [t for t in (self.output, self.watcher) if t is not None]


@dataclass
class _AppRuntime:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    child: _Child | None = None
    # The state of a start/stop app without a `status` command: the last action's result.
    last_state: AppState = AppState.STOPPED


class LocalProvider:
    """Provider for processes on this host; see the module docstring for the states."""

    name = PROVIDER_NAME
    region: str | None = None

    def __init__(
        self,
        apps: Mapping[str, LocalAppSpec],
        *,
        operation_timeout: float = 30.0,
        command_timeout: float = 60.0,
        stop_grace: float = 10.0,
        poll: Backoff = POLL,
        spawn_grace: float = 0.5,
    ) -> None:
        for key, spec in apps.items():
            if key != spec.name:
                raise ValueError(f"local app declared as {key!r} is named {spec.name!r}")
        self._specs = dict(apps)
        self._runtime = {name: _AppRuntime() for name in apps}
        self.operation_timeout = operation_timeout
        self._command_timeout = command_timeout
        self._stop_grace = stop_grace
        self.poll = poll
        # How long a spawned command must live to count as started rather than failed.
        self._spawn_grace = spawn_grace
        self._closed = False

    # Reading state -----------------------------------------------------------------------

    async def list_apps(self) -> list[PaasApp]:
        return list(await asyncio.gather(*(self._describe(name) for name in self._specs)))

    async def get_app(self, name: str) -> PaasApp:
        return await self._describe(self._spec(name).name)

    async def _describe(self, name: str) -> PaasApp:
        spec = self._specs[name]
        if spec.command is not None:
            state, status = self._command_state(name)
        elif spec.status is not None:
            state, status = await self._probe_status(spec)
        else:
            state = self._runtime[name].last_state
            status = state.value
        return PaasApp(
            name=name,
            provider=PROVIDER_NAME,
            state=state,
            upstream_url=spec.upstream,
            id=name,
            status=status,
        )

    def _command_state(self, name: str) -> tuple[AppState, str]:
        child = self._runtime[name].child
        if child is None:
            return AppState.STOPPED, "stopped"
        if child.alive:
            return AppState.RUNNING, f"running (pid {child.proc.pid})"
        code = child.proc.returncode
        state = AppState.STOPPED if code == 0 else AppState.FAILED
        return state, f"exited with code {code}"

    async def _probe_status(self, spec: LocalAppSpec) -> tuple[AppState, str]:
        assert spec.status is not None
        try:
            result = await run_shell(
                spec.status,
                timeout=self._command_timeout,
                logger=log,
                label=f"{spec.name} status",
                # Polled often while waking: its output is only worth reading when debugging.
                output_level=logging.DEBUG,
            )
        except OSError as exc:
            return AppState.UNKNOWN, f"status command could not run: {exc}"
        if result.timed_out:
            return AppState.UNKNOWN, "status command timed out"
        printed = result.output.strip()
        if result.returncode != 0:
            return AppState.STOPPED, f"status exited with code {result.returncode}"
        if printed.lower() in NOT_RUNNING_OUTPUTS:
            return AppState.STOPPED, printed
        return AppState.RUNNING, printed[:200] or "running"

    # Acting ------------------------------------------------------------------------------

    async def start(self, name: str, remembered: Remembered | None) -> Startup:
        """Starts the app; nothing is remembered here. Returns once the command was spawned
        (and lived `spawn_grace`), or once the start command succeeded."""
        spec = self._spec(name)
        if self._closed:
            # Shutting down: a process spawned now would outlive paastis.
            raise self._failed(name, "the local provider is closed")
        async with self._runtime[name].lock:
            if spec.command is not None:
                await self._spawn(spec)
            else:
                await self._run_start_command(spec)
        return Startup(running=lambda: self._runs(spec))

    async def _runs(self, spec: LocalAppSpec) -> bool:
        if spec.command is not None:
            state, status = self._command_state(spec.name)
            if state is AppState.FAILED:
                raise self._failed(spec.name, status)
            return state is AppState.RUNNING
        if spec.status is None:
            return True  # the start command succeeded: that is all there is to know
        state, _ = await self._probe_status(spec)
        return state is AppState.RUNNING

    async def stop(self, name: str) -> Remembered | None:
        spec = self._spec(name)
        async with self._runtime[name].lock:
            if spec.command is not None:
                await self._terminate(name)
            else:
                await self._run_stop_command(spec)
        return None

    async def reconfigure(self, apps: Mapping[str, LocalAppSpec]) -> None:
        """Takes the apps of a reloaded rules file (SIGHUP). A running app keeps running; a
        changed app's new commands apply from its next start or stop. The process of an app
        no longer declared is terminated: nothing would ever stop it otherwise."""
        removed = [name for name in self._specs if name not in apps]
        self._specs = dict(apps)
        for name in apps:
            self._runtime.setdefault(name, _AppRuntime())
        for name in removed:
            async with self._runtime[name].lock:
                await self._terminate(name)
            del self._runtime[name]

    async def close(self) -> None:
        """Terminate every process this provider spawned, all at once, bounded by stop_grace."""
        self._closed = True
        await asyncio.gather(*(self._terminate(name) for name in self._runtime))

    async def _spawn(self, spec: LocalAppSpec) -> None:
        assert spec.command is not None
        runtime = self._runtime[spec.name]
        if runtime.child is not None:
            if runtime.child.alive:
                return
            await _drain(runtime.child)
            runtime.child = None
        try:
            proc = await spawn_shell(spec.command)
        except OSError as exc:
            raise self._failed(spec.name, f"could not run its command: {exc}") from exc
        assert proc.stdout is not None
        output = asyncio.create_task(log_output(proc.stdout, logger=log, label=spec.name))
        child = _Child(proc=proc, output=output)
        child.watcher = asyncio.create_task(self._watch(spec.name, child))
        runtime.child = child
        log.info("local app %s: started pid %d", spec.name, proc.pid)
        # A command that cannot run (bad path, port in use) dies at once: report it as the
        # start's failure rather than as an app that runs and then vanishes.
        await asyncio.wait({child.watcher}, timeout=self._spawn_grace)
        if not child.alive:
            # Still the app's child, so that its state says why (FAILED, exit code).
            await _drain(child)
            raise self._failed(spec.name, f"its command exited at once with code {proc.returncode}")

    async def _watch(self, name: str, child: _Child) -> None:
        code = await child.proc.wait()
        if child.stopping:
            return
        log.warning("local app %s: its process exited on its own with code %s", name, code)
        # Whatever it left in its group belonged to the app, which is now down; done at once,
        # while the group id cannot have been reused yet.
        signal_group(child.proc, signal.SIGKILL)

    async def _terminate(self, name: str) -> None:
        runtime = self._runtime[name]
        child = runtime.child
        if child is None:
            return
        runtime.child = None
        child.stopping = True
        # A leader reaped long ago no longer pins its group id, which may since name another
        # group: only signal a live one (stragglers were killed when it exited).
        if child.alive:
            code = await terminate_group(child.proc, grace=self._stop_grace)
            if code is None:
                log.error("local app %s: pid %d survived SIGKILL", name, child.proc.pid)
            else:
                log.info("local app %s: stopped (exit code %s)", name, code)
        await _drain(child)

    async def _run_start_command(self, spec: LocalAppSpec) -> None:
        assert spec.start is not None
        runtime = self._runtime[spec.name]
        result = await self._run(spec.start, f"{spec.name} start")
        if not result.ok:
            runtime.last_state = AppState.FAILED
            raise self._failed(spec.name, f"its start command {_outcome(result)}")
        runtime.last_state = AppState.RUNNING

    async def _run_stop_command(self, spec: LocalAppSpec) -> None:
        assert spec.stop is not None
        result = await self._run(spec.stop, f"{spec.name} stop")
        if not result.ok:
            raise self._failed(spec.name, f"its stop command {_outcome(result)}")
        self._runtime[spec.name].last_state = AppState.STOPPED

    async def _run(self, command: str, label: str) -> ShellResult:
        try:
            return await run_shell(command, timeout=self._command_timeout, logger=log, label=label)
        except OSError as exc:
            raise OperationFailed(f"{label}: could not run: {exc}", provider=PROVIDER_NAME) from exc

    def _spec(self, name: str) -> LocalAppSpec:
        spec = self._specs.get(name)
        if spec is None:
            raise AppNotFound(
                f"no local app named {name!r} in `apps:`", provider=PROVIDER_NAME, app=name
            )
        return spec

    @staticmethod
    def _failed(name: str, why: str) -> OperationFailed:
        return OperationFailed(f"local app {name}: {why}", provider=PROVIDER_NAME, app=name)


async def _drain(child: _Child) -> None:
    """Let go of a child that has exited: its output read (bounded), its tasks ended."""
    if child.watcher is not None and not child.watcher.done():
        child.watcher.cancel()
    await finish_reading(child.output)
    await asyncio.gather(*child.tasks, return_exceptions=True)


def _outcome(result: ShellResult) -> str:
    if result.timed_out:
        return "timed out"
    last_line = result.output.strip().splitlines()[-1:] or [""]
    return f"exited with code {result.returncode}" + (f": {last_line[0]}" if last_line[0] else "")
