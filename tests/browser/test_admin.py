"""The container page, tokens and audit pages in a real browser, hostile markup shown as text,
and the panel under a reverse proxy's path prefix."""
from __future__ import annotations

import time

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from protocol import ops
from tests.browser.conftest import (
    REAL_SESSIONS,
    Panel,
    buttons,
    find,
    record_page,
    sign_in,
    start_proxy,
    wait_for,
    wait_result,
)
from tests.live import start_frontend, stop_frontend

pytestmark = pytest.mark.lxc
# Markup an attacker may put where the panel shows text: a token's description, an audit
# record's actor, an error message. Any of it run or parsed sets window.__pwned.
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script><b>bold</b>'


def info(browser: WebDriver) -> dict[str, str]:
    terms = browser.find_elements(By.CSS_SELECTOR, "dl.info dt")
    values = browser.find_elements(By.CSS_SELECTOR, "dl.info dd")
    return {t.text: v.text for t, v in zip(terms, values, strict=True)}


def test_container_page_shows_live_info_and_its_audit_records(
        browser: WebDriver, panel: Panel) -> None:
    name = panel.container()
    sign_in(browser, panel, panel.admin, f"#/containers/{name}")
    find(browser, "#container-title")
    wait_for(browser, lambda d: info(d).get("State", "").endswith("stopped"), "stopped")
    assert buttons(browser.find_element(By.CSS_SELECTOR, "div.actions")) == ["start", "destroy"]
    panel.call(ops.StartContainer(name))  # elsewhere: the page follows by itself
    wait_for(browser, lambda d: info(d).get("State", "").endswith("running"), "running")
    wait_for(browser, lambda d: info(d).get("Memory", "—") != "—", "memory figures")
    assert info(browser)["CPU time"].endswith("seconds")
    assert int(info(browser)["PID"]) > 1
    audit = find(browser, "section.audit")
    wait_for(browser, lambda d: "create_container" in audit.text, "the create record")
    assert "start_container" in audit.text
    record_page(browser, "container")


def test_container_page_for_read_scope_has_no_buttons_and_no_audit(
        browser: WebDriver, panel: Panel) -> None:
    name = panel.container()
    sign_in(browser, panel, panel.read, f"#/containers/{name}")
    wait_for(browser, lambda d: info(d).get("State", "").endswith("stopped"), "stopped")
    assert buttons(browser.find_element(By.CSS_SELECTOR, "div.actions")) == []
    assert not browser.find_elements(By.CSS_SELECTOR, "section.audit")


def test_destroy_from_the_container_page_returns_to_the_overview(
        browser: WebDriver, panel: Panel) -> None:
    name = panel.container()
    sign_in(browser, panel, panel.admin, f"#/containers/{name}")
    find(browser, "div.actions button[data-action=destroy]").click()
    find(browser, "dialog[open]").find_element(By.CSS_SELECTOR, "button.danger").click()
    wait_result(browser, f"destroy {name}: ok")
    find(browser, "#containers")


def test_tokens_create_shows_the_secret_once_with_copy_and_revoke(
        browser: WebDriver, panel: Panel) -> None:
    sign_in(browser, panel, panel.admin, "#/tokens")
    find(browser, "#tokens tbody tr")
    description = f"panel test {time.time()}"
    form = browser.find_element(By.ID, "token-form")
    form.find_element(By.CSS_SELECTOR, "input[name=description]").send_keys(description)
    Select(browser.find_element(By.CSS_SELECTOR, "#token-form select")).select_by_value("operate")
    browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
    secret = find(browser, "#new-secret").text
    made = next(t for t in panel.call(ops.ListTokens()) if t["description"] == description)
    assert made["scope"] == "operate"
    assert len(secret) >= 20
    find(browser, "#copy-secret").click()
    copied = browser.find_element(By.CSS_SELECTOR, ".secret [role=status]")
    wait_for(browser, lambda d: copied.text in ("Copied.", "Selected: press Ctrl+C to copy."),
             "the copy to be confirmed")
    record_page(browser, "tokens")
    # The secret works, and is gone once the admin leaves the page.
    assert panel.world.call(ops.ListContainers(), token=secret) is not None
    browser.get(panel.url + "#/")
    browser.get(panel.url + "#/tokens")
    find(browser, f'#tokens tr[data-id="{made["id"]}"]')
    assert secret not in browser.page_source
    find(browser, f'#tokens tr[data-id="{made["id"]}"] button').click()
    dialog = find(browser, "dialog[open]")
    assert description in dialog.text
    dialog.find_element(By.CSS_SELECTOR, "button.danger").click()
    wait_result(browser, f"revoke token {made['id']}: ok")
    assert all(t["id"] != made["id"] for t in panel.call(ops.ListTokens()))


def test_audit_page_filters_and_pages(browser: WebDriver, panel: Panel) -> None:
    name = panel.container()
    for _ in range(2):
        panel.call(ops.StartContainer(name))
        panel.call(ops.StopContainer(name))
    sign_in(browser, panel, panel.admin, "#/audit")
    form = find(browser, "form.filters")
    form.find_element(By.NAME, "container").send_keys(name)
    limit = form.find_element(By.NAME, "limit")
    limit.clear()
    limit.send_keys("2")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    table = "section.audit tbody"
    wait_for(browser, lambda d: "Page 1: 2 records" in d.find_element(By.CSS_SELECTOR,
             "section.audit [role=status]").text, "page 1")
    first = browser.find_element(By.CSS_SELECTOR, table).text
    assert name in first and "create_container" in first
    record_page(browser, "audit")
    browser.find_element(By.XPATH, '//button[text()="Next page"]').click()
    wait_for(browser, lambda d: "Page 2" in d.find_element(By.CSS_SELECTOR,
             "section.audit [role=status]").text, "page 2")
    assert browser.find_element(By.CSS_SELECTOR, table).text != first
    browser.find_element(By.XPATH, '//button[text()="Previous page"]').click()
    wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, table).text == first, "page 1")
    Select(form.find_element(By.NAME, "outcome")).select_by_value("denied")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(browser, lambda d: "No records match." in d.find_element(By.CSS_SELECTOR,
             "section.audit [role=status]").text, "no denied records of this container")


def test_a_bad_filter_shows_the_apis_message_verbatim(browser: WebDriver, panel: Panel) -> None:
    sign_in(browser, panel, panel.admin, "#/audit")
    form = find(browser, "form.filters")
    form.find_element(By.NAME, "since").send_keys("yesterday")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(browser, lambda d: "400 invalid-request" in d.find_element(
        By.CSS_SELECTOR, "section.audit [role=status]").text, "the 400")


@pytest.mark.security
def test_hostile_markup_in_descriptions_and_records_is_shown_as_text(
        browser: WebDriver, panel: Panel) -> None:
    hostile = panel.call(ops.CreateToken(None, HOSTILE, "read"))
    # An audit record whose actor is that token, and a refused request carrying markup.
    panel.world.call(ops.ListContainers(), token=hostile["token"])
    sign_in(browser, panel, panel.admin, "#/tokens")
    find(browser, f'#tokens tr[data-id="{hostile["id"]}"]')
    assert HOSTILE in browser.find_element(By.ID, "tokens").text
    browser.get(panel.url + "#/audit")
    find(browser, "form.filters").find_element(By.NAME, "actor").send_keys(str(hostile["id"]))
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    wait_for(browser, lambda d: HOSTILE in d.find_element(By.CSS_SELECTOR, "section.audit").text,
             "the record's actor as text")
    assert not browser.find_elements(By.CSS_SELECTOR, "main img, main script, main b")
    assert browser.execute_script("return window.__pwned;") is None


def test_the_panel_works_under_a_reverse_proxy_prefix(browser: WebDriver, panel: Panel) -> None:
    # With the real session endpoints, a frontend told its base path (the cookie's Path).
    live = start_frontend(panel.world, 'base_path = "/lwp/"') if REAL_SESSIONS else panel.live
    proxy = start_proxy(live, "/lwp", panel.world)
    try:
        name = panel.container()
        sign_in(browser, Panel(panel.world, panel.live, proxy.url, proxy, panel.admin,
                               panel.operate, panel.read), panel.operate)
        find(browser, f'#containers tr[data-name="{name}"] button[data-action=start]').click()
        wait_result(browser, f"start {name}: ok")
        assert browser.current_url.startswith(proxy.url)
        assert all(c["path"] == "/lwp/" for c in browser.get_cookies())
    finally:
        proxy.stop()
        if live is not panel.live:
            stop_frontend(live)
