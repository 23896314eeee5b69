"""Review as a radiologist would: the MLflow UI on the local store, opened in headless Chromium.

Needs the Debian packages ``chromium`` and ``chromium-driver``
(``apt-get update && apt-get install -y chromium chromium-driver``); the test skips only when
they are absent. Every wait is on a condition (the UI can take a minute on a loaded machine).
Screenshots are saved under ``tests/artifacts/tracking/``; docs/tracking.md shows them.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from medzsad.tracking import Curve, TrackingConfig, serve_ui, tracked_run

from .conftest import ARTIFACTS_DIR
from .helpers import CONFIG_DICT, RUN_KWARGS, make_brain, make_volume

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_S = 600  # a hang guard for page renders, not a speed limit: each wait ends as soon as its condition holds

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1440,1000",
        "--force-device-scale-factor=1",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    # An explicit driver path keeps Selenium Manager from looking for a driver on the network.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _body_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _wait(driver, condition, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.3).until(lambda d: condition(d))
    except TimeoutException:
        driver.switch_to.default_content()
        shot = _screenshot(driver, "mlflow-ui-timeout.png")
        pytest.fail(f"timed out waiting for {what}; screenshot {shot}; page text:\n{_body_text(driver)[:2000]}")


def _screenshot(driver, name: str) -> Path:
    path = ARTIFACTS_DIR / "tracking" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


_LOADED_IMAGES = """
return Array.from(document.images)
  .filter(img => img.complete && img.naturalWidth > 0 && img.src.includes(arguments[0]))
  .map(img => img.src);
"""


def _review_samples() -> list:
    samples = make_brain(10)
    # Scores above 1 make a text sort ("12.5" < "3.25") differ from a numeric one.
    samples[3] = dataclasses.replace(samples[3], score=12.5)
    samples[5] = dataclasses.replace(samples[5], score=3.25)
    samples[2] = dataclasses.replace(samples[2], score=0.93)  # a normal scored high: a false positive
    return samples + make_volume()


def _canvas_box(driver, frame) -> dict:
    """The case canvas's box in the top window (CSS px), found through the review frame."""
    outer = driver.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.x, r.y];", frame)
    driver.switch_to.frame(frame)
    inner = driver.execute_script(
        "const r = document.getElementById('view').getBoundingClientRect();"
        "return {x: r.x, y: r.y, w: r.width, h: r.height, vw: innerWidth, vh: innerHeight};"
    )
    driver.switch_to.default_content()
    top = driver.execute_script("return [innerWidth, innerHeight];")
    return {"x": outer[0] + inner["x"], "y": outer[1] + inner["y"], "w": inner["w"], "h": inner["h"],
            "in_frame": inner["x"] >= 0 and inner["y"] >= 0 and inner["x"] + inner["w"] <= inner["vw"]
            and inner["y"] + inner["h"] <= inner["vh"], "top": top}  # fmt: skip


def _visible_pixels(shot: Path, box: dict) -> np.ndarray:
    from PIL import Image

    image = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
    crop = image.crop((int(box["x"]), int(box["y"]), int(box["x"] + box["w"]), int(box["y"] + box["h"])))
    return np.asarray(crop)


def _case(driver) -> str:
    return driver.execute_script("return document.getElementById('view').dataset.case")


def _column(driver, key: str) -> list[str]:
    return driver.execute_script(
        "const k = arguments[0]; const ths = [...document.querySelectorAll('#worklist th')];"
        "const col = ths.findIndex(th => th.dataset.k === k);"
        "return [...document.querySelectorAll('#worklist tbody tr')].map(tr => tr.children[col].textContent);",
        key,
    )


def test_review_page_in_the_mlflow_ui(browser, store_dir: Path, tracking_config: TrackingConfig, client) -> None:
    samples = _review_samples()
    with tracked_run(tracking_config, "zero-shot-eval", config_dict=CONFIG_DICT, **RUN_KWARGS) as run:
        run.log_eval(
            {
                "brain": {"image_auroc": 0.912, "pixel_aupro": 0.734},
                "head": {"image_auroc": 0.857, "pixel_aupro": 0.688},
                "mean": {"image_auroc": 0.8845, "pixel_aupro": 0.711},
            }
        )
        x = np.linspace(0, 1, 30)
        run.log_curves("roc", {"brain": Curve(x, x**0.3, 0.912), "head": Curve(x, x**0.5, 0.857)})
        summary = run.log_review(
            samples, "brainmri", image_threshold=0.5, pixel_threshold=0.4, panel_size=4,
            threshold_origin="fixed 0.5 / 0.4, not calibrated", context={"method": "anomalyclip"},
        )  # fmt: skip
    assert summary.page_file == "review/brainmri/review.html"
    logged = client.get_run(run.run_id)
    experiment = client.get_experiment(logged.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    # The server is waited for as long as its process runs (a loaded machine makes this slower, not red).
    with serve_ui(store_dir, port=_free_port(), timeout_s=None) as server:
        driver = browser
        # Same-origin page first, to keep MLflow's assistant panel from covering the run page.
        driver.get(f"{server.url}/health")
        driver.execute_script(
            "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
            "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
        )
        # The URL `medzsad ui` prints opens the experiment on its runs table (MLflow 3.17 picks the
        # GenAI or ML view from the query or the browser's last choice, not the experiment's kind).
        driver.get(server.runs_urls(store_dir)["medzsad/zero-shot-eval"])
        _wait(driver, lambda d: logged.info.run_name in _body_text(d), "the run in the experiment's runs table")
        _screenshot(driver, "mlflow-ui-experiment-runs.png")

        # The review page, from the run's Artifacts tab, in MLflow's sandboxed HTML frame.
        run_page = f"{server.url}/#/experiments/{experiment.experiment_id}/runs/{run.run_id}"
        driver.get(f"{run_page}/artifacts/{summary.page_file}?workflowType=machine_learning")
        frame = _wait(
            driver, lambda d: d.find_elements(By.CSS_SELECTOR, "iframe.mlflow-html-iframe"), "the HTML frame"
        )[0]
        driver.switch_to.frame(frame)
        _wait(driver, lambda d: d.execute_script("return document.getElementById('view').dataset.ready === '1'"),
              "the first case drawn")  # fmt: skip
        first = driver.execute_script("return document.getElementById('view').dataset.case")
        driver.switch_to.default_content()
        box = _canvas_box(driver, frame)
        shot = _screenshot(driver, "review-page-case.png")
        # Visible: inside the frame's viewport and the window's, with real pixels on screen.
        assert box["in_frame"], box
        assert box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["w"] <= box["top"][0], box
        assert box["y"] + box["h"] <= box["top"][1] and box["w"] >= 200, box
        pixels = _visible_pixels(shot, box)
        assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200, "the case image is blank"
        assert first == samples[2].sample_id, "the worst false positive is the first case"

        driver.switch_to.frame(frame)
        # Worst first: the false positive leads the worklist.
        assert _column(driver, "outcome")[0] == "FP"
        # Sort by score, numerically: descending, then ascending.
        driver.find_element(By.CSS_SELECTOR, "th[data-k=score]").click()
        scores = [float(v) for v in _column(driver, "score")]
        assert scores == sorted(scores, reverse=True) and scores[0] == 12.5 and scores[1] == 3.25
        driver.find_element(By.CSS_SELECTOR, "th[data-k=score]").click()
        scores = [float(v) for v in _column(driver, "score")]
        assert scores == sorted(scores)
        # Keyboard: the next case.
        ids = _column(driver, "id")
        driver.find_element(By.CSS_SELECTOR, "#worklist tbody tr").click()
        _wait(driver, lambda d: _case(d) == ids[0], "row 1")
        driver.find_element(By.TAG_NAME, "body").send_keys("j")
        _wait(driver, lambda d: _case(d) == ids[1], "row 2")
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_DOWN)
        _wait(driver, lambda d: _case(d) == ids[2], "row 3")

        # A volume: filter to it, start at its first slice, scroll through every slice.
        from selenium.webdriver.support.ui import Select

        Select(driver.find_element(By.ID, "fVol")).select_by_value("vol-7f3a")
        driver.find_element(By.CSS_SELECTOR, "th[data-k=slice]").click()
        slices = [int(v) for v in _column(driver, "slice")]
        assert slices == list(range(14))
        driver.find_element(By.CSS_SELECTOR, "#worklist tbody tr").click()
        seen = []
        for z in range(14):
            _wait(driver, lambda d, z=z: _case(d) == f"vol-7f3a-{z:03d}",
                  f"slice {z}")  # fmt: skip
            seen.append(z)
            if z == 6:  # the nodule's centre: lung window, for the docs
                driver.find_element(By.TAG_NAME, "body").send_keys("6")
                driver.switch_to.default_content()
                _screenshot(driver, "review-page-volume.png")
                driver.switch_to.frame(frame)
                assert "lesion hit" in driver.find_element(By.ID, "stats").text
            driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
        assert seen == list(range(14))
        # The threshold control: raised above every map value, the prediction misses the nodule.
        driver.execute_script("const t = $('thr'); t.value = 255; t.dispatchEvent(new Event('input'))")
        _wait(driver, lambda d: "lesion MISSED" in d.find_element(By.ID, "stats").text or
              "predicted 0 px" in d.find_element(By.ID, "stats").text, "the threshold to apply")  # fmt: skip
        driver.switch_to.default_content()

        # The image cards stay: the panel on the Model metrics tab, image visible.
        driver.get(f"{run_page}/model-metrics?workflowType=machine_learning")
        _wait(driver, lambda d: "review/brainmri" in _body_text(d), "the review chart section")
        driver.find_element(By.CSS_SELECTOR, "input[placeholder*='Search metric charts']").send_keys("review")
        _wait(driver, lambda d: d.execute_script(_LOADED_IMAGES, "review~brainmri~panel"), "the review panel image")
        _screenshot(driver, "mlflow-ui-review-panel.png")
