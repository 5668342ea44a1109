"""Logging set-up: text or JSON lines, with every configured secret masked."""

from __future__ import annotations

import copy
import json
import logging
import queue
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener

# Attributes every LogRecord has; anything else was passed through `extra=`.
STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class SecretFilter(logging.Filter):
    """Replaces any configured secret that slips into a log line with `***`: in the message,
    in fields passed through `extra=`, and in the traceback of a logged exception."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it, unmasked args aside
            record.msg, record.args = self.mask(str(record.msg)), None
            return True
        masked = self.mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        for key, value in vars(record).items():
            if key not in STANDARD_ATTRIBUTES and isinstance(value, str):
                setattr(record, key, self.mask(value))
        if record.exc_info and not record.exc_text:
            # Formatted once here, masked; formatters reuse `exc_text` rather than re-format.
            record.exc_text = self.mask(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(
            (key, value) for key, value in vars(record).items() if key not in STANDARD_ATTRIBUTES
        )
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str)


class _Enqueue(QueueHandler):
    """Hands records to the writer thread, rendered enough to cross threads safely: the
    message with its arguments, and the traceback as text (the formatters reuse it)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


def configure_logging(level: str, fmt: str, secrets: Iterable[str] = ()) -> Callable[[], None]:
    """Sends every log line through a queue to a writer thread, so a slow stderr (a full pipe
    to a log collector) never blocks the event loop. Returns the function that flushes what
    is queued and stops the writer, to call before exiting."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(SecretFilter(secrets))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    writer = QueueListener(records, handler)
    root = logging.getLogger()
    root.handlers[:] = [_Enqueue(records)]
    root.setLevel(level.upper())
    # aiohttp's own access log would duplicate ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    writer.start()

    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:  # QueueListener.stop() fails when called twice
            stopped = True
            writer.stop()

    return stop
