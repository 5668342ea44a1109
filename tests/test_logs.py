"""Logging set-up: text or one JSON object per line, and configured secrets never printed."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from paastis.logs import JsonFormatter, TextFormatter, configure_logging

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

SECRET = "tk-us-very-secret-0123456789"
# Module switches configure_logging turns off (records then skip looking the values up).
RECORD_SWITCHES = ("logThreads", "logProcesses", "logMultiprocessing", "logAsyncioTasks")


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    """configure_logging replaces the root logger's handlers: give pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    switches = {name: getattr(logging, name, None) for name in RECORD_SWITCHES}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in switches.items():
        setattr(logging, name, value)


def logged_lines(capsys: pytest.CaptureFixture[str], stop_logging: Callable[[], None]) -> list[str]:
    stop_logging()  # the writer thread has written every queued line
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err.splitlines()


def test_json_format_prints_one_object_per_line_with_level_logger_and_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stop_logging = configure_logging("info", "json")

    logging.getLogger("paastis.test").info("woke %s in %.1fs", "hello", 1.25)
    logging.getLogger("paastis.other").warning("second line")

    entries = [json.loads(line) for line in logged_lines(capsys, stop_logging)]
    assert [(e["level"], e["logger"], e["message"]) for e in entries] == [
        ("info", "paastis.test", "woke hello in 1.2s"),
        ("warning", "paastis.other", "second line"),
    ]
    assert all(entry["time"].endswith("+00:00") for entry in entries)


def test_json_format_includes_extra_fields(capsys: pytest.CaptureFixture[str]) -> None:
    stop_logging = configure_logging("info", "json")

    logging.getLogger("paastis.test").info("request", extra={"app": "hello", "status": 200})

    [entry] = [json.loads(line) for line in logged_lines(capsys, stop_logging)]
    assert (entry["app"], entry["status"]) == ("hello", 200)


def test_json_format_keeps_a_multi_line_exception_on_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stop_logging = configure_logging("info", "json")

    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("paastis.test").exception("it failed")

    [line] = logged_lines(capsys, stop_logging)
    entry = json.loads(line)
    assert "RuntimeError: boom" in entry["exception"]


def test_text_format_prints_level_logger_and_message(capsys: pytest.CaptureFixture[str]) -> None:
    stop_logging = configure_logging("info", "text")

    logging.getLogger("paastis.test").info("hello %s", "world")

    [line] = logged_lines(capsys, stop_logging)
    assert "INFO" in line
    assert "paastis.test: hello world" in line


def test_level_filters_lower_messages(capsys: pytest.CaptureFixture[str]) -> None:
    stop_logging = configure_logging("warning", "text")

    logging.getLogger("paastis.test").info("hidden")
    logging.getLogger("paastis.test").warning("shown")

    assert [line.rsplit(": ", 1)[1] for line in logged_lines(capsys, stop_logging)] == ["shown"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secret_in_a_message_argument_is_masked(
    capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    stop_logging = configure_logging("info", fmt, [SECRET])

    logging.getLogger("paastis.test").info("calling with token %s", SECRET)

    [line] = logged_lines(capsys, stop_logging)
    assert SECRET not in line
    assert "calling with token ***" in line


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secret_in_an_exception_is_masked(capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    stop_logging = configure_logging("info", fmt, [SECRET])

    try:
        raise ValueError(f"bad token {SECRET}")
    except ValueError:
        logging.getLogger("paastis.test").exception("provider call failed")

    output = "\n".join(logged_lines(capsys, stop_logging))
    assert SECRET not in output
    assert "bad token ***" in output


def test_secret_in_an_extra_field_is_masked(capsys: pytest.CaptureFixture[str]) -> None:
    stop_logging = configure_logging("info", "json", [SECRET])

    logging.getLogger("paastis.test").info("call", extra={"url": f"https://x/?token={SECRET}"})

    [line] = logged_lines(capsys, stop_logging)
    assert SECRET not in line
    assert json.loads(line)["url"] == "https://x/?token=***"


def test_secret_from_a_third_party_logger_is_masked(capsys: pytest.CaptureFixture[str]) -> None:
    stop_logging = configure_logging("debug", "text", [SECRET])

    logging.getLogger("aiohttp.client").warning("Authorization: Bearer %s", SECRET)

    [line] = logged_lines(capsys, stop_logging)
    assert SECRET not in line


def test_longer_secret_is_masked_before_a_shorter_one_it_contains(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stop_logging = configure_logging("info", "text", ["abcd", "abcdefgh-long"])

    logging.getLogger("paastis.test").info("token abcdefgh-long")

    [line] = logged_lines(capsys, stop_logging)
    assert line.endswith("token ***")


class BlockedStream(io.StringIO):
    """A stderr whose writes wait until released, like a full pipe to a log collector."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()

    def write(self, text: str) -> int:
        self.released.wait(timeout=10)
        return super().write(text)


def test_a_blocked_stderr_never_blocks_the_code_that_logs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = BlockedStream()
    monkeypatch.setattr(sys, "stderr", stream)
    stop_logging = configure_logging("info", "text")

    logging.getLogger("paastis.test").info("logged while stderr is blocked")
    written_meanwhile = stream.getvalue()
    stream.released.set()
    stop_logging()

    assert written_meanwhile == ""  # the call returned before anything could be written
    assert "logged while stderr is blocked" in stream.getvalue()


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_a_burst_of_lines_is_written_in_order_in_a_few_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = CountingStream()
    monkeypatch.setattr(sys, "stderr", stream)
    stop_logging = configure_logging("info", "text")

    for number in range(2000):
        logging.getLogger("paastis.access").info("request %d", number)
    stop_logging()

    lines = stream.getvalue().splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == [str(n) for n in range(2000)]
    # One write per batch, not per line: the writer wakes at most every WRITE_INTERVAL.
    assert stream.writes < 200


def test_a_line_is_written_without_waiting_for_the_next_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    stop_logging = configure_logging("info", "text")
    try:
        logging.getLogger("paastis.test").info("alone")
        deadline = time.monotonic() + 5
        while "alone" not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "paastis.test: alone" in stream.getvalue()
    finally:
        stop_logging()


def record_at(created: float, **fields: object) -> logging.LogRecord:
    record = logging.makeLogRecord(
        {"name": "paastis.test", "levelno": logging.WARNING, "levelname": "WARNING", **fields}
    )
    record.created, record.msecs = created, int((created - int(created)) * 1000)
    return record


def test_text_lines_read_as_logging_s_own_formatter_writes_them() -> None:
    ours, reference = TextFormatter(), logging.Formatter(TEXT_FORMAT)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failure = sys.exc_info()
    records = [
        record_at(1_764_000_000.123, msg="first %s", args=("line",)),
        record_at(1_764_000_000.999, msg="same second"),
        record_at(1_764_000_001.004, msg="next second"),
        record_at(1_764_003_600.5, msg="an hour later", exc_info=failure),
        record_at(1_764_003_600.6, msg="with a stack", stack_info="Stack (most recent call last)"),
    ]

    assert [ours.format(r) for r in records] == [reference.format(r) for r in records]


def test_json_time_is_the_record_s_utc_time_to_the_millisecond() -> None:
    formatter = JsonFormatter()
    for created in (1_764_000_000.123456, 1_764_000_000.9871, 1_764_086_399.5):
        entry = json.loads(formatter.format(record_at(created, msg="x")))
        expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        assert entry["time"] == expected
