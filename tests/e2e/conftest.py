"""The admin UI in real headless Chromium (Debian's, driven by Playwright) against the whole
stack under supervisord and nginx, with a fake upstream that works and one that is down.

Screenshots of every page go to tests/artifacts/e2e/ (and one of any failing test).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    ViewportSize,
    sync_playwright,
)
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.conftest import free_port
from tests.stack.conftest import ADMIN, Stack
from tests.upstream import FakeUpstream

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "frontend" / "dist" / "index.html"
ARTIFACTS = ROOT / "tests" / "artifacts" / "e2e"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Debian's Chromium, headless, as root, on a machine whose only network is loopback: without
# the background-networking flags it keeps trying to reach Google's hosts.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}


FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


@pytest.fixture(scope="session")
def artifacts() -> Path:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def ui_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own (these tests change keys and the admin networks), with a working
    upstream and one that is down."""
    if not DIST.is_file():
        pytest.fail(f"{DIST} is missing: build the UI (make test does: npm ci && npm run build)")
    upstream = FakeUpstream("e2e", ["llama-e2e", "qwen-e2e"]).start()
    down = FakeUpstream("down", [], port=free_port())  # never started: refuses connections
    stack = Stack(tmp_path_factory.mktemp("e2e"), [upstream, down]).start()
    yield stack
    try:
        assert stack.stop() == 0, stack.output()
    finally:
        upstream.stop()


# Module-scoped, not session-scoped: Playwright's sync API runs an event loop in this thread
# while it is open, and asyncio.run() in any later test would refuse to start.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's chromium (make test does)")
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
    )
    yield browser
    browser.close()


def new_context(browser: Browser, stack: Stack, **options: Any) -> BrowserContext:
    context = browser.new_context(
        base_url=stack.url, **{"viewport": DESKTOP, "accept_downloads": True, **options}
    )
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack.url)
    context.set_default_timeout(10_000)
    return context


@pytest.fixture
def context(
    browser: Browser, ui_stack: Stack, artifacts: Path, request: pytest.FixtureRequest
) -> Iterator[BrowserContext]:
    context = new_context(browser, ui_stack)
    yield context
    if request.node.stash.get(FAILED, False):
        for number, page in enumerate(context.pages):
            page.screenshot(path=artifacts / f"FAILED-{request.node.name}-{number}.png")
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def assert_fits_a_phone(page: Page, what: str) -> None:
    """No sideways scrolling at PHONE's width, once the layout has settled: a chart follows its
    box's width through a ResizeObserver, a frame or more after the viewport changed (read at
    once, the analytics page still had the desktop chart's 1130 px)."""
    fits = f"document.documentElement.scrollWidth <= {PHONE['width']}"
    try:
        page.wait_for_function(fits, timeout=10_000)
    except PlaywrightTimeout:
        width = page.evaluate("document.documentElement.scrollWidth")
        raise AssertionError(f"{what} is {width}px wide on a phone") from None


def shot(page: Page, artifacts: Path, name: str) -> None:
    page.evaluate("window.scrollTo(0, 0)")  # else the sticky tabs land mid-picture
    page.screenshot(path=artifacts / f"{name}.png", full_page=True)


def log_in(page: Page, username: str = ADMIN[0], password: str = ADMIN[1]) -> None:
    page.goto("/admin/")
    fill_login(page, username, password)


def fill_login(page: Page, username: str = ADMIN[0], password: str = ADMIN[1]) -> None:
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


@pytest.fixture
def admin_page(page: Page) -> Page:
    """A page logged in as the admin, on the keys tab."""
    log_in(page)
    page.get_by_role("tab", name="API keys").wait_for()
    return page
