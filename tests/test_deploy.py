"""Deploying on a PaaS: the files the Python buildpacks read (Procfile, requirements.txt,
.python-version), the lock of the runtime dependencies, and the licence.

The `pypi` tests do what a buildpack does (a fresh virtual environment, `pip install -r
requirements.txt`, the Procfile's web command with PORT set), so they need the package index."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from paastis import __version__
from processes import free_port, quiet_port, wait_until_listening

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
REGENERATE = "uv pip compile --universal --python-version 3.11 pyproject.toml -o requirements.lock"
OUT_OF_SYNC = (
    "requirements.lock is out of sync with pyproject.toml's dependencies ({}). "
    f"Regenerate it from the root of the checkout with:  {REGENERATE}  (and commit it)"
)
# Files by which a Python buildpack picks a package manager: requirements.txt must be the only one.
OTHER_PACKAGE_MANAGER_FILES = ("Pipfile", "Pipfile.lock", "poetry.lock", "uv.lock", "pdm.lock")


@dataclass(frozen=True)
class Pin:
    version: Version
    marker: str  # '' when the pin applies everywhere
    via: frozenset[str]  # who needs it: package names, or 'paastis (pyproject.toml)'


def read_lock(text: str) -> dict[str, Pin]:
    """The pins of a `uv pip compile` output, with their markers and `# via` annotations."""
    pins: dict[str, Pin] = {}
    name = ""
    entries: dict[str, tuple[str, str, set[str]]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if not line.startswith(" "):
            requirement, _, marker = line.partition(";")
            match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s]+)", requirement.strip())
            assert match, f"requirements.lock: {line!r} is not a name==version pin"
            name = canonicalize_name(match[1])
            entries[name] = (match[2], marker.strip(), set())
            continue
        # "    # via aiohttp", or "    # via" followed by "    #   aiohttp" lines.
        via = line.strip().removeprefix("#").strip().removeprefix("via").strip()
        if via and name:
            entries[name][2].add(via)
    for key, (version, marker, via) in entries.items():
        pins[key] = Pin(Version(version), marker, frozenset(via))
    return pins


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def runtime_dependencies() -> list[Requirement]:
    return [Requirement(dependency) for dependency in pyproject()["project"]["dependencies"]]


# The files the buildpacks read --------------------------------------------------------------


def test_procfile_runs_paastis_as_the_web_process() -> None:
    lines = [line for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()]
    assert lines == ["web: paastis"]


def test_requirements_txt_installs_the_project_with_the_locked_versions() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines == ["-c requirements.lock", "."]


def test_requirements_txt_is_the_only_package_manager_file() -> None:
    # Two of them make the Heroku buildpack stop; runtime.txt is deprecated for .python-version.
    present = [
        name for name in (*OTHER_PACKAGE_MANAGER_FILES, "runtime.txt") if (ROOT / name).exists()
    ]
    assert present == []


def test_python_version_is_one_the_project_supports_and_the_same_everywhere() -> None:
    version = (ROOT / ".python-version").read_text().strip()
    # The major form (3.12), so the platforms apply security releases.
    assert re.fullmatch(r"3\.\d+", version), version
    minimum = pyproject()["project"]["requires-python"].removeprefix(">=")
    assert Version(version) >= Version(minimum)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"FROM python:{version}-slim" in dockerfile
    # Clever Cloud does not read .python-version: the README sets the same version.
    assert f"clever env set CC_PYTHON_VERSION {version}\n" in (ROOT / "README.md").read_text()


# The lock -----------------------------------------------------------------------------------


def test_every_runtime_dependency_is_pinned_in_the_lock_within_its_range() -> None:
    pins = read_lock(LOCK.read_text())
    problems = []
    for requirement in runtime_dependencies():
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement.name} is not pinned")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{requirement.name}=={pin.version} is outside {requirement}")
    direct = {name for name, pin in pins.items() if "paastis (pyproject.toml)" in pin.via}
    wanted = {canonicalize_name(requirement.name) for requirement in runtime_dependencies()}
    problems += [f"{name} is no longer a dependency" for name in sorted(direct - wanted)]
    problems += [
        f"{name} is pinned only as a dependency of others"
        for name in sorted(wanted - direct)
        if name in pins
    ]
    assert not problems, OUT_OF_SYNC.format("; ".join(problems))


@pytest.mark.pypi
def test_the_lock_is_what_uv_resolves_from_pyproject(tmp_path: Path) -> None:
    # The lower bound of the resolution is pinned: without it, uv would resolve for whichever
    # Python it finds (a .python-version's 3.12 drops the pins only 3.11 needs).
    minimum = pyproject()["project"]["requires-python"].removeprefix(">=")
    assert f"--python-version {minimum} " in REGENERATE
    # uv keeps the versions of an existing output file: a lock in sync comes out unchanged,
    # and any change of pyproject's dependencies shows up as a difference.
    output = tmp_path / "requirements.lock"
    shutil.copy(LOCK, output)
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv, "uv is missing: pip install -e '.[test]'"
    result = subprocess.run(
        [uv, *REGENERATE.replace("requirements.lock", str(output)).split()[1:], "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    committed, resolved = read_lock(LOCK.read_text()), read_lock(output.read_text())

    def pinned(pins: dict[str, Pin], name: str) -> str:
        pin = pins.get(name)
        return (
            "absent" if pin is None else f"{pin.version}{' ; ' + pin.marker if pin.marker else ''}"
        )

    differences = [
        f"{name}: {pinned(committed, name)} in the file, {pinned(resolved, name)} resolved"
        for name in sorted(committed.keys() | resolved.keys())
        if pinned(committed, name) != pinned(resolved, name)
    ]
    assert not differences, OUT_OF_SYNC.format("; ".join(differences))


# What a buildpack does ----------------------------------------------------------------------


def what_git_push_sends(destination: Path) -> Path:
    """The checkout's files that a `git push` would deploy (tracked, plus new ones not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a file deleted but not yet committed is listed too
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


@dataclass
class Deployed:
    app: Path  # the deployed files, the build's working directory
    bin: Path  # the virtual environment's bin/

    def python(self, code: str) -> str:
        return subprocess.run(
            [str(self.bin / "python"), "-c", code],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    """The repository built as a Python buildpack builds it: `pip install -r requirements.txt`
    in a fresh virtual environment, from the root of the pushed files."""
    base = tmp_path_factory.mktemp("buildpack")
    app = what_git_push_sends(base / "app")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-r", "requirements.txt"],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return Deployed(app, venv / "bin")


@pytest.mark.pypi
@pytest.mark.timeout(600)
def test_pip_install_of_requirements_txt_gives_a_working_paastis(deployed: Deployed) -> None:
    result = subprocess.run(
        [str(deployed.bin / "paastis"), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"paastis {__version__}"


@pytest.mark.pypi
@pytest.mark.timeout(600)
def test_the_build_installs_the_locked_versions_and_the_licence(deployed: Deployed) -> None:
    installed = json.loads(
        deployed.python(
            "import importlib.metadata as m, json;"
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
        )
    )
    installed = {canonicalize_name(name): Version(version) for name, version in installed.items()}
    for requirement in runtime_dependencies():
        name = canonicalize_name(requirement.name)
        assert installed.get(name) == read_lock(LOCK.read_text())[name].version, name
    licence = deployed.python(
        "import importlib.metadata as m; print(m.metadata('paastis')['License-Expression'])"
    )
    assert licence.strip() == "AGPL-3.0-or-later"


@dataclass
class WebProcess:
    proc: subprocess.Popen[bytes]
    port: int
    stderr_path: Path


@pytest.fixture
def web_process(deployed: Deployed, tmp_path: Path) -> Iterator[WebProcess]:
    """The Procfile's web command, run as Heroku runs it: by bash, in the build's directory,
    with PORT set. A local app stands in for the apps of a PaaS."""
    command = (deployed.app / "Procfile").read_text().split("web:", 1)[1].splitlines()[0].strip()
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("served through the Procfile's paastis\n")
    app_port, port = quiet_port(), free_port()
    (deployed.app / "paastis.yml").write_text(
        "apps:\n  hello:\n"
        f"    upstream: 'http://127.0.0.1:{app_port}'\n"
        f"    command: '{sys.executable} -m http.server {app_port} --bind 127.0.0.1"
        f" --directory {site}'\n"
    )
    env = {
        "PATH": f"{deployed.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "LANG": "C.UTF-8",
        "PORT": str(port),
        # Loopback only in tests; on the platform HOST keeps its default, 0.0.0.0.
        "HOST": "127.0.0.1",
        "PROVIDER_NAME": "local",
    }
    stderr_path = tmp_path / "web.err"
    with stderr_path.open("wb") as stderr:
        # bash runs a lone command in place of itself: the pid is paastis'.
        proc = subprocess.Popen(
            ["/bin/bash", "-c", command],
            cwd=deployed.app,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_until_listening(proc, port, stderr_path, within=20, what="the web process on PORT")
        yield WebProcess(proc, port, stderr_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        (deployed.app / "paastis.yml").unlink(missing_ok=True)


@pytest.mark.pypi
@pytest.mark.timeout(600)
def test_the_procfile_web_command_serves_on_port_and_stops_on_sigterm(
    web_process: WebProcess,
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", web_process.port, timeout=30)
    try:
        connection.request("GET", "/", headers={"Host": "hello.review.example.com"})
        response = connection.getresponse()
        body = response.read().decode()
    finally:
        connection.close()
    assert response.status == 200, body
    assert body == "served through the Procfile's paastis\n"
    assert response.getheader("X-Paastis-Cold-Start") == "true"
    # The platform stops a dyno with SIGTERM: paastis drains, stops its app and exits 0.
    web_process.proc.send_signal(signal.SIGTERM)
    assert web_process.proc.wait(timeout=40) == 0, web_process.stderr_path.read_text()


# The licence --------------------------------------------------------------------------------


def test_the_licence_is_the_agpl_3_or_later_in_full() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.split("\n", 2)[:2] == [
        "                    GNU AFFERO GENERAL PUBLIC LICENSE",
        "                       Version 3, 19 November 2007",
    ]
    assert "END OF TERMS AND CONDITIONS" in text
    assert len(text.splitlines()) == 661  # the FSF's text, not an excerpt
    assert pyproject()["project"]["license"] == "AGPL-3.0-or-later"
