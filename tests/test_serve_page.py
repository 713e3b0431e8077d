"""The web page in a real browser (Debian's chromium, driven through chromium-driver): a click on
the image draws the mask the API returns for that point, pixel for pixel, and a chat answer
streams in more than one piece, equal to the API's answer. Without chromium installed (`.ci/run`
installs it) the test is skipped and says so."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import skimage.data
from PIL import Image

from edgevfm.runtime.masks import rle_to_mask
from serving import LiveServer, data_uri

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="the browser test needs Debian's chromium and "
                                "chromium-driver (apt-get install chromium chromium-driver; .ci/run installs them)")
CAT = skimage.data.chelsea()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(sam_bundle, llava_bundle, clip_bundle):
    live = LiveServer({"sam": sam_bundle, "llava": llava_bundle, "clip": clip_bundle})
    yield live
    live.stop()


def _wait(driver, script: str, seconds: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds).until(lambda d: d.execute_script(script))


def test_a_click_draws_the_apis_mask_and_chat_streams_in_pieces(browser, server, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    picture = tmp_path / "cat.png"
    Image.fromarray(CAT).save(picture)
    browser.get(server.url + "/")
    _wait(browser, "return document.getElementById('sam-model').options.length > 0 && "
                   "document.getElementById('chat-model').options.length > 0")
    browser.find_element(By.ID, "file").send_keys(str(picture))
    _wait(browser, "return document.getElementById('stage').dataset.ready === '1'")

    canvas = browser.find_element(By.ID, "image")
    width, height = canvas.size["width"], canvas.size["height"]
    ActionChains(browser).move_to_element_with_offset(canvas, int(width * 0.1), int(height * 0.05)).click().perform()
    _wait(browser, "return document.getElementById('stage').dataset.masks === '1'")
    point = browser.execute_script("return window.edgevfm.points[0]")
    drawn = browser.execute_script("""
        const c = document.getElementById('mask'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const out = new Array(c.width * c.height);
        for (let i = 0; i < out.length; i++) out[i] = d[i * 4 + 3] > 0 ? 1 : 0;
        return [c.width, c.height, out.join('')];""")
    drawn_mask = np.frombuffer(drawn[2].encode(), np.uint8).reshape(drawn[1], drawn[0]) == ord("1")
    found = server.post("/v1/sam/segment", {"model": "sam", "image": data_uri(CAT), "points": [point],
                                            "labels": [1]}).json()["masks"]
    best = max(found, key=lambda m: m["score"])
    expected = rle_to_mask(best["mask"])
    assert drawn_mask.shape == expected.shape == CAT.shape[:2]
    assert 0 < expected.sum() < expected.size  # a mask, not an empty or full canvas
    assert (drawn_mask == expected).all()
    browser.save_screenshot(str(tmp_path.parent / "page.png"))

    browser.find_element(By.ID, "chat-input").send_keys("What is in the picture?")
    browser.find_element(By.ID, "chat-send").click()
    _wait(browser, "const t = document.querySelector('.turn.assistant'); return t && t.dataset.done", 60)
    answer = browser.find_element(By.CSS_SELECTOR, ".turn.assistant")
    assert answer.get_attribute("data-done") == "1", browser.find_element(By.ID, "error").text
    assert int(answer.get_attribute("data-pieces")) > 1
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": browser.execute_script(
        "return window.edgevfm.dataUrl")}}, {"type": "text", "text": "What is in the picture?"}]}]
    api = server.post("/v1/chat/completions", {"model": "llava", "messages": messages}).json()
    assert browser.execute_script("return document.querySelector('.turn.assistant').textContent") == \
        api["choices"][0]["message"]["content"]
