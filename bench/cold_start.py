"""Measures cold starts: how long a request for a sleeping app waits beyond the app's own boot.

For each provider, this script runs its API emulator (tests/emulators/) and an upstream app
on loopback, in this process, and paastis itself as a separate process (the real command
line, the provider's default settings: operation timeout, polling pace, rate limiter). The
upstream answers 503, as a platform's router does, until the emulator says that the app has
booted, `--boots` seconds after the platform accepted the start. The `local` provider runs a
real command that sleeps that long before it listens.

Each wake: paastis stops the app (system API), then one request is timed through paastis.
Overhead = time of that request - boot time. Provider calls are counted by the emulator
during the request only; the scheduler's cron is set to once a year so that no listing falls
into a wake. Run from the project root:

    python bench/cold_start.py --boots 2,20 --wakes 5

and it prints one line per provider and boot time: median and worst overhead, provider calls
per wake, and the busiest second of a wake (calls per second), and the 429s answered.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from emulators.base import Emulator  # noqa: E402
from emulators.clever_cloud import CleverEmulator  # noqa: E402
from emulators.heroku import HerokuEmulator  # noqa: E402
from emulators.scalingo import ScalingoEmulator  # noqa: E402

APP = "bench-app"
SYSTEM_TOKEN = "cold-start-bench-token-0123"
SCALINGO_TOKEN = "tk-us-emulated-token"
HEROKU_TOKEN = "heroku-bench-token"
PROVIDERS = ("scalingo", "heroku", "clever-cloud", "local")
# Listens `boot` seconds after its process started, the interpreter's own start included.
LOCAL_APP = """\
import http.server, os, sys, time
stat = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
started = int(stat[19]) / os.sysconf("SC_CLK_TCK")
uptime = float(open("/proc/uptime").read().split()[0])
time.sleep(max(0.0, float(sys.argv[2]) - (uptime - started)))
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])),
    http.server.SimpleHTTPRequestHandler).serve_forever()
"""


@dataclass
class Result:
    provider: str
    boot: float
    overheads: list[float] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    busiest_second: int = 0
    throttled: int = 0

    def line(self) -> str:
        if not self.overheads:
            return f"{self.provider:<13} {self.boot:>5g} s   no wake measured"
        calls = per_second = "-"
        if self.calls:
            # Shown apart: a first wake would show a lookup that later wakes do not need.
            calls = f"{self.calls[0]}, then {statistics.median(self.calls[1:] or self.calls):g}"
            per_second = str(self.busiest_second)
        return (
            f"{self.provider:<13} {self.boot:>4g} s {len(self.overheads):>6d} "
            f"{statistics.median(self.overheads):>9.2f} s {max(self.overheads):>7.2f} s "
            f"  {calls:<12} {per_second:>5} {self.throttled:>7d}"
        )


HEADER = (
    "provider       boot  wakes   overhead   overhead   calls a wake  most calls  429s\n"
    "                             (median)   (worst)    (1st, then)   in 1 s"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


def booting_upstream(booted: Callable[[], bool]) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        if not booted():
            return web.Response(status=503, text="booting")
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@dataclass
class Platform:
    """An emulator with the app on it, and what paastis needs to reach it."""

    emulator: Emulator | None
    env: dict[str, str]
    booted: Callable[[], bool]
    rules: str = ""


async def platform_for(provider: str, boot: float, tmp: Path) -> tuple[Platform, list]:
    """The emulator (serving) and the upstream for `provider`; runners to clean up."""
    runners: list[web.AppRunner] = []
    if provider == "local":
        port = free_port()
        script = tmp / "app.py"
        script.write_text(LOCAL_APP)
        rules = (
            f"apps:\n  {APP}:\n    upstream: 'http://127.0.0.1:{port}'\n"
            f"    command: '{sys.executable} {script} {port} {boot}'\n"
        )
        return Platform(None, {"PROVIDER_NAME": "local"}, lambda: True, rules), runners
    emulator: Emulator
    if provider == "scalingo":
        emulator = ScalingoEmulator(boot_delay=boot, rate_limit_per_minute=60)
        runner, port = await serve(emulator.app())
        url = f"http://127.0.0.1:{port}"
        env = {
            "PROVIDER_NAME": "scalingo",
            "PROVIDER_SCALINGO_API_TOKEN": SCALINGO_TOKEN,
            "PROVIDER_SCALINGO_API_URL": url,
            "PROVIDER_SCALINGO_AUTH_URL": url,
        }
        booted = lambda: emulator.is_serving(APP)  # noqa: E731
    elif provider == "heroku":
        emulator = HerokuEmulator(token=HEROKU_TOKEN, boot_delay=boot)
        runner, port = await serve(emulator.app())
        env = {
            "PROVIDER_NAME": "heroku",
            "PROVIDER_HEROKU_API_TOKEN": HEROKU_TOKEN,
            "PROVIDER_HEROKU_API_URL": f"http://127.0.0.1:{port}",
        }
        booted = lambda: emulator.is_serving(APP)  # noqa: E731
    else:
        emulator = CleverEmulator(boot_delay=boot)
        runner, port = await serve(emulator.web_app(bridge=True))
        env = {
            "PROVIDER_NAME": "clever-cloud",
            "PROVIDER_CLEVER_API_TOKEN": emulator.api_token,
            "PROVIDER_CLEVER_API_HOST": f"http://127.0.0.1:{port}",
        }
        booted = None  # set once the app has its id
    runners.append(runner)
    upstream_runner, upstream_port = await serve(booting_upstream(lambda: platform.booted()))
    runners.append(upstream_runner)
    upstream = f"http://127.0.0.1:{upstream_port}"
    if isinstance(emulator, ScalingoEmulator):
        emulator.add_app(APP, {"web": 1}, base_url=upstream)
    elif isinstance(emulator, HerokuEmulator):
        emulator.add_app(APP, formation={"web": 1}, web_url=upstream + "/")
    elif isinstance(emulator, CleverEmulator):
        app_id = emulator.add_app(APP, favourite=f"127.0.0.1:{upstream_port}/")
        booted = lambda: emulator.is_serving(app_id)  # noqa: E731
    platform = Platform(emulator, env, booted)
    return platform, runners


class Paastis:
    """paastis as a separate process, on loopback ports."""

    def __init__(self, env: dict[str, str], rules: str, tmp: Path) -> None:
        self.port, self.admin_port = free_port(), free_port()
        config = tmp / "paastis.yml"
        config.write_text(rules or "rules: []\n")
        environ = {
            **os.environ,
            **env,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "ADMIN_PORT": str(self.admin_port),
            "ROUTING_SYSTEM_API_ENABLED": "true",
            "ROUTING_SYSTEM_API_TOKEN": SYSTEM_TOKEN,
            "START_AND_STOP_CHECKING_INTERVAL_CRON": "0 0 1 1 *",
            "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "warning"),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "paastis", "--config", str(config)], env=environ, cwd=tmp
        )

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                async with session.get(self.admin(f"/apps/{APP}"), headers=self.auth) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise TimeoutError("paastis did not start")

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {SYSTEM_TOKEN}"}

    def admin(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    async def put_to_sleep(self, session: aiohttp.ClientSession) -> None:
        """Stops the app through paastis and returns once the stop is over (its event)."""
        stops = await self.stops(session)
        async with session.post(self.admin(f"/apps/{APP}/stop"), headers=self.auth) as r:
            if r.status != 202:
                raise RuntimeError(f"stop answered {r.status}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if await self.stops(session) > stops:
                return
            await asyncio.sleep(0.2)
        raise TimeoutError("the app did not stop")

    async def stops(self, session: aiohttp.ClientSession) -> int:
        async with session.get(self.admin("/events"), headers=self.auth) as r:
            events = await r.json()
        return sum(1 for e in events if (e["oid"], e["name"]) == (APP, "APP_STOPPED"))

    async def first_request(self, session: aiohttp.ClientSession) -> float:
        """Seconds until the answer to a request for the sleeping app (held, not a page)."""
        headers = {"Host": f"{APP}.example.net", "Accept": "application/json"}
        started = time.perf_counter()
        async with session.get(f"http://127.0.0.1:{self.port}/", headers=headers) as r:
            await r.read()
            if r.status != 200 or r.headers.get("X-Paastis-Cold-Start") != "true":
                raise RuntimeError(f"the cold start answered {r.status}")
        return time.perf_counter() - started

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def measure(provider: str, boot: float, wakes: int) -> Result:
    result = Result(provider, boot)
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        platform, runners = await platform_for(provider, boot, tmp)
        paastis = Paastis(platform.env, platform.rules, tmp)
        timeout = aiohttp.ClientTimeout(total=120)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                await paastis.wait_ready(session)
                for _ in range(wakes):
                    await paastis.put_to_sleep(session)
                    emulator = platform.emulator
                    mark = emulator.total_calls if emulator else 0
                    elapsed = await paastis.first_request(session)
                    result.overheads.append(elapsed - boot)
                    if emulator is not None:
                        wake_calls = emulator.log[mark:]
                        result.calls.append(len(wake_calls))
                        result.busiest_second = max(result.busiest_second, busiest(wake_calls))
                        result.throttled += sum(1 for c in wake_calls if c.status == 429)
        finally:
            paastis.stop()
            for runner in runners:
                await runner.cleanup()
    return result


def busiest(calls: list) -> int:
    """The most calls that arrived within any one second."""
    times = [call.at for call in calls]
    return max((sum(1 for t in times if start <= t < start + 1) for start in times), default=0)


async def main(providers: list[str], boots: list[float], wakes: int) -> None:
    print(HEADER)
    for provider in providers:
        for boot in boots:
            print((await measure(provider, boot, wakes)).line(), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--providers", default=",".join(PROVIDERS))
    parser.add_argument("--boots", default="2,20", help="boot times in seconds, e.g. 2,20")
    parser.add_argument("--wakes", type=int, default=5, help="wakes per provider and boot time")
    args = parser.parse_args()
    asyncio.run(
        main(
            [p.strip() for p in args.providers.split(",")],
            [float(b) for b in args.boots.split(",")],
            args.wakes,
        )
    )
