"""Create and clone from the page: templates, stores and options from GET /api/v1/templates,
progress while a create runs, the API's reason when a template fails."""
from __future__ import annotations

import os

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from protocol import ops
from tests.browser.conftest import Panel, find, record_page, sign_in, wait_for, wait_result
from tests.conftest import new_name

pytestmark = pytest.mark.lxc


def fill_create(browser: WebDriver, name: str, template: str) -> None:
    form = find(browser, "#create-form")
    Select(form.find_element(By.NAME, "template")).select_by_value(template)
    form.find_element(By.NAME, "name").send_keys(name)


def exists(panel: Panel, name: str) -> bool:
    return any(c["container"] == name for c in panel.call(ops.ListContainers()))


def test_create_shows_progress_while_it_runs_then_the_result(
        browser: WebDriver, panel: Panel) -> None:
    name = new_name()
    sign_in(browser, panel, panel.admin, "#/new")
    fill_create(browser, name, "slow")  # a template that takes 3 s
    browser.find_element(By.CSS_SELECTOR, "#create-form button[type=submit]").click()
    progress = find(browser, "#create-form .progress:not([hidden])")
    assert progress.find_elements(By.TAG_NAME, "progress")
    assert f"Creating {name} from slow:" in progress.text
    wait_for(browser, lambda d: " 1 s" in progress.text or " 2 s" in progress.text,
             "the seconds to count")
    submit = browser.find_element(By.CSS_SELECTOR, "#create-form button[type=submit]")
    assert not submit.is_enabled()
    record_page(browser, "create-progress")
    wait_result(browser, f"create {name}: ok")
    assert exists(panel, name)


def test_options_offered_are_the_templates_own(browser: WebDriver, panel: Panel) -> None:
    name = new_name()
    sign_in(browser, panel, panel.admin, "#/new")
    fill_create(browser, name, "recorder")
    options = find(browser, "#create-form fieldset.options")
    labels = [label.text for label in options.find_elements(By.TAG_NAME, "label")]
    assert labels == ["--flavor", "--release"]
    options.find_element(By.NAME, "flavor").send_keys("vanilla")
    record_page(browser, "create")
    browser.find_element(By.CSS_SELECTOR, "#create-form button[type=submit]").click()
    wait_result(browser, f"create {name}: ok")
    with open(os.path.join(panel.world.lxcpath, name, "template-args")) as f:
        assert "--flavor=vanilla" in f.read().split()
    # A template whose values are a list: offered as a choice, not typed.
    Select(browser.find_element(By.CSS_SELECTOR, "#create-form select[name=template]")
           ).select_by_value("debian")
    release = Select(find(browser, "#create-form fieldset.options select[name=release]"))
    assert [o.get_attribute("value") for o in release.options] == ["", "bookworm"]


def test_a_failing_template_shows_its_reason_verbatim(browser: WebDriver, panel: Panel) -> None:
    name = new_name()
    sign_in(browser, panel, panel.admin, "#/new")
    fill_create(browser, name, "failing")
    browser.find_element(By.CSS_SELECTOR, "#create-form button[type=submit]").click()
    text = wait_result(browser, f"Creating {name} from failing: 500 operation-failed: ")
    assert "disk quota exceeded while unpacking" in text
    assert not exists(panel, name)


def test_clone_a_stopped_container_from_the_page(browser: WebDriver, panel: Panel) -> None:
    source, copy = panel.container(), new_name()
    running = panel.container(start=True)
    sign_in(browser, panel, panel.admin, "#/new")
    form = find(browser, "#clone-form")
    offered = wait_for(browser, lambda d: [o.get_attribute("value") for o in Select(
        form.find_element(By.NAME, "clone")).options] or None, "the clone sources")
    assert source in offered and running not in offered
    Select(form.find_element(By.NAME, "clone")).select_by_value(source)
    form.find_element(By.NAME, "name").send_keys(copy)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_result(browser, f"clone {source} as {copy}: ok")
    assert exists(panel, copy)
