"""Real headless Chromium (Debian's chromium + chromium-driver, installed by `make install`) via Selenium."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Without the background-networking flags Chromium keeps dialling Google's hosts, which this
# network refuses; a fresh profile keeps runs independent.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1600")


def missing() -> str | None:
    """Why the browser cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} not found: run `make install` (it installs Debian's chromium and chromium-driver)"
    return None


@contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    profile = tempfile.mkdtemp(prefix="llmnet-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for downloads
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# The outermost elements of each card whose box leaves the card's box. A scrolling (or
# clipping) element is its contents' boundary: what it scrolls is not checked, the element itself is.
_OVERFLOWS = """
const CLIPPING = new Set(["auto", "scroll", "hidden", "clip"]);
const found = [];
for (const card of document.querySelectorAll(arguments[0])) {
  const box = card.getBoundingClientRect();
  const pending = [...card.children];
  while (pending.length) {
    const node = pending.shift();
    const r = node.getBoundingClientRect();
    const outside = r.left < box.left - 0.5 || r.right > box.right + 0.5 || r.top < box.top - 0.5
      || r.bottom > box.bottom + 0.5;
    if ((r.width || r.height) && outside) {
      found.push(`#${card.id}: <${node.tagName.toLowerCase()} class="${node.getAttribute("class") || ""}"> spans `
        + `x ${r.left.toFixed(0)}..${r.right.toFixed(0)}, y ${r.top.toFixed(0)}..${r.bottom.toFixed(0)}; `
        + `card x ${box.left.toFixed(0)}..${box.right.toFixed(0)}, y ${box.top.toFixed(0)}..${box.bottom.toFixed(0)}`);
      continue;  // its children overflow with it: one line per offender
    }
    if (!CLIPPING.has(getComputedStyle(node).overflowX)) pending.push(...node.children);
  }
}
return found;
"""


def overflowing(driver: webdriver.Chrome, cards: str = "main > section") -> list[str]:
    """What sticks out of a card (matched by the CSS selector `cards`) at the current window size."""
    found: list[str] = driver.execute_script(_OVERFLOWS, cards)
    return found


def page_scrolls_sideways(driver: webdriver.Chrome) -> bool:
    return bool(driver.execute_script("return document.documentElement.scrollWidth > window.innerWidth"))
