"""Debian's Chromium, headless, driven through selenium and chromedriver: what a user sees in the
MLflow UI, read the way they read it (the runs table, the compare view), with screenshots.

`.ci/run` installs `chromium` and `chromium-driver` when they are missing and sets
DISTINCEPTION_REQUIRE_BROWSER=1, so CI fails rather than skips without them.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# As root in a container Chromium needs --no-sandbox; the rest keep it off this machine's closed
# network (background connections would be refused, many at a time).
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
)

# The compare view's metrics are two virtualized grids (names, values per run) that render only
# the rows in view: collect the rows in view, as {metric: {column left offset: text}}.
_ROWS_IN_VIEW = """
const grids = [...document.querySelectorAll('.ReactVirtualized__Grid')];
const i = grids.findIndex(g => g.querySelector("a[title='Plot chart']"));
if (i < 0) return null;
const names = {}, out = {};
grids[i].querySelectorAll(':scope > div > div').forEach(c => {
  names[c.style.top] = c.textContent.trim();
});
grids[i + 1].querySelectorAll(':scope > div > div').forEach(c => {
  const key = names[c.style.top];
  if (key) (out[key] = out[key] || {})[c.style.left] = c.textContent.trim();
});
const g = grids[i + 1];
return {rows: out, height: g.scrollHeight, view: g.clientHeight};
"""
_SCROLL = """
const grids = [...document.querySelectorAll('.ReactVirtualized__Grid')];
const i = grids.findIndex(g => g.querySelector("a[title='Plot chart']"));
grids[i + 1].scrollTop = arguments[0];
"""


@contextlib.contextmanager
def chromium(shots: Path) -> Iterator[Any]:
    """A headless Chromium (selenium WebDriver); saves a screenshot when the block fails."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package")
    if missing:
        msg = f"no {', '.join(missing)}: apt-get install -y chromium chromium-driver"
        if os.environ.get("DISTINCEPTION_REQUIRE_BROWSER"):
            pytest.fail(msg)
        pytest.skip(msg)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    shots.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    except BaseException:
        driver.save_screenshot(str(shots / "failure.png"))
        raise
    finally:
        driver.quit()


def click(driver: Any, xpath: str, timeout: float = 60.0) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    element = WebDriverWait(driver, timeout).until(ec.element_to_be_clickable((By.XPATH, xpath)))
    element.click()
    return element


def wait_for(driver: Any, xpath: str, timeout: float = 60.0) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(ec.presence_of_element_located((By.XPATH, xpath)))


def table_row(driver: Any, label: str) -> list[str]:
    """The cells after `label` in a row of the compare view's tables (one per run)."""
    from selenium.webdriver.common.by import By

    row = wait_for(driver, f"//tr[./*[1][normalize-space()='{label}']]")
    return [c.text.strip() for c in row.find_elements(By.XPATH, "./th|./td")][1:]


def compared_metrics(driver: Any) -> dict[str, dict[int, str]]:
    """Every metric row of the compare view, {name: {run column (0 = leftmost): value}} (a run
    without the metric has no entry), scrolling its virtualized grid from top to bottom."""
    wait_for(driver, "//a[@title='Plot chart']")
    found: dict[str, dict[str, str]] = {}
    top = 0
    while True:
        view = driver.execute_script(_ROWS_IN_VIEW)
        for name, cells in view["rows"].items():
            found.setdefault(name, {}).update(cells)
        if top >= view["height"]:
            break
        top += max(45, view["view"] // 2)
        driver.execute_script(_SCROLL, top)
        time.sleep(0.3)
    lefts = sorted({x for cells in found.values() for x in cells}, key=lambda s: float(s[:-2]))
    return {k: {lefts.index(x): text for x, text in v.items()} for k, v in found.items()}
