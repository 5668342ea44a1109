"""The README's "Try it" demo (examples/local.yml), run as a new user runs it: through a real
paastis process whose working directory holds secrets the demo apps must never serve."""

from __future__ import annotations

import http.client
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from processes import free_port, quiet_port, wait_until_listening

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "local.yml"
DEMO_PORTS = {"hello": "8001", "docs": "8002"}
SECRET = "PAASTIS_DEMO_SECRET=do-not-serve-me-0123456789"


def readme_try_it_arguments() -> list[str]:
    """The options of the README's "Try it" command (`... PROVIDER_NAME=local paastis ...`)."""
    for line in (ROOT / "README.md").read_text().splitlines():
        if "PROVIDER_NAME=local paastis " in line and line.startswith("python3 -m venv"):
            return shlex.split(line.split("PROVIDER_NAME=local paastis ", 1)[1])
    raise AssertionError("README.md has no Try-it command running PROVIDER_NAME=local paastis")


def get(port: int, host: str, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request("GET", path, headers={"Host": host, "Accept": "*/*"})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def checkout_like(tmp_path: Path) -> Path:
    """A directory laid out like a checkout: the examples, a `.env` and a `.git/config`,
    with the demo's fixed ports swapped for free ones (other tests may hold 8001/8002)."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    demo = DEMO.read_text()
    for port in DEMO_PORTS.values():
        # Each port appears twice: the upstream and the command's listen port.
        assert demo.count(port) == 2, f"examples/local.yml no longer uses port {port} twice"
        demo = demo.replace(port, str(quiet_port()))
    (tmp_path / "examples" / "local.yml").write_text(demo)
    (tmp_path / ".env").write_text(SECRET + "\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[remote]\n\turl = https://token@example.net\n")
    return tmp_path


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[int]:
    """paastis running the demo as the README says; yields its port."""
    cwd = checkout_like(tmp_path / "checkout")
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PROVIDER_NAME": "local",
        "PORT": str(port),
    }
    stderr_path = tmp_path / "paastis.err"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            # The README's command, run from the root of the checkout.
            [
                sys.executable,
                "-m",
                "paastis",
                "--host",
                "127.0.0.1",
                "--config",
                "examples/local.yml",
            ],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_until_listening(proc, port, stderr_path, within=15, what="paastis")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.mark.parametrize("app", sorted(DEMO_PORTS))
def test_the_demo_apps_serve_their_own_page_not_the_checkout(demo: int, app: str) -> None:
    status, body = get(demo, app, "/")
    assert status == 200
    assert f"<h1>{app}</h1>" in body
    for secret in ("/.env", "/.git/config", "/examples/local.yml"):
        status, body = get(demo, app, secret)
        assert status == 404, f"{app} served {secret}"
        assert "do-not-serve-me" not in body and "token@" not in body


def test_the_try_it_command_listens_on_loopback_only() -> None:
    arguments = readme_try_it_arguments()
    assert arguments[arguments.index("--host") + 1] == "127.0.0.1"
    assert arguments[arguments.index("--config") + 1] == "examples/local.yml"


def test_the_readme_test_command_installs_what_ci_installs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    install = re.search(r"python -m pip install --quiet (-c requirements.lock -e '\.\[test\]')", ci)
    assert install, ".ci/run no longer installs the project with the lock"
    assert f"pip install {install[1]} && python -m pytest" in readme
    assert ci.rstrip().endswith("python -m pytest")
