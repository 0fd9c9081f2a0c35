"""Inference: `python -m face_generation.inference` on checkpoints trained here for a few
steps on real faces, and the MLflow pyfunc wrapper of the generator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from face_generation.families.vae import VAEFamily
from face_generation.inference import generate, main
from face_generation.runtime.generator import load_generator
from face_generation.runtime.images import to_uint8
from tests.bad_images import save_oriented, save_png16, write_bomb_png
from tests.conftest import TrainedModels
from tests.faces import REPO, RESOLUTION


@pytest.fixture
def trained_models(trained: TrainedModels) -> dict[str, Path]:
    """model.pt of the session's VAE and DCGAN, and the packed data dir."""
    return {**trained.checkpoints, "data": trained.data}


def read_pngs(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(path)) for path in sorted(folder.glob("*.png"))]


@pytest.mark.parametrize("model", ["vae", "dcgan"])
def test_same_seed_same_images(model: str, trained_models: dict[str, Path], tmp_path: Path) -> None:
    for name, seed in (("first", 3), ("again", 3), ("other", 4)):
        main(
            [
                str(trained_models[model]),
                "--n",
                "6",
                "--seed",
                str(seed),
                "--out",
                str(tmp_path / name),
            ]
        )
    first, again, other = (
        read_pngs(tmp_path / name / "samples") for name in ("first", "again", "other")
    )
    assert len(first) == 6 and all(image.shape == (RESOLUTION, RESOLUTION, 3) for image in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    grid = np.asarray(Image.open(tmp_path / "first" / "samples.png"))
    assert grid.shape == (2 * (RESOLUTION + 2) + 2, 3 * (RESOLUTION + 2) + 2, 3)
    assert np.array_equal(grid[2 : 2 + RESOLUTION, 2 : 2 + RESOLUTION], first[0])


def test_samples_match_the_loaded_generator(
    trained_models: dict[str, Path], tmp_path: Path
) -> None:
    main([str(trained_models["dcgan"]), "--n", "4", "--seed", "9", "--out", str(tmp_path)])
    expected = to_uint8(generate(load_generator(trained_models["dcgan"]), 4, seed=9))
    assert all(
        np.array_equal(a, b) for a, b in zip(read_pngs(tmp_path / "samples"), expected, strict=True)
    )


def test_precision_bf16_samples_in_bf16_and_an_unknown_precision_is_refused(
    trained_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main([str(trained_models["dcgan"]), "--n", "4", "--seed", "9", "--precision", "bf16",
          "--out", str(tmp_path)])  # fmt: skip
    generator = load_generator(trained_models["dcgan"], precision="bf16")
    expected = to_uint8(generate(generator, 4, seed=9))
    written = read_pngs(tmp_path / "samples")
    assert all(np.array_equal(a, b) for a, b in zip(written, expected, strict=True))
    float32 = to_uint8(generate(load_generator(trained_models["dcgan"]), 4, seed=9))
    assert not all(np.array_equal(a, b) for a, b in zip(written, float32, strict=True))
    with pytest.raises(SystemExit) as refused:
        main([str(trained_models["dcgan"]), "--precision", "fp16", "--out", str(tmp_path)])
    assert refused.value.code == 2
    assert "--precision: invalid choice: 'fp16' (choose from 'auto', 'bf16', 'fp32')" in (
        capsys.readouterr().err
    )


def test_a_second_call_leaves_no_stale_samples(
    trained_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--n 6` then `--n 2` into the same folder: it holds the second call's 2 images only,
    and the command says where they are."""
    (tmp_path / "samples").mkdir()
    mine = tmp_path / "samples" / "my-notes.png"  # not a file inference writes: it stays
    mine.write_bytes(b"")
    for n in ("6", "2"):
        main([str(trained_models["dcgan"]), "--n", n, "--seed", "1", "--out", str(tmp_path)])
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "0000.png",
        "0001.png",
        "my-notes.png",
    ]
    assert f"2 images in {tmp_path / 'samples'}/" in capsys.readouterr().out.splitlines()[-1]


def test_vae_reconstructs_given_images(trained_models: dict[str, Path], tmp_path: Path) -> None:
    faces = np.load(trained_models["data"] / "packed" / str(RESOLUTION) / "test.npy")[:3]
    inputs = []
    for index, face in enumerate(faces):  # larger than the model's resolution: resized on load
        path = tmp_path / f"face{index}.jpg"
        Image.fromarray(face).resize((3 * RESOLUTION, 3 * RESOLUTION)).save(path)
        inputs.append(str(path))
    main([str(trained_models["vae"]), "--input", *inputs, "--out", str(tmp_path / "out")])
    reconstructions = read_pngs(tmp_path / "out" / "reconstructions")
    assert len(reconstructions) == 3 and reconstructions[0].shape == (RESOLUTION, RESOLUTION, 3)
    assert not np.array_equal(reconstructions[0], reconstructions[1])  # depends on the input
    grid = np.asarray(Image.open(tmp_path / "out" / "reconstructions.png"))
    assert grid.shape[1] == 4 * (RESOLUTION + 2) + 2  # input, reconstruction, input, ...
    assert np.array_equal(
        grid[2 : 2 + RESOLUTION, 2 + RESOLUTION + 2 : 2 + 2 * RESOLUTION + 2], reconstructions[0]
    )


def test_vae_reads_input_images_as_the_data_stages_do(
    trained_models: dict[str, Path], tmp_path: Path
) -> None:
    real = np.load(trained_models["data"] / "packed" / str(RESOLUTION) / "test.npy")[0]
    face = Image.fromarray(real).resize((3 * RESOLUTION, 4 * RESOLUTION))  # a portrait
    face.save(tmp_path / "upright.png")
    inputs = [tmp_path / "upright.png"]
    for orientation in (3, 6, 8):
        inputs.append(save_oriented(face, tmp_path / f"exif_{orientation}.png", orientation))
    pixels = np.asarray(face).astype(np.uint16)
    inputs.append(save_png16(pixels, tmp_path / "sixteen_bit_narrow.png"))
    inputs.append(save_png16(pixels * 257, tmp_path / "sixteen_bit_full.png"))
    main([str(trained_models["vae"]), "--input", *map(str, inputs), "--out", str(tmp_path / "out")])
    first, *others = read_pngs(tmp_path / "out" / "reconstructions")
    assert len(others) == 5 and all(np.array_equal(first, other) for other in others)

    bomb = write_bomb_png(tmp_path / "bomb.png")
    with pytest.raises(SystemExit, match=rf"cannot use image {bomb}: too_large") as exited:
        main([str(trained_models["vae"]), "--input", str(bomb), "--out", str(tmp_path / "out")])
    assert "\n" not in str(exited.value.code)


def test_dcgan_refuses_input_images(trained_models: dict[str, Path], tmp_path: Path) -> None:
    image = tmp_path / "face.png"
    Image.new("RGB", (RESOLUTION, RESOLUTION)).save(image)
    with pytest.raises(SystemExit, match="--input needs a model that reconstructs"):
        main([str(trained_models["dcgan"]), "--input", str(image), "--out", str(tmp_path)])


def test_broken_checkpoints_are_clear_errors(
    trained_models: dict[str, Path], tmp_path: Path
) -> None:
    truncated = tmp_path / "model.pt"
    truncated.write_bytes(trained_models["vae"].read_bytes()[:1000])
    with pytest.raises(SystemExit, match=rf"{truncated} cannot be read.*truncated or corrupt"):
        main([str(truncated), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=rf"{tmp_path / 'missing.pt'} does not exist"):
        main([str(tmp_path / "missing.pt"), "--out", str(tmp_path)])


def test_pyfunc_model_samples_like_inference(
    trained_models: dict[str, Path], tmp_path: Path
) -> None:
    import mlflow.pyfunc

    from face_generation.runtime.mlflow_model import (
        CHECKPOINT_ARTIFACT,
        MODEL_CODE,
        model_signature,
    )

    folder = tmp_path / "mlflow-model"
    mlflow.pyfunc.save_model(
        folder,
        python_model=str(MODEL_CODE),
        artifacts={CHECKPOINT_ARTIFACT: str(trained_models["vae"])},
        signature=model_signature(VAEFamily, RESOLUTION),
        pip_requirements=["torch"],  # skips inferring requirements in a subprocess
    )
    loaded = mlflow.pyfunc.load_model(str(folder))
    images = loaded.predict(pd.DataFrame({"n": [2, 3], "seed": [5, 6]}))
    assert images.shape == (5, RESOLUTION, RESOLUTION, 3) and images.dtype == np.uint8
    generator = load_generator(trained_models["vae"])
    assert np.array_equal(images[:2], to_uint8(generate(generator, 2, seed=5)))
    assert np.array_equal(images[2:], to_uint8(generate(generator, 3, seed=6)))
    with pytest.raises(Exception, match="n"):
        loaded.predict(pd.DataFrame({"seed": [1]}))

    # the inference command takes the MLflow model as well as the checkpoint
    main([str(folder), "--n", "2", "--seed", "5", "--out", str(tmp_path / "out")])
    assert all(
        np.array_equal(a, b)
        for a, b in zip(read_pngs(tmp_path / "out" / "samples"), images[:2], strict=True)
    )


def test_help_explains_the_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "face_generation.inference", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    for expected in ("checkpoint", "MLflow model URI", "--seed", "--input", "plots"):
        assert expected in result.stdout


def test_a_registry_uri_without_a_tracking_server_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        SystemExit, match=r"^\[inference\] error: .*set MLFLOW_TRACKING_URI"
    ) as failure:
        main(["models:/face_generation-vae/1", "--out", str(tmp_path / "out")])
    assert "\n" not in str(failure.value)
    assert list(tmp_path.iterdir()) == []  # no stray mlflow.db


@pytest.mark.slow  # MTCNN's first load takes seconds
def test_detect_finds_the_face_in_a_photo_and_names_a_photo_without_one(
    trained: TrainedModels, celeba_sample: Path, tmp_path: Path
) -> None:
    from skimage import data as skimage_data

    from face_generation.config import compose
    from face_generation.runtime.images import load_faces

    face = np.asarray(Image.open(celeba_sample / "img_align_celeba" / "000001.jpg").convert("RGB"))
    scene = skimage_data.coffee()  # a real photo without a face, 400×600
    scene[-face.shape[0] :, -face.shape[1] :] = face  # the face in a corner of the scene
    Image.fromarray(face).save(tmp_path / "face.png")
    Image.fromarray(scene).save(tmp_path / "scene_with_face.png")
    Image.fromarray(skimage_data.coffee()).save(tmp_path / "coffee.png")
    crop_cfg = compose("config", ["data.crop.method=mtcnn"]).data.crop

    alone, in_scene = (
        load_faces([tmp_path / name], RESOLUTION, detect=crop_cfg)
        for name in ("face.png", "scene_with_face.png")
    )
    centred = load_faces([tmp_path / "scene_with_face.png"], RESOLUTION)
    # found in the corner: nearly the crop of the face photo alone (whose box the photo's edges
    # clip; in the scene it takes in some coffee), where the centre square is mostly coffee
    assert (in_scene - alone).abs().mean() < 0.25 * (centred - alone).abs().mean()

    with pytest.raises(SystemExit) as failure:
        main(
            [
                str(trained.checkpoints["vae"]),
                *("--input", str(tmp_path / "face.png"), str(tmp_path / "coffee.png")),
                *("--detect", "--out", str(tmp_path / "out")),
            ]
        )
    message = str(failure.value)
    assert failure.value.code not in (0, None) and "\n" not in message  # exit status 1
    assert f"no face found in {tmp_path / 'coffee.png'}" in message
    assert not (tmp_path / "out").exists()  # nothing written for a request that failed
