"""The command line: a thin layer over the configuration and the server."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from paastis import __version__
from paastis.config import CommandLine, Settings, describe, load_settings, parse_url
from paastis.errors import ConfigError
from paastis.logs import configure_logging

EXIT_CONFIG_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, like every other configuration error (argparse would add the usage).
        self.exit(EXIT_CONFIG_ERROR, f"{self.prog}: error: {message} (see --help)\n")


EPILOG = """\
configuration:
  Everything else comes from environment variables, or from a .env file in the working
  directory (--env-file FILE); a command-line option beats the environment, which beats
  .env. PROVIDER_NAME is required: scalingo, heroku, clever-cloud or local, with that
  provider's credentials (PROVIDER_SCALINGO_API_TOKEN, PROVIDER_HEROKU_API_TOKEN,
  PROVIDER_CLEVER_API_TOKEN; local declares its apps under `apps:` in paastis.yml).
  Others: REGISTRY_TYPE, REGISTRY_REDIS_URL, REGISTRY_IGNORED_APPS,
  START_AND_STOP_MAX_IDLE_TIME, START_AND_STOP_CHECKING_INTERVAL_CRON,
  ROUTING_SYSTEM_API_ENABLED, ADMIN_PORT, HOOKS_*, LOG_LEVEL, ...
  env.sample (in the repository) lists every variable with its default and meaning, and
  paastis.yml.sample every rule key; paastis --check shows what would run.

signals:
  SIGTERM, SIGINT  finish in-flight work (at most SHUTDOWN_TIMEOUT seconds), then exit 0
  SIGHUP           read paastis.yml again (rules, and local apps)
"""


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="paastis",
        description="A reverse proxy that puts idle PaaS apps to sleep and wakes them on demand.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", "-H", help="listen address (HOST, default 0.0.0.0)")
    p.add_argument("--port", "-P", help="listen port (PORT, default 3000)")
    p.add_argument(
        "--max-idle-time",
        metavar="MINUTES",
        help="minutes before an idle app is stopped (START_AND_STOP_MAX_IDLE_TIME, default 15)",
    )
    p.add_argument(
        "--config", type=Path, metavar="FILE", help="rules file (default ./paastis.yml if present)"
    )
    p.add_argument(
        "--env-file", type=Path, metavar="FILE", help="dotenv file (default ./.env if present)"
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="validate the configuration, print what would run, and exit",
    )
    p.add_argument("--version", action="version", version=f"paastis {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings(
            CommandLine(
                host=args.host,
                port=args.port,
                max_idle_time=args.max_idle_time,
                config=args.config,
                env_file=args.env_file,
            ),
            os.environ,
        )
    except ConfigError as exc:
        return config_error(exc)
    if args.check:
        print(json.dumps(describe(settings), indent=2, default=str))
        print("paastis: configuration OK", file=sys.stderr)
        return 0
    stop_logging = configure_logging(settings.log_level, settings.log_format, secrets_of(settings))
    from paastis.server import Server

    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(Server(settings).run())
    except ConfigError as exc:  # found while building the pieces
        stop_logging()
        return config_error(exc)
    except OSError as exc:  # e.g. the port is taken
        stop_logging()  # the log lines first, then this one
        print(f"paastis: cannot start: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_logging()  # flushes the lines still queued
    return 0


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when the `speed` extra is installed, else asyncio's (None)."""
    log = logging.getLogger("paastis.cli")
    try:
        import uvloop
    except ImportError:
        log.info("event loop: asyncio (pip install 'paastis[speed]' for uvloop)")
        return None
    log.info("event loop: uvloop %s", uvloop.__version__)
    return uvloop.new_event_loop


def config_error(exc: ConfigError) -> int:
    # One line, whatever a YAML or regex message may hold: scripts grep it, people read it.
    message = " ".join(line.strip() for line in str(exc).splitlines())
    print(f"paastis: configuration error: {message}", file=sys.stderr)
    return EXIT_CONFIG_ERROR


def secrets_of(settings: Settings) -> list[str]:
    """Every configured secret, for the log filter to mask."""
    p = settings.provider
    redis = parse_url(settings.redis_url) if settings.redis_url else None
    redis_password = redis.password if redis else None
    return [
        value
        for value in (
            p.scalingo_api_token,
            p.heroku_api_token,
            p.clever_consumer_secret,
            p.clever_token,
            p.clever_secret,
            p.clever_api_token,
            settings.system_api_token,
            redis_password,
        )
        if value
    ]
