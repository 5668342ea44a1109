"""Office hours (rule key `keep_awake`): whether a cron window is open at a given time, read in
SCHEDULE_TIMEZONE with croniter's own matching."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo

from croniter import croniter


class OfficeHours:
    def __init__(self, timezone: tzinfo = UTC) -> None:
        self._zone = timezone

    def is_open(self, keep_awake: str | None, now: datetime) -> bool:
        """Whether the minute of `now` matches the 5-field cron expression `keep_awake`."""
        if keep_awake is None:
            return False
        return bool(croniter.match(keep_awake, now.astimezone(self._zone)))
