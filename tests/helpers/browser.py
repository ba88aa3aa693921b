"""Headless Chromium for page tests, from Debian's chromium and chromium-driver packages."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.helpers.system_tools import apt_install

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER_PATHS = ("/usr/bin/chromedriver",)

# No background traffic: this machine's network is closed, and the browser must not wait on it.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def _first(paths: tuple[str, ...]) -> str | None:
    return next((p for p in paths if shutil.which(p)), None)


def ensure_chromium() -> tuple[str, str] | str:
    """(browser, driver) paths, installing Debian's packages when missing; a reason string when impossible."""
    browser, driver = _first(CHROMIUM_PATHS), _first(DRIVER_PATHS)
    if browser and driver:
        return browser, driver
    why = apt_install("chromium", "chromium-driver")
    browser, driver = _first(CHROMIUM_PATHS), _first(DRIVER_PATHS)
    if browser and driver:
        return browser, driver
    return f"chromium could not be installed: {why}"


def chrome(browser: str, driver: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def artifacts_dir() -> Path:
    """Where page tests keep their screenshots: $LLMSERVE_TEST_ARTIFACTS, else build/test-artifacts."""
    path = Path(os.environ.get("LLMSERVE_TEST_ARTIFACTS") or Path(__file__).resolve().parents[2] / "build" / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path
