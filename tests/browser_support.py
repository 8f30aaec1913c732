"""Headless Chromium for the browser tests, through Playwright for Python.

The browser is Debian's ``chromium`` package (``playwright install`` cannot download
browsers here): ``CHROMIUM_PATH`` if set, else ``chromium`` on ``PATH``. Without one the
browser tests are skipped — except when ``CI=true``, where they fail instead: CI must
run them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

BASE_DIR = Path(__file__).resolve().parent.parent
#: where the browser tests save the screenshots the README shows
SCREENSHOTS = BASE_DIR / "docs" / "screenshots"
#: set to 1 to refresh docs/screenshots/; otherwise screenshots are still taken (the
#: pages must render) but go to a scratch directory, leaving the tree clean
UPDATE_SCREENSHOTS = os.environ.get("BROADCAST_UPDATE_SCREENSHOTS") == "1"
SCRATCH = Path(tempfile.gettempdir()) / "broadcast-screenshots"
#: milliseconds any one expectation may wait (page loads, websocket round trips)
EXPECT_TIMEOUT_MS = 15_000
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip locally; fail in CI, where the browser tests must run."""
    if in_ci():
        pytest.fail(f"{reason}; CI=true, so the browser tests may not be skipped.")
    pytest.skip(reason)


def chromium_path() -> str:
    """The Chromium executable to drive, or skip/fail (see :func:`unavailable`)."""
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium")
    if not path or not os.access(path, os.X_OK):
        unavailable("no Chromium found (install Debian's chromium or set CHROMIUM_PATH)")
    return path


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium, closed afterwards."""
    try:
        from playwright.async_api import async_playwright, expect
    except ImportError:
        unavailable("playwright is not installed (pip install -r requirements.txt)")
    path = chromium_path()
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


def collect_page_errors(page: Page) -> list[str]:
    """Uncaught exceptions of the page's scripts, collected as they happen."""
    errors: list[str] = []

    def on_error(error: Any) -> None:
        errors.append(str(error))

    page.on("pageerror", on_error)
    return errors


async def screenshot(page: Page, name: str, **options: Any) -> None:
    """Take a screenshot for the docs: into ``docs/screenshots/<name>.png`` with
    ``BROADCAST_UPDATE_SCREENSHOTS=1``, else into a scratch directory."""
    directory = SCREENSHOTS if UPDATE_SCREENSHOTS else SCRATCH
    directory.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(directory / f"{name}.png"), **options)
