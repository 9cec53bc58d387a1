"""A page of another origin in the same browser cannot act with the panel's session: issue #15's
CSRF rule, proven where it matters (run against the real session endpoints only)."""
from __future__ import annotations

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from protocol import ops
from tests.browser.conftest import REAL_SESSIONS, Panel, find, sign_in
from tests.browser.proxy import Proxy

pytestmark = [pytest.mark.lxc, pytest.mark.security,
              pytest.mark.skipif(not REAL_SESSIONS, reason="the session endpoints (issue #15's "
                                 "sign-in half) are not on this frontend: the test stand-in's "
                                 "CSRF check would prove nothing about the product")]

ATTEMPTS = """
const [url, done] = [arguments[0], arguments[arguments.length - 1]];
const simple = fetch(url, {method: 'POST', credentials: 'include', mode: 'no-cors',
                           headers: {'Content-Type': 'text/plain'}, body: '{"action": "start"}'})
  .then(() => 'sent', (e) => 'blocked: ' + e);
const preflighted = fetch(url, {method: 'POST', credentials: 'include',
                                headers: {'Content-Type': 'application/json', 'X-LWP-Request': '1'},
                                body: '{"action": "start"}'})
  .then((r) => 'answered ' + r.status, (e) => 'blocked: ' + e);
Promise.all([simple, preflighted]).then(done);
"""


def test_a_page_of_another_origin_cannot_start_a_container(browser: WebDriver,
                                                           panel: Panel) -> None:
    name = panel.container()
    sign_in(browser, panel, panel.admin)  # the session cookie is in this browser now
    find(browser, "#containers")
    # Another origin on the same host (another port: same site, so even a SameSite=Strict
    # cookie goes along — only the header and Origin rules stand in the way).
    other = Proxy(panel.live.url, "/nothing-here")
    other.start()
    try:
        browser.get(f"http://127.0.0.1:{other.port}/")
        simple, preflighted = browser.execute_async_script(
            ATTEMPTS, f"{panel.url}api/v1/containers/{name}")
    finally:
        other.stop()
    assert preflighted.startswith("blocked"), preflighted  # no CORS headers: never answered
    assert panel.call(ops.ContainerInfo(name))["state"] == "STOPPED", simple
