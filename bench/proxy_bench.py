"""Measures the proxy's hot path: requests/s and latency through paastis vs. the app directly.

Everything runs on loopback: a small upstream app, paastis (local provider, app already
running), and a bounded load generator. Run from the project root:

    python bench/proxy_bench.py --requests 5000 --concurrency 50

It prints one line per target and paastis' resident memory. Numbers depend on the machine;
compare the two lines of one run, not runs of different machines.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from paastis.config import CommandLine, load_settings
from paastis.server import Server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def upstream_app(port: int) -> web.AppRunner:
    payload = b"x" * 1024

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=payload)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def load(url: str, host: str, requests: int, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    queue = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for _ in queue:
                started = time.perf_counter()
                async with session.get(url, headers={"Host": host}) as response:
                    await response.read()
                    assert response.status == 200, response.status
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(*(worker() for _ in range(concurrency))), timeout=600
        )
        elapsed = time.perf_counter() - started
    return elapsed, latencies


def report(label: str, requests: int, elapsed: float, latencies: list[float]) -> None:
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    print(f"{label:<10} {requests / elapsed:8.0f} req/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")


async def main(requests: int, concurrency: int) -> None:
    app_port = free_port()
    runner = await upstream_app(app_port)
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "paastis.yml"
        rules.write_text(
            "apps:\n  bench:\n"
            f"    upstream: 'http://127.0.0.1:{app_port}'\n"
            "    start: 'true'\n    stop: 'true'\n    status: 'true'\n"
        )
        settings = load_settings(
            CommandLine(config=rules, port=free_port(), host="127.0.0.1"),
            {"PROVIDER_NAME": "local", "LOG_LEVEL": "warning", "PROXY_READINESS_PATH": ""},
            cwd=Path(tmp),
        )
        server = Server(settings)
        await server.start()
        try:
            await server.lifecycle.ensure_running("bench")
            proxied = f"http://127.0.0.1:{server.main_port}/item?id=1"
            direct = f"http://127.0.0.1:{app_port}/item?id=1"
            await load(proxied, "bench.localhost", 200, 10)  # warm up
            elapsed, latencies = await load(direct, "bench.localhost", requests, concurrency)
            report("direct", requests, elapsed, latencies)
            elapsed, latencies = await load(proxied, "bench.localhost", requests, concurrency)
            report("paastis", requests, elapsed, latencies)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"max RSS of this process (load generator + paastis + upstream): {rss:.0f} MiB")
        finally:
            await server.shutdown()
            await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.concurrency))
    sys.exit(0)
