"""The configuration (DESIGN §2-3): defaults, precedence, and one clear error per bad value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paastis.config import DEFAULT_NO_WAKE_USER_AGENTS, CommandLine, Settings, describe
from paastis.config import load_settings as _load_settings
from paastis.errors import ConfigError

SCALINGO_TOKEN = "tk-us-scalingo-0123456789"
SYSTEM_TOKEN = "system-token-0123456789abcdef"
SCALINGO = {"PROVIDER_NAME": "scalingo", "PROVIDER_SCALINGO_API_TOKEN": SCALINGO_TOKEN}
LOCAL_RULES = "apps:\n  hello:\n    upstream: http://127.0.0.1:8001\n    command: sleep 60\n"
CLEVER_OAUTH = {
    "PROVIDER_CLEVER_OAUTH_CONSUMER_KEY": "consumer-key",
    "PROVIDER_CLEVER_OAUTH_CONSUMER_SECRET": "consumer-secret",
    "PROVIDER_CLEVER_TOKEN": "clever-token",
    "PROVIDER_CLEVER_SECRET": "clever-secret",
}

MONITORS_AND_CRAWLERS = [
    "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
    "Pingdom.com_bot_version_1.4_(http://www.pingdom.com/)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/71.0.3578.98 Safari/537.36 StatusCake",
    "Better Uptime Bot Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/87.0.4280.88 Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Twitterbot/1.0",
    "my-site-crawler/1.0",
    "Baiduspider+(+http://www.baidu.com/search/spider.htm)",
]
BROWSERS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4_1) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.6367.82 Mobile Safari/537.36",
    # A phone brand whose name ends in "bot": its users are people.
    "Mozilla/5.0 (Linux; Android 9; CUBOT X19) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36",
]


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    """An empty working directory: no `.env`, no `paastis.yml` unless a test writes one."""
    directory = tmp_path / "cwd"
    directory.mkdir()
    return directory


def load(env: dict[str, str], cwd: Path, cli: CommandLine | None = None) -> Settings:
    return _load_settings(cli or CommandLine(), env, cwd=cwd)


def error_of(env: dict[str, str], cwd: Path, cli: CommandLine | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        load(env, cwd, cli)
    message = str(raised.value)
    assert "\n" not in message
    return message


# Defaults ----------------------------------------------------------------------------------


def test_minimal_scalingo_configuration_has_the_documented_defaults(cwd: Path) -> None:
    s = load(SCALINGO, cwd)

    assert (s.host, s.port) == ("0.0.0.0", 3000)
    assert (s.registry_type, s.redis_url, s.redis_prefix) == ("in-memory", None, "paastis:")
    assert s.ignored_apps == frozenset()
    assert s.cron == "* * * * *"
    assert s.max_idle_time == 15
    assert s.provider.name == "scalingo"
    assert s.provider.region == "osc-fr1"
    assert s.provider.operation_timeout == 30
    assert s.provider.scalingo_api_token == SCALINGO_TOKEN
    assert s.provider.scalingo_api_url is None  # derived from the region by the adapter
    assert s.provider.scalingo_auth_url == "https://auth.scalingo.com"
    assert dict(s.hooks) == dict.fromkeys(
        ("before_start", "after_start", "before_stop", "after_stop")
    )
    assert s.hooks_timeout == 60
    assert (s.system_api_enabled, s.system_api_token) == (False, None)
    assert s.upstream_url_template is None
    assert s.wake_strategy == "auto"
    assert s.readiness_path == "/"
    assert s.no_wake_user_agents is not None
    assert s.no_wake_user_agents.pattern == DEFAULT_NO_WAKE_USER_AGENTS
    assert (s.admin_host, s.admin_port) == ("127.0.0.1", None)
    assert s.upstream_tls_verify is True
    assert (s.connect_timeout, s.read_timeout, s.max_connection_lifetime) == (10, 300, None)
    assert (s.log_level, s.log_format) == ("info", "text")
    assert s.rules_file is None
    assert s.rules.rules == ()
    assert s.rules.default_max_idle_time == 15


def test_every_variable_is_read(cwd: Path) -> None:
    env = {
        **SCALINGO,
        "HOST": "127.0.0.1",
        "PORT": "8080",
        "REGISTRY_TYPE": "redis",
        "REGISTRY_REDIS_URL": "redis://127.0.0.1:6390/1",
        "REGISTRY_REDIS_PREFIX": "staging:",
        "REGISTRY_IGNORED_APPS": "a,b",
        "START_AND_STOP_CHECKING_INTERVAL_CRON": "*/2 * * * *",
        "START_AND_STOP_MAX_IDLE_TIME": "45",
        "PROVIDER_REGION": "osc-secnum-fr1",
        "PROVIDER_SCALINGO_OPERATION_TIMEOUT": "90",
        "PROVIDER_SCALINGO_API_URL": "http://127.0.0.1:9001/",
        "PROVIDER_SCALINGO_AUTH_URL": "http://127.0.0.1:9002",
        "HOOKS_BEFORE_START": "echo 1",
        "HOOKS_AFTER_START": "echo 2",
        "HOOKS_BEFORE_STOP": "echo 3",
        "HOOKS_AFTER_STOP": "echo 4",
        "HOOKS_TIMEOUT": "5",
        "ROUTING_SYSTEM_API_ENABLED": "true",
        "ROUTING_SYSTEM_API_TOKEN": SYSTEM_TOKEN,
        "UPSTREAM_URL_TEMPLATE": "https://{app}.example.net",
        "PROXY_WAKE_STRATEGY": "blocking",
        "PROXY_READINESS_PATH": "/health",
        "PROXY_NO_WAKE_USER_AGENTS": "(?i)probe",
        "ADMIN_HOST": "127.0.0.2",
        "ADMIN_PORT": "9100",
        "UPSTREAM_TLS_VERIFY": "false",
        "PROXY_CONNECT_TIMEOUT": "2",
        "PROXY_READ_TIMEOUT": "20",
        "PROXY_MAX_CONNECTION_LIFETIME": "3600",
        "LOG_LEVEL": "debug",
        "LOG_FORMAT": "json",
        "SHUTDOWN_TIMEOUT": "12.5",
    }

    s = load(env, cwd)

    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.shutdown_timeout == 12.5
    assert (s.registry_type, s.redis_url, s.redis_prefix) == (
        "redis",
        "redis://127.0.0.1:6390/1",
        "staging:",
    )
    assert s.ignored_apps == {"a", "b"}
    assert (s.cron, s.max_idle_time) == ("*/2 * * * *", 45)
    assert (s.provider.region, s.provider.operation_timeout) == ("osc-secnum-fr1", 90)
    assert s.provider.scalingo_api_url == "http://127.0.0.1:9001"
    assert s.provider.scalingo_auth_url == "http://127.0.0.1:9002"
    assert list(s.hooks.values()) == ["echo 1", "echo 2", "echo 3", "echo 4"]
    assert s.hooks_timeout == 5
    assert (s.system_api_enabled, s.system_api_token) == (True, SYSTEM_TOKEN)
    assert s.upstream_url_template == "https://{app}.example.net"
    assert (s.wake_strategy, s.readiness_path) == ("blocking", "/health")
    assert s.no_wake_user_agents is not None
    assert s.no_wake_user_agents.pattern == "(?i)probe"
    assert (s.admin_host, s.admin_port) == ("127.0.0.2", 9100)
    assert s.upstream_tls_verify is False
    assert (s.connect_timeout, s.read_timeout, s.max_connection_lifetime) == (2, 20, 3600)
    assert (s.log_level, s.log_format) == ("debug", "json")


def test_empty_no_wake_pattern_turns_the_filter_off(cwd: Path) -> None:
    assert load({**SCALINGO, "PROXY_NO_WAKE_USER_AGENTS": ""}, cwd).no_wake_user_agents is None


def test_minimal_local_configuration_reads_paastis_yml_from_the_working_directory(
    cwd: Path,
) -> None:
    (cwd / "paastis.yml").write_text(LOCAL_RULES)

    s = load({"PROVIDER_NAME": "local"}, cwd)

    assert s.provider.name == "local"
    assert s.rules_file == cwd / "paastis.yml"
    assert list(s.local_apps) == ["hello"]
    assert s.local_apps["hello"].upstream == "http://127.0.0.1:8001"
    assert s.local_apps["hello"].command == "sleep 60"


def test_heroku_defaults(cwd: Path) -> None:
    s = load({"PROVIDER_NAME": "heroku", "PROVIDER_HEROKU_API_TOKEN": "heroku-token"}, cwd)

    assert s.provider.heroku_api_url == "https://api.heroku.com"
    assert s.provider.operation_timeout == 30


def test_clever_cloud_oauth_defaults(cwd: Path) -> None:
    s = load({"PROVIDER_NAME": "clever-cloud", **CLEVER_OAUTH}, cwd)

    assert s.provider.clever_api_host == "https://api.clever-cloud.com"
    assert s.provider.operation_timeout == 60
    assert s.provider.clever_api_token is None


def test_clever_cloud_api_token_alone_is_enough_and_defaults_to_the_bridge(cwd: Path) -> None:
    s = load({"PROVIDER_NAME": "clever-cloud", "PROVIDER_CLEVER_API_TOKEN": "api-token"}, cwd)

    assert s.provider.clever_api_token == "api-token"
    assert s.provider.clever_api_host == "https://api-bridge.clever-cloud.com"


def test_clever_cloud_api_host_set_explicitly_wins_over_the_bridge_default(cwd: Path) -> None:
    s = load(
        {
            "PROVIDER_NAME": "clever-cloud",
            "PROVIDER_CLEVER_API_TOKEN": "api-token",
            "PROVIDER_CLEVER_API_HOST": "http://127.0.0.1:9999/",
        },
        cwd,
    )

    assert s.provider.clever_api_host == "http://127.0.0.1:9999"


def test_ignored_apps_are_split_on_commas_with_spaces_ignored(cwd: Path) -> None:
    s = load({**SCALINGO, "REGISTRY_IGNORED_APPS": " front , back,, db "}, cwd)

    assert s.ignored_apps == {"front", "back", "db"}


def test_six_field_cron_with_seconds_is_accepted(cwd: Path) -> None:
    s = load({**SCALINGO, "START_AND_STOP_CHECKING_INTERVAL_CRON": "* * * * * */10"}, cwd)

    assert s.cron == "* * * * * */10"


def test_five_field_cron_is_accepted(cwd: Path) -> None:
    s = load({**SCALINGO, "START_AND_STOP_CHECKING_INTERVAL_CRON": "*/5 8-18 * * 1-5"}, cwd)

    assert s.cron == "*/5 8-18 * * 1-5"


def test_decimal_max_idle_time_is_accepted(cwd: Path) -> None:
    s = load({**SCALINGO, "START_AND_STOP_MAX_IDLE_TIME": "0.1"}, cwd)

    assert s.max_idle_time == pytest.approx(0.1)
    assert s.rules.resolve("any-app").max_idle_time == pytest.approx(0.1)


def test_zero_max_idle_time_is_accepted(cwd: Path) -> None:
    assert load({**SCALINGO, "START_AND_STOP_MAX_IDLE_TIME": "0"}, cwd).max_idle_time == 0


def test_logging_level_is_accepted_as_an_alias_of_log_level(cwd: Path) -> None:
    assert load({**SCALINGO, "LOGGING_LEVEL": "DEBUG"}, cwd).log_level == "debug"


def test_log_level_wins_over_logging_level(cwd: Path) -> None:
    s = load({**SCALINGO, "LOG_LEVEL": "warning", "LOGGING_LEVEL": "debug"}, cwd)

    assert s.log_level == "warning"


@pytest.mark.parametrize("value", ["false", "FALSE", "0", "no"])
def test_upstream_tls_verification_is_off_only_when_set_explicitly(cwd: Path, value: str) -> None:
    assert load({**SCALINGO, "UPSTREAM_TLS_VERIFY": value}, cwd).upstream_tls_verify is False


def test_empty_upstream_tls_verify_keeps_verification_on(cwd: Path) -> None:
    assert load({**SCALINGO, "UPSTREAM_TLS_VERIFY": ""}, cwd).upstream_tls_verify is True


@pytest.mark.parametrize("user_agent", MONITORS_AND_CRAWLERS)
def test_default_no_wake_pattern_matches_monitors_and_crawlers(cwd: Path, user_agent: str) -> None:
    pattern = load(SCALINGO, cwd).no_wake_user_agents
    assert pattern is not None

    assert pattern.search(user_agent)


@pytest.mark.parametrize("user_agent", BROWSERS)
def test_default_no_wake_pattern_does_not_match_browsers(cwd: Path, user_agent: str) -> None:
    pattern = load(SCALINGO, cwd).no_wake_user_agents
    assert pattern is not None

    assert not pattern.search(user_agent)


# Precedence --------------------------------------------------------------------------------


def test_env_file_in_the_working_directory_is_read(cwd: Path) -> None:
    (cwd / ".env").write_text(
        f"PROVIDER_NAME=scalingo\nPROVIDER_SCALINGO_API_TOKEN={SCALINGO_TOKEN}\nPORT=4001\n"
    )

    s = load({}, cwd)

    assert (s.provider.name, s.port) == ("scalingo", 4001)


def test_environment_beats_the_env_file(cwd: Path) -> None:
    (cwd / ".env").write_text("PORT=4001\nSTART_AND_STOP_MAX_IDLE_TIME=5\n")

    s = load({**SCALINGO, "PORT": "4002"}, cwd)

    assert (s.port, s.max_idle_time) == (4002, 5)


def test_command_line_beats_the_environment(cwd: Path) -> None:
    env = {**SCALINGO, "HOST": "10.0.0.1", "PORT": "4002", "START_AND_STOP_MAX_IDLE_TIME": "5"}

    s = load(env, cwd, CommandLine(host="127.0.0.1", port="4003", max_idle_time="0.5"))

    assert (s.host, s.port, s.max_idle_time) == ("127.0.0.1", 4003, 0.5)


def test_env_file_option_is_read_instead_of_the_working_directory_one(
    cwd: Path, tmp_path: Path
) -> None:
    (cwd / ".env").write_text("PORT=4001\n")
    other = tmp_path / "other.env"
    other.write_text("PORT=4005\n")

    s = load(SCALINGO, cwd, CommandLine(env_file=other))

    assert s.port == 4005


def test_env_file_values_are_not_expanded_from_the_process_environment(cwd: Path) -> None:
    (cwd / ".env").write_text("HOOKS_BEFORE_START=echo ${HOME}\n")

    assert load(SCALINGO, cwd).hooks["before_start"] == "echo ${HOME}"


def test_missing_env_file_option_is_an_error(cwd: Path) -> None:
    message = error_of(SCALINGO, cwd, CommandLine(env_file=cwd / "nope.env"))

    assert "--env-file" in message
    assert "nope.env" in message


def test_unparseable_env_file_line_is_an_error_naming_the_file_and_line(cwd: Path) -> None:
    (cwd / ".env").write_text("PORT=4001\nthis is not a variable\n")

    message = error_of(SCALINGO, cwd)

    assert ".env" in message
    assert "line 2" in message


def test_missing_config_option_is_an_error(cwd: Path) -> None:
    message = error_of(SCALINGO, cwd, CommandLine(config=cwd / "nope.yml"))

    assert "--config" in message
    assert "nope.yml" in message


def test_config_option_is_read_instead_of_the_working_directory_one(
    cwd: Path, tmp_path: Path
) -> None:
    (cwd / "paastis.yml").write_text("rules: [{pattern: a, app_max_idle_time: 1}]\n")
    other = tmp_path / "other.yml"
    other.write_text("rules: [{pattern: a, app_max_idle_time: 2}]\n")

    s = load(SCALINGO, cwd, CommandLine(config=other))

    assert s.rules_file == other
    assert s.rules.resolve("a").max_idle_time == 2


def test_invalid_rules_file_is_a_configuration_error(cwd: Path) -> None:
    (cwd / "paastis.yml").write_text("rules:\n  - pattern: a\n    colour: red\n")

    message = error_of(SCALINGO, cwd)

    assert "paastis.yml" in message
    assert "rule 1" in message
    assert "colour" in message


# Errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "0", "70000", "-1", "3000.5"])
def test_bad_port_is_an_error_naming_variable_value_and_range(cwd: Path, value: str) -> None:
    message = error_of({**SCALINGO, "PORT": value}, cwd)

    assert f"PORT={value!r}" in message
    assert "1 to 65535" in message


def test_bad_port_on_the_command_line_names_the_option(cwd: Path) -> None:
    message = error_of(SCALINGO, cwd, CommandLine(port="abc"))

    assert "--port 'abc'" in message


def test_bad_admin_port_is_an_error(cwd: Path) -> None:
    assert "ADMIN_PORT='x'" in error_of({**SCALINGO, "ADMIN_PORT": "x"}, cwd)


def test_unknown_provider_is_an_error_listing_the_accepted_ones(cwd: Path) -> None:
    message = error_of({"PROVIDER_NAME": "aws"}, cwd)

    assert "PROVIDER_NAME='aws'" in message
    assert "scalingo, heroku, clever-cloud, local" in message


def test_missing_provider_is_an_error(cwd: Path) -> None:
    message = error_of({}, cwd)

    assert "PROVIDER_NAME is required" in message
    assert "scalingo, heroku, clever-cloud, local" in message


@pytest.mark.parametrize(
    ("provider", "variable"),
    [("scalingo", "PROVIDER_SCALINGO_API_TOKEN"), ("heroku", "PROVIDER_HEROKU_API_TOKEN")],
)
def test_missing_provider_token_is_an_error(cwd: Path, provider: str, variable: str) -> None:
    message = error_of({"PROVIDER_NAME": provider}, cwd)

    assert f"{variable} is required" in message


def test_blank_provider_token_counts_as_missing(cwd: Path) -> None:
    message = error_of({"PROVIDER_NAME": "scalingo", "PROVIDER_SCALINGO_API_TOKEN": "  "}, cwd)

    assert "PROVIDER_SCALINGO_API_TOKEN is required" in message


@pytest.mark.parametrize("missing", sorted(CLEVER_OAUTH))
def test_incomplete_clever_cloud_oauth_set_is_an_error(cwd: Path, missing: str) -> None:
    env = {"PROVIDER_NAME": "clever-cloud", **CLEVER_OAUTH}
    del env[missing]

    message = error_of(env, cwd)

    assert f"{missing} is required" in message
    assert "PROVIDER_CLEVER_API_TOKEN" in message  # the alternative is named


@pytest.mark.parametrize(
    "cron",
    ["* * * *", "* * * * * * *", "every minute", "61 * * * *", "* * * * * 61", "a b c d e"],
)
def test_bad_cron_is_an_error(cwd: Path, cron: str) -> None:
    message = error_of({**SCALINGO, "START_AND_STOP_CHECKING_INTERVAL_CRON": cron}, cwd)

    assert f"START_AND_STOP_CHECKING_INTERVAL_CRON={cron!r}" in message
    assert "5 fields, or 6 with seconds" in message


def test_bad_no_wake_user_agent_regex_is_an_error(cwd: Path) -> None:
    message = error_of({**SCALINGO, "PROXY_NO_WAKE_USER_AGENTS": "(bot"}, cwd)

    assert "PROXY_NO_WAKE_USER_AGENTS='(bot'" in message
    assert "regular expression" in message


def test_redis_registry_without_url_is_an_error(cwd: Path) -> None:
    message = error_of({**SCALINGO, "REGISTRY_TYPE": "redis"}, cwd)

    assert "REGISTRY_REDIS_URL is required" in message
    assert "REGISTRY_TYPE=redis" in message


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379", "127.0.0.1:6379", "redis://127.0.0.1:6379/not-a-db"]
)
def test_redis_registry_with_a_non_redis_url_is_an_error(cwd: Path, url: str) -> None:
    env = {**SCALINGO, "REGISTRY_TYPE": "redis", "REGISTRY_REDIS_URL": url}

    message = error_of(env, cwd)

    assert f"REGISTRY_REDIS_URL={url!r}" in message
    assert "redis://" in message


@pytest.mark.parametrize("url", ["redis://u:hunter22@[::1", "redis://u:hunter22@host:port"])
def test_unparseable_redis_url_is_an_error_that_hides_its_password(cwd: Path, url: str) -> None:
    message = error_of({**SCALINGO, "REGISTRY_TYPE": "redis", "REGISTRY_REDIS_URL": url}, cwd)

    assert "REGISTRY_REDIS_URL" in message
    assert "hunter22" not in message


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/2", "rediss://:pw@redis.example.net", "unix:///run/r.sock"]
)
def test_redis_registry_with_a_redis_url_is_accepted(cwd: Path, url: str) -> None:
    env = {**SCALINGO, "REGISTRY_TYPE": "redis", "REGISTRY_REDIS_URL": url}

    assert load(env, cwd).redis_url == url


def test_unknown_registry_type_is_an_error(cwd: Path) -> None:
    message = error_of({**SCALINGO, "REGISTRY_TYPE": "postgres"}, cwd)

    assert "REGISTRY_TYPE='postgres'" in message
    assert "in-memory, redis" in message


def test_system_api_enabled_without_token_is_an_error(cwd: Path) -> None:
    message = error_of({**SCALINGO, "ROUTING_SYSTEM_API_ENABLED": "true"}, cwd)

    assert "ROUTING_SYSTEM_API_TOKEN" in message
    assert "16 characters" in message


def test_system_api_token_shorter_than_16_characters_is_an_error_that_hides_it(
    cwd: Path,
) -> None:
    env = {
        **SCALINGO,
        "ROUTING_SYSTEM_API_ENABLED": "true",
        "ROUTING_SYSTEM_API_TOKEN": "short-secret-15",
    }

    message = error_of(env, cwd)

    assert "ROUTING_SYSTEM_API_TOKEN" in message
    assert "15 characters" in message
    assert "short-secret-15" not in message


def test_short_system_api_token_is_an_error_even_for_the_admin_listener_alone(
    cwd: Path,
) -> None:
    env = {**SCALINGO, "ADMIN_PORT": "9100", "ROUTING_SYSTEM_API_TOKEN": "short-secret-15"}

    message = error_of(env, cwd)

    assert "ROUTING_SYSTEM_API_TOKEN" in message
    assert "15 characters" in message


def test_system_api_token_of_16_characters_is_accepted(cwd: Path) -> None:
    env = {
        **SCALINGO,
        "ROUTING_SYSTEM_API_ENABLED": "true",
        "ROUTING_SYSTEM_API_TOKEN": "0123456789abcdef",
    }

    s = load(env, cwd)

    assert (s.system_api_enabled, s.system_api_token) == (True, "0123456789abcdef")


@pytest.mark.parametrize("variable", ["ROUTING_SYSTEM_API_ENABLED", "UPSTREAM_TLS_VERIFY"])
def test_bad_boolean_is_an_error(cwd: Path, variable: str) -> None:
    message = error_of({**SCALINGO, variable: "maybe"}, cwd)

    assert f"{variable}='maybe'" in message
    assert "accepted: true/false, yes/no, 1/0, on/off" in message


@pytest.mark.parametrize("value", ["yes", "1", "on", "TRUE", "On"])
def test_every_accepted_true_spelling_is_true(cwd: Path, value: str) -> None:
    assert (
        load(
            {
                **SCALINGO,
                "UPSTREAM_TLS_VERIFY": "no",
                "ROUTING_SYSTEM_API_ENABLED": value,
                "ROUTING_SYSTEM_API_TOKEN": SYSTEM_TOKEN,
            },
            cwd,
        ).system_api_enabled
        is True
    )


def test_a_bad_user_agent_pattern_is_shown_as_written(cwd: Path) -> None:
    message = error_of({**SCALINGO, "PROXY_NO_WAKE_USER_AGENTS": r"bot-(\d+"}, cwd)

    assert r"PROXY_NO_WAKE_USER_AGENTS='bot-(\d+'" in message


@pytest.mark.parametrize("value", ["-1", "abc", "nan", "inf", "1e20", "15min"])
def test_bad_max_idle_time_is_an_error(cwd: Path, value: str) -> None:
    message = error_of({**SCALINGO, "START_AND_STOP_MAX_IDLE_TIME": value}, cwd)

    assert f"START_AND_STOP_MAX_IDLE_TIME={value!r}" in message
    assert "number" in message


def test_bad_max_idle_time_on_the_command_line_names_the_option(cwd: Path) -> None:
    message = error_of(SCALINGO, cwd, CommandLine(max_idle_time="-5"))

    assert "--max-idle-time '-5'" in message


@pytest.mark.parametrize(
    "variable",
    [
        "PROVIDER_SCALINGO_OPERATION_TIMEOUT",
        "HOOKS_TIMEOUT",
        "PROXY_CONNECT_TIMEOUT",
        "PROXY_READ_TIMEOUT",
        "PROXY_MAX_CONNECTION_LIFETIME",
        "SHUTDOWN_TIMEOUT",
    ],
)
def test_non_numeric_durations_are_errors(cwd: Path, variable: str) -> None:
    assert f"{variable}='soon'" in error_of({**SCALINGO, variable: "soon"}, cwd)


def test_bad_log_level_is_an_error(cwd: Path) -> None:
    message = error_of({**SCALINGO, "LOG_LEVEL": "verbose"}, cwd)

    assert "LOG_LEVEL='verbose'" in message
    assert "debug, info, warning, error" in message


def test_bad_logging_level_alias_names_the_alias(cwd: Path) -> None:
    assert "LOGGING_LEVEL='verbose'" in error_of({**SCALINGO, "LOGGING_LEVEL": "verbose"}, cwd)


def test_bad_log_format_is_an_error(cwd: Path) -> None:
    message = error_of({**SCALINGO, "LOG_FORMAT": "xml"}, cwd)

    assert "LOG_FORMAT='xml'" in message
    assert "text, json" in message


def test_bad_wake_strategy_is_an_error(cwd: Path) -> None:
    message = error_of({**SCALINGO, "PROXY_WAKE_STRATEGY": "eager"}, cwd)

    assert "PROXY_WAKE_STRATEGY='eager'" in message
    assert "auto, blocking" in message


def test_readiness_path_without_leading_slash_is_an_error(cwd: Path) -> None:
    assert "PROXY_READINESS_PATH='health'" in error_of(
        {**SCALINGO, "PROXY_READINESS_PATH": "health"}, cwd
    )


def test_empty_readiness_path_turns_the_check_off(cwd: Path) -> None:
    assert load({**SCALINGO, "PROXY_READINESS_PATH": ""}, cwd).readiness_path == ""


def test_upstream_template_without_app_placeholder_is_an_error(cwd: Path) -> None:
    message = error_of({**SCALINGO, "UPSTREAM_URL_TEMPLATE": "https://example.net"}, cwd)

    assert "UPSTREAM_URL_TEMPLATE='https://example.net'" in message
    assert "{app}" in message


@pytest.mark.parametrize("url", ["ftp://api.example.net", "api.example.net", "http://[::1"])
def test_bad_provider_api_url_is_an_error(cwd: Path, url: str) -> None:
    message = error_of({**SCALINGO, "PROVIDER_SCALINGO_API_URL": url}, cwd)

    assert f"PROVIDER_SCALINGO_API_URL={url!r}" in message
    assert "http:// or https://" in message


def test_local_provider_without_a_rules_file_is_an_error(cwd: Path) -> None:
    message = error_of({"PROVIDER_NAME": "local"}, cwd)

    assert "PROVIDER_NAME=local" in message
    assert "apps:" in message


def test_local_provider_with_a_rules_file_without_apps_is_an_error_naming_it(cwd: Path) -> None:
    (cwd / "paastis.yml").write_text("rules:\n  - pattern: a\n")

    message = error_of({"PROVIDER_NAME": "local"}, cwd)

    assert "apps:" in message
    assert str(cwd / "paastis.yml") in message


# What --check prints -----------------------------------------------------------------------


def test_description_masks_provider_and_system_api_tokens(cwd: Path) -> None:
    env = {
        **SCALINGO,
        "ROUTING_SYSTEM_API_ENABLED": "true",
        "ROUTING_SYSTEM_API_TOKEN": SYSTEM_TOKEN,
    }

    printed = json.dumps(describe(load(env, cwd)), default=str)

    assert SCALINGO_TOKEN not in printed
    assert SYSTEM_TOKEN not in printed
    assert '"scalingo_api_token": "***"' in printed


def test_description_masks_the_redis_password(cwd: Path) -> None:
    env = {
        **SCALINGO,
        "REGISTRY_TYPE": "redis",
        "REGISTRY_REDIS_URL": "redis://user:hunter22@127.0.0.1:6379/0",
    }

    described = describe(load(env, cwd))

    assert "hunter22" not in json.dumps(described, default=str)
    assert described["redis_url"] == "redis://user:***@127.0.0.1:6379/0"


def test_description_masks_clever_cloud_secrets(cwd: Path) -> None:
    printed = json.dumps(describe(load({"PROVIDER_NAME": "clever-cloud", **CLEVER_OAUTH}, cwd)))

    for secret in ("consumer-secret", "clever-token", "clever-secret"):
        assert secret not in printed


def test_description_shows_only_the_chosen_providers_settings(cwd: Path) -> None:
    provider = describe(load(SCALINGO, cwd))["provider"]

    assert provider["name"] == "scalingo"
    assert not [key for key in provider if key.startswith(("heroku_", "clever_"))]


# PROVIDER_REGION as a list ------------------------------------------------------------------


def test_scalingo_manages_every_region_of_a_comma_separated_list(cwd: Path) -> None:
    s = load({**SCALINGO, "PROVIDER_REGION": " osc-fr1 , osc-secnum-fr1 "}, cwd)

    assert s.provider.regions == ("osc-fr1", "osc-secnum-fr1")
    assert s.provider.region == "osc-fr1"
    assert describe(s)["provider"]["regions"] == ("osc-fr1", "osc-secnum-fr1")


def test_heroku_keeps_the_apps_of_every_listed_region(cwd: Path) -> None:
    env = {"PROVIDER_NAME": "heroku", "PROVIDER_HEROKU_API_TOKEN": "t", "PROVIDER_REGION": "eu,us"}

    assert load(env, cwd).provider.regions == ("eu", "us")


@pytest.mark.parametrize("value", ["osc fr1", "osc-fr1;osc-secnum-fr1", ","])
def test_a_malformed_region_list_is_a_configuration_error(cwd: Path, value: str) -> None:
    message = error_of({**SCALINGO, "PROVIDER_REGION": value}, cwd)

    assert message.startswith(f"PROVIDER_REGION={value!r} is invalid")


def test_one_api_url_for_several_regions_needs_a_region_placeholder(cwd: Path) -> None:
    env = {
        **SCALINGO,
        "PROVIDER_REGION": "osc-fr1,osc-secnum-fr1",
        "PROVIDER_SCALINGO_API_URL": "http://127.0.0.1:9001",
    }

    assert "put {region} where the region goes" in error_of(env, cwd)
    env["PROVIDER_SCALINGO_API_URL"] = "http://127.0.0.1:9001/{region}"
    assert load(env, cwd).provider.scalingo_api_url == "http://127.0.0.1:9001/{region}"


# The platform paastis runs on (DESIGN §2, "paastis never manages itself") ------------------

HEROKU = {"PROVIDER_NAME": "heroku", "PROVIDER_HEROKU_API_TOKEN": "heroku-token-0123456789"}
CLEVER = {"PROVIDER_NAME": "clever-cloud", "PROVIDER_CLEVER_API_TOKEN": "clever-token-0123"}


@pytest.mark.parametrize(
    ("env", "own_apps"),
    [
        ({**SCALINGO, "CONTAINER": "web-1", "APP": "paastis-prod"}, {"paastis-prod"}),
        ({**HEROKU, "DYNO": "web.1", "HEROKU_APP_NAME": "paastis-prod"}, {"paastis-prod"}),
        (
            {**CLEVER, "INSTANCE_ID": "i-1", "APP_ID": "app_1234", "CC_APP_NAME": "paastis"},
            {"paastis", "app_1234"},
        ),
    ],
    ids=["scalingo", "heroku", "clever-cloud"],
)
def test_paastis_own_app_is_ignored_on_the_platform_it_manages(
    cwd: Path, env: dict[str, str], own_apps: set[str]
) -> None:
    s = load({**env, "REGISTRY_IGNORED_APPS": "legacy"}, cwd)

    assert s.ignored_apps == {"legacy", *own_apps}
    assert s.platform is not None and s.platform.name == env["PROVIDER_NAME"]


def test_paastis_on_another_platform_than_it_manages_ignores_nothing_more(cwd: Path) -> None:
    s = load({**SCALINGO, "DYNO": "web.1", "HEROKU_APP_NAME": "paastis-prod"}, cwd)

    assert s.ignored_apps == frozenset()
    assert s.platform is not None and s.platform.name == "heroku"


def test_heroku_without_dyno_metadata_is_detected_without_an_own_app(cwd: Path) -> None:
    s = load({**HEROKU, "DYNO": "web.1"}, cwd)

    assert s.platform is not None and s.platform.own_apps == ()
    assert "runtime-dyno-metadata" in s.platform.hint


def test_off_any_platform_nothing_is_detected(cwd: Path) -> None:
    assert load({**SCALINGO, "APP": "something"}, cwd).platform is None


# REGISTRY_STATE_FILE -----------------------------------------------------------------------


def test_the_state_file_is_read_with_the_in_memory_registry(cwd: Path) -> None:
    s = load({**SCALINGO, "REGISTRY_STATE_FILE": str(cwd / "state.json")}, cwd)

    assert s.registry_state_file == cwd / "state.json"


def test_a_state_file_with_the_redis_registry_is_an_error(cwd: Path) -> None:
    message = error_of(
        {
            **SCALINGO,
            "REGISTRY_TYPE": "redis",
            "REGISTRY_REDIS_URL": "redis://127.0.0.1:6379",
            "REGISTRY_STATE_FILE": str(cwd / "state.json"),
        },
        cwd,
    )

    assert "REGISTRY_STATE_FILE=" in message
    assert "REGISTRY_TYPE=in-memory" in message


@pytest.mark.parametrize("where", ["missing-directory/state.json", "."])
def test_a_state_file_outside_an_existing_directory_is_an_error(cwd: Path, where: str) -> None:
    message = error_of({**SCALINGO, "REGISTRY_STATE_FILE": str(cwd / where)}, cwd)

    assert "REGISTRY_STATE_FILE=" in message
    assert "existing directory" in message


# SCHEDULE_TIMEZONE -------------------------------------------------------------------------


def test_schedule_timezone_defaults_to_utc_and_takes_an_iana_name(cwd: Path) -> None:
    assert str(load(SCALINGO, cwd).schedule_timezone) == "UTC"
    paris = load({**SCALINGO, "SCHEDULE_TIMEZONE": "Europe/Paris"}, cwd).schedule_timezone
    assert str(paris) == "Europe/Paris"


@pytest.mark.parametrize("zone", ["Mars/Olympus", "Europe", "../etc/passwd", "CEST+2"])
def test_an_unknown_schedule_timezone_is_an_error(cwd: Path, zone: str) -> None:
    message = error_of({**SCALINGO, "SCHEDULE_TIMEZONE": zone}, cwd)

    assert f"SCHEDULE_TIMEZONE={zone!r}" in message
    assert "Europe/Paris" in message


# What --check shows -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "api_url"),
    [
        (SCALINGO, "https://api.osc-fr1.scalingo.com"),
        (
            {**SCALINGO, "PROVIDER_REGION": "osc-secnum-fr1"},
            "https://api.osc-secnum-fr1.scalingo.com",
        ),
        (
            {**SCALINGO, "PROVIDER_REGION": "osc-fr1,osc-secnum-fr1"},
            {
                "osc-fr1": "https://api.osc-fr1.scalingo.com",
                "osc-secnum-fr1": "https://api.osc-secnum-fr1.scalingo.com",
            },
        ),
        (
            {**SCALINGO, "PROVIDER_SCALINGO_API_URL": "http://127.0.0.1:9001"},
            "http://127.0.0.1:9001",
        ),
        (HEROKU, "https://api.heroku.com"),
        (CLEVER, "https://api-bridge.clever-cloud.com"),
    ],
    ids=["scalingo", "scalingo-region", "scalingo-regions", "scalingo-url", "heroku", "clever"],
)
def test_check_shows_the_resolved_provider_api_url(cwd: Path, env: dict[str, str], api_url) -> None:
    assert describe(load(env, cwd))["provider"]["api_url"] == api_url
