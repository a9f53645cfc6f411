"""The HTML report in a real browser (headless Chromium through Selenium): it loads with no console errors,
shows every plot, and its tables sort.

Chromium and its driver come from Debian's `chromium` and `chromium-driver` packages, which `bash launch.sh test`
installs when they are missing (as root, with apt-get); where they are absent the test skips saying so.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_pareto_report import make_runs

from alignment.reports.pareto_report import build_report

pytestmark = pytest.mark.slow


def _find_chromium() -> tuple[str | None, str | None]:
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    return browser, shutil.which("chromedriver")


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """Paths of the Chromium binary and chromedriver (or skip, saying how to install them)."""
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e .[dev])")
    browser, driver = _find_chromium()
    if browser is None or driver is None:
        pytest.skip(
            "headless Chromium is not installed: `bash launch.sh test` installs it on Debian/Ubuntu as root, or run "
            "sudo apt-get install -y chromium chromium-driver"
        )
    return browser, driver


@pytest.fixture
def browser(chromium: tuple[str, str]) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download anything
    options = webdriver.ChromeOptions()
    options.binary_location = chromium[0]
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromium[1]), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _column(driver: Any, table: str, index: int) -> list[str]:
    script = (
        "return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr'))"
        ".map(r => r.cells[arguments[1]].getAttribute('data-sort') ?? r.cells[arguments[1]].textContent.trim());"
    )
    return driver.execute_script(script, f"table#{table}", index)


def test_report_in_headless_chromium(tmp_path: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    make_runs(tmp_path / "runs")
    out = tmp_path / "report"
    build_report([tmp_path / "runs"], out, log=lambda line: None)
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 5

    browser.get((out / "index.html").as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors

    # Every plot is on the page, decoded and shown.
    images = browser.find_elements(By.CSS_SELECTOR, "img.plot")
    assert len(images) == len(pngs)
    for image in images:
        loaded = browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image)
        assert loaded and loaded > 100, image.get_attribute("alt")
        assert image.is_displayed() and image.size["width"] > 100 and image.size["height"] > 100

    # The runs table sorts by a number column both ways, and by text.
    headers = browser.find_elements(By.CSS_SELECTOR, "table#runs thead th")
    titles = [h.text.strip() for h in headers]
    relevance = titles.index("relevance")
    headers[relevance].click()
    values = [float(v) for v in _column(browser, "runs", relevance)]
    assert values == sorted(values) and len(values) == 4
    assert headers[relevance].get_attribute("aria-sort") == "ascending"
    headers[relevance].click()
    assert [float(v) for v in _column(browser, "runs", relevance)] == sorted(values, reverse=True)
    assert headers[relevance].get_attribute("aria-sort") == "descending"
    headers[0].click()
    names = _column(browser, "runs", 0)
    assert names == sorted(names) == ["hv", "lag", "static-a", "static-b"]
    assert headers[relevance].get_attribute("aria-sort") is None
    # The recipe-differences table sorts too (learning rates as numbers).
    recipe_headers = browser.find_elements(By.CSS_SELECTOR, "table#recipes thead th")
    lr = [h.text.strip() for h in recipe_headers].index("train.learning_rate")
    recipe_headers[lr].click()
    assert [float(v) for v in _column(browser, "recipes", lr)] == [0.001, 0.002, 0.002, 0.002]

    # The dominance relations are shown; no console errors came from the clicks either.
    assert "hv is dominated by lag" in browser.find_element(By.ID, "dominance").text
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []
    # The log capture works: an error written now is seen (so the empty checks above mean something).
    browser.execute_script("console.error('probe from the test')")
    assert any("probe from the test" in e["message"] for e in browser.get_log("browser"))
