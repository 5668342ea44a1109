"""The user's shell hooks around starts and stops (HOOKS_BEFORE_START and friends)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from paastis.shell import run_shell

log = logging.getLogger("paastis.hooks")

BEFORE_START = "before_start"
AFTER_START = "after_start"
BEFORE_STOP = "before_stop"
AFTER_STOP = "after_stop"
HOOK_NAMES = (BEFORE_START, AFTER_START, BEFORE_STOP, AFTER_STOP)


class Hooks:
    """Runs the configured command of a hook; a hook never fails the start or stop around it.

    The app's name, provider and region reach the command only as environment variables
    (PAASTIS_APP_NAME...), never pasted into the command string, so a name cannot inject
    shell syntax.
    """

    def __init__(self, commands: Mapping[str, str | None], timeout: float = 60.0) -> None:
        unknown = sorted(set(commands) - set(HOOK_NAMES))
        if unknown:
            raise ValueError(f"unknown hook(s) {unknown}; accepted: {list(HOOK_NAMES)}")
        if timeout <= 0:
            raise ValueError(f"hook timeout must be positive, got {timeout}")
        # A blank command is the same as none: nothing to run.
        self._commands = {hook: cmd for hook, cmd in commands.items() if cmd and cmd.strip()}
        self._timeout = timeout

    def is_set(self, hook: str) -> bool:
        return hook in self._commands

    async def run(self, hook: str, *, app_name: str, provider: str, region: str | None) -> None:
        """Run `hook` for an app, if configured. Logs failures and timeouts; never raises them.

        One log line per run with its duration: info when it succeeded, warning otherwise.
        """
        if hook not in HOOK_NAMES:
            raise ValueError(f"unknown hook {hook!r}; accepted: {list(HOOK_NAMES)}")
        command = self._commands.get(hook)
        if command is None:
            return
        env = {
            "PAASTIS_HOOK": hook,
            "PAASTIS_APP_NAME": app_name,
            "PAASTIS_APP_PROVIDER": provider,
            "PAASTIS_APP_REGION": region or "",
        }
        began = time.monotonic()
        try:
            result = await run_shell(
                command,
                env=env,
                timeout=self._timeout,
                logger=log,
                label=f"hook {hook} [{app_name}]",
            )
        except OSError as exc:  # the shell itself could not be started
            log.warning("hook %s for app %s could not run: %s", hook, app_name, exc)
            return
        duration = time.monotonic() - began
        if result.timed_out:
            log.warning(
                "hook %s for app %s timed out after %.1fs and was killed",
                hook,
                app_name,
                duration,
            )
        elif result.returncode != 0:
            log.warning(
                "hook %s for app %s failed with exit code %s in %.2fs",
                hook,
                app_name,
                result.returncode,
                duration,
            )
        else:
            log.info("hook %s for app %s ran in %.2fs", hook, app_name, duration)
