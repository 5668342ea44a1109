"""The dashboard on the admin listener, in a real headless Chromium (Debian's, driven by
playwright; never a downloaded browser): a person opens it, sees the apps and their states,
types the token, stops and starts apps and sees their states change. Scalingo API emulator,
test upstreams on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from conftest import url_of
from harness import SYSTEM_API, SYSTEM_TOKEN, scalingo_env, system_headers

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Milliseconds the page may take to show a change (it refreshes itself every 2 s at most).
SEE = 10_000
# Set to a path (docs/dashboard.png) to keep the README's screenshot of the story test.
SCREENSHOT = os.environ.get("PAASTIS_DASHBOARD_SCREENSHOT")

# The first test here may install Chromium with apt, which takes more than the default timeout.
pytestmark = pytest.mark.timeout(900)


def install_chromium() -> str | None:
    """Installs Debian's chromium with apt; returns why it could not, or None."""
    apt = shutil.which("apt-get")
    if apt is None:
        return f"{CHROMIUM} is missing and there is no apt-get to install Debian's chromium"
    if os.geteuid() != 0:
        return f"{CHROMIUM} is missing and installing it with apt-get needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        [apt, "update", "-q"],
        [apt, "install", "-y", "-q", "--no-install-recommends", "chromium"],
    ):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(command)}` did not finish in 600 s"
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return f"`{' '.join(command)}` failed: {last}"
    return None if CHROMIUM.exists() else f"apt-get installed chromium but {CHROMIUM} is missing"


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not CHROMIUM.exists():
        reason = install_chromium()
        if reason is not None:
            pytest.skip(f"no headless Chromium: {reason}")
    return str(CHROMIUM)


@pytest.fixture
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium_path, args=CHROMIUM_FLAGS, headless=True, timeout=30_000
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1100, "height": 420})
    opened = await context.new_page()
    opened.set_default_timeout(SEE)
    yield opened
    await context.close()


def state_of(page: Page, app: str):
    return page.locator(f'tr[data-app="{app}"] .state')


async def type_token(page: Page, token: str) -> None:
    await expect(page.get_by_label("System API token")).to_be_visible()
    await page.get_by_label("System API token").fill(token)
    await page.get_by_role("button", name="Open").click()


async def test_a_person_sees_the_apps_types_the_token_stops_and_starts_them(
    scalingo, upstream_factory, paastis, page: Page, tmp_path: Path
):
    emulator, api_url = scalingo
    _upstream, server = await upstream_factory("web")
    for name in ("hello", "review-pr42-front", "review-pr42-back"):
        emulator.add_app(name, base_url=url_of(server))
    emulator.add_app("review-pr17", status="stopped", base_url=url_of(server))
    go = tmp_path / "go"  # the wake of review-pr17 waits for it, so the page can see it wake
    hold_start = f"for i in $(seq 600); do [ -f {go} ] && break; sleep 0.05; done"
    env = scalingo_env(
        api_url,
        **SYSTEM_API,
        HOOKS_BEFORE_START=hold_start,
        START_AND_STOP_CHECKING_INTERVAL_CRON="0 * * * *",
        START_AND_STOP_MAX_IDLE_TIME="30",
    )
    proxy = await paastis(env, admin=True)
    await proxy.tick()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    await page.goto(proxy.admin_url + "/")
    await expect(page.locator("#apps")).to_be_hidden()  # nothing without the token
    await type_token(page, SYSTEM_TOKEN)

    await expect(state_of(page, "hello")).to_have_text("running")
    await expect(state_of(page, "review-pr17")).to_have_text("sleeping")
    await expect(page.get_by_label("System API token")).to_be_hidden()
    await expect(page.locator('tr[data-app="hello"] td').nth(3)).to_contain_text("in ")
    assert await page.evaluate("sessionStorage.getItem('paastis.systemApiToken')") == SYSTEM_TOKEN
    assert await page.evaluate("localStorage.length") == 0
    assert await page.evaluate("document.cookie") == ""

    await page.get_by_role("button", name="Stop hello").click()
    await expect(state_of(page, "hello")).to_have_text("sleeping")
    assert emulator.status_of("hello") == "stopped"

    await page.get_by_role("button", name="Start review-pr17").click()
    await expect(state_of(page, "review-pr17")).to_have_text("waking")
    await expect(page.get_by_role("button", name="Start review-pr17")).to_be_disabled()
    for path in (tmp_path / "dashboard.png", *([Path(SCREENSHOT)] if SCREENSHOT else [])):
        await page.screenshot(path=str(path), full_page=True)
    go.touch()
    await expect(state_of(page, "review-pr17")).to_have_text("running")
    await expect(page.locator('tr[data-app="review-pr17"] td').nth(4)).to_have_text("1")

    # A change made elsewhere (here through the API, not the page) shows up by itself.
    async with proxy.session.post(
        proxy.admin_url + "/apps/review-pr42-back/stop", headers=system_headers()
    ) as response:
        assert response.status == 202
    await expect(state_of(page, "review-pr42-back")).to_have_text("sleeping")

    assert requested and all(url.startswith(proxy.admin_url + "/") for url in requested)


async def test_a_wrong_token_is_refused_and_not_kept(scalingo, paastis, page: Page):
    emulator, api_url = scalingo
    emulator.add_app("hello")
    proxy = await paastis(scalingo_env(api_url, **SYSTEM_API), admin=True)

    await page.goto(proxy.admin_url + "/")
    await type_token(page, "not-the-system-api-token")

    await expect(page.get_by_role("alert").first).to_have_text("The token was refused.")
    await expect(page.locator("#apps")).to_be_hidden()
    assert await page.evaluate("sessionStorage.length") == 0


async def test_the_token_lasts_for_the_tab_and_can_be_forgotten(scalingo, paastis, page: Page):
    emulator, api_url = scalingo
    emulator.add_app("hello")
    proxy = await paastis(scalingo_env(api_url, **SYSTEM_API), admin=True)
    await page.goto(proxy.admin_url + "/")
    await type_token(page, SYSTEM_TOKEN)
    await expect(state_of(page, "hello")).to_have_text("running")

    await page.reload()
    await expect(state_of(page, "hello")).to_have_text("running")  # no token asked again
    await page.get_by_role("button", name="Forget the token").click()

    await expect(page.get_by_label("System API token")).to_be_visible()
    await expect(page.locator("#apps")).to_be_hidden()
    assert await page.evaluate("sessionStorage.length") == 0


# --- the page as HTTP, without a browser ------------------------------------------------------


async def test_the_page_needs_no_token_and_loads_nothing_from_elsewhere(scalingo, paastis):
    _emulator, api_url = scalingo
    proxy = await paastis(scalingo_env(api_url, **SYSTEM_API), admin=True)

    async with proxy.session.get(proxy.admin_url + "/") as response:
        page = await response.text()

    assert response.status == 200
    assert response.content_type == "text/html"
    assert response.headers["Cache-Control"] == "no-store"
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    for reference in ("http:", "https:", 'src="//', 'href="//', "@import"):
        assert reference not in page


async def test_only_the_page_health_metrics_and_document_answer_without_a_token(scalingo, paastis):
    emulator, api_url = scalingo
    emulator.add_app("hello")
    proxy = await paastis(scalingo_env(api_url, **SYSTEM_API), admin=True)

    statuses = {}
    for method, path in [
        ("GET", "/"),
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/apps"),
        ("GET", "/apps/hello"),
        ("GET", "/events"),
        ("POST", "/"),
        ("GET", "/dashboard"),
    ]:
        async with proxy.session.request(method, proxy.admin_url + path) as response:
            statuses[method, path] = response.status

    assert {key for key, status in statuses.items() if status == 200} == {
        ("GET", "/"),
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    }
    assert {status for status in statuses.values() if status != 200} == {401}


async def test_the_main_listener_serves_no_dashboard(scalingo, paastis):
    _emulator, api_url = scalingo
    proxy = await paastis(scalingo_env(api_url, **SYSTEM_API))

    async with proxy.get("x.example.net", "/", headers=system_headers()) as response:
        assert response.status == 404
        assert response.content_type == "application/json"
