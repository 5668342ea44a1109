"""Logging set-up: text or JSON lines, with every configured secret masked."""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from logging.handlers import QueueHandler
from typing import TextIO

# Attributes every LogRecord has; anything else was passed through `extra=`.
STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# The writer thread wakes at most this often: a busy proxy's access lines then cost neither a
# thread switch nor a system call each, but one of each per batch.
WRITE_INTERVAL = 0.05


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
        fields = vars(record)
        for key in fields.keys() - STANDARD_ATTRIBUTES:
            if isinstance(fields[key], str):
                fields[key] = self.mask(fields[key])
        if record.exc_info and not record.exc_text:
            # Formatted once here, masked; formatters reuse `exc_text` rather than re-format.
            record.exc_text = self.mask(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        return True


class TextFormatter(logging.Formatter):
    """`2026-11-29 21:49:19,035 INFO    paastis.lifecycle: message`, the date and time of a
    second rendered once rather than for every line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self._second: int | None = None
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime(self.default_time_format, self.converter(second))
        return f"{self._second_text},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        # What logging.Formatter.format does with this format, without its generic machinery.
        line = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: "
        line += record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += ("" if line.endswith("\n") else "\n") + record.exc_text
        if record.stack_info:
            line += ("" if line.endswith("\n") else "\n") + self.formatStack(record.stack_info)
        return line


_to_json = json.JSONEncoder(default=str).encode  # one encoder, not one per line


class JsonFormatter(logging.Formatter):
    """One object a line: time (UTC, milliseconds), level, logger, message, the `extra=`
    fields; the date and time of a second rendered once rather than for every line."""

    def __init__(self) -> None:
        super().__init__()
        self._second: int | None = None
        self._second_text = ""

    def _time(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._second_text}.{int(record.msecs):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self._time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(
            {key: value for key, value in vars(record).items() if key not in STANDARD_ATTRIBUTES}
        )
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return _to_json(entry)


class _Enqueue(QueueHandler):
    """Hands records to the writer thread, rendered enough to cross threads safely: the
    message with its arguments, and the traceback as text (the formatters reuse it). The
    record is not copied: it is this call's own, and this the root logger's only handler."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


_STOP = None  # queued by stop(): write what came before it, then end


class _Writer:
    """The thread that filters, formats and writes the queued records: every record queued
    since its last write, in one write, at most every WRITE_INTERVAL seconds."""

    def __init__(
        self, records: queue.SimpleQueue[logging.LogRecord | None], handler: logging.Handler
    ) -> None:
        self._records = records
        self._handler = handler
        self._thread = threading.Thread(target=self._run, name="paastis-log-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._records.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        while True:
            batch = [self._records.get()]
            with_more = True
            while with_more:
                try:
                    batch.append(self._records.get_nowait())
                except queue.Empty:
                    with_more = False
            stopping = _STOP in batch
            self._write([record for record in batch if record is not _STOP])
            if stopping:
                return
            time.sleep(WRITE_INTERVAL)  # what comes meanwhile waits for the next batch

    def _write(self, records: list[logging.LogRecord]) -> None:
        handler = self._handler
        lines = []
        for record in records:
            try:
                if handler.filter(record):
                    lines.append(handler.format(record) + "\n")
            except Exception:
                handler.handleError(record)
        if not lines:
            return
        stream: TextIO = handler.stream  # type: ignore[attr-defined]
        try:
            stream.write("".join(lines))
            stream.flush()
        except Exception:
            handler.handleError(records[-1])


def configure_logging(level: str, fmt: str, secrets: Iterable[str] = ()) -> Callable[[], None]:
    """Sends every log line through a queue to a writer thread, so a slow stderr (a full pipe
    to a log collector) never blocks the event loop. Returns the function that flushes what
    is queued and stops the writer, to call before exiting."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(SecretFilter(secrets))
    # No line shows the thread or process: spare every record looking them up.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # Python 3.12+
    records: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
    writer = _Writer(records, handler)
    root = logging.getLogger()
    root.handlers[:] = [_Enqueue(records)]
    root.setLevel(level.upper())
    # aiohttp's own access log would duplicate ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    writer.start()

    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            writer.stop()

    return stop
