"""The web page in a real browser: headless Chromium (Debian's `chromium`), driven by Selenium
through Debian's `chromium-driver`, against the service live on 127.0.0.1.

Without Chromium the test skips with the reason, except in CI (CI set), where it fails: .ci/run
installs both packages, so a missing browser there is a broken machine, not a reason to skip.
A screenshot of the page is saved to test-artifacts/ (FACE_GENERATION_TEST_ARTIFACTS elsewhere).
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from face_generation.runtime.generator import generate
from face_generation.runtime.images import save_png, to_uint8
from face_generation.serving.app import create_app
from face_generation.serving.models import load_served_models
from tests.conftest import TrainedModels
from tests.faces import REPO, RESOLUTION
from tests.serving_fixtures import live_server, serving_config

ARTIFACTS = Path(os.environ.get("FACE_GENERATION_TEST_ARTIFACTS", REPO / "test-artifacts"))
TIMEOUT_S = 120  # for the page to show a result; a busy 2-core machine needs seconds


def shown_images(driver: object, selector: str) -> list[np.ndarray] | None:
    """The pixels of every image under `selector`, once all of them have loaded; else None."""
    from selenium.webdriver.common.by import By

    images = driver.find_elements(By.CSS_SELECTOR, f"{selector} img")  # type: ignore[attr-defined]
    loaded = driver.execute_script(  # type: ignore[attr-defined]
        "return arguments[0].every(image => image.complete && image.naturalWidth > 0)", images
    )
    if not images or not loaded:
        return None
    sources = [image.get_attribute("src").split(",", 1)[1] for image in images]
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(source)))) for source in sources]


@pytest.mark.slow
def test_page_generates_a_grid_and_variants_of_an_uploaded_photo(
    trained: TrainedModels, browser: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = browser
    cfg = serving_config(trained)
    models = load_served_models(cfg)
    wait = WebDriverWait(driver, TIMEOUT_S)  # type: ignore[arg-type]

    def fill(form: str, **values: object) -> None:
        for name, value in values.items():
            field = driver.find_element(By.CSS_SELECTOR, f"{form} [name={name}]")  # type: ignore[attr-defined]
            field.clear()
            field.send_keys(str(value))
        driver.find_element(By.CSS_SELECTOR, f"{form} button").click()  # type: ignore[attr-defined]

    with live_server(create_app(models, cfg), cfg.serve) as url:
        driver.get(url)  # type: ignore[attr-defined]
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        Select(driver.find_element(By.ID, "model")).select_by_value("dcgan")  # type: ignore[attr-defined]

        fill("#generate-form", seed=3, n=6)
        grid = wait.until(lambda d: shown_images(d, ".result.generate"))
        expected = to_uint8(generate(models["dcgan"].generator, 6, 3))
        assert len(grid) == 6 and all(
            np.array_equal(a, b) for a, b in zip(grid, expected, strict=True)
        )
        meta = driver.find_element(By.CSS_SELECTOR, ".result.generate .meta").text  # type: ignore[attr-defined]
        assert all(part in meta for part in ("dcgan", "version step 6", "seed 3", " s"))
        link = driver.find_element(By.CSS_SELECTOR, ".result.generate a")  # type: ignore[attr-defined]
        assert link.get_attribute("download").endswith(".png")  # each image downloads as a PNG

        # a generated face as the reference photo: the page and its screenshot show no real face
        reference = save_png(grid[0], tmp_path / "reference.png")
        Select(driver.find_element(By.ID, "model")).select_by_value("tiny")  # type: ignore[attr-defined]
        driver.find_element(By.CSS_SELECTOR, "#reference-form [name=photos]").send_keys(
            str(reference)
        )  # type: ignore[attr-defined]
        fill("#reference-form", n=3, seed=1)
        row = wait.until(lambda d: shown_images(d, ".result.reference"))
        assert len(row) == 4 and np.array_equal(row[0], grid[0])  # the photo, then its variants
        assert all(image.shape == (RESOLUTION, RESOLUTION, 3) for image in row)

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS / "serving-page.png"))  # type: ignore[attr-defined]

        fill("#generate-form", n=1000)  # a refusal: its reason on the page
        error = wait.until(lambda d: d.find_element(By.ID, "error").text)
        assert error == "n must be between 1 and 64, got 1000"
