"""One contract, four adapters: the behaviours every provider promises paastis, run over each
adapter against its emulator (the `local` one against real shell commands).

What a provider does beyond this contract (Heroku's budget of state fetches, Scalingo's
autoscalers, Clever Cloud's deployments) is tested in its own test_provider_* file.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from emulators.clever_cloud import CleverEmulator
from emulators.heroku import HerokuEmulator
from emulators.scalingo import ScalingoEmulator
from harness import FAST_POLL, FAST_RETRY
from paastis.providers import (
    AppNotFound,
    AppState,
    Formation,
    Provider,
    ProviderAuthError,
    ProviderError,
    WakeTimeout,
)
from paastis.providers.api import ProviderCallCounter
from paastis.providers.clever_cloud import CleverCloudProvider, CleverOAuthCredentials
from paastis.providers.heroku import HerokuProvider
from paastis.providers.kit import start_and_wait
from paastis.providers.local import LocalProvider
from paastis.providers.ratelimit import SlidingWindow
from paastis.providers.scalingo import ScalingoProvider
from paastis.rules import LocalAppSpec
from waiting import eventually

PROVIDERS = ["scalingo", "heroku", "clever-cloud", "local"]
BOOT = 0.3  # seconds an app takes to boot on each platform
TIMEOUT = 1.5  # every adapter's operation timeout here
BIG = {"web": 2, "worker": 1}


@dataclass
class Platform:
    """One provider's emulator, arranged and inspected the same way for every provider."""

    name: str
    make: Callable[[], Provider]
    add: Callable[[str, Formation, bool], None]  # name, formation, running
    running: Callable[[str], Formation]  # what runs now, as the platform has it
    serving: Callable[[str], bool]
    set_boot: Callable[[float], None]
    reject_credentials: Callable[[], None] | None  # None: the provider has none
    garble_listing: Callable[[], None] | None = None  # the next listing of a wrong shape
    _provider: Provider | None = field(default=None, init=False)

    @property
    def provider(self) -> Provider:
        """Built on first use, once the apps are added (the local provider needs them)."""
        if self._provider is None:
            self._provider = self.make()
        return self._provider

    def add_app(self, name: str, formation: Formation | None = None, *, running: bool) -> None:
        self.add(name, formation or {"web": 1}, running)


def scalingo(server_of: Callable[[Any], Any], session: aiohttp.ClientSession) -> Any:
    emulator = ScalingoEmulator(boot_delay=BOOT)

    async def build() -> Platform:
        base = str((await server_of(emulator.app())).make_url("")).rstrip("/")
        return Platform(
            name="scalingo",
            make=lambda: ScalingoProvider(
                api_token="tk-us-emulated-token",
                api_url=base,
                auth_url=base,
                session=session,
                counter=ProviderCallCounter(),
                poll=FAST_POLL,
                retry=FAST_RETRY,
                limiter=SlidingWindow(1000, 0.1),
                operation_timeout=TIMEOUT,
            ),
            add=lambda name, formation, running: emulator.add_app(
                name, formation, status=None if running else "stopped"
            ),
            running=lambda name: (
                positive(emulator.apps[name].formation) if emulator.is_serving(name) else {}
            ),
            serving=emulator.is_serving,
            set_boot=lambda seconds: setattr(emulator, "boot_delay", seconds),
            reject_credentials=lambda: (emulator.valid_tokens.clear(), emulator.revoke_jwts()),
            garble_listing=lambda: emulator.fail_next("list_apps", 200, body={"app": []}),
        )

    return build


def heroku(server_of: Callable[[Any], Any], session: aiohttp.ClientSession) -> Any:
    emulator = HerokuEmulator(token="heroku-contract-token", boot_delay=BOOT)

    def add(name: str, formation: Formation, running: bool) -> None:
        emulator.add_app(name, formation=formation if running else dict.fromkeys(formation, 0))

    async def build() -> Platform:
        base = str((await server_of(emulator.app())).make_url(""))
        return Platform(
            name="heroku",
            make=lambda: HerokuProvider(
                api_token="heroku-contract-token",
                api_url=base,
                session=session,
                counter=ProviderCallCounter(),
                poll=FAST_POLL,
                retry=FAST_RETRY,
                operation_timeout=TIMEOUT,
            ),
            add=add,
            running=lambda name: (
                positive(emulator.apps[name].formation) if emulator.is_serving(name) else {}
            ),
            serving=emulator.is_serving,
            set_boot=lambda seconds: setattr(emulator, "boot_delay", seconds),
            reject_credentials=lambda: setattr(emulator, "token", "a-new-token"),
            garble_listing=lambda: emulator.fail_next("/apps", 200, body={"apps": []}),
        )

    return build


def clever_cloud(server_of: Callable[[Any], Any], session: aiohttp.ClientSession) -> Any:
    emulator = CleverEmulator(boot_delay=BOOT)
    ids: dict[str, str] = {}

    def add(name: str, formation: Formation, running: bool) -> None:
        # Clever Cloud scales by instances: the web quantity stands for them.
        state = "SHOULD_BE_UP" if running else "SHOULD_BE_DOWN"
        ids[name] = emulator.add_app(name, state=state, min_instances=formation.get("web", 1))

    def running(name: str) -> Formation:
        up = sum(1 for i in emulator.apps[ids[name]].instances if i["state"] == "UP")
        return {"web": up} if up else {}

    async def build() -> Platform:
        base = str((await server_of(emulator.web_app())).make_url("/"))
        oauth = CleverOAuthCredentials("ck", "cs", "tok", "ts")
        return Platform(
            name="clever-cloud",
            make=lambda: CleverCloudProvider(
                api_host=base,
                session=session,
                counter=ProviderCallCounter(),
                oauth=oauth,
                poll=FAST_POLL,
                retry=FAST_RETRY,
                operation_timeout=TIMEOUT,
            ),
            add=add,
            running=running,
            serving=lambda name: emulator.is_serving(ids[name]),
            set_boot=lambda seconds: setattr(emulator, "boot_delay", seconds),
            reject_credentials=lambda: setattr(emulator, "token_secret", "revoked"),
            garble_listing=lambda: emulator.fail_next("summary", 200, body=["user"]),
        )

    return build


def local(tmp_path: Path, made: list[LocalProvider]) -> Any:
    """`start`/`stop`/`status` apps: a flag file appears `boot` seconds after the start."""
    boot_file = tmp_path / "boot-seconds"
    boot_file.write_text(str(BOOT))
    specs: dict[str, LocalAppSpec] = {}

    def flag(name: str) -> Path:
        return tmp_path / f"{name}.running"

    def add(name: str, formation: Formation, running: bool) -> None:
        booting = f"(sleep $(cat {boot_file}); touch {flag(name)}) >/dev/null 2>&1 &"
        specs[name] = LocalAppSpec(
            name=name, upstream="http://127.0.0.1:9", start=booting,
            stop=f"rm -f {flag(name)}", status=f"test -f {flag(name)}",
        )  # fmt: skip
        if running:
            flag(name).touch()

    def make() -> LocalProvider:
        provider = LocalProvider(specs, operation_timeout=TIMEOUT, poll=FAST_POLL)
        made.append(provider)
        return provider

    async def build() -> Platform:
        return Platform(
            name="local",
            make=make,
            add=add,
            running=lambda name: {"web": 1} if flag(name).exists() else {},
            serving=lambda name: flag(name).exists(),
            set_boot=lambda seconds: boot_file.write_text(str(seconds)),
            reject_credentials=None,
        )

    return build


def positive(formation: Formation) -> Formation:
    return {kind: n for kind, n in formation.items() if n > 0}


@pytest.fixture
async def local_providers() -> AsyncIterator[list[LocalProvider]]:
    made: list[LocalProvider] = []
    yield made
    for provider in made:
        await provider.close()


@pytest.fixture(params=PROVIDERS)
async def platform(
    request: pytest.FixtureRequest,
    aiohttp_server: Any,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    local_providers: list[LocalProvider],
) -> Platform:
    builders = {
        "scalingo": lambda: scalingo(aiohttp_server, session),
        "heroku": lambda: heroku(aiohttp_server, session),
        "clever-cloud": lambda: clever_cloud(aiohttp_server, session),
        "local": lambda: local(tmp_path, local_providers),
    }
    return await builders[request.param]()()


# -- list and state --------------------------------------------------------------------------


async def test_list_reports_every_app_with_its_state(platform: Platform) -> None:
    platform.add_app("up", running=True)
    platform.add_app("down", running=False)

    apps = {app.name: app for app in await platform.provider.list_apps()}

    assert {name: app.state for name, app in apps.items()} == {
        "up": AppState.RUNNING,
        "down": AppState.STOPPED,
    }
    assert {app.provider for app in apps.values()} == {platform.name}


async def test_the_state_of_one_app_is_what_the_platform_says(platform: Platform) -> None:
    platform.add_app("up", running=True)
    platform.add_app("down", running=False)

    up, down = await platform.provider.get_app("up"), await platform.provider.get_app("down")

    assert (up.name, up.state) == ("up", AppState.RUNNING)
    assert (down.name, down.state) == ("down", AppState.STOPPED)


# -- start and stop --------------------------------------------------------------------------


async def test_start_returns_once_accepted_and_the_app_runs_after_its_boot(
    platform: Platform,
) -> None:
    platform.add_app("asleep", running=False)

    startup = await platform.provider.start("asleep", None)

    assert await startup.running() is False
    await eventually(startup.running, timeout=TIMEOUT * 2, what="the provider says it runs")
    assert platform.serving("asleep")
    assert (await platform.provider.get_app("asleep")).state is AppState.RUNNING


async def test_stop_leaves_the_app_stopped(platform: Platform) -> None:
    platform.add_app("awake", running=True)

    await platform.provider.stop("awake")

    assert not platform.serving("awake")
    assert (await platform.provider.get_app("awake")).state is AppState.STOPPED


async def test_a_wake_restores_what_the_stop_remembered(platform: Platform) -> None:
    platform.add_app("big", BIG, running=True)
    before = platform.running("big")

    remembered = await platform.provider.stop("big")
    assert platform.running("big") == {}
    await start_and_wait(platform.provider, "big", remembered)

    assert platform.running("big") == before
    # The registry persists it: plain JSON, the same once read back.
    assert json.loads(json.dumps(remembered)) == remembered


# -- errors ----------------------------------------------------------------------------------


async def test_rejected_credentials_raise_an_auth_error_naming_the_setting(
    platform: Platform,
) -> None:
    if platform.reject_credentials is None:
        pytest.skip(f"the {platform.name} provider has no credentials")
    platform.add_app("up", running=True)
    platform.reject_credentials()

    with pytest.raises(ProviderAuthError, match="check PROVIDER_"):
        await platform.provider.list_apps()


async def test_a_listing_of_the_wrong_shape_is_an_error_not_an_empty_account(
    platform: Platform,
) -> None:
    if platform.garble_listing is None:
        pytest.skip(f"the {platform.name} provider lists no API")
    platform.add_app("up", running=True)
    platform.garble_listing()

    with pytest.raises(ProviderError):
        await platform.provider.list_apps()


async def test_an_unknown_app_is_not_found(platform: Platform) -> None:
    platform.add_app("real", running=False)

    with pytest.raises(AppNotFound):
        await platform.provider.get_app("ghost")
    with pytest.raises(AppNotFound):
        await platform.provider.start("ghost", None)


async def test_a_boot_longer_than_the_operation_timeout_is_a_wake_timeout(
    platform: Platform,
) -> None:
    platform.add_app("slow", running=False)
    platform.set_boot(30)
    began = time.monotonic()

    with pytest.raises(WakeTimeout, match="slow"):
        await start_and_wait(platform.provider, "slow", None)

    assert time.monotonic() - began < TIMEOUT + 1.0
