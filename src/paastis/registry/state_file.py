"""The in-memory registry's state file: what the next wakes need (the formations and autoscalers
that stops remembered), kept on disk so a restart of paastis does not forget it.

Written atomically (a temporary file in the same directory, then a rename), so a crash leaves
the previous state or the new one, never half of one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from paastis.errors import ConfigError

log = logging.getLogger("paastis.registry")

VARIABLE = "REGISTRY_STATE_FILE"
FORMAT_VERSION = 1


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._writing = asyncio.Lock()

    async def load(self) -> dict[str, Any]:
        """What was remembered, per app. A missing file is a first start. A file that cannot
        be read is a configuration error; one whose content is not a state paastis wrote is
        moved aside (kept for a person to look at) and paastis starts without it."""
        return await asyncio.to_thread(self._load)

    async def save(self, remembered: Mapping[str, Any]) -> None:
        """Writes `remembered` in place of the previous state; raises OSError on failure."""
        text = json.dumps({"version": FORMAT_VERSION, "remembered": dict(remembered)}, indent=1)
        async with self._writing:
            await asyncio.to_thread(self._write, text)

    def _load(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"{VARIABLE}={str(self.path)!r}: cannot read it ({exc})") from None
        except UnicodeDecodeError:
            text = ""
        remembered = _parse(text)
        if remembered is None:
            aside = self.path.with_name(self.path.name + ".corrupt")
            try:
                os.replace(self.path, aside)
            except OSError as exc:
                raise ConfigError(
                    f"{VARIABLE}={str(self.path)!r} is not a state file paastis wrote, and "
                    f"cannot be moved aside ({exc}): move or delete it"
                ) from None
            log.warning(
                "%s=%s is not a state file paastis wrote; moved aside to %s. Starting without "
                "it: the apps stopped before wake with their default formation",
                VARIABLE, self.path, aside,
            )  # fmt: skip
            return {}
        log.info("read what %d stopped app(s) need to wake from %s", len(remembered), self.path)
        return remembered

    def _write(self, text: str) -> None:
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with temporary.open("w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        # The rename itself must reach the disk too.
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _parse(text: str) -> dict[str, Any] | None:
    try:
        document = json.loads(text)
    except ValueError:
        return None
    if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
        return None
    remembered = document.get("remembered")
    if not isinstance(remembered, dict) or not all(isinstance(k, str) for k in remembered):
        return None
    return remembered
