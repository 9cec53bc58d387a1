"""The overview and the actions in a real browser, on real containers: states, counts and figures
that refresh in place, buttons only where state and scope allow, results shown verbatim."""
from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from protocol import ops
from tests.browser.conftest import (
    Panel,
    buttons,
    find,
    record_page,
    row,
    row_state,
    settle,
    sign_in,
    wait_for,
    wait_result,
    wait_state,
)

pytestmark = pytest.mark.lxc


def cell(browser: WebDriver, name: str, column: int) -> str:
    return str(row(browser, name).find_elements(By.TAG_NAME, "td")[column].text)


def test_overview_shows_state_ip_memory_cpu_and_counts(browser: WebDriver, panel: Panel) -> None:
    running, stopped = panel.container(start=True), panel.container()
    sign_in(browser, panel, panel.admin)
    wait_state(browser, running, "running")
    wait_state(browser, stopped, "stopped")
    wait_for(browser, lambda d: "MiB" in cell(d, running, 2) or "KiB" in cell(d, running, 2),
             "the running container's memory")
    assert cell(browser, running, 3).endswith("seconds")
    assert cell(browser, running, 1)  # IPv4, or "—" on a container without a network
    assert cell(browser, stopped, 2) == "—"
    counts = browser.find_element(By.ID, "counts").text
    listed = len(panel.call(ops.ListContainers()))
    assert counts.startswith(f"{listed} containers: ")
    assert "running" in counts and "stopped" in counts
    record_page(browser, "overview")


def test_overview_filters_by_state_and_counts_each(browser: WebDriver, panel: Panel) -> None:
    running, stopped = panel.container(start=True), panel.container()
    sign_in(browser, panel, panel.read)
    wait_state(browser, running, "running")
    Select(browser.find_element(By.ID, "state-filter")).select_by_value("stopped")
    assert not row(browser, running).is_displayed()
    assert row(browser, stopped).is_displayed()
    options = [o.text for o in Select(browser.find_element(By.ID, "state-filter")).options]
    assert any(o.startswith("stopped (") for o in options), options
    assert "showing" in browser.find_element(By.ID, "counts").text


def test_overview_refresh_keeps_focus_and_scroll(browser: WebDriver, panel: Panel) -> None:
    names = [panel.container() for _ in range(3)]
    target = names[1]
    browser.set_window_size(1000, 420)  # shorter than the table: the page scrolls
    try:
        sign_in(browser, panel, panel.operate)
        start = find(browser, f'#containers tr[data-name="{target}"] button[data-action=start]')
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", start)
        start_y = browser.execute_script("return window.scrollY;")
        assert start_y > 0
        browser.execute_script("arguments[0].focus();", start)
        # Another client changes other containers while the page polls.
        panel.call(ops.StartContainer(names[0]))
        wait_state(browser, names[0], "running")
        settle(3.5)  # one more poll
        focused = browser.switch_to.active_element
        assert focused.get_attribute("data-action") == "start"
        assert focused.get_attribute("aria-label") == f"Start {target}"
        assert browser.execute_script("return window.scrollY;") == start_y
    finally:
        browser.set_window_size(1280, 900)


def test_buttons_follow_the_state_and_the_scope(browser: WebDriver, panel: Panel) -> None:
    running, stopped = panel.container(start=True), panel.container()
    expected = {
        panel.read: ({running: [], stopped: []}),
        panel.operate: ({running: ["stop", "restart", "freeze"], stopped: ["start"]}),
        panel.admin: ({running: ["stop", "restart", "freeze", "destroy"],
                       stopped: ["start", "destroy"]}),
    }
    for token, wanted in expected.items():
        sign_in(browser, panel, token)
        wait_state(browser, running, "running")
        for name, actions in wanted.items():
            assert buttons(row(browser, name).find_element(By.CLASS_NAME, "actions")) == actions
        browser.find_element(By.ID, "sign-out").click()
        find(browser, "#sign-in-token")


def test_start_freeze_unfreeze_restart_stop_from_the_page(browser: WebDriver, panel: Panel) -> None:
    name = panel.container()
    sign_in(browser, panel, panel.operate)
    for action, state in (("start", "running"), ("freeze", "frozen"), ("unfreeze", "running"),
                          ("restart", "running"), ("stop", "stopped")):
        find(browser, f'#containers tr[data-name="{name}"] button[data-action={action}]').click()
        wait_result(browser, f"{action} {name}: ok")
        wait_state(browser, name, state)
    assert panel.call(ops.ContainerInfo(name))["state"] == "STOPPED"


def test_keyboard_alone_starts_a_container(browser: WebDriver, panel: Panel) -> None:
    name = panel.container()
    sign_in(browser, panel, panel.operate)
    link = find(browser, f'#containers tr[data-name="{name}"] a')
    browser.execute_script("arguments[0].focus();", link)
    for _ in range(3):  # Tab past the link into the row's buttons
        focused = browser.switch_to.active_element
        if focused.get_attribute("data-action") == "start":
            break
        focused.send_keys(Keys.TAB)
    focused = browser.switch_to.active_element
    assert focused.get_attribute("aria-label") == f"Start {name}"
    # A visible focus indicator: the outline the style sheet gives :focus-visible.
    assert browser.execute_script(
        "return getComputedStyle(arguments[0]).outlineStyle;", focused) == "solid"
    focused.send_keys(Keys.ENTER)
    wait_result(browser, f"start {name}: ok")
    wait_state(browser, name, "running")


def test_an_action_the_api_refuses_shows_its_message_verbatim(
        browser: WebDriver, panel: Panel) -> None:
    name = panel.container()
    sign_in(browser, panel, panel.operate)
    button = find(browser, f'#containers tr[data-name="{name}"] button[data-action=start]')
    panel.call(ops.StartContainer(name))  # behind the page's back, before it polls again
    button.click()
    text = wait_result(browser, f"start {name}: 409")
    assert text == (f"Error: start {name}: 409 invalid-state: cannot start container "
                    f"'{name}': it is already running")


def test_destroy_names_the_container_and_cancel_keeps_it(browser: WebDriver, panel: Panel) -> None:
    name = panel.container()
    sign_in(browser, panel, panel.admin)
    find(browser, f'#containers tr[data-name="{name}"] button[data-action=destroy]').click()
    dialog = find(browser, "dialog[open]")
    assert f"Destroy container {name}?" in dialog.text
    record_page(browser, "destroy-dialog")
    # The safe answer has the focus; Escape cancels too.
    assert browser.switch_to.active_element.text == "Cancel"
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait_result(browser, f"destroy {name}: cancelled")
    assert any(c["container"] == name for c in panel.call(ops.ListContainers()))


def test_destroy_of_a_running_container_forces_after_confirmation(
        browser: WebDriver, panel: Panel) -> None:
    name = panel.container(start=True)
    sign_in(browser, panel, panel.admin)
    wait_state(browser, name, "running")
    find(browser, f'#containers tr[data-name="{name}"] button[data-action=destroy]').click()
    dialog = find(browser, "dialog[open]")
    assert "it will be stopped first (force)" in dialog.text
    dialog.find_element(By.XPATH, f'.//button[text()="Destroy {name}"]').click()
    wait_result(browser, f"destroy {name}: ok")
    wait_for(browser, lambda d: not d.find_elements(By.CSS_SELECTOR,
                                                    f'tr[data-name="{name}"]'), "the row to go")
    assert all(c["container"] != name for c in panel.call(ops.ListContainers()))


def test_row_state_reads_as_a_word_not_a_colour(browser: WebDriver, panel: Panel) -> None:
    name = panel.container()
    sign_in(browser, panel, panel.read)
    assert row_state(browser, name) == "stopped"
