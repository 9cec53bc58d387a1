"""What the panel costs a browser: bytes transferred for a first load and for a refresh, and the
time until the overview shows its containers and their states (saved as artefacts/metrics.json)."""
from __future__ import annotations

import json
import os

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser.conftest import ARTEFACTS, Panel, find, sign_in

pytestmark = pytest.mark.lxc
# Bounds well above what is measured (about 17 KB, 1 KB, 0.2 s): a regression shows, noise not.
FIRST_LOAD_MAX = 60_000
REFRESH_MAX = 8_000
INTERACTIVE_MAX_MS = 3000

MEASURE = """
const done = arguments[arguments.length - 1];
const ready = () => document.querySelector('#containers tbody tr .state');
const finish = () => {
  const at = performance.now();
  const entries = [...performance.getEntriesByType('navigation'),
                   ...performance.getEntriesByType('resource')];
  done({interactive_ms: at, bytes: entries.reduce((n, e) => n + e.transferSize, 0),
        requests: entries.map((e) => [e.name.split('/').slice(-3).join('/'), e.transferSize])});
};
const poll = () => (ready() ? finish() : requestAnimationFrame(poll));
poll();
"""


def test_first_load_and_refresh_are_small_and_quick(browser: WebDriver, panel: Panel) -> None:
    panel.container()
    sign_in(browser, panel, panel.read)  # the session cookie; then a cold cache
    browser.execute_cdp_cmd("Network.clearBrowserCache", {})
    browser.get(panel.url)
    find(browser, "#containers")
    first = browser.execute_async_script(MEASURE)
    browser.refresh()
    refresh = browser.execute_async_script(MEASURE)
    os.makedirs(ARTEFACTS, exist_ok=True)
    with open(os.path.join(ARTEFACTS, "metrics.json"), "w") as f:
        json.dump({"first_load": first, "refresh": refresh}, f, indent=1)
    assert first["bytes"] < FIRST_LOAD_MAX, first
    assert refresh["bytes"] < REFRESH_MAX, refresh
    assert first["interactive_ms"] < INTERACTIVE_MAX_MS, first
    # The refresh fetched no script or style again: versioned names, cached for a year.
    assert all(size == 0 for name, size in refresh["requests"] if "/static/" in name), refresh
