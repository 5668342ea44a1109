"""SIGHUP (DESIGN §2) through a real process: `kill -HUP` re-reads paastis.yml and applies it to
new requests and the next tick, without dropping a connection or forgetting the registry; a
file that no longer validates keeps the old rules and is logged as one line."""

from __future__ import annotations

import asyncio
import http.client
import json
import shlex
import signal
from collections.abc import Callable
from pathlib import Path

from daemons import PYTHON, RUN_TIMEOUT, Daemon, get
from processes import free_port
from waiting import eventually

TOKEN = "system-api-secret-0123456789abcdef"


def local_apps(tmp_path: Path, app_pids: list[Path], *names: str) -> str:
    """An `apps:` section of http.server apps, each writing its pid."""
    section = "apps:\n"
    for name in names:
        site = tmp_path / f"site-{name}"
        site.mkdir(exist_ok=True)
        (site / "index.html").write_text(f"hello from {name}\n")
        pidfile = tmp_path / f"{name}.pid"
        app_pids.append(pidfile)
        port = free_port()
        command = (
            f"echo $$ > {shlex.quote(str(pidfile))}; exec {shlex.quote(PYTHON)} -m http.server "
            f"{port} --bind 127.0.0.1 --directory {shlex.quote(str(site))}"
        )
        section += (
            f"  {name}:\n    upstream: 'http://127.0.0.1:{port}'\n"
            f"    command: {json.dumps(command)}\n"
        )
    return section


def routing(pattern: str, app: str) -> str:
    return f"rules:\n  - pattern: '{pattern}'\n    app_name: {app}\n"


def described(admin_port: int, name: str) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=RUN_TIMEOUT)
    try:
        connection.request("GET", f"/apps/{name}", headers={"Authorization": f"Bearer {TOKEN}"})
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def hup_until(daemon: Daemon, condition: Callable[[], bool], what: str) -> None:
    daemon.signal(signal.SIGHUP)
    asyncio.run(eventually(condition, timeout=10, interval=0.05, what=what))


def start(start_daemon, tmp_path: Path, rules: str) -> tuple[Daemon, int]:
    (tmp_path / "paastis.yml").write_text(rules)
    admin_port = free_port()
    env = {
        "PROVIDER_NAME": "local",
        "ADMIN_PORT": str(admin_port),
        "ROUTING_SYSTEM_API_TOKEN": TOKEN,
    }
    return start_daemon(env, tmp_path), admin_port


def test_sighup_applies_the_new_rules_to_new_requests(tmp_path, start_daemon, app_pids) -> None:
    apps = local_apps(tmp_path, app_pids, "hello")
    daemon, _ = start(start_daemon, tmp_path, routing("^www$", "hello") + apps)
    assert get(daemon.port, "www.localhost", "/index.html")[0] == 200
    (tmp_path / "paastis.yml").write_text(routing("^site$", "hello") + apps)

    hup_until(
        daemon,
        lambda: get(daemon.port, "site.localhost", "/index.html")[0] == 200,
        "the new rule routes site to hello",
    )

    assert get(daemon.port, "www.localhost", "/index.html")[0] == 404  # the old rule is gone
    # Log lines are written in batches: the line may come a moment later.
    asyncio.run(eventually(lambda: "reloaded" in daemon.stderr, what="the reload logged"))


def test_sighup_keeps_open_connections_the_registry_and_running_apps(
    tmp_path, start_daemon, app_pids
) -> None:
    apps = local_apps(tmp_path, app_pids, "hello")
    daemon, admin_port = start(start_daemon, tmp_path, routing("^www$", "hello") + apps)
    kept_alive = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=RUN_TIMEOUT)
    kept_alive.request("GET", "/index.html", headers={"Host": "hello.localhost"})
    assert kept_alive.getresponse().read() == b"hello from hello\n"
    socket_before = kept_alive.sock
    pid_before = (tmp_path / "hello.pid").read_text()
    assert described(admin_port, "hello")["is_monitored"] is True
    (tmp_path / "paastis.yml").write_text(routing("^site$", "hello") + apps)

    hup_until(daemon, lambda: "reloaded" in daemon.stderr, "the reload")

    kept_alive.request("GET", "/index.html", headers={"Host": "hello.localhost"})
    response = kept_alive.getresponse()
    assert (response.status, response.read()) == (200, b"hello from hello\n")
    assert kept_alive.sock is socket_before  # the same connection, not a new one
    kept_alive.close()
    assert described(admin_port, "hello")["is_monitored"] is True
    assert (tmp_path / "hello.pid").read_text() == pid_before  # not restarted


def test_sighup_adds_and_removes_local_apps(tmp_path, start_daemon, app_pids) -> None:
    daemon, _ = start(start_daemon, tmp_path, local_apps(tmp_path, app_pids, "hello"))
    assert get(daemon.port, "second.localhost", "/index.html")[0] == 404
    (tmp_path / "paastis.yml").write_text(local_apps(tmp_path, app_pids, "second"))

    hup_until(daemon, lambda: "reloaded" in daemon.stderr, "the reload")

    status, _, body = get(daemon.port, "second.localhost", "/index.html")
    assert (status, body) == (200, "hello from second\n")
    assert get(daemon.port, "hello.localhost", "/index.html")[0] == 404


def test_a_file_that_no_longer_validates_keeps_the_old_rules_with_one_log_line(
    tmp_path, start_daemon, app_pids
) -> None:
    apps = local_apps(tmp_path, app_pids, "hello")
    daemon, _ = start(start_daemon, tmp_path, routing("^www$", "hello") + apps)
    (tmp_path / "paastis.yml").write_text(routing("^(www$", "hello") + apps)

    hup_until(daemon, lambda: "reload failed" in daemon.stderr, "the failed reload")

    lines = [line for line in daemon.stderr.splitlines() if "reload failed" in line]
    assert len(lines) == 1
    assert "paastis.yml: rule 1, key 'pattern'" in lines[0]
    assert get(daemon.port, "www.localhost", "/index.html")[0] == 200
    assert daemon.proc.poll() is None


def test_sighup_with_no_rules_file_changes_nothing(tmp_path, start_daemon) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # loopback only: nothing listens there
    env = {
        "PROVIDER_NAME": "scalingo",
        "PROVIDER_SCALINGO_API_TOKEN": "tk-us-0123456789",
        "PROVIDER_SCALINGO_API_URL": nowhere,
        "PROVIDER_SCALINGO_AUTH_URL": nowhere,
    }
    daemon = start_daemon(env, tmp_path)

    hup_until(daemon, lambda: "without a rules file" in daemon.stderr, "the answer to SIGHUP")

    assert daemon.proc.poll() is None
