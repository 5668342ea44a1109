"""Measures the proxy's hot path: requests/s and latency through paastis vs. the app directly.

Three processes on loopback: a small upstream app, paastis (the real command line, `local`
provider, app already awake), and this load generator (bounded in count and time).
Run from the project root:

    python bench/proxy_bench.py --requests 10000 --concurrency 50

It prints one line per target, paastis' CPU time per proxied request (the steadiest figure:
it does not depend on the load generator sharing the cores) and its resident memory.
Numbers depend on the machine: compare the lines of one run.
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
from pathlib import Path

import aiohttp
from aiohttp import web

RESPONSE_SIZE = 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_upstream(port: int) -> None:
    payload = b"x" * RESPONSE_SIZE

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=payload)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise TimeoutError(f"nothing listens on port {port}")


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
                    if response.status != 200:
                        raise RuntimeError(f"{url} answered {response.status}")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), 600)
        elapsed = time.perf_counter() - started
    return elapsed, latencies


def report(label: str, requests: int, elapsed: float, latencies: list[float]) -> None:
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    print(f"{label:<8} {requests / elapsed:8.0f} req/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(requests: int, concurrency: int) -> None:
    app_port, proxy_port = free_port(), free_port()
    python_args = os.environ.get("BENCH_PYTHON_ARGS", "").split()  # e.g. "-m cProfile -o f"
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "paastis.yml"
        rules.write_text(
            "apps:\n  bench:\n"
            f"    upstream: 'http://127.0.0.1:{app_port}'\n"
            "    start: 'true'\n    stop: 'true'\n    status: 'true'\n"
        )
        env = {
            **os.environ,
            "PROVIDER_NAME": "local",
            "HOST": "127.0.0.1",
            "PORT": str(proxy_port),
            "LOG_LEVEL": "warning",
        }
        processes = [
            subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(app_port)]),
            subprocess.Popen(
                [sys.executable, *python_args, "-m", "paastis", "--config", str(rules)],
                env=env,
                cwd=tmp,
            ),
        ]
        try:
            asyncio.run(measure(app_port, proxy_port, processes[1].pid, requests, concurrency))
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()


async def measure(
    app_port: int, proxy_port: int, proxy_pid: int, requests: int, concurrency: int
) -> None:
    await wait_for_port(app_port)
    await wait_for_port(proxy_port)
    proxied = f"http://127.0.0.1:{proxy_port}/item?id=1"
    direct = f"http://127.0.0.1:{app_port}/item?id=1"
    await load(proxied, "bench.localhost", 500, 10)  # wakes the app, warms up
    warm_rss = rss_mib(proxy_pid)
    report("direct", requests, *await load(direct, "bench", requests, concurrency))
    cpu_before = cpu_seconds(proxy_pid)
    report("paastis", requests, *await load(proxied, "bench.localhost", requests, concurrency))
    cpu_per_request = (cpu_seconds(proxy_pid) - cpu_before) / requests * 1e6
    print(f"paastis CPU per proxied request: {cpu_per_request:.0f} µs")
    print(f"paastis RSS: {warm_rss:.0f} MiB warm, {rss_mib(proxy_pid):.0f} MiB after load")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
    else:
        main(args.requests, args.concurrency)
