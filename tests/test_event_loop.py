"""The event loop: uvloop when the `speed` extra is installed, asyncio's otherwise; said once
at start-up, and the daemon proxies the same either way."""

from __future__ import annotations

import http.client
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from processes import free_port, process_running

PYTHON = sys.executable
# `import uvloop` then fails, as on a machine without the extra.
WITHOUT_UVLOOP = "import sys; sys.modules['uvloop'] = None; from paastis.cli import main; main()"
AS_INSTALLED = "from paastis.cli import main; main()"
TIMEOUT = 20.0


def serve_and_get(tmp_path: Path, code: str) -> tuple[int, str, str]:
    """Starts paastis (`python -c code`) with a local app, asks it for a page through the
    proxy (which wakes the app), stops it; returns the status, the body and the log."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "page.txt").write_text("served\n")
    app_port, port = free_port(), free_port()
    pidfile = tmp_path / "app.pid"
    command = (
        f"echo $$ > {shlex.quote(str(pidfile))}; exec {shlex.quote(PYTHON)} -m http.server "
        f"{app_port} --bind 127.0.0.1 --directory {shlex.quote(str(site))}"
    )
    (tmp_path / "paastis.yml").write_text(
        f"apps:\n  hello:\n    upstream: 'http://127.0.0.1:{app_port}'\n"
        f"    command: {json.dumps(command)}\n"
    )
    stderr_path = tmp_path / "paastis.err"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [PYTHON, "-c", code],
            env={"PATH": "/usr/bin:/bin", "PROVIDER_NAME": "local", "HOST": "127.0.0.1",
                 "PORT": str(port)},
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )  # fmt: skip
    try:
        status, body = get_when_listening(proc, port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        # paastis stops its app on SIGTERM; after a failure above, the app is killed here.
        app_pid = int(pidfile.read_text()) if pidfile.exists() else None
        if app_pid and process_running(app_pid):
            os.kill(app_pid, signal.SIGKILL)
    return status, body, stderr_path.read_text()


def get_when_listening(proc: subprocess.Popen[bytes], port: int) -> tuple[int, str]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        assert proc.poll() is None, f"paastis exited with {proc.returncode}"
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        try:
            connection.request("GET", "/page.txt", headers={"Host": "hello.localhost"})
            response = connection.getresponse()
            return response.status, response.read().decode()
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        finally:
            connection.close()


def loop_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "event loop:" in line]


def test_without_uvloop_the_daemon_runs_on_asyncio_and_says_so(tmp_path: Path) -> None:
    status, body, log = serve_and_get(tmp_path, WITHOUT_UVLOOP)

    assert (status, body) == (200, "served\n")
    [line] = loop_lines(log)
    assert line.endswith("event loop: asyncio (pip install 'paastis[speed]' for uvloop)")


def test_with_uvloop_installed_the_daemon_runs_on_it_and_says_so(tmp_path: Path) -> None:
    uvloop = pytest.importorskip("uvloop")

    status, body, log = serve_and_get(tmp_path, AS_INSTALLED)

    assert (status, body) == (200, "served\n")
    [line] = loop_lines(log)
    assert line.endswith(f"event loop: uvloop {uvloop.__version__}")
