"""The Airflow UI in a real browser: Debian's headless Chromium (installed with apt-get where missing), driven through
chromedriver, logs in, opens xgen_end_to_end, fills the trigger form's params and triggers it; the run finishes with
exactly those params, and screenshots of the form and of the finished run are kept under test-artifacts/."""

from __future__ import annotations

import urllib.request

import pytest

from tests.conftest import SMALL_CORPUS
from tests.services.services import TEST_ARTIFACTS, debian_packages, wait_for

pytestmark = [pytest.mark.service, pytest.mark.airflow, pytest.mark.slow]

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Headless in a sandbox without a GPU, a display server or outside network.
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
                  "--disable-sync", "--disable-extensions", "--no-first-run", "--window-size=1400,1100"]
UI_S = 120  # a page of the React UI on a loaded 2-core machine


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    why_not = debian_packages(["chromium", "chromium-driver"], [CHROMIUM, CHROMEDRIVER])
    if why_not:
        pytest.skip(f"no headless Chromium: {why_not}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER, log_output=str(log)))
    driver.set_page_load_timeout(UI_S)
    try:
        yield driver
    finally:
        driver.quit()


def shown(driver, css: str):
    """The element matching `css` once it is displayed and enabled (the UI renders after its API calls return)."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, UI_S).until(expected_conditions.element_to_be_clickable(("css selector", css)))


# React tracks an input's value through the prototype's setter; setting it there and sending an `input` event reaches
# the field's onChange exactly as typing does.
SET_VALUE = """
const [element, text] = arguments;
const prototype = element.tagName === "TEXTAREA" ? HTMLTextAreaElement.prototype : HTMLInputElement.prototype;
Object.getOwnPropertyDescriptor(prototype, "value").set.call(element, text);
element.dispatchEvent(new Event("input", {bubbles: true}));
"""


def replace_text(element, text: str) -> None:
    """Select all and type over it, as a user does. On this machine the form loses a keystroke of a long path now
    and then; what typing did not get into the field is then set through React's own input event."""
    from selenium.webdriver.common.keys import Keys

    element.click()
    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(Keys.BACKSPACE)
    element.send_keys(text)  # "\n" types Enter: a new line in a textarea
    if element.get_property("value") != text:
        print(f"typed {text!r}, the field holds {element.get_property('value')!r}: setting it through an input event")
        element.parent.execute_script(SET_VALUE, element, text)
    assert element.get_property("value") == text


def test_trigger_with_params_from_the_ui_in_headless_chromium(airflow, browser, tmp_path):
    client, _ = airflow
    screenshots = TEST_ARTIFACTS / "airflow-ui"
    screenshots.mkdir(parents=True, exist_ok=True)
    root = str(tmp_path / "artifacts-from-ui")
    before = {r["dag_run_id"] for r in client.call("GET", "/api/v2/dags/xgen_end_to_end/dagRuns")["dag_runs"]}

    browser.get(f"{client.base}/dags/xgen_end_to_end")  # not logged in: the UI sends the browser to its login page
    shown(browser, "input[name=username]").send_keys("admin")
    shown(browser, "input[name=password]").send_keys(client.password)
    shown(browser, "button[type=submit]").click()
    wait_for(lambda: "/dags/xgen_end_to_end" in browser.current_url, "the DAG page after logging in", UI_S)

    shown(browser, "[data-testid=trigger-dag-button]").click()
    replace_text(shown(browser, "#element_root"), root)
    replace_text(shown(browser, "#element_stages"), "sample_corpus")
    replace_text(shown(browser, "#element_overrides"), "\n".join(SMALL_CORPUS))
    browser.save_screenshot(str(screenshots / "trigger-form.png"))
    shown(browser, "[data-testid=trigger-dag-submit]").click()

    run = wait_for(lambda: [r for r in client.call("GET", "/api/v2/dags/xgen_end_to_end/dagRuns")["dag_runs"]
                            if r["dag_run_id"] not in before], "the run triggered from the UI", UI_S, every_s=2.0)[0]
    assert run["run_type"] == "manual"
    assert {key: run["conf"][key] for key in ("profile", "root", "stages", "overrides")} == {
        "profile": "tiny", "root": root, "stages": ["sample_corpus"], "overrides": SMALL_CORPUS}
    assert client.wait_run("xgen_end_to_end", run["dag_run_id"]) == "success"
    states = client.task_states("xgen_end_to_end", run["dag_run_id"])
    assert {task for task, (state, _) in states.items() if state == "success"} == {"sample_corpus", "report"}

    browser.get(f"{client.base}/dags/xgen_end_to_end/runs/{urllib.request.quote(run['dag_run_id'])}")
    shown(browser, "[data-testid=trigger-dag-button]")
    browser.save_screenshot(str(screenshots / "finished-run.png"))
    assert (screenshots / "trigger-form.png").stat().st_size > 10_000
