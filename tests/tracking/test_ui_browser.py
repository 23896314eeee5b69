"""Review as a person would: the MLflow UI on the local store, opened in headless Chromium.

Needs the Debian packages ``chromium`` and ``chromium-driver``
(``apt-get update && apt-get install -y chromium chromium-driver``); the test skips only when
they are absent. Screenshots are saved under ``tests/artifacts/tracking/``.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from medzsad.tracking import Curve, TrackingConfig, serve_ui, tracked_run

from .conftest import ARTIFACTS_DIR
from .helpers import CONFIG_DICT, RUN_KWARGS, make_samples

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
        "--window-size=1400,1000",
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


def _wait(driver, condition, what: str) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, WAIT_S, poll_frequency=0.5).until(lambda d: condition(d))
    except TimeoutException:
        shot = ARTIFACTS_DIR / "tracking" / "mlflow-ui-timeout.png"
        driver.save_screenshot(str(shot))
        pytest.fail(f"timed out waiting for {what}; screenshot {shot}; page text:\n{_body_text(driver)[:2000]}")


_LOADED_IMAGES = """
return Array.from(document.images)
  .filter(img => img.complete && img.naturalWidth > 0 && img.src.includes(arguments[0]))
  .map(img => img.src);
"""


def _loaded_images(driver, needle: str) -> list[str]:
    return driver.execute_script(_LOADED_IMAGES, needle)


def _screenshot(driver, name: str) -> Path:
    path = ARTIFACTS_DIR / "tracking" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def test_metrics_and_overlays_are_visible_in_the_mlflow_ui(
    browser, store_dir: Path, tracking_config: TrackingConfig, client
) -> None:
    samples = make_samples(8)
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
        run.log_review(samples, "brainmri", image_threshold=0.5, pixel_threshold=0.4, panel_size=4)
    experiment_id = client.get_run(run.run_id).info.experiment_id
    overlay = f"overlays/brainmri/{samples[1].category}/{samples[1].sample_id}.png"

    # The server is waited for as long as its process runs (a loaded machine makes this slower, not red).
    with serve_ui(store_dir, port=_free_port(), timeout_s=None) as server:
        driver = browser
        # Same-origin page first, to keep MLflow's assistant panel from covering the run page.
        driver.get(f"{server.url}/health")
        driver.execute_script(
            "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
            "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
        )
        run_page = f"{server.url}/#/experiments/{experiment_id}/runs/{run.run_id}"
        query = "?workflowType=machine_learning"

        # Overview: the metrics table lists per-category and mean metrics with their values.
        driver.get(run_page + query)
        _wait(driver, lambda d: "brain/image_auroc" in _body_text(d), "the metrics table")
        text = _body_text(driver)
        for expected in ("brain/image_auroc", "0.912", "head/pixel_aupro", "0.688", "image_auroc", "0.8845"):
            assert expected in text, expected
        _screenshot(driver, "mlflow-ui-run-overview.png")

        # Model metrics: the review panel, stepped images logged with log_image(key, step).
        # Charts load lazily when scrolled into view; filter them as a reviewer would.
        from selenium.webdriver.common.by import By

        driver.get(f"{run_page}/model-metrics{query}")
        _wait(driver, lambda d: "review/brainmri" in _body_text(d), "the review chart section")
        driver.find_element(By.CSS_SELECTOR, "input[placeholder*='Search metric charts']").send_keys("review")
        _wait(driver, lambda d: _loaded_images(d, "review~brainmri~panel"), "the review panel image")
        _screenshot(driver, "mlflow-ui-review-panel.png")

        # Artifacts: one bulk overlay opens as an image, and the index table lists the samples.
        driver.get(f"{run_page}/artifacts/{overlay}{query}")
        _wait(driver, lambda d: _loaded_images(d, "blob:"), "the overlay image preview")
        shot = _screenshot(driver, "mlflow-ui-overlay.png")
        driver.get(f"{run_page}/artifacts/review/brainmri/index.json{query}")
        driver.refresh()  # a hash-only change does not make the artifact view switch files
        _wait(driver, lambda d: "outcome" in _body_text(d), "the review index table")
        _screenshot(driver, "mlflow-ui-index-table.png")
        text = _body_text(driver)
        assert all(s.sample_id in text for s in samples[:4]) and "TP" in text
    assert shot.stat().st_size > 10_000
