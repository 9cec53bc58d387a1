"""Browser fixtures: one headless Debian chromium for the session, a live frontend + helper on
the test world's real containers, axe-core (a dev-only file from the npm registry, never shipped)
and screenshots/axe reports saved under tests/browser/artefacts/ (git-ignored).
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from frontend.app import make_app
from protocol import ops
from tests.browser.proxy import Proxy
from tests.conftest import World, new_name
from tests.live import Live, start_frontend, stop_frontend

HERE = os.path.dirname(os.path.abspath(__file__))
ARTEFACTS = os.path.join(HERE, "artefacts")
CACHE = os.path.join(HERE, ".cache")
AXE_VERSION = "4.10.2"  # pinned: a new axe may add rules, which is a change to review
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"
WAIT = 15.0


def frontend_has_sessions() -> bool:
    """True once issue #15's sign-in half (POST /api/v1/session) is on the frontend."""
    from frontend.config import FrontendConfig
    app = make_app(FrontendConfig(socket="/nonexistent", state_dir="/nonexistent",
                                  listen="127.0.0.1", port=1, max_body=1024))
    return any(r.resource is not None and r.resource.canonical.rstrip("/") == "/api/v1/session"
               and r.method == "POST" for r in app.router.routes())


REAL_SESSIONS = frontend_has_sessions()


# The registry's own integrity value for AXE_TARBALL (its `dist.integrity`): what is fetched must
# be exactly that file, whoever served it.
AXE_TARBALL = f"https://registry.npmjs.org/axe-core/-/axe-core-{AXE_VERSION}.tgz"
AXE_SHA512 = ("RE3mdQ7P3FRSe7eqCWoeQ/Z9QXrtniSjp1wUjt5nRC3WIpz5rSCve6o3fsZ2aCpJtrZjSZgjwXAoTO5k4tE"
              "I0w==")


def axe_source() -> str:
    """axe.min.js of AXE_VERSION from the npm registry, fetched once and integrity-checked (no
    npm needed: one HTTPS GET of the tarball the registry names)."""
    path = os.path.join(CACHE, f"axe-{AXE_VERSION}.min.js")
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        try:
            with urllib.request.urlopen(AXE_TARBALL, timeout=120) as response:
                tarball = response.read()
        except OSError as exc:
            pytest.fail(f"cannot fetch axe-core {AXE_VERSION} from the npm registry: {exc}")
        got = base64.b64encode(hashlib.sha512(tarball).digest()).decode()
        assert got == AXE_SHA512, f"axe-core {AXE_VERSION}: not the pinned tarball (sha512)"
        with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
            member = tar.extractfile("package/axe.min.js")
            assert member is not None
            text = member.read()
        with open(path + ".part", "wb") as f:
            f.write(text)
        os.replace(path + ".part", path)
    with open(path) as f:
        return f.read()


@dataclass
class Panel:
    """The panel as a browser reaches it, and the world behind it."""
    world: World
    live: Live
    url: str
    proxy: Proxy | None
    admin: str
    operate: str
    read: str

    def call(self, request: Any) -> Any:
        return self.world.call(request)

    def container(self, start: bool = False, template: str = "busybox") -> str:
        name = new_name()
        self.call(ops.CreateContainer(name, template))
        if start:
            self.call(ops.StartContainer(name))
        return name

    def end_session(self, driver: WebDriver) -> None:
        """The browser's session ends server-side (as its idle lifetime running out does)."""
        if self.proxy is not None:
            self.proxy.sessions.clear()
            return
        # A session is a token of kind session in the same store: revoked by its id.
        me = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('api/v1/session', {credentials: 'same-origin'}).then((r) => r.json())"
            ".then(done);")
        self.call(ops.RevokeToken(id=int(me["id"])))


def start_proxy(live: Live, prefix: str, world: World) -> Proxy:
    proxy = Proxy(live.url, prefix, None if REAL_SESSIONS else world.state_dir)
    proxy.start()
    return proxy


@pytest.fixture(scope="session")
def panel(world: World) -> Iterator[Panel]:
    made = {scope: world.call(ops.CreateToken(None, f"browser {scope}", scope))["token"]
            for scope in ("admin", "operate", "read")}
    # One address (loopback) signs in, out and with unknown tokens all session long, on purpose:
    # the per-address failure limiter (proven in test_network_ratelimit.py and
    # test_sessions_http.py) would lock the whole browser suite out.
    live = start_frontend(world, settings="auth_failures_burst = 1000\n")
    proxy = None if REAL_SESSIONS else start_proxy(live, "", world)
    try:
        yield Panel(world, live, proxy.url if proxy else live.url + "/", proxy, **made)
    finally:
        if proxy is not None:
            proxy.stop()
        stop_frontend(live)


@pytest.fixture(scope="session")
def driver() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-sync"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.makedirs(ARTEFACTS, exist_ok=True)
    service = Service(CHROMEDRIVER, log_path=os.path.join(ARTEFACTS, "chromedriver.log"))
    browser = webdriver.Chrome(service=service, options=options)
    browser.set_script_timeout(30)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def browser(driver: WebDriver, panel: Panel) -> Iterator[WebDriver]:
    """The session's browser, signed out and on a blank page at the start of each test."""
    driver.get("about:blank")
    # Every cookie of every origin (delete_all_cookies() reaches only the page shown).
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    if panel.proxy is not None:
        panel.proxy.sessions.clear()
    driver.get_log("browser")  # drop what earlier tests left
    yield driver
    csp = [e for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
    assert not csp, f"the page broke its own CSP: {csp}"


# -- helpers the tests share ---------------------------------------------------------------

def wait_for(driver: WebDriver, check: Callable[[WebDriver], Any], what: str,
             timeout: float = WAIT) -> Any:
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(check)
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what}; result line: "
                             f"{result_text(driver)!r}") from None


def find(driver: WebDriver, css: str) -> WebElement:
    return wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, css)
                    if d.find_elements(By.CSS_SELECTOR, css) else None, css)


def result_text(driver: WebDriver) -> str:
    found = driver.find_elements(By.ID, "result")
    return found[0].text if found else ""


def wait_result(driver: WebDriver, expected: str, timeout: float = WAIT) -> str:
    return wait_for(driver, lambda d: result_text(d) if expected in result_text(d) else None,
                    f"the result line to say {expected!r}", timeout)


def sign_in(driver: WebDriver, panel: Panel, token: str, page: str = "") -> None:
    driver.get(panel.url + page)
    box = find(driver, "#sign-in-token input[name=token]")
    box.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#sign-in-token button[type=submit]").click()
    find(driver, "#nav:not([hidden])")


def row(driver: WebDriver, name: str) -> WebElement:
    return find(driver, f'#containers tr[data-name="{name}"]')


def row_state(driver: WebDriver, name: str) -> str:
    return str(row(driver, name).find_elements(By.TAG_NAME, "td")[0].text.split()[-1])


def wait_state(driver: WebDriver, name: str, state: str, timeout: float = WAIT) -> None:
    wait_for(driver, lambda d: row_state(d, name) == state, f"{name} to show {state}", timeout)


def buttons(scope_node: WebElement) -> list[str]:
    return [b.get_attribute("data-action") or b.text
            for b in scope_node.find_elements(By.TAG_NAME, "button")]


def record_page(driver: WebDriver, name: str) -> list[dict[str, Any]]:
    """Screenshot and axe-core report of the page shown; fails on a serious/critical finding."""
    os.makedirs(ARTEFACTS, exist_ok=True)
    driver.save_screenshot(os.path.join(ARTEFACTS, f"{name}.png"))
    driver.execute_script(axe_source())
    found = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        ".then((r) => done(r.violations)).catch((e) => done({error: String(e)}));")
    assert isinstance(found, list), found
    report = [{"id": v["id"], "impact": v["impact"], "help": v["help"],
               "nodes": [n["target"] for n in v["nodes"]]} for v in found]
    with open(os.path.join(ARTEFACTS, f"{name}.axe.json"), "w") as f:
        json.dump(report, f, indent=1)
    bad = [v for v in report if v["impact"] in ("serious", "critical")]
    assert not bad, f"axe-core on {name}: {bad}"
    return report


def settle(seconds: float) -> None:
    time.sleep(seconds)

