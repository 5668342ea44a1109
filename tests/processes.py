"""Helpers for tests that run real processes: liveness via /proc, pid files, loopback ports."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from pathlib import Path

from waiting import eventually


def process_running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie nobody reaped yet counts as gone)."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def group_running(pgid: int) -> bool:
    """Whether any live process is left in process group `pgid`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name in parentheses may hold spaces: split after its closing one.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            return True
    return False


def read(path: Path) -> str | None:
    """The file's text, None when it does not exist (yet)."""
    return path.read_text() if path.exists() else None


async def read_pid(path: Path) -> int:
    """The pid a process wrote to `path`, once it has written it."""
    await eventually(lambda: (read(path) or "").strip(), what=f"a pid in {path}")
    return int(read(path) or "")


def free_port() -> int:
    """A loopback port nobody listens on (for the moment)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def quiet_port() -> int:
    """A free loopback port below the kernel's ephemeral range, which every bind(0) (and so
    free_port() and every test server) draws from. For a port that stays unbound for a while
    (a local app binds its port only at its first request), where a port handed out meanwhile
    to another test would answer in its place."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(20000, min(low, 32768)), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below the ephemeral range")


def accepts_connections(port: int) -> bool:
    """Whether something listens on loopback `port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until_listening(
    proc: subprocess.Popen[bytes], port: int, stderr_path: Path, *, within: float, what: str
) -> None:
    """Waits until `port` accepts connections; fails, with the process' stderr, if it exits
    first or takes longer than `within` seconds."""
    deadline = time.monotonic() + within
    while not accepts_connections(port):
        assert proc.poll() is None, stderr_path.read_text()
        assert time.monotonic() < deadline, f"{what} did not listen within {within:g} s"
        time.sleep(0.05)
