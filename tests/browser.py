"""Headless Chromium (Debian's `chromium`), driven by Selenium through Debian's `chromium-driver`:
the `browser` fixture of the tests that load the web page (registered in conftest.py).

Without Chromium a test that asks for it skips with the reason, except in CI (CI set), where it
fails: .ci/run installs both packages, so a missing browser there is a broken machine.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest


def executable(name: str) -> str:
    """The path of Debian's browser or driver; skips (fails in CI) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} not found: apt-get install chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the browser test (.ci/run installs them)")
        pytest.skip(reason)
    return path


@pytest.fixture
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = executable("chromium")
    # no sandbox: CI runs as root; a small /dev/shm in containers crashes tabs otherwise
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1100,1100",
    ):
        options.add_argument(argument)
    # the driver is named explicitly, so Selenium Manager never tries to download one
    driver = webdriver.Chrome(options=options, service=Service(executable("chromedriver")))
    yield driver
    driver.quit()
