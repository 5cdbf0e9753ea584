"""`resail studio` in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven
by selenium loads the page from a uvicorn server on a free 127.0.0.1 port, opens a validation map,
clicks a segment on the synthesized image, picks candidate 1 and sees the image change.
`.ci/run` installs Chromium when it is missing; the test skips only where it is not installed."""
from __future__ import annotations

import shutil
import socket
import threading
import time

import cv2
import numpy as np
import pytest
import torch

from tests.fixtures.studio import guidance_sensitive_run

pytest.importorskip("fastapi", reason="fastapi is not installed (pip install -e .[dev])")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[dev])")
pytest.importorskip("uvicorn", reason="uvicorn is not installed")


def _browser() -> tuple[str, str]:
    chrome = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if chrome is None or driver is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver; .ci/run does it)")
    return chrome, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from resail_studio.server import create_app
    from resail_train.synthesis import Synthesizer

    _browser()
    run_dir, cache_dir = guidance_sensitive_run(tmp_path_factory)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    syn = Synthesizer.load(run_dir, cache_dir, device="cpu")
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(syn), host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    t0 = time.time()
    while not srv.started:
        if time.time() - t0 > 30 or not th.is_alive():
            pytest.fail("the studio server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", syn
    srv.should_exit = True
    th.join(10)
    syn.close()
    torch.set_num_threads(n)


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service

    chrome, driver = _browser()
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(a)
    opts.binary_location = chrome
    try:
        d = webdriver.Chrome(service=Service(driver), options=opts)
    except Exception as e:  # a driver/browser version mismatch is an environment problem, say which
        pytest.skip(f"Chromium could not be started by selenium: {str(e).splitlines()[0]}")
    yield d
    d.quit()


PIXELS_JS = """
const img = document.getElementById('synth-img');
const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
return Array.from(ctx.getImageData(0, 0, c.width, c.height).data);
"""


def test_click_segment_pick_candidate_image_changes(server, browser):
    import httpx
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, syn = server
    d = browser
    wait = WebDriverWait(d, 60)
    d.get(url + "/")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '.example[data-image="val_000"]'))
    d.find_element(By.CSS_SELECTOR, '.example[data-image="val_000"]').click()
    wait.until(lambda d: d.execute_script("return document.body.dataset.version") == "1")
    wait.until(lambda d: d.execute_script("const i = document.getElementById('synth-img'); "
                                          "return i.complete && i.naturalWidth > 0"))
    # the legend lists the class names
    names = [e.text for e in d.find_elements(By.CSS_SELECTOR, ".legend .name")]
    assert names[:len(syn.meta.classes)] == [c.name for c in syn.meta.classes]
    state = d.execute_script("return S.map")
    seg = next(s for s in state["segments"] if s["n_candidates"] >= 2 and s["area"] >= 40)
    edit_segs = syn.online.decompose(np.asarray(d.execute_script("return Array.from(S.labels)")).reshape(
        state["height"], state["width"]))
    s = edit_segs[seg["index"]]
    ys, xs = np.nonzero(s.mask)
    k = len(ys) // 2
    x, y = int(xs[k] + s.box[1]), int(ys[k] + s.box[0])
    before = d.execute_script(PIXELS_JS)

    stage = d.find_element(By.ID, "stage-image")  # select mode is the default tool
    w, h = stage.size["width"], stage.size["height"]
    ox, oy = (x + 0.5) / state["width"] * w - w / 2, (y + 0.5) / state["height"] * h - h / 2
    ActionChains(d).move_to_element_with_offset(stage, int(ox), int(oy)).click().perform()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '.cand[data-rank="1"]'))
    title = d.find_element(By.ID, "candidates-title").text.lower()  # (CSS upper-cases headings)
    assert f"segment {seg['index']}" in title and seg["class_name"].lower() in title
    assert len(d.find_elements(By.CSS_SELECTOR, ".cand")) == seg["n_candidates"]
    assert "chosen" in d.find_element(By.CSS_SELECTOR, '.cand[data-rank="0"]').get_attribute("class")

    d.find_element(By.CSS_SELECTOR, '.cand[data-rank="1"]').click()
    wait.until(lambda d: d.execute_script("return document.body.dataset.version") == "2")
    wait.until(lambda d: "chosen" in d.find_element(By.CSS_SELECTOR, '.cand[data-rank="1"]').get_attribute("class"))
    after = d.execute_script(PIXELS_JS)
    assert len(after) == len(before) == state["width"] * state["height"] * 4
    assert after != before, "the synthesized image did not change after picking candidate 1"
    # and what the page shows is the server's local edit
    src = d.find_element(By.ID, "synth-img").get_attribute("src")
    png = httpx.get(src).content
    served = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    shown = np.asarray(after, np.uint8).reshape(state["height"], state["width"], 4)[:, :, :3]
    assert np.array_equal(shown, served)
    st = httpx.get(f"{url}/api/maps/{state['map_id']}").json()
    assert st["overrides"] == {str(seg["index"]): 1}
