"""The configuration: read once from the command line, the environment and `.env`, checked,
and handed down as one immutable object. Nothing else reads the environment."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from dotenv import dotenv_values
from dotenv.parser import parse_stream
from yarl import URL

from paastis.errors import ConfigError
from paastis.platform import Platform, detect_platform
from paastis.rules import (
    MAX_IDLE_MINUTES,
    RULE_FIELDS,
    LocalAppSpec,
    Rule,
    RuleSet,
    load_rules_file,
    quoted,
)
from paastis.urls import mask_url

PROVIDERS = ("scalingo", "heroku", "clever-cloud", "local")
# Hook name -> the variable holding its shell command.
HOOK_VARIABLES = {
    "before_start": "HOOKS_BEFORE_START",
    "after_start": "HOOKS_AFTER_START",
    "before_stop": "HOOKS_BEFORE_STOP",
    "after_stop": "HOOKS_AFTER_STOP",
}
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_NO_WAKE_USER_AGENTS = (
    r"(?i)uptimerobot|pingdom|statuscake|better ?uptime|googlebot|bingbot"
    # `bot` ending a word catches AhrefsBot, YandexBot, Twitterbot, "Better Uptime Bot"...;
    # but not the Cubot phones, whose browsers say "CUBOT X19".
    r"|(?<!cu)bot\b|crawler|spider"
)
SECRET_HINTS = ("TOKEN", "SECRET", "PASSWORD", "KEY")
# Where the Scalingo API of a region is, unless PROVIDER_SCALINGO_API_URL says otherwise.
SCALINGO_API_URL = "https://api.{region}.scalingo.com"


@dataclass(frozen=True)
class ProviderSettings:
    name: str
    region: str | None  # the first of `regions`
    operation_timeout: float
    # PROVIDER_REGION as a list: Scalingo manages the apps of each, Heroku keeps their apps.
    regions: tuple[str, ...] = ()
    scalingo_api_token: str | None = None
    scalingo_api_url: str | None = None
    scalingo_auth_url: str = "https://auth.scalingo.com"
    heroku_api_token: str | None = None
    heroku_api_url: str = "https://api.heroku.com"
    clever_api_host: str = "https://api.clever-cloud.com"
    clever_consumer_key: str | None = None
    clever_consumer_secret: str | None = None
    clever_token: str | None = None
    clever_secret: str | None = None
    clever_api_token: str | None = None


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    provider: ProviderSettings
    registry_type: str
    ignored_apps: frozenset[str]
    redis_url: str | None
    redis_prefix: str
    cron: str
    max_idle_time: float  # minutes
    hooks: Mapping[str, str | None]
    hooks_timeout: float
    system_api_enabled: bool
    system_api_token: str | None
    upstream_url_template: str | None
    wake_strategy: str
    readiness_path: str
    no_wake_user_agents: re.Pattern[str] | None
    admin_host: str
    admin_port: int | None
    upstream_tls_verify: bool
    connect_timeout: float
    read_timeout: float
    max_connection_lifetime: float | None
    header_timeout: float
    log_level: str
    log_format: str
    shutdown_timeout: float  # seconds, for the whole shutdown
    registry_state_file: Path | None  # where the in-memory registry keeps what a wake needs
    platform: Platform | None  # the PaaS paastis itself runs on, if any
    schedule_timezone: ZoneInfo  # where `keep_awake` schedules are read
    rules_file: Path | None
    rules: RuleSet = field(repr=False)
    local_apps: Mapping[str, LocalAppSpec] = field(default_factory=dict)


@dataclass(frozen=True)
class CommandLine:
    """The options given on the command line (None = not given)."""

    host: str | None = None
    port: int | str | None = None
    max_idle_time: float | str | None = None
    config: Path | None = None
    env_file: Path | None = None


def load_settings(
    cli: CommandLine, environ: Mapping[str, str], cwd: Path | None = None
) -> Settings:
    """Builds the settings: command line over environment over `.env`."""
    cwd = cwd or Path.cwd()
    env = Environment(merged_environment(cli, environ, cwd))
    options = {
        "HOST": ("--host", cli.host),
        "PORT": ("--port", cli.port),
        "START_AND_STOP_MAX_IDLE_TIME": ("--max-idle-time", cli.max_idle_time),
    }
    for name, (option, value) in options.items():
        if value is not None:
            env.override(name, str(value), option)
    return build_settings(env, rules_path(cli, cwd))


def merged_environment(cli: CommandLine, environ: Mapping[str, str], cwd: Path) -> dict[str, str]:
    env_file = cli.env_file
    if env_file is None and (cwd / ".env").is_file():
        env_file = cwd / ".env"
    values: dict[str, str] = {}
    if env_file is not None:
        if not env_file.is_file():
            raise ConfigError(f"--env-file {env_file}: no such file")
        values = read_env_file(env_file)
    values.update(environ)
    return values


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of a dotenv file. `${VAR}` is kept as written: expanding it would read
    the process environment behind the caller's back (the JavaScript original did not either).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the env file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the env file is not UTF-8 text") from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise ConfigError(
                f"{path}, line {binding.original.line}: cannot parse "
                f"{binding.original.string.strip()[:40]!r} (expected NAME=value)"
            )
    values = dotenv_values(stream=io.StringIO(text), interpolate=False)
    return {key: value for key, value in values.items() if value is not None}


def rules_path(cli: CommandLine, cwd: Path) -> Path | None:
    if cli.config is not None:
        if not cli.config.is_file():
            raise ConfigError(f"--config {cli.config}: no such file")
        return cli.config
    default = cwd / "paastis.yml"
    return default if default.is_file() else None


def build_settings(env: Environment, rules_file: Path | None) -> Settings:
    max_idle_time = env.number(
        "START_AND_STOP_MAX_IDLE_TIME", 15, minimum=0, maximum=MAX_IDLE_MINUTES
    )
    provider = provider_settings(env)
    rules, local_apps = read_rules(rules_file, provider.name, max_idle_time)
    registry_type = env.choice("REGISTRY_TYPE", ("in-memory", "redis"), "in-memory")
    system_api_enabled = env.boolean("ROUTING_SYSTEM_API_ENABLED", False)
    platform = detect_platform(env.values)
    return Settings(
        host=env.host("HOST", "0.0.0.0"),
        port=env.port("PORT", 3000),
        provider=provider,
        registry_type=registry_type,
        ignored_apps=ignored_apps(env, provider, platform),
        redis_url=redis_url(env) if registry_type == "redis" else env.get("REGISTRY_REDIS_URL"),
        redis_prefix=env.get("REGISTRY_REDIS_PREFIX") or "paastis:",
        cron=cron_expression(env),
        max_idle_time=max_idle_time,
        hooks={name: env.get(variable) for name, variable in HOOK_VARIABLES.items()},
        hooks_timeout=env.number("HOOKS_TIMEOUT", 60, minimum=0.1),
        system_api_enabled=system_api_enabled,
        system_api_token=system_api_token(env, system_api_enabled),
        upstream_url_template=upstream_template(env),
        wake_strategy=env.choice("PROXY_WAKE_STRATEGY", ("auto", "blocking"), "auto"),
        readiness_path=readiness_path(env),
        no_wake_user_agents=env.regex("PROXY_NO_WAKE_USER_AGENTS", DEFAULT_NO_WAKE_USER_AGENTS),
        admin_host=env.host("ADMIN_HOST", "127.0.0.1"),
        admin_port=env.port("ADMIN_PORT", None),
        upstream_tls_verify=env.boolean("UPSTREAM_TLS_VERIFY", True),
        connect_timeout=env.number("PROXY_CONNECT_TIMEOUT", 10, minimum=0.1),
        read_timeout=env.number("PROXY_READ_TIMEOUT", 300, minimum=0.1),
        max_connection_lifetime=env.optional_number("PROXY_MAX_CONNECTION_LIFETIME", minimum=1),
        header_timeout=env.number("PROXY_HEADER_TIMEOUT", 30, minimum=0.1),
        log_level=log_level(env),
        log_format=env.choice("LOG_FORMAT", ("text", "json"), "text"),
        shutdown_timeout=env.number("SHUTDOWN_TIMEOUT", 30, minimum=0),
        registry_state_file=state_file(env, registry_type),
        platform=platform,
        schedule_timezone=schedule_timezone(env),
        rules_file=rules_file,
        rules=rules,
        local_apps=local_apps,
    )


def read_rules(
    path: Path | None, provider: str, default_max_idle_time: float
) -> tuple[RuleSet, dict[str, LocalAppSpec]]:
    """The rules file's rules and local apps, checked against the provider: at start-up, and
    again at each SIGHUP."""
    parsed = load_rules_file(path) if path else None
    rules: list[Rule] = parsed.rules if parsed else []
    apps = parsed.apps if parsed else {}
    if provider == "local" and not apps:
        raise ConfigError(
            "PROVIDER_NAME=local needs apps declared under `apps:` in the rules file "
            f"({path or 'no paastis.yml found; pass --config FILE'})"
        )
    if provider != "local" and apps:
        # Silently ignored, they would look managed when nothing runs them.
        raise ConfigError(
            f"{path}: `apps:` declares local apps ({', '.join(sorted(apps))}), which only "
            f"PROVIDER_NAME=local runs (PROVIDER_NAME={provider}): remove the `apps:` section"
        )
    return RuleSet(rules, default_max_idle_time), apps


def ignored_apps(
    env: Environment, provider: ProviderSettings, platform: Platform | None
) -> frozenset[str]:
    """REGISTRY_IGNORED_APPS, and paastis' own app when it runs on the platform it manages
    (paastis never manages itself)."""
    listed = frozenset(env.names("REGISTRY_IGNORED_APPS"))
    if platform is not None and platform.name == provider.name:
        return listed | frozenset(platform.own_apps)
    return listed


def schedule_timezone(env: Environment) -> ZoneInfo:
    name = "SCHEDULE_TIMEZONE"
    value = env.get(name) or "UTC"
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(
            f"{env.shown(name, value)} is not a known time zone (expected an IANA name, e.g. "
            "Europe/Paris, America/New_York or UTC)"
        ) from None


def state_file(env: Environment, registry_type: str) -> Path | None:
    name = "REGISTRY_STATE_FILE"
    value = env.get(name)
    if value is None:
        return None
    if registry_type != "in-memory":
        raise ConfigError(
            f"{name}={value!r} is only used with REGISTRY_TYPE=in-memory (Redis keeps what a "
            "wake needs itself): unset it"
        )
    path = Path(value)
    if path.is_dir() or not path.parent.is_dir():
        raise ConfigError(
            f"{name}={value!r} is invalid (expected a file path in an existing directory)"
        )
    return path


def provider_settings(env: Environment) -> ProviderSettings:
    name = env.choice("PROVIDER_NAME", PROVIDERS, None)
    regions = region_names(env)
    region = regions[0] if regions else None
    if name == "scalingo":
        regions = regions or ("osc-fr1",)
        return ProviderSettings(
            name=name,
            region=regions[0],
            regions=regions,
            operation_timeout=env.number("PROVIDER_SCALINGO_OPERATION_TIMEOUT", 30, minimum=1),
            scalingo_api_token=env.required("PROVIDER_SCALINGO_API_TOKEN", "for scalingo"),
            scalingo_api_url=scalingo_api_url(env, regions),
            scalingo_auth_url=env.url("PROVIDER_SCALINGO_AUTH_URL", "https://auth.scalingo.com"),
        )
    if name == "heroku":
        return ProviderSettings(
            name=name,
            region=region,
            regions=regions,
            operation_timeout=env.number("PROVIDER_HEROKU_OPERATION_TIMEOUT", 30, minimum=1),
            heroku_api_token=env.required("PROVIDER_HEROKU_API_TOKEN", "for heroku"),
            heroku_api_url=env.url("PROVIDER_HEROKU_API_URL", "https://api.heroku.com"),
        )
    if name == "clever-cloud":
        return clever_settings(env, region)
    return ProviderSettings(name="local", region=region, operation_timeout=30)


REGION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def region_names(env: Environment) -> tuple[str, ...]:
    """PROVIDER_REGION as a comma-separated list (`osc-fr1,osc-secnum-fr1`)."""
    name = "PROVIDER_REGION"
    value = env.get(name)
    regions = tuple(dict.fromkeys(env.names(name)))
    if value is not None and (not regions or not all(REGION_NAME.match(r) for r in regions)):
        raise ConfigError(
            f"{name}={value!r} is invalid (expected region names separated by commas, "
            "e.g. osc-fr1 or osc-fr1,osc-secnum-fr1)"
        )
    return regions


def scalingo_api_url(env: Environment, regions: tuple[str, ...]) -> str | None:
    name = "PROVIDER_SCALINGO_API_URL"
    url = env.url(name, None)
    if url is not None and len(regions) > 1 and "{region}" not in url:
        raise ConfigError(
            f"{name}={mask_url(url)!r} serves one region, but PROVIDER_REGION lists "
            f"{len(regions)}: put {{region}} where the region goes "
            "(e.g. https://api.{region}.scalingo.com)"
        )
    return url


def clever_settings(env: Environment, region: str | None) -> ProviderSettings:
    api_token = env.get("PROVIDER_CLEVER_API_TOKEN")
    oauth_names = (
        "PROVIDER_CLEVER_OAUTH_CONSUMER_KEY",
        "PROVIDER_CLEVER_OAUTH_CONSUMER_SECRET",
        "PROVIDER_CLEVER_TOKEN",
        "PROVIDER_CLEVER_SECRET",
    )
    oauth = [env.get(name) for name in oauth_names]
    if not api_token:
        for name in oauth_names:
            env.required(name, "for clever-cloud (or set PROVIDER_CLEVER_API_TOKEN instead)")
    default_host = (
        "https://api-bridge.clever-cloud.com" if api_token else "https://api.clever-cloud.com"
    )
    return ProviderSettings(
        name="clever-cloud",
        region=region,
        operation_timeout=env.number("PROVIDER_CLEVER_OPERATION_TIMEOUT", 60, minimum=1),
        clever_api_host=env.url("PROVIDER_CLEVER_API_HOST", default_host),
        clever_consumer_key=oauth[0],
        clever_consumer_secret=oauth[1],
        clever_token=oauth[2],
        clever_secret=oauth[3],
        clever_api_token=api_token,
    )


def cron_expression(env: Environment) -> str:
    name = "START_AND_STOP_CHECKING_INTERVAL_CRON"
    value = (env.get(name) or "* * * * *").strip()
    if len(value.split()) not in (5, 6) or not croniter.is_valid(value):
        raise ConfigError(
            f"{name}={value!r} is not a valid cron expression "
            "(expected 5 fields, or 6 with seconds last, e.g. '*/30 * * * * *')"
        )
    return value


def is_redis_url(url: URL | None) -> bool:
    if url is None:
        return False
    # `?db=` is read by redis-py for every scheme, and a bad one fails only at start-up.
    if any(not value.isdigit() for value in url.query.getall("db", [])):
        return False
    if url.scheme == "unix":
        return bool(url.path.strip("/"))
    # The path, when there is one, is the database number.
    db = url.path.strip("/")
    return url.scheme in ("redis", "rediss") and bool(url.host) and (not db or db.isdigit())


def log_level(env: Environment) -> str:
    # LOGGING_LEVEL is the original's name; LOG_LEVEL wins when both are set.
    name = "LOGGING_LEVEL" if env.get("LOG_LEVEL") is None and env.get("LOGGING_LEVEL") else None
    return env.choice(name or "LOG_LEVEL", LOG_LEVELS, "info")


def redis_url(env: Environment) -> str:
    name = "REGISTRY_REDIS_URL"
    value = env.required(name, "when REGISTRY_TYPE=redis")
    if not is_redis_url(parse_url(value)):
        raise ConfigError(
            f"{name}={mask_url(value)!r} is invalid "
            "(expected a redis://host:port[/db], rediss:// or unix:// URL)"
        )
    return value


def system_api_token(env: Environment, enabled: bool) -> str | None:
    name = "ROUTING_SYSTEM_API_TOKEN"
    token = env.get(name)
    if enabled and not token:
        raise ConfigError(
            f"{name} is required with at least 16 characters when ROUTING_SYSTEM_API_ENABLED "
            "is true (got: unset)"
        )
    # The admin listener serves the system API too: a short token is refused wherever it is used.
    if token and len(token) < 16:
        raise ConfigError(f"{name} must have at least 16 characters (got: {len(token)} characters)")
    return token


def upstream_template(env: Environment) -> str | None:
    name = "UPSTREAM_URL_TEMPLATE"
    value = env.get(name)
    if not value:
        return None
    if not value.startswith(("http://", "https://")) or "{app}" not in value:
        raise ConfigError(
            f"{name}={value!r} is invalid: expected an http(s) URL containing {{app}}, "
            "e.g. https://{app}.example.net"
        )
    return value


def readiness_path(env: Environment) -> str:
    name = "PROXY_READINESS_PATH"
    value = env.values.get(name, "/")
    if value and not value.startswith("/"):
        raise ConfigError(f"{name}={value!r} is invalid: expected a path starting with '/' or ''")
    return value


class Environment:
    """Typed, validated reads of configuration variables; each failure names the variable
    (or the command-line option it came from)."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self._options: dict[str, str] = {}

    def override(self, name: str, value: str, option: str) -> None:
        """Sets a variable from the command line; errors then name the option."""
        self.values[name] = value
        self._options[name] = option

    def shown(self, name: str, value: str) -> str:
        """How an error names a setting and its value: `PORT='abc'` or `--port 'abc'`."""
        option = self._options.get(name)
        return f"{option} {value!r}" if option else f"{name}={value!r}"

    def get(self, name: str) -> str | None:
        value = self.values.get(name)
        return value.strip() if value and value.strip() else None

    def required(self, name: str, when: str) -> str:
        value = self.get(name)
        if value is None:
            raise ConfigError(f"{name} is required {when}")
        return value

    def choice(self, name: str, accepted: tuple[str, ...], default: str | None) -> str:
        value = self.get(name)
        if value is None:
            if default is None:
                raise ConfigError(f"{name} is required (accepted: {', '.join(accepted)})")
            value = default
        if value.lower() not in accepted:
            raise ConfigError(
                f"{self.shown(name, value)} is invalid (accepted: {', '.join(accepted)})"
            )
        return value.lower()

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(
            f"{self.shown(name, value)} is invalid (accepted: true/false, yes/no, 1/0, on/off)"
        )

    def number(
        self, name: str, default: float, *, minimum: float, maximum: float | None = None
    ) -> float:
        value = self.optional_number(name, minimum=minimum, maximum=maximum)
        return float(default) if value is None else value

    def optional_number(
        self, name: str, *, minimum: float, maximum: float | None = None
    ) -> float | None:
        value = self.get(name)
        if value is None:
            return None
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        upper = math.inf if maximum is None else maximum
        # NaN fails every comparison; infinity is no duration.
        if not (minimum <= number <= upper and math.isfinite(number)):
            accepted = f">= {minimum:.15g}"
            if maximum is not None:
                accepted = f"from {minimum:.15g} to {maximum:.15g}"
            raise ConfigError(
                f"{self.shown(name, value)} is invalid (expected a number {accepted}, "
                "decimals allowed)"
            )
        return number

    def port(self, name: str, default: int | None) -> int | None:
        value = self.get(name)
        if value is None:
            return default
        if not (value.isascii() and value.isdigit()) or not 0 < int(value) < 65536:
            raise ConfigError(
                f"{self.shown(name, value)} is invalid (expected a port from 1 to 65535)"
            )
        return int(value)

    def host(self, name: str, default: str) -> str:
        value = self.get(name) or default
        if any(c.isspace() for c in value) or "/" in value:
            raise ConfigError(
                f"{self.shown(name, value)} is invalid (expected a host name or IP address)"
            )
        return value

    def url(self, name: str, default: str | None) -> str | None:
        value = self.get(name)
        if value is None:
            return default
        parsed = parse_url(value)
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(
                f"{self.shown(name, mask_url(value))} is invalid "
                "(expected an http:// or https:// URL)"
            )
        return value.rstrip("/")

    def names(self, name: str) -> list[str]:
        return [part.strip() for part in (self.get(name) or "").split(",") if part.strip()]

    def regex(self, name: str, default: str) -> re.Pattern[str] | None:
        value = self.values.get(name, default)
        if not value.strip():
            return None
        try:
            return re.compile(value)
        except re.error as exc:
            raise ConfigError(
                f"{name}={quoted(value)} is not a valid regular expression ({exc})"
            ) from None


def parse_url(value: str) -> URL | None:
    """The URL, or None when it cannot even be parsed (e.g. `http://[::1`, a bad port)."""
    try:
        url = URL(value)
        url.port  # noqa: B018 (yarl checks the port only when asked)
    except ValueError:
        return None
    return url


def describe(settings: Settings) -> dict[str, Any]:
    """What `--check` prints: every setting, secrets masked."""
    described: dict[str, Any] = {}
    for item in fields(settings):
        value = getattr(settings, item.name)
        if item.name == "provider":
            value = provider_summary(value)
        elif item.name == "rules":
            value = [rule_summary(rule) for rule in value.rules]
        elif item.name == "local_apps":
            value = {name: spec.upstream for name, spec in value.items()}
        elif item.name == "redis_url" and value:
            value = mask_url(value)
        elif item.name == "platform" and value:
            value = {"name": value.name, "own_apps": list(value.own_apps)}
        else:
            value = mask(item.name, value)
        described[item.name] = value
    return described


PROVIDER_PREFIXES = {"scalingo": "scalingo_", "heroku": "heroku_", "clever-cloud": "clever_"}


def provider_summary(provider: ProviderSettings) -> dict[str, Any]:
    """The provider's settings that matter for the chosen provider, secrets masked, and the
    API URL the adapter will call."""
    own = PROVIDER_PREFIXES.get(provider.name, "\0")
    prefixes = tuple(p for p in PROVIDER_PREFIXES.values() if p != own)
    summary = {
        f.name: mask(f.name, getattr(provider, f.name))
        for f in fields(provider)
        if getattr(provider, f.name) is not None and not f.name.startswith(prefixes)
    }
    api_url = resolved_api_url(provider)
    if api_url is not None:
        summary["api_url"] = api_url
    return summary


def resolved_api_url(provider: ProviderSettings) -> str | dict[str, str] | None:
    """The provider API's base URL (Scalingo: per region when there are several)."""
    if provider.name == "scalingo":
        template = provider.scalingo_api_url or SCALINGO_API_URL
        urls = {region: template.replace("{region}", region) for region in provider.regions}
        return (
            mask_url(urls[provider.regions[0]])
            if len(urls) == 1
            else {region: mask_url(url) for region, url in urls.items()}
        )
    if provider.name == "heroku":
        return mask_url(provider.heroku_api_url)
    if provider.name == "clever-cloud":
        return mask_url(provider.clever_api_host)
    return None


def mask(name: str, value: Any) -> Any:
    if value and any(hint in name.upper() for hint in SECRET_HINTS):
        return "***"
    if isinstance(value, re.Pattern):
        return value.pattern
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, Path | ZoneInfo):
        return str(value)
    return value


def rule_summary(rule: Rule) -> dict[str, Any]:
    summary = {"pattern": rule.pattern.pattern}
    for name in RULE_FIELDS:
        value = getattr(rule, name)
        if value is not None:
            summary[name] = list(value) if isinstance(value, tuple) else value
    return summary
