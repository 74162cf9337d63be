"""A real browser for tests: Debian's Chromium driven by Selenium through Debian's chromedriver, both
installed by the test run when missing. Nothing is downloaded by Selenium itself (driver and browser
paths are given explicitly, so Selenium Manager never runs)."""

from __future__ import annotations

import os
from pathlib import Path

from debian import ensure_binary
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service


def chromium(downloads: Path | None = None) -> webdriver.Chrome:
    binary = ensure_binary("chromium", "chromium")
    driver = ensure_binary("chromedriver", "chromium-driver")
    options = Options()
    options.binary_location = binary
    for arg in ("--headless=new", "--disable-gpu", "--window-size=1400,1000", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--disable-background-networking"):  # fmt: skip
        options.add_argument(arg)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses to start as root with its sandbox
    # The console runs with the tests' dev CA, which this browser profile does not know.
    options.accept_insecure_certs = True
    if downloads is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)
