"""The web service's API through FastAPI's test client: every endpoint, determinism against
the CLI and the MLflow model, every refusal, and concurrency. The page in a real browser is
tests/test_serving_browser.py; the load test is benchmarks/serve.py."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from omegaconf import OmegaConf
from PIL import Image

from face_generation.config import compose
from face_generation.inference import main as inference_main
from face_generation.runtime.family import Family
from face_generation.runtime.generator import (
    generate,
    load_generator,
    photo_refusal,
    takes_photos,
)
from face_generation.runtime.images import to_uint8
from face_generation.serving.app import create_app
from face_generation.serving.models import ServedModel, load_served_models
from face_generation.serving.uploads import UploadLimits, check_photo, decode_face
from tests.conftest import TrainedModels
from tests.faces import REPO, RESOLUTION, SPLIT_SIZES
from tests.serving_fixtures import (
    decoded,
    encoded,
    load_models,
    png_claiming,
    serving_config,
    with_limits,
)
from tests.tiny_family import TinyFamily
from tests.tracking_fixtures import MlflowServer


@pytest.fixture(scope="module")
def models(trained: TrainedModels) -> dict[str, ServedModel]:
    return load_models(trained)


@pytest.fixture(scope="module")
def client(trained: TrainedModels, models: dict[str, ServedModel]) -> Iterator[TestClient]:
    with TestClient(create_app(models, serving_config(trained))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def faces(trained: TrainedModels) -> np.ndarray:
    """The packed test faces, uint8 N×R×R×3 (uploaded at 3× their size)."""
    return np.load(trained.data / "packed" / str(RESOLUTION) / "test.npy")


def photo(face: np.ndarray, image_format: str = "PNG") -> bytes:
    big = Image.fromarray(face).resize((3 * RESOLUTION, 3 * RESOLUTION))
    return encoded(np.asarray(big), image_format)


def images_of(response: Any) -> list[np.ndarray]:
    assert response.status_code == 200, response.text
    return [decoded(image) for image in response.json()["images"]]


def refusal(response: Any, status: int) -> str:
    """The one-line reason of a refused request."""
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and detail
    return detail


# The page and the listing. -------------------------------------------------------------------


def test_page_is_served_with_its_files_and_nothing_from_elsewhere(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
        assert "://" not in response.text  # works offline: no CDN, no font service
    assert "/static/app.js" in page.text and "://" not in page.text
    docs = client.get("/docs")  # offline too: FastAPI's own loads Swagger UI from a CDN
    assert docs.status_code == 200 and "/static/docs.js" in docs.text and "://" not in docs.text
    script = client.get("/static/docs.js")
    assert script.status_code == 200 and "://" not in script.text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/health", "/models", "/generate", "/reference", "/reconstruct"} <= set(paths)


def test_health_and_models_describe_every_model(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "models": ["vae", "dcgan", "tiny"]}
    listed = {model["name"]: model for model in client.get("/models").json()}
    assert listed["vae"]["inputs"] == {"generate": True, "reference": False, "reconstruct": True}
    assert listed["dcgan"]["inputs"] == {"generate": True, "reference": False, "reconstruct": False}
    assert listed["tiny"]["inputs"] == {"generate": True, "reference": True, "reconstruct": False}
    assert listed["vae"]["options"] == {"temperature": 1.0} and listed["tiny"]["options"] == {
        "scale": 1.0
    }
    assert listed["tiny"]["condition"] == "tiny/embedding" and listed["vae"]["condition"] is None
    for model in listed.values():
        assert model["version"] == "step 6" and model["resolution"] == RESOLUTION
        assert model["test_faces"] == SPLIT_SIZES["test"]
        assert model["family"] == model["name"]


def test_a_models_folder_is_served_without_what_makes_no_images(
    trained: TrainedModels, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make serve` after `make run` finds the face encoder's model.pt beside the generators:
    it serves the rest, says in one line what it skipped, and /models answers."""
    cfg = compose("config", [f"paths.models={trained.root / 'models'}", "serve.device=cpu"])
    served = load_served_models(cfg)
    assert "encoder" in trained.checkpoints and "encoder" not in served
    assert set(served) == set(trained.checkpoints) - {"encoder"}
    encoder = trained.checkpoints["encoder"]
    assert capsys.readouterr().out == (
        f"[serve] skipped encoder ({encoder}): the encoder family makes no images (it embeds "
        "faces)\n"
    )
    with TestClient(create_app(served, cfg)) as client:
        assert client.get("/models").status_code == 200

    cfg.serve.models = {"faces": str(encoder)}  # named on purpose: an error, not a skip
    with pytest.raises(ValueError, match=r"serve.models.faces=.*makes no images"):
        load_served_models(cfg)


# Generating. ---------------------------------------------------------------------------------


def test_same_seed_same_images_as_the_cli_and_the_mlflow_model(
    client: TestClient, trained: TrainedModels, tmp_path: Path
) -> None:
    import mlflow.pyfunc
    import pandas as pd

    from face_generation.families.vae import VAEFamily
    from face_generation.runtime.mlflow_model import (
        CHECKPOINT_ARTIFACT,
        MODEL_CODE,
        model_signature,
    )

    request = {"model": "vae", "n": 3, "seed": 5, "format": "json"}
    served = images_of(client.post("/generate", json=request))
    assert len(served) == 3 and served[0].shape == (RESOLUTION, RESOLUTION, 3)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(served, images_of(client.post("/generate", json=request)), strict=True)
    )
    other = images_of(client.post("/generate", json={**request, "seed": 6}))
    assert not any(np.array_equal(a, b) for a, b in zip(served, other, strict=True))

    inference_main(
        [str(trained.checkpoints["vae"]), "--n", "3", "--seed", "5", "--out", str(tmp_path)]
    )
    cli = [np.asarray(Image.open(path)) for path in sorted((tmp_path / "samples").glob("*.png"))]
    assert all(np.array_equal(a, b) for a, b in zip(served, cli, strict=True))

    folder = tmp_path / "mlflow-model"
    mlflow.pyfunc.save_model(
        folder,
        python_model=str(MODEL_CODE),
        artifacts={CHECKPOINT_ARTIFACT: str(trained.checkpoints["vae"])},
        signature=model_signature(VAEFamily, RESOLUTION),
        pip_requirements=["torch"],  # skips inferring requirements in a subprocess
    )
    pyfunc = mlflow.pyfunc.load_model(str(folder)).predict(pd.DataFrame({"n": [3], "seed": [5]}))
    assert np.array_equal(np.stack(served), pyfunc)


def test_options_pass_through_to_the_family(client: TestClient, trained: TrainedModels) -> None:
    request = {"model": "dcgan", "n": 2, "seed": 1, "format": "json"}
    cooler = images_of(client.post("/generate", json={**request, "options": {"temperature": 0.5}}))
    expected = to_uint8(
        generate(load_generator(trained.checkpoints["dcgan"]), 2, 1, temperature=0.5)
    )
    assert all(np.array_equal(a, b) for a, b in zip(cooler, expected, strict=True))
    assert not np.array_equal(cooler[0], images_of(client.post("/generate", json=request))[0])
    whole = client.post("/generate", json={**request, "options": {"temperature": 1}})  # JSON's 1.0
    assert images_of(whole)[0].shape == (RESOLUTION, RESOLUTION, 3)


def test_png_grid_with_what_made_it_in_the_headers(client: TestClient) -> None:
    request = {"model": "dcgan", "n": 5, "seed": 2}
    response = client.post("/generate", json=request)  # png is the default
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-model"] == "dcgan" and response.headers["x-seed"] == "2"
    assert (
        response.headers["x-model-version"] == "step 6"
        and float(response.headers["x-seconds"]) >= 0
    )
    grid = np.asarray(Image.open(io.BytesIO(response.content)))
    cell = RESOLUTION + 2
    assert grid.shape == (2 * cell + 2, 3 * cell + 2, 3)  # 5 images: 3 columns, 2 rows
    first = images_of(client.post("/generate", json={**request, "format": "json"}))[0]
    assert np.array_equal(grid[2 : 2 + RESOLUTION, 2 : 2 + RESOLUTION], first)


def test_default_count_comes_from_the_config(client: TestClient, trained: TrainedModels) -> None:
    result = client.post("/generate", json={"model": "dcgan", "format": "json"}).json()
    assert len(result["images"]) == serving_config(trained).serve.default_n
    assert result["model"] == "dcgan" and result["version"] == "step 6" and result["seed"] == 0
    assert result["options"] == {"temperature": 1.0}  # every option as used, asked for or not


# Reference photos and reconstructions. -------------------------------------------------------


def test_reference_photos_give_seeded_variants_of_each(
    client: TestClient, models: dict[str, ServedModel], faces: np.ndarray
) -> None:
    files = [
        ("photos", ("a.png", photo(faces[0]), "image/png")),
        ("photos", ("b.jpg", photo(faces[1], "JPEG"), "image/jpeg")),
    ]
    form = {"model": "tiny", "n": "3", "seed": "4", "options": '{"scale": 0.5}', "format": "json"}
    result = client.post("/reference", data=form, files=files).json()
    variants, inputs = (
        [decoded(i) for i in result["images"]],
        [decoded(i) for i in result["inputs"]],
    )
    assert len(variants) == 6 and len(inputs) == 2 and result["options"] == {"scale": 0.5}

    generator = models["tiny"].generator
    references = torch.from_numpy(np.stack(inputs)).permute(0, 3, 1, 2).float() / 127.5 - 1
    conditions = TinyFamily.condition_from_photos(references, generator.config)
    expected = to_uint8(
        generate(generator, 6, 4, cond=conditions.repeat_interleave(3, 0), scale=0.5)
    )
    assert all(np.array_equal(a, b) for a, b in zip(variants, expected, strict=True))
    assert not np.array_equal(variants[0], variants[3])  # another photo, other faces
    again = client.post("/reference", data=form, files=files).json()
    assert again["images"] == result["images"]

    picked = client.post("/reference", data={**form, "test_faces": "2"}).json()
    assert np.array_equal(decoded(picked["inputs"][0]), faces[2])
    grid = client.post("/reference", data={**form, "format": "png"}, files=files)
    cell = RESOLUTION + 2
    assert np.asarray(Image.open(io.BytesIO(grid.content))).shape == (2 * cell + 2, 4 * cell + 2, 3)


def test_reconstructions_sit_beside_their_photos(
    client: TestClient, models: dict[str, ServedModel], faces: np.ndarray
) -> None:
    files = [("photos", ("face.jpg", photo(faces[3], "JPEG"), "image/jpeg"))]
    result = client.post(
        "/reconstruct", data={"model": "vae", "test_faces": "0", "format": "json"}, files=files
    ).json()
    inputs = np.stack([decoded(image) for image in result["inputs"]])
    assert np.array_equal(inputs[1], faces[0]) and result["seed"] is None  # uploads come first
    assert np.abs(inputs[0].astype(int) - faces[3]).mean() < 12  # the JPEG, shrunk back
    expected = to_uint8(
        models["vae"].generator.reconstruct(
            torch.from_numpy(inputs).permute(0, 3, 1, 2).float() / 127.5 - 1
        )
    )
    assert all(
        np.array_equal(decoded(a), b) for a, b in zip(result["images"], expected, strict=True)
    )


def test_models_that_cannot_are_refused_clearly(client: TestClient, faces: np.ndarray) -> None:
    files = [("photos", ("a.png", photo(faces[0]), "image/png"))]
    assert "unconditional: it takes no reference photos" in refusal(
        client.post("/reference", data={"model": "vae"}, files=files), 422
    )
    assert "does not reconstruct" in refusal(
        client.post("/reconstruct", data={"model": "dcgan"}, files=files), 422
    )


def test_a_conditional_family_without_the_photo_hook_is_named() -> None:
    class Blind(TinyFamily):
        name = "blind"
        condition_from_photos = Family.condition_from_photos  # the contract's default

    model_cfg = OmegaConf.create({"name": "blind"})  # tiny declares its arrays on the class
    assert takes_photos(TinyFamily, model_cfg) and not takes_photos(Blind, model_cfg)
    refused = photo_refusal(Blind, model_cfg)
    assert "conditions on 'tiny/embedding' but cannot compute it from photos" in refused


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, :40] = 255  # left half white; EXIF 6: shown turned 90° clockwise, so on top
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(pixels, "JPEG", exif=exif.tobytes(), quality=95)
    limits = UploadLimits(1, 10**6, 10**6, 0, 0)
    face = decode_face(check_photo("turned.jpg", data, limits), 16, limits)
    assert face[:8].mean() > 200 and face[8:].mean() < 50


# Refusals. -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_body", "reason"),
    [
        ({"model": "nope"}, "no model 'nope' here; models: vae, dcgan, tiny"),
        ({"model": "../../etc/passwd"}, "no model '../../etc/passwd'"),
        ({"model": "vae", "n": 0}, "n must be between 1 and 64, got 0"),
        ({"model": "vae", "n": 65}, "n must be between 1 and 64, got 65"),
        ({"model": "vae", "seed": -1}, "seed must be between 0 and 4294967295"),
        (
            {"model": "vae", "options": {"steps": 5}},
            "vae has no option 'steps'; its options: temperature",
        ),
        (
            {"model": "vae", "options": {"temperature": "hot"}},
            "option temperature takes a number from 0 to 10, got 'hot'",
        ),
        (
            {"model": "vae", "options": {"temperature": 11}},
            "option temperature takes a number from 0 to 10, got 11.0",
        ),
        ({"model": "vae", "n": "many"}, "n: Input should be a valid integer"),
        ({"model": "vae", "format": "gif"}, "format: Input should be 'png' or 'json'"),
    ],
)
def test_bad_generate_requests_are_refused(
    client: TestClient, request_body: dict[str, Any], reason: str
) -> None:
    status = 404 if "no model" in reason else 422
    assert reason in refusal(client.post("/generate", json=request_body), status)


def test_uploads_are_checked_by_content_before_decoding(
    client: TestClient, faces: np.ndarray
) -> None:
    def upload(name: str, data: bytes, **form: str) -> Any:
        return client.post(
            "/reconstruct",
            data={"model": "vae", **form},
            files=[("photos", (name, data, "image/jpeg"))],
        )

    assert (
        refusal(upload("notes.jpg", b"just some text, named like a photo\n"), 415)
        == "notes.jpg is not a JPEG, PNG or WebP image"
    )
    # the headers claim 64 and 400 megapixels; decoding either would fail: this is never decoded
    assert "8000×8000 pixels, more than the limit of 40 megapixels" in refusal(
        upload("bomb.png", png_claiming(8000, 8000)), 413
    )
    assert "claims more pixels than the limit of 40 megapixels" in refusal(
        upload("bomb.png", png_claiming(20000, 20000)), 413
    )
    assert "is not a readable PNG image" in refusal(
        upload("broken.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40), 400
    )
    webp = encoded(faces[0], "WEBP")
    assert upload("face.webp", webp, format="json").status_code == 200
    assert "upload at least one photo or pick a test face" in refusal(
        client.post("/reconstruct", data={"model": "vae"}), 422
    )
    for picked in ("8", "-1", "../data", "1;2"):
        assert "test faces are numbers from 0 to 7" in refusal(
            upload("face.webp", webp, test_faces=picked), 422
        )
    assert refusal(client.get("/test-face", params={"model": "vae", "index": 8}), 422)
    assert np.array_equal(
        np.asarray(
            Image.open(
                io.BytesIO(client.get("/test-face", params={"model": "vae", "index": 7}).content)
            )
        ),
        faces[7],
    )


def test_size_limits_per_photo_per_request_and_per_body(
    trained: TrainedModels, models: dict[str, ServedModel], faces: np.ndarray
) -> None:
    cfg = with_limits(serving_config(trained), max_upload_mb=0.02, max_files=2, max_form_kb=4)
    small = encoded(faces[0])
    big = encoded(np.random.default_rng(0).integers(0, 256, (96, 96, 3), np.uint8))  # noise
    assert len(small) < 20_000 < len(big) < 2 * 20_000 + 4_000 < 2 * len(big)
    with TestClient(create_app(models, cfg)) as client:

        def post(*photos: bytes) -> Any:
            files = [("photos", (f"p{i}.png", data, "image/png")) for i, data in enumerate(photos)]
            return client.post("/reconstruct", data={"model": "vae"}, files=files)

        assert post(small, small).status_code == 200
        assert "p0.png is larger than the limit of 0.02 MB" in refusal(post(big), 413)
        assert "3 photos; the limit is 2 per request" in refusal(post(small, small, small), 413)
        limit = "the request is larger than the limit of 0.044 MB"  # 2 × 0.02 MB + 4 kB
        assert refusal(post(big, big), 413) == limit  # by Content-Length, before reading it
        chunked = client.post(
            "/reconstruct",
            content=iter([b"--x\r\n", b"0" * 60_000]),  # no Content-Length: counted as it comes
            headers={"content-type": "multipart/form-data; boundary=x"},
        )
        assert refusal(chunked, 413) == limit


@pytest.mark.parametrize(
    "path",
    [
        "/static/../app.py",
        "/static/%2e%2e%2fapp.py",
        "/static/index.html",
        "/static/..%2F..%2Fconfigs%2Fconfig.yaml",
        "/../../etc/passwd",
    ],
)
def test_no_request_reaches_another_file(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


# Concurrency. --------------------------------------------------------------------------------


def test_a_busy_model_does_not_block_health_or_other_models(
    client: TestClient, models: dict[str, ServedModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    generator = models["vae"].generator
    entered, release = threading.Event(), threading.Event()
    original = generator.sample

    def slow_sample(*args: Any, **kwargs: Any) -> torch.Tensor:
        entered.set()
        assert release.wait(timeout=60), "the test never released the slow request"
        return original(*args, **kwargs)

    monkeypatch.setattr(generator, "sample", slow_sample)
    results: list[int] = []
    slow = threading.Thread(
        target=lambda: results.append(
            client.post("/generate", json={"model": "vae", "n": 1}).status_code
        )
    )
    slow.start()
    try:
        assert entered.wait(timeout=60)
        assert client.get("/health").status_code == 200  # while vae is busy
        assert client.post("/generate", json={"model": "dcgan", "n": 1}).status_code == 200
    finally:
        release.set()
        slow.join(timeout=60)
    assert results == [200]


def test_concurrent_requests_all_succeed_one_at_a_time_per_model(
    client: TestClient, models: dict[str, ServedModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    generator = models["dcgan"].generator
    original, active, most = generator.sample, [0], [0]
    counter = threading.Lock()

    def counted_sample(*args: Any, **kwargs: Any) -> torch.Tensor:
        with counter:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            return original(*args, **kwargs)
        finally:
            with counter:
                active[0] -= 1

    monkeypatch.setattr(generator, "sample", counted_sample)
    seeds = list(range(24))
    answers: dict[int, list[str]] = {}

    def client_thread(mine: list[int]) -> None:
        for seed in mine:
            response = client.post(
                "/generate", json={"model": "dcgan", "n": 4, "seed": seed, "format": "json"}
            )
            answers[seed] = (
                response.json()["images"] if response.status_code == 200 else [response.text]
            )

    threads = [threading.Thread(target=client_thread, args=(seeds[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert most[0] == 1  # serialised: never two inferences of one model at once
    for seed in (0, 23):
        alone = client.post(
            "/generate", json={"model": "dcgan", "n": 4, "seed": seed, "format": "json"}
        )
        assert answers[seed] == alone.json()["images"]
    assert sorted(answers) == seeds


def test_serving_settings_never_make_training_start_afresh() -> None:
    from face_generation.config import compose
    from face_generation.training.resume import comparable, differences, plain

    before = plain(compose("config", ["model=vae"]))
    after = plain(compose("config", ["model=vae", "serve.port=9000", "serve.limits.max_n=8"]))
    assert differences(comparable(before), comparable(after)) == []  # train.resume=matching


# The MLflow registry. ------------------------------------------------------------------------


@pytest.mark.slow
def test_registry_uris_are_served_with_their_versions(
    trained: TrainedModels, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from face_generation.families.dcgan import DCGANFamily
    from face_generation.runtime.mlflow_model import (
        CHECKPOINT_ARTIFACT,
        MODEL_CODE,
        model_signature,
    )

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)  # where models:/ URIs resolve
    name = "test-serving-dcgan"
    experiment = MlflowClient().create_experiment("test-serving-registry")
    for _ in range(2):  # versions 1 and 2
        with mlflow.start_run(experiment_id=experiment):
            mlflow.pyfunc.log_model(
                name="generator",
                python_model=str(MODEL_CODE),
                artifacts={CHECKPOINT_ARTIFACT: str(trained.checkpoints["dcgan"])},
                signature=model_signature(DCGANFamily, RESOLUTION),
                registered_model_name=name,
                pip_requirements=["torch"],
            )
    MlflowClient().set_registered_model_alias(name, "champion", "1")

    cfg = serving_config(trained)
    cfg.serve.models = {
        "champion": f"models:/{name}/champion",  # the spelling of an alias
        "latest": f"models:/{name}/latest",
        "pinned": f"models:/{name}@champion",  # MLflow's own
    }
    with TestClient(create_app(load_served_models(cfg), cfg)) as client:
        listed = {model["name"]: model for model in client.get("/models").json()}
        assert {name: model["version"] for name, model in listed.items()} == {
            "champion": "1",
            "latest": "2",
            "pinned": "1",
        }
        assert listed["champion"]["source"] == f"models:/{name}/champion"
        served = images_of(
            client.post(
                "/generate", json={"model": "champion", "n": 2, "seed": 8, "format": "json"}
            )
        )
    expected = to_uint8(generate(load_generator(trained.checkpoints["dcgan"]), 2, 8))
    assert all(np.array_equal(a, b) for a, b in zip(served, expected, strict=True))


# The command. --------------------------------------------------------------------------------


@pytest.mark.slow
def test_serve_command_prints_its_url_and_serves(trained: TrainedModels, tmp_path: Path) -> None:
    import httpx

    command = [
        sys.executable,
        "-m",
        "face_generation.serve",
        "serve.port=0",
        f"+serve.models.vae={trained.checkpoints['vae']}",
        f"paths.data={trained.data}",
    ]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:  # blocks until the service says where it is
            lines.append(line)
            if line.startswith("[serve] vae (step 6) at http://127.0.0.1:"):
                break
        url = lines[-1].split(" at ")[1].split()[0]
        assert httpx.get(url + "health", timeout=60).json()["status"] == "ok"
        assert "<title>face_generation</title>" in httpx.get(url, timeout=60).text
        served = httpx.post(
            url + "generate", json={"model": "vae", "n": 2, "seed": 3, "format": "json"}, timeout=60
        )
        expected = to_uint8(generate(load_generator(trained.checkpoints["vae"]), 2, 3))
        assert all(np.array_equal(a, b) for a, b in zip(images_of(served), expected, strict=True))
    finally:
        process.terminate()
        process.wait(timeout=60)

    empty = subprocess.run(
        [sys.executable, "-m", "face_generation.serve", f"paths.models={tmp_path / 'none'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert empty.returncode != 0 and "no model to serve" in empty.stderr
