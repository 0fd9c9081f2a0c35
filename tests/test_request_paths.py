"""One way in for requests: the command line (`inference`), the web service and the MLflow
model decode photos with the one decoder, read sampling options by the one rule within the same
limits, and give byte-identical images for the same seed, options and photo."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow.exceptions import MlflowException
from PIL import Image

from face_generation.inference import main as inference_main
from face_generation.runtime.family import SAMPLE, sampling_options
from face_generation.runtime.generator import load_generator
from face_generation.runtime.images import face_pixels
from face_generation.runtime.mlflow_model import GeneratorModel
from face_generation.runtime.registry import family_class, family_names
from face_generation.serving.app import create_app
from face_generation.serving.models import load_served_models
from tests.conftest import TrainedModels
from tests.faces import RESOLUTION
from tests.serving_fixtures import serving_config

SAMPLING = [name for name in family_names() if SAMPLE in family_class(name).capabilities]


@pytest.fixture(scope="module")
def client(trained: TrainedModels) -> TestClient:
    cfg = serving_config(trained)
    cfg.serve.models = {name: str(trained.checkpoints[name]) for name in SAMPLING}
    return TestClient(create_app(load_served_models(cfg), cfg))


def mlflow_model(checkpoint: Path) -> GeneratorModel:
    model = GeneratorModel()
    model.generator = load_generator(checkpoint)  # as load_context does
    return model


def decoded(base64_png: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(base64_png))))


def cli_images(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(path)) for path in sorted(folder.glob("*.png"))]


def changed_options(family: str) -> dict[str, Any]:
    """A value other than the default for each numeric option, cheap and within the limits."""
    changed: dict[str, Any] = {}
    for name, default in sampling_options(family_class(family)).items():
        if type(default) is int:
            changed[name] = 2
        elif type(default) is float:
            changed[name] = 0.5
    return changed


@pytest.mark.parametrize("family", SAMPLING)
def test_same_seed_and_options_same_images_through_every_path(
    family: str, client: TestClient, trained: TrainedModels, tmp_path: Path
) -> None:
    options = changed_options(family)
    served = client.post(
        "/generate",
        json={"model": family, "n": 2, "seed": 7, "options": options, "format": "json"},
    )
    assert served.status_code == 200, served.text
    web = [decoded(image) for image in served.json()["images"]]

    flags = [f"--option={name}={value}" for name, value in options.items()]
    checkpoint = str(trained.checkpoints[family])
    inference_main([checkpoint, "--n", "2", "--seed", "7", *flags, "--out", str(tmp_path)])
    cli = cli_images(tmp_path / "samples")

    row = pd.DataFrame([{"n": 2, "seed": 7, **options}])
    pyfunc = mlflow_model(trained.checkpoints[family]).predict(None, row)

    assert np.array_equal(np.stack(web), np.stack(cli))
    assert np.array_equal(np.stack(web), pyfunc)


def photos(face: np.ndarray) -> dict[str, bytes]:
    """One face in the encodings that decoders disagree on."""

    def saved(image: Image.Image, image_format: str, **options: Any) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=image_format, **options)
        return buffer.getvalue()

    rgb = Image.fromarray(face)
    transparent = rgb.convert("RGBA")
    alpha = np.full(face.shape[:2], 255, np.uint8)
    alpha[:, : face.shape[1] // 2] = 0  # the left half fully transparent
    transparent.putalpha(Image.fromarray(alpha))
    sixteen = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)  # I;16
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: shown turned 90° clockwise
    return {
        "16-bit.png": saved(sixteen, "PNG"),
        "palette.png": saved(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "transparent.png": saved(transparent, "PNG"),
        "cmyk.jpg": saved(rgb.convert("CMYK"), "JPEG", quality=95),
        "rotated.jpg": saved(rgb.rotate(90, expand=True), "JPEG", quality=95, exif=exif),
    }


@pytest.mark.slow
def test_photos_decode_to_the_same_pixels_and_images_through_every_path(
    client: TestClient, trained: TrainedModels, tmp_path: Path
) -> None:
    face = np.load(trained.data / "packed" / str(RESOLUTION) / "test.npy", mmap_mode="r")[0]
    checkpoint = trained.checkpoints["tiny"]
    model = mlflow_model(checkpoint)
    for name, data in photos(np.asarray(face)).items():
        served = client.post(
            "/reference",
            data={"model": "tiny", "n": "2", "seed": "3", "format": "json"},
            files=[("photos", (name, data))],
        )
        assert served.status_code == 200, f"{name}: {served.text}"
        seen = decoded(served.json()["inputs"][0])
        assert np.array_equal(seen, face_pixels(data, RESOLUTION)), name
        web = np.stack([decoded(image) for image in served.json()["images"]])

        (tmp_path / name).write_bytes(data)
        out = tmp_path / f"out-{name}"
        inference_main([str(checkpoint), "--reference", str(tmp_path / name), "--n", "2",
                        "--seed", "3", "--out", str(out)])  # fmt: skip
        cli = np.stack(cli_images(out / "references"))

        pyfunc = model.predict(None, pd.DataFrame([{"n": 2, "seed": 3, "reference": data}]))
        assert np.array_equal(web, cli), name
        assert np.array_equal(web, pyfunc), name


@pytest.mark.parametrize(
    ("option", "value", "sentence"),
    [
        ("temperature", "abc", "option temperature takes a number from 0 to 10, got 'abc'"),
        ("temperature", -3, "option temperature takes a number from 0 to 10, got -3.0"),
        ("temperature", True, "option temperature takes a number from 0 to 10, got True"),
    ],
)
def test_a_refused_option_reads_the_same_through_every_path(
    option: str, value: Any, sentence: str, client: TestClient, trained: TrainedModels
) -> None:
    served = client.post("/generate", json={"model": "vae", "n": 1, "options": {option: value}})
    assert (served.status_code, served.json()["detail"]) == (422, sentence)

    checkpoint = str(trained.checkpoints["vae"])
    text = json.dumps(value) if not isinstance(value, str) else value
    with pytest.raises(SystemExit) as failure:
        inference_main([checkpoint, "--option", f"{option}={text}"])
    assert str(failure.value) == f"[inference] error: {sentence}"

    row = pd.DataFrame([{"n": 1, "seed": 0, option: value}])
    with pytest.raises(MlflowException) as refused:
        mlflow_model(trained.checkpoints["vae"]).predict(None, row)
    assert refused.value.message == sentence


def test_an_integer_option_refuses_a_fraction_everywhere(
    client: TestClient, trained: TrainedModels
) -> None:
    sentence = "option steps takes an integer from 1 to 1000, got 2.7"
    served = client.post("/generate", json={"model": "diffusion", "options": {"steps": 2.7}})
    assert (served.status_code, served.json()["detail"]) == (422, sentence)
    with pytest.raises(SystemExit, match=f"error: {sentence}$"):
        inference_main([str(trained.checkpoints["diffusion"]), "--steps", "2.7"])
    row = pd.DataFrame([{"n": 1, "seed": 0, "steps": 2.7}])
    with pytest.raises(MlflowException, match=sentence):  # was truncated to 2
        mlflow_model(trained.checkpoints["diffusion"]).predict(None, row)


@pytest.mark.parametrize("seed", ["-1", "99999999999999999999999"])
def test_inference_refuses_the_seeds_the_service_refuses(seed: str, trained: TrainedModels) -> None:
    sentence = f"seed must be between 0 and 4294967295, got {seed}"
    with pytest.raises(SystemExit, match=f"^\\[inference\\] error: {sentence}$"):
        inference_main([str(trained.checkpoints["vae"]), "--seed", seed])


# Fuzzing the web service: every option of every family, and the other fields. -------------


def post_json(client: TestClient, path: str, body: dict[str, Any]) -> Any:
    """A JSON request as Python's json writes it: NaN and Infinity included, as a client may."""
    headers = {"Content-Type": "application/json"}
    return client.post(path, content=json.dumps(body).encode(), headers=headers)


BAD_VALUES: list[Any] = ["", "bogus", " ", -1, 0, 2.7, -1e308, 1e308, 10**30, -(10**30),
                         math.nan, math.inf, -math.inf, True, False, None, [], {}, [1]]  # fmt: skip


@pytest.mark.parametrize("family", SAMPLING)
def test_no_option_value_makes_the_service_fail(family: str, client: TestClient) -> None:
    known = sampling_options(family_class(family))
    cheap = {"steps": 1} if "steps" in known else {}  # the values that pass run the model
    for name in [*known, "nosuch", ""]:
        for value in BAD_VALUES:
            options = {**cheap, name: value}
            body = {"model": family, "n": 1, "seed": 0, "options": options}
            answer = post_json(client, "/generate", body)
            assert answer.status_code in (200, 404, 413, 422), (name, value, answer.text)
            if answer.status_code != 200:
                detail = answer.json()["detail"]
                assert isinstance(detail, str) and "\n" not in detail, (name, value, detail)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "vae", "n": 10**30},
        {"model": "vae", "seed": 10**30},
        {"model": "vae", "n": math.nan},
        {"model": "vae", "seed": -(10**30)},
        {"model": "vae", "options": []},
        {"model": "vae", "options": None},
        {"model": 5},
        {"model": ""},
        {},
    ],
)
def test_no_generate_field_makes_the_service_fail(body: dict[str, Any], client: TestClient) -> None:
    answer = post_json(client, "/generate", body)
    assert 400 <= answer.status_code < 500, answer.text
    assert "\n" not in answer.json()["detail"]


@pytest.mark.parametrize("test_faces", ["²", "٣", "-1", "1e3", "0x1", "99999999999999999999"])
def test_odd_test_face_numbers_are_refused(test_faces: str, client: TestClient) -> None:
    answer = client.post("/reference", data={"model": "tiny", "test_faces": test_faces})
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"].startswith("test faces are numbers from 0 to ")


def test_the_family_s_own_refusal_is_a_422_with_its_sentence(client: TestClient) -> None:
    for sampler in ("bogus", ""):
        answer = client.post(
            "/generate", json={"model": "diffusion", "n": 1, "options": {"sampler": sampler}}
        )
        assert answer.status_code == 422
        assert answer.json()["detail"] == f"sampler={sampler!r}: expected one of ddim, ddpm, heun"
