"""The command line, through real processes: `python -m paastis` and the `paastis` script."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemons import PYTHON, RUN_TIMEOUT, SLOW_UPSTREAM, Daemon, clean_env, get, local_app
from paastis import __version__
from processes import accepts_connections, free_port, process_running
from waiting import eventually

SCRIPT = Path(sys.executable).with_name("paastis")
SCALINGO_TOKEN = "tk-us-scalingo-secret-0123456789"
SYSTEM_TOKEN = "system-api-secret-0123456789abcdef"
SCALINGO = {"PROVIDER_NAME": "scalingo", "PROVIDER_SCALINGO_API_TOKEN": SCALINGO_TOKEN}


def run(
    args: list[str], env: dict[str, str], cwd: Path, *, script: bool = False
) -> subprocess.CompletedProcess[str]:
    command = [str(SCRIPT)] if script else [PYTHON, "-m", "paastis"]
    return subprocess.run(
        [*command, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


# Informational options -------------------------------------------------------------------


def test_version_prints_the_version(tmp_path: Path) -> None:
    result = run(["--version"], clean_env(), tmp_path)

    assert result.returncode == 0
    assert result.stdout.strip() == f"paastis {__version__}"


def test_help_lists_every_option(tmp_path: Path) -> None:
    result = run(["--help"], clean_env(), tmp_path)

    assert result.returncode == 0
    for option in (
        "--host",
        "-H",
        "--port",
        "-P",
        "--max-idle-time",
        "--config",
        "--env-file",
        "--check",
        "--version",
    ):
        assert option in result.stdout


def test_help_says_where_the_configuration_comes_from(tmp_path: Path) -> None:
    result = run(["--help"], clean_env(), tmp_path)

    for mention in ("PROVIDER_NAME", "environment variables", ".env", "env.sample", "SIGHUP"):
        assert mention in result.stdout


# --check -----------------------------------------------------------------------------------


def test_check_exits_0_and_prints_the_configuration(tmp_path: Path) -> None:
    result = run(["--check"], clean_env(**SCALINGO), tmp_path)

    assert result.returncode == 0
    printed = json.loads(result.stdout)
    assert printed["provider"]["name"] == "scalingo"
    assert printed["port"] == 3000


def test_check_masks_the_provider_and_system_api_tokens(tmp_path: Path) -> None:
    env = clean_env(
        **SCALINGO, ROUTING_SYSTEM_API_ENABLED="true", ROUTING_SYSTEM_API_TOKEN=SYSTEM_TOKEN
    )

    result = run(["--check"], env, tmp_path)

    assert result.returncode == 0
    for secret in (SCALINGO_TOKEN, SYSTEM_TOKEN):
        assert secret not in result.stdout
        assert secret not in result.stderr


def test_check_contacts_nothing(tmp_path: Path) -> None:
    # Nothing listens there: a check that called the provider would fail or hang.
    env = clean_env(**SCALINGO, PROVIDER_SCALINGO_API_URL=f"http://127.0.0.1:{free_port()}")

    assert run(["--check"], env, tmp_path).returncode == 0


def test_command_line_port_beats_the_environment(tmp_path: Path) -> None:
    result = run(["--check", "--port", "4100"], clean_env(**SCALINGO, PORT="4000"), tmp_path)

    assert json.loads(result.stdout)["port"] == 4100


def test_short_options_set_host_and_port(tmp_path: Path) -> None:
    result = run(["--check", "-H", "127.0.0.1", "-P", "4101"], clean_env(**SCALINGO), tmp_path)

    printed = json.loads(result.stdout)
    assert (printed["host"], printed["port"]) == ("127.0.0.1", 4101)


def test_env_file_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"PROVIDER_NAME=scalingo\nPROVIDER_SCALINGO_API_TOKEN={SCALINGO_TOKEN}\nPORT=4200\n"
    )

    result = run(["--check"], clean_env(), tmp_path)

    assert result.returncode == 0
    assert json.loads(result.stdout)["port"] == 4200


def test_env_file_option_is_read(tmp_path: Path) -> None:
    env_file = tmp_path / "prod.env"
    env_file.write_text(f"PROVIDER_NAME=heroku\nPROVIDER_HEROKU_API_TOKEN={SCALINGO_TOKEN}\n")

    result = run(["--check", "--env-file", str(env_file)], clean_env(), tmp_path)

    assert json.loads(result.stdout)["provider"]["name"] == "heroku"


SAMPLE = Path(__file__).resolve().parent.parent / "paastis.yml.sample"


def test_the_sample_rules_file_is_valid_with_a_paas_provider(tmp_path: Path) -> None:
    result = run(["--config", str(SAMPLE), "--check"], clean_env(**SCALINGO), tmp_path)

    assert result.returncode == 0, result.stderr
    assert {"keep_awake": "* 8-18 * * 1-5"}.items() <= json.loads(result.stdout)["rules"][1].items()


def test_the_sample_apps_section_uncommented_is_valid_for_the_local_provider(
    tmp_path: Path,
) -> None:
    text = SAMPLE.read_text()
    head, apps = text.split("\n# apps:\n", 1)
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") else line for line in apps.splitlines()
    )
    (tmp_path / "paastis.yml").write_text(f"{head}\napps:\n{uncommented}\n")

    result = run(["--check"], clean_env(PROVIDER_NAME="local"), tmp_path)

    assert result.returncode == 0, result.stderr
    assert sorted(json.loads(result.stdout)["local_apps"]) == ["db-admin", "hello"]


def test_apps_in_the_rules_file_with_a_paas_provider_is_a_configuration_error(
    tmp_path: Path,
) -> None:
    (tmp_path / "paastis.yml").write_text(local_app("hello", 8001, "sleep 60"))

    result = run(["--check"], clean_env(**SCALINGO), tmp_path)

    assert result.returncode == 2
    assert "`apps:` declares local apps (hello)" in result.stderr
    assert "PROVIDER_NAME=scalingo" in result.stderr


def test_paastis_yml_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / "paastis.yml").write_text("rules:\n  - pattern: 'pr(\\d+)'\n")

    result = run(["--check"], clean_env(**SCALINGO), tmp_path)

    assert json.loads(result.stdout)["rules"] == [{"pattern": "pr(\\d+)"}]


def test_console_script_is_the_same_program_as_python_m(tmp_path: Path) -> None:
    env = clean_env(**SCALINGO, START_AND_STOP_MAX_IDLE_TIME="0.5")

    as_module = run(["--check"], env, tmp_path)
    as_script = run(["--check"], env, tmp_path, script=True)

    assert as_script.returncode == as_module.returncode == 0
    assert as_script.stdout == as_module.stdout


def test_console_script_reports_configuration_errors_like_python_m(tmp_path: Path) -> None:
    env = clean_env(PROVIDER_NAME="aws")

    as_module = run([], env, tmp_path)
    as_script = run([], env, tmp_path, script=True)

    assert as_script.returncode == as_module.returncode == 2
    assert as_script.stderr == as_module.stderr


# Configuration errors ----------------------------------------------------------------------


BAD_RULES = {
    "unknown-rule-key": ("rules:\n  - pattern: a\n    colour: red\n", ["rule 1", "colour"]),
    "wrong-type": (
        "rules:\n  - pattern: a\n  - pattern: b\n    app_max_idle_time: ten\n",
        ["rule 2", "app_max_idle_time", "ten"],
    ),
    "bad-regex": ("rules:\n  - pattern: '(a'\n", ["rule 1", "pattern", "(a"]),
    "yaml-error": ("rules:\n  - pattern: [a\n", ["invalid YAML"]),
}

BAD_ENVIRONMENTS = {
    "bad-port": ({**SCALINGO, "PORT": "abc"}, ["PORT='abc'", "1 to 65535"]),
    "port-out-of-range": ({**SCALINGO, "PORT": "70000"}, ["PORT='70000'"]),
    "unknown-provider": ({"PROVIDER_NAME": "aws"}, ["PROVIDER_NAME='aws'", "scalingo"]),
    "missing-provider": ({}, ["PROVIDER_NAME is required"]),
    "missing-token": ({"PROVIDER_NAME": "scalingo"}, ["PROVIDER_SCALINGO_API_TOKEN"]),
    "bad-cron": (
        {**SCALINGO, "START_AND_STOP_CHECKING_INTERVAL_CRON": "* * * *"},
        ["START_AND_STOP_CHECKING_INTERVAL_CRON='* * * *'", "5 fields"],
    ),
    "bad-regex": (
        {**SCALINGO, "PROXY_NO_WAKE_USER_AGENTS": "(bot"},
        ["PROXY_NO_WAKE_USER_AGENTS='(bot'"],
    ),
    "system-api-without-token": (
        {**SCALINGO, "ROUTING_SYSTEM_API_ENABLED": "true"},
        ["ROUTING_SYSTEM_API_TOKEN", "16 characters"],
    ),
    "system-api-short-token": (
        {**SCALINGO, "ROUTING_SYSTEM_API_ENABLED": "true", "ROUTING_SYSTEM_API_TOKEN": "short"},
        ["ROUTING_SYSTEM_API_TOKEN", "16 characters"],
    ),
    "redis-without-url": ({**SCALINGO, "REGISTRY_TYPE": "redis"}, ["REGISTRY_REDIS_URL"]),
    "negative-idle-time": (
        {**SCALINGO, "START_AND_STOP_MAX_IDLE_TIME": "-3"},
        ["START_AND_STOP_MAX_IDLE_TIME='-3'"],
    ),
    "local-without-apps": ({"PROVIDER_NAME": "local"}, ["PROVIDER_NAME=local", "apps:"]),
}


def assert_one_line_configuration_error(
    result: subprocess.CompletedProcess[str], expected: list[str]
) -> None:
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("paastis: configuration error: ")
    for fragment in expected:
        assert fragment in lines[0]


@pytest.mark.parametrize(("env", "expected"), BAD_ENVIRONMENTS.values(), ids=BAD_ENVIRONMENTS)
def test_bad_environment_exits_2_with_one_line_naming_the_variable(
    tmp_path: Path, env: dict[str, str], expected: list[str]
) -> None:
    assert_one_line_configuration_error(run([], clean_env(**env), tmp_path), expected)


@pytest.mark.parametrize(("rules", "expected"), BAD_RULES.values(), ids=BAD_RULES)
def test_bad_rules_file_exits_2_with_one_line_naming_the_file_rule_and_key(
    tmp_path: Path, rules: str, expected: list[str]
) -> None:
    (tmp_path / "paastis.yml").write_text(rules)

    result = run([], clean_env(**SCALINGO), tmp_path)

    assert_one_line_configuration_error(result, ["paastis.yml", *expected])


def test_check_with_a_bad_configuration_exits_2(tmp_path: Path) -> None:
    result = run(["--check"], clean_env(**SCALINGO, PORT="0"), tmp_path)

    assert_one_line_configuration_error(result, ["PORT='0'"])


def test_missing_env_file_option_exits_2(tmp_path: Path) -> None:
    result = run(["--env-file", "missing.env"], clean_env(**SCALINGO), tmp_path)

    assert_one_line_configuration_error(result, ["--env-file", "missing.env"])


def test_missing_config_option_exits_2(tmp_path: Path) -> None:
    result = run(["--config", "missing.yml"], clean_env(**SCALINGO), tmp_path)

    assert_one_line_configuration_error(result, ["--config", "missing.yml"])


def test_bad_port_option_exits_2_naming_the_option(tmp_path: Path) -> None:
    result = run(["--port", "http"], clean_env(**SCALINGO), tmp_path)

    assert_one_line_configuration_error(result, ["--port 'http'"])


def test_unknown_option_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run(["--colour"], clean_env(**SCALINGO), tmp_path)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "paastis: error: unrecognized arguments: --colour (see --help)"
    ]


def test_configuration_error_does_not_print_the_token(tmp_path: Path) -> None:
    env = clean_env(**SCALINGO, ROUTING_SYSTEM_API_ENABLED="true", ROUTING_SYSTEM_API_TOKEN="abc")

    result = run([], env, tmp_path)

    assert result.returncode == 2
    assert SCALINGO_TOKEN not in result.stderr
    assert "'abc'" not in result.stderr


# The daemon --------------------------------------------------------------------------------


def test_daemon_wakes_a_local_app_on_its_first_request(
    tmp_path: Path, start_daemon: Callable[..., Daemon], app_pids: list[Path]
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("hello from http.server\n")
    app_port = free_port()
    pidfile = tmp_path / "hello.pid"
    app_pids.append(pidfile)
    command = (
        f"echo $$ > {shlex.quote(str(pidfile))}; exec {shlex.quote(PYTHON)} -m http.server "
        f"{app_port} --bind 127.0.0.1 --directory {shlex.quote(str(site))}"
    )
    (tmp_path / "paastis.yml").write_text(local_app("hello", app_port, command))
    daemon = start_daemon({"PROVIDER_NAME": "local"}, tmp_path)
    assert not accepts_connections(app_port)  # asleep until asked for

    status, headers, body = get(daemon.port, "hello.localhost", "/index.html")

    assert status == 200
    assert body == "hello from http.server\n"
    assert headers.get("X-Paastis-Cold-Start") == "true"


def test_daemon_writes_json_log_lines_when_asked(
    tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    (tmp_path / "paastis.yml").write_text(local_app("idle", free_port(), "sleep 60"))
    daemon = start_daemon({"PROVIDER_NAME": "local", "LOG_FORMAT": "json"}, tmp_path)

    daemon.signal(signal.SIGTERM)
    daemon.wait(within=10)

    lines = daemon.stderr.splitlines()
    assert lines
    for line in lines:
        entry = json.loads(line)
        assert {"level", "logger", "message"} <= entry.keys()


def test_sigint_exits_0(tmp_path: Path, start_daemon: Callable[..., Daemon]) -> None:
    (tmp_path / "paastis.yml").write_text(local_app("idle", free_port(), "sleep 60"))
    daemon = start_daemon({"PROVIDER_NAME": "local"}, tmp_path)

    daemon.signal(signal.SIGINT)

    assert daemon.wait(within=10) == 0
    assert "Traceback" not in daemon.stderr


@dataclasses.dataclass
class SigtermDuringRequest:
    """What happened when paastis got SIGTERM while a request was in flight."""

    in_flight: tuple[int, str]  # status and body of the request under way at the signal
    refused_while_draining: bool  # new connections refused before that request ended
    exit_code: int
    health_while_draining: int  # the admin listener's /health status meanwhile
    exit_seconds: float  # from the signal to the exit
    app_pid: int
    app_gone_after: bool
    stderr: str


@pytest.fixture(scope="module")
def sigterm_during_request(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SigtermDuringRequest]:
    """Runs the scenario once: the tests below each check one of its outcomes."""
    tmp_path = tmp_path_factory.mktemp("sigterm")
    script, marker, pidfile = tmp_path / "slow.py", tmp_path / "marker", tmp_path / "slow.pid"
    script.write_text(SLOW_UPSTREAM)
    app_port, port, admin_port = free_port(), free_port(), free_port()
    command = " ".join(shlex.quote(str(a)) for a in (PYTHON, script, app_port, marker, pidfile))
    (tmp_path / "paastis.yml").write_text(local_app("slow", app_port, command))
    stderr_path = tmp_path / "paastis.err"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [PYTHON, "-m", "paastis"],
            env=clean_env(
                PROVIDER_NAME="local", HOST="127.0.0.1", PORT=str(port), ADMIN_PORT=str(admin_port)
            ),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    daemon = Daemon(proc, port, stderr_path)
    try:
        yield run_sigterm_scenario(daemon, admin_port, marker, pidfile)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        if pidfile.exists() and process_running(pid := int(pidfile.read_text())):
            os.kill(pid, signal.SIGKILL)


def run_sigterm_scenario(
    daemon: Daemon, admin_port: int, marker: Path, pidfile: Path
) -> SigtermDuringRequest:
    daemon.wait_listening()
    assert get(admin_port, "localhost", "/health")[0] == 200
    assert get(daemon.port, "slow.localhost", "/")[0] == 200  # woken, ready
    app_pid = int(pidfile.read_text())
    outcome: dict[str, tuple[int, str]] = {}

    def in_flight_request() -> None:
        status, _, body = get(daemon.port, "slow.localhost", "/slow")
        outcome["response"] = (status, body)

    request = threading.Thread(target=in_flight_request, daemon=True)
    request.start()
    asyncio.run(eventually(marker.exists, timeout=10, what="the slow request to reach the app"))

    daemon.signal(signal.SIGTERM)
    signalled = time.monotonic()
    refused = False
    # The app holds the request 1.5 s: the listener must close well before it answers.
    while request.is_alive() and time.monotonic() - signalled < 1.2:
        if not accepts_connections(daemon.port):
            refused = request.is_alive()
            break
        time.sleep(0.02)
    health = get(admin_port, "localhost", "/health")[0] if request.is_alive() else 0
    request.join(timeout=RUN_TIMEOUT)
    exit_code = daemon.wait(within=15)
    exit_seconds = time.monotonic() - signalled
    deadline = time.monotonic() + 5
    while process_running(app_pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return SigtermDuringRequest(
        in_flight=outcome.get("response", (0, "no response")),
        refused_while_draining=refused,
        health_while_draining=health,
        exit_code=exit_code,
        exit_seconds=exit_seconds,
        app_pid=app_pid,
        app_gone_after=not process_running(app_pid),
        stderr=daemon.stderr,
    )


def test_sigterm_lets_the_in_flight_request_finish(
    sigterm_during_request: SigtermDuringRequest,
) -> None:
    assert sigterm_during_request.in_flight == (200, "done /slow")


def test_sigterm_refuses_new_connections_while_draining(
    sigterm_during_request: SigtermDuringRequest,
) -> None:
    assert sigterm_during_request.refused_while_draining


def test_admin_health_answers_503_while_draining(
    sigterm_during_request: SigtermDuringRequest,
) -> None:
    assert sigterm_during_request.health_while_draining == 503


def test_sigterm_exits_0_within_a_bound(sigterm_during_request: SigtermDuringRequest) -> None:
    assert sigterm_during_request.exit_code == 0, sigterm_during_request.stderr
    assert sigterm_during_request.exit_seconds < 10
    assert "Traceback" not in sigterm_during_request.stderr


def test_sigterm_stops_the_spawned_app_process(
    sigterm_during_request: SigtermDuringRequest,
) -> None:
    assert sigterm_during_request.app_gone_after


def test_sigterm_ends_within_one_shutdown_timeout_whatever_is_in_flight(
    tmp_path: Path, start_daemon: Callable[..., Daemon], app_pids: list[Path]
) -> None:
    # Each of these would outlast the deadline on its own: a request the app holds for a
    # minute, and a wake whose app never answers (its readiness check runs until the 30 s
    # operation timeout), both with a request waiting on it. Together they get one deadline.
    script, marker = tmp_path / "slow.py", tmp_path / "marker"
    script.write_text(SLOW_UPSTREAM)
    slow_port, slow_pid = free_port(), tmp_path / "slow.pid"
    stuck_pid = tmp_path / "stuck.pid"
    app_pids.extend([slow_pid, stuck_pid])
    slow = " ".join(shlex.quote(str(a)) for a in (PYTHON, script, slow_port, marker, slow_pid, 60))
    stuck = f"echo $$ > {shlex.quote(str(stuck_pid))}; exec sleep 60"
    (tmp_path / "paastis.yml").write_text(
        f"apps:\n  slow:\n    upstream: 'http://127.0.0.1:{slow_port}'\n"
        f"    command: {json.dumps(slow)}\n"
        f"  stuck:\n    upstream: 'http://127.0.0.1:{free_port()}'\n"
        f"    command: {json.dumps(stuck)}\n"
    )
    daemon = start_daemon({"PROVIDER_NAME": "local", "SHUTDOWN_TIMEOUT": "2"}, tmp_path)
    assert get(daemon.port, "slow.localhost", "/")[0] == 200  # woken, ready
    answers: list[str] = []

    def request(host: str, path: str) -> None:
        try:
            answers.append(str(get(daemon.port, host, path)[0]))
        except OSError as exc:  # cut at the deadline
            answers.append(type(exc).__name__)

    in_flight = [
        threading.Thread(target=request, args=(host, path), daemon=True)
        for host, path in (("slow.localhost", "/slow"), ("stuck.localhost", "/"))
    ]
    for thread in in_flight:
        thread.start()
    asyncio.run(eventually(marker.exists, timeout=10, what="the slow request to reach the app"))
    asyncio.run(eventually(stuck_pid.exists, timeout=10, what="the stuck app to be started"))

    daemon.signal(signal.SIGTERM)
    signalled = time.monotonic()
    exit_code = daemon.wait(within=30)
    exit_seconds = time.monotonic() - signalled
    for thread in in_flight:
        thread.join(timeout=5)

    assert exit_code == 0, daemon.stderr
    # 2 s, and only the process' own exit on top (each piece alone would take 30 s or more).
    assert exit_seconds < 4.0, daemon.stderr
    assert "shutdown deadline reached: cancelling 2 request(s) still in flight" in daemon.stderr
    assert sorted(answers) == ["RemoteDisconnected"] * 2  # neither was answered as if done
    assert "Traceback" not in daemon.stderr
