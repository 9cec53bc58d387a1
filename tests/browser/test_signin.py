"""Signing in and out of the panel in a real browser: a pasted token becomes a session the page
cannot read; a refused sign-in shows the API's words; an ended session brings back the form."""
from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser.conftest import (
    REAL_SESSIONS,
    Panel,
    find,
    record_page,
    sign_in,
    wait_for,
    wait_result,
)

pytestmark = pytest.mark.lxc


def test_sign_in_page_passes_axe_and_offers_both_ways(browser: WebDriver, panel: Panel) -> None:
    browser.get(panel.url)
    find(browser, "#sign-in-account input[name=password]")
    find(browser, "#sign-in-token input[name=token]")
    assert browser.title == "Sign in — LXC Web Panel"
    record_page(browser, "sign-in")


def test_pasted_token_signs_in_and_no_secret_is_readable_by_the_page(
        browser: WebDriver, panel: Panel) -> None:
    sign_in(browser, panel, panel.admin)
    find(browser, "#containers")
    assert "(admin)" in browser.find_element(By.ID, "who-name").text
    # The session cookie is HttpOnly and the token is nowhere the page's scripts can look.
    readable = browser.execute_script(
        "return [document.cookie, JSON.stringify(localStorage), JSON.stringify(sessionStorage),"
        " document.documentElement.outerHTML, location.href].join('\\n');")
    assert panel.admin not in readable
    assert browser.execute_script("return document.cookie;") == ""
    assert browser.get_cookies(), "the session travels in a cookie"
    assert all(c["httpOnly"] and c["sameSite"] == "Strict" for c in browser.get_cookies())


def test_unknown_token_is_refused_with_the_apis_message(browser: WebDriver, panel: Panel) -> None:
    browser.get(panel.url)
    find(browser, "#sign-in-token input[name=token]").send_keys("x" * 40)
    browser.find_element(By.CSS_SELECTOR, "#sign-in-token button[type=submit]").click()
    text = wait_result(browser, "sign in: 401")
    assert "Error:" in text  # said in words, not only in red
    assert browser.find_element(By.ID, "nav").get_attribute("hidden") is not None
    # The refused secret was cleared from the form: no secret stays in the DOM.
    box = browser.find_element(By.CSS_SELECTOR, "#sign-in-token input")
    assert box.get_attribute("value") == ""


def test_sign_out_ends_the_session_on_the_server(browser: WebDriver, panel: Panel) -> None:
    sign_in(browser, panel, panel.read)
    find(browser, "#containers")
    browser.find_element(By.ID, "sign-out").click()
    find(browser, "#sign-in-token")
    wait_result(browser, "Signed out.")
    # The page's own fetch, cookie and all, is refused now: revoked, not only forgotten.
    status = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('api/v1/containers', {credentials: 'same-origin'}).then((r) => done(r.status));")
    assert status == 401


def test_an_ended_session_brings_back_the_sign_in_form(browser: WebDriver, panel: Panel) -> None:
    sign_in(browser, panel, panel.read)
    find(browser, "#containers")
    panel.end_session(browser)  # as the idle lifetime running out does
    wait_for(browser, lambda d: d.find_elements(By.ID, "sign-in-token"),
             "the next poll to find the session gone")
    wait_result(browser, "Your session has ended")


@pytest.mark.skipif(not REAL_SESSIONS, reason="host-account sign-in (PAM) is issue #15's "
                    "session half, not on this frontend yet")
def test_host_account_form_posts_username_and_password(browser: WebDriver, panel: Panel) -> None:
    browser.get(panel.url)
    find(browser, "#sign-in-account input[name=username]").send_keys("nosuchuser")
    browser.find_element(By.CSS_SELECTOR, "#sign-in-account input[name=password]").send_keys("x")
    browser.find_element(By.CSS_SELECTOR, "#sign-in-account button[type=submit]").click()
    wait_result(browser, "sign in: 401")
