"""The web demo in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`,
driven by Selenium; nothing is downloaded) against `python -m dsvl_exp.serve` on 127.0.0.1.
`make test-browser` installs the browser and runs this file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from helpers import start_cli
from inference_fixtures import chat_script_answers

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# Where the lead / CI can look at the page after a run (the copy under tmp_path is the test's own).
SCREENSHOT_COPY = os.environ.get("DSVL_SCREENSHOT", "")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="Chromium not installed: `make test-browser` (apt-get install chromium chromium-driver)"),
]


def free_port() -> int:
    from dsvl_exp.training.distributed import free_port as pick

    return pick()


@pytest.fixture()
def server(trained_run, tmp_path):
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    process = start_cli(
        [sys.executable, "-m", "dsvl_exp.serve", str(trained_run), "--host", "127.0.0.1", "--port", str(port),
         "--greedy", "--max-new-tokens", "8"],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the server did not come up:\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)
    log.close()


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def ask(driver, question: str, images: list[str] = ()) -> str:
    """Attach images, type the question, press Enter; the final answer once the box is usable again."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 120, poll_frequency=0.25)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#question textarea"))  # the page renders after load
    before = len(driver.find_elements(By.CSS_SELECTOR, '#chatbot [data-testid="bot"]'))
    if images:
        upload = driver.find_element(By.CSS_SELECTOR, "#question input[type=file]")
        # chromedriver appends to a `multiple` input's earlier files; a user's file dialog replaces them
        driver.execute_script("arguments[0].value = '';", upload)
        upload.send_keys("\n".join(images))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#question img")) == len(images))
    box = driver.find_element(By.CSS_SELECTOR, "#question textarea")
    box.send_keys(question)
    box.send_keys(Keys.ENTER)

    def answered(d):  # a new answer, and Gradio's progress trackers hidden again: the event has ended
        bots = d.find_elements(By.CSS_SELECTOR, '#chatbot [data-testid="bot"]')
        trackers = d.find_elements(By.CSS_SELECTOR, '#chatbot [data-testid="status-tracker"], #question [data-testid="status-tracker"]')
        return len(bots) > before and all("hide" in t.get_attribute("class").split() for t in trackers) and bots[-1].text.strip()

    wait.until(answered)
    return driver.find_elements(By.CSS_SELECTOR, '#chatbot [data-testid="bot"]')[-1].text.strip()


def test_browser_chat_equals_chat_script(server, browser, trained_run, shape_pictures, tmp_path):
    from selenium.webdriver.common.by import By

    red, blue = str(shape_pictures["circle"]), str(shape_pictures["square"])
    expected = chat_script_answers(trained_run, [
        {"images": [red], "question": "What colour is the shape in image 1?"},
        {"images": [blue], "question": "What shape is in image 2?"},
        {"clear": True},
        {"question": "What shape is in image 2?"},
    ], tmp_path)
    browser.get(server)
    assert ask(browser, "What colour is the shape in image 1?", [red]) == expected[0]["answer"]
    assert ask(browser, "What shape is in image 2?", [blue]) == expected[1]["answer"]  # second round, history kept
    user_images = browser.find_elements(By.CSS_SELECTOR, '#chatbot [data-testid="user"] img')
    assert len(user_images) == 2
    screenshot = tmp_path / "serve_page.png"
    browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    if SCREENSHOT_COPY:
        shutil.copy(screenshot, SCREENSHOT_COPY)
    browser.find_element(By.CSS_SELECTOR, "#clear").click()
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(lambda d: not d.find_elements(By.CSS_SELECTOR, '#chatbot [data-testid="bot"]'))
    assert ask(browser, "What shape is in image 2?") == expected[2]["answer"]  # cleared: no history, no images
