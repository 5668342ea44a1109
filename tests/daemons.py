"""Helpers for tests that run paastis as a real process: a clean environment, plain HTTP
requests, and daemons that are stopped (by pid) at the end of the test."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from processes import accepts_connections, free_port, process_running
from waiting import eventually

PYTHON = sys.executable
RUN_TIMEOUT = 20.0

# An upstream that answers `/slow` after a pause (1.5 s, or argv[4] seconds), writing a marker
# when the request arrives, so a test knows a request is in flight. It records its pid for the
# test to check it ended.
SLOW_UPSTREAM = """\
import os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

port, marker, pidfile = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
hold = float(sys.argv[4]) if len(sys.argv) > 4 else 1.5
pidfile.write_text(str(os.getpid()))


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow":
            marker.write_text("received")
            time.sleep(hold)
        body = f"done {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


# Helpers ---------------------------------------------------------------------------------


def clean_env(**values: str) -> dict[str, str]:
    """A controlled environment: nothing of paastis' configuration leaks in from ours."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **values}


def get(port: int, host: str, path: str = "/") -> tuple[int, dict[str, str], str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=RUN_TIMEOUT)
    try:
        connection.request("GET", path, headers={"Host": host, "Accept": "*/*"})
        response = connection.getresponse()
        return response.status, dict(response.headers), response.read().decode()
    finally:
        connection.close()


@dataclasses.dataclass
class Daemon:
    """A paastis process serving on `port`, its output in files (a full pipe would block it)."""

    proc: subprocess.Popen[bytes]
    port: int
    stderr_path: Path

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_listening(self) -> None:
        def listening() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"paastis exited with {self.proc.returncode}:\n{self.stderr}")
            return accepts_connections(self.port)

        asyncio.run(eventually(listening, timeout=15, what="paastis to listen"))

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, within: float) -> int:
        return self.proc.wait(timeout=within)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Starts `python -m paastis` daemons; any still running at the end is killed."""
    started: list[Daemon] = []

    def start(env: dict[str, str], cwd: Path) -> Daemon:
        port = free_port()
        index = len(started)
        stdout = (tmp_path / f"daemon-{index}.out").open("wb")
        stderr_path = tmp_path / f"daemon-{index}.err"
        with stdout, stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(
                [PYTHON, "-m", "paastis"],
                env=clean_env(HOST="127.0.0.1", PORT=str(port), **env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        daemon = Daemon(proc, port, stderr_path)
        started.append(daemon)
        daemon.wait_listening()
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.terminate()
            try:
                daemon.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.proc.kill()
                daemon.proc.wait(timeout=5)


@pytest.fixture
def app_pids(tmp_path: Path) -> Iterator[list[Path]]:
    """Pid files of app processes a test's paastis spawns; any left alive is killed."""
    pidfiles: list[Path] = []
    yield pidfiles
    for pidfile in pidfiles:
        if pidfile.exists() and process_running(pid := int(pidfile.read_text())):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def local_app(name: str, upstream_port: int, command: str) -> str:
    return (
        f"apps:\n  {name}:\n    upstream: 'http://127.0.0.1:{upstream_port}'\n"
        f"    command: {json.dumps(command)}\n"
    )
