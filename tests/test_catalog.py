"""The app catalog: the provider's apps known without a call, refreshed on a miss, rate-limited."""

from __future__ import annotations

import asyncio

import pytest

from clock import ManualClock
from harness import FAST_POLL, FAST_RETRY, SCALINGO_TOKEN
from paastis.catalog import MISS_REFRESH_INTERVAL, AppCatalog
from paastis.providers import AppState
from paastis.providers.api import ProviderCallCounter
from paastis.providers.scalingo import ScalingoProvider


@pytest.fixture
def catalog_of(session):
    def build(api_url: str, clock: ManualClock) -> AppCatalog:
        provider = ScalingoProvider(
            api_token=SCALINGO_TOKEN,
            api_url=api_url,
            auth_url=api_url,
            session=session,
            counter=ProviderCallCounter(),
            poll=FAST_POLL,
            retry=FAST_RETRY,
        )
        return AppCatalog(provider, clock=clock)

    return build


async def test_unknown_names_cost_one_listing_per_interval_however_many_requests(
    scalingo, catalog_of
):
    emulator, api_url = scalingo
    emulator.add_app("known")
    clock = ManualClock()
    catalog = catalog_of(api_url, clock)
    await catalog.refresh()

    for index in range(50):
        assert await catalog.find(f"random-{index}") is None

    assert emulator.count("list_apps") == 1


async def test_an_app_created_after_the_last_listing_is_found_once_the_interval_has_passed(
    scalingo, catalog_of
):
    emulator, api_url = scalingo
    clock = ManualClock()
    catalog = catalog_of(api_url, clock)
    await catalog.refresh()
    emulator.add_app("fresh")

    assert await catalog.find("fresh") is None
    clock.advance(MISS_REFRESH_INTERVAL)
    found = await catalog.find("fresh")

    assert found is not None and found.name == "fresh"
    assert emulator.count("list_apps") == 2


async def test_a_known_app_is_found_without_any_provider_call(scalingo, catalog_of):
    emulator, api_url = scalingo
    emulator.add_app("known")
    catalog = catalog_of(api_url, ManualClock())
    await catalog.refresh()
    calls = len(emulator.log)

    for _ in range(100):
        assert (await catalog.find("known")).name == "known"

    assert len(emulator.log) == calls


async def test_a_listing_asked_before_paastis_changed_a_state_does_not_undo_it(
    scalingo, catalog_of
):
    emulator, api_url = scalingo
    emulator.add_app("woken", status="stopped")
    clock = ManualClock()
    catalog = catalog_of(api_url, clock)
    await catalog.refresh()

    listing = asyncio.ensure_future(catalog.refresh())
    await asyncio.sleep(0)  # the listing is asked for: it will still say `stopped`
    clock.advance(1)
    catalog.set_state("woken", AppState.RUNNING)  # paastis woke it meanwhile
    await listing

    assert catalog.lookup("woken").state is AppState.RUNNING
    assert catalog.lookup("woken").status is None  # not the listing's stale "stopped"
    clock.advance(1)
    await catalog.refresh()  # a listing asked afterwards is believed
    assert catalog.lookup("woken").state is AppState.STOPPED
    assert catalog.lookup("woken").status == "stopped"
