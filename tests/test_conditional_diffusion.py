"""Diffusion conditioned on a real feature array: the features stage's EfficientNet-Lite0
embedding of each face (configs/model/diffusion.yaml's default condition), trained through the real loop, then
reference photos embedded by the same network, the zero-shot identity metric, the guidance
sweep and inference --reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from face_generation.config import compose
from face_generation.data.packed import features_dir, load_feature_split, load_split
from face_generation.evaluation.evaluate_model import evaluate
from face_generation.evaluation.inputs import EvaluationInputs
from face_generation.evaluation.metrics import independent_judge
from face_generation.evaluation.record import read_record
from face_generation.evaluation.report import report_markdown
from face_generation.features.stage import run as run_features
from face_generation.inference import main as inference_main
from face_generation.runtime.generator import TrainedGenerator, generate, load_generator
from face_generation.runtime.images import png_bytes, save_each, to_uint8
from face_generation.runtime.mlflow_model import GeneratorModel, model_signature
from face_generation.training.loop import train
from face_generation.training.tracker import NullTracker
from tests.faces import (
    RESOLUTION,
    SPLIT_SIZES,
    config,
    overrides,
    write_labels,
    write_packed,
)

pytestmark = pytest.mark.slow  # a model of its own trained on real backbone features

# The backbone at the faces' own 32 px (the default upsamples to 128): quick, same code.
BACKBONE = ["backbone.image_size=32", "features.grids=[2,4]", "features.device=cpu"]
WIDTH = 1280  # EfficientNet-Lite0's global embedding
CONDITIONAL = [f"model.cond_dim={WIDTH}", *BACKBONE]  # the default: the backbone's embedding
FAST_SAMPLING = ["+eval.sampling.steps=4"]


def settings(data: Path, models: Path, *extra: str) -> DictConfig:
    smoke = [o for o in overrides("diffusion", data, models) if o != "model.condition=null"]
    return compose("config", [*smoke, *CONDITIONAL, *extra])


@pytest.fixture(scope="module")
def conditioned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainedGenerator]:
    """(root, the trained model): packed faces, their backbone features, 6 steps of training."""
    root = tmp_path_factory.mktemp("conditional")
    write_packed(root / "data")
    write_labels(root / "data")  # the people of the eval split: the judge's calibration
    run_features(settings(root / "data", root / "models"), ["backbone"])
    result = train(settings(root / "data", root / "models"), NullTracker())
    return root, load_generator(result.checkpoint)


def test_the_model_trains_on_the_array_its_condition_names(
    conditioned: tuple[Path, TrainedGenerator],
) -> None:
    _, trained = conditioned
    assert trained.condition == "effnet_lite0/embedding"
    assert trained.network.cond_dim == WIDTH


def test_reference_photos_get_the_rows_the_features_stage_wrote(
    conditioned: tuple[Path, TrainedGenerator],
) -> None:
    root, trained = conditioned
    faces = load_split(root / "data" / "packed" / str(RESOLUTION), "test", RESOLUTION)
    photos = torch.from_numpy(np.array(faces)).permute(0, 3, 1, 2).float() / 127.5 - 1
    rows = trained.conditions_from_photos(photos).numpy()
    stored = load_feature_split(
        features_dir(root / "data", RESOLUTION),
        "effnet_lite0/embedding",
        "test",
        SPLIT_SIZES["test"],
    )
    assert rows.shape == (SPLIT_SIZES["test"], WIDTH)
    # the same network and settings: equal up to the stage's float16 storage
    np.testing.assert_allclose(rows, np.asarray(stored, np.float32), rtol=2e-3, atol=2e-3)


def test_a_condition_width_unlike_the_array_is_a_clear_error(
    conditioned: tuple[Path, TrainedGenerator], tmp_path: Path
) -> None:
    root, _ = conditioned
    cfg = settings(root / "data", tmp_path, "model.cond_dim=128")
    with pytest.raises(ValueError, match=r"model.cond_dim=128.*set model.cond_dim=1280"):
        train(cfg, NullTracker())


def test_an_unknown_condition_is_refused_before_training(tmp_path: Path) -> None:
    cfg = config("diffusion", tmp_path / "data", tmp_path / "models", "model.condition=face")
    with pytest.raises(ValueError, match=r"model.condition='face': expected null or"):
        train(cfg, NullTracker())
    assert not (tmp_path / "models").exists()


def test_the_judge_is_never_the_conditioning_encoder() -> None:
    eval_cfg = compose("config").eval
    reason = independent_judge(eval_cfg, "dlib/identity", "cpu")
    assert isinstance(reason, str) and "cannot judge it independently" in reason


def test_evaluation_scores_zero_shot_identity_and_sweeps_guidance(
    conditioned: tuple[Path, TrainedGenerator], tmp_path: Path
) -> None:
    root, _ = conditioned
    cfg = compose(
        "config",
        [
            "model=diffusion",
            *CONDITIONAL,
            *FAST_SAMPLING,
            "eval.device=cpu",
            "tracking.enabled=false",
            "eval.zero_shot.num_references=4",
            "eval.zero_shot.samples_per_reference=2",
            "eval.guidance_sweep=[0,3]",
            f"paths.data={root / 'data'}",
            f"paths.models={root / 'models'}",
            f"paths.metrics={tmp_path / 'metrics'}",
            f"paths.plots={tmp_path / 'plots'}",
        ],
    )
    evaluate(cfg)
    record = read_record(tmp_path / "metrics", "diffusion")
    assert record is not None
    metrics = record["metrics"]
    for name in ("zero_shot_identity_cosine", "zero_shot_random_cosine"):
        assert metrics[name]["network"].startswith("dlib")
        assert -1 <= metrics[name]["value"] <= 1 and metrics[name]["references"] == 4
    # the judge calibrated on the eval split's known people (tests/faces.identities: two of
    # three faces among the 8), at FAR 0.01: the shares are under that threshold
    calibration = metrics["zero_shot_identity_cosine"]["calibration"]
    assert (calibration["same_pairs"], calibration["different_pairs"], calibration["far"]) == (
        6, 9, 0.01,
    )  # fmt: skip
    assert calibration["threshold"] > 0 and 0 <= calibration["tar"] <= 1
    assert -1 <= calibration["different_cosine"] <= 1 and -1 <= calibration["same_cosine"] <= 1
    for name in ("zero_shot_same_person", "zero_shot_random_same_person"):
        assert 0 <= metrics[name]["value"] <= 1
        assert metrics[name]["threshold"] == calibration["threshold"]
    gap = metrics["zero_shot_identity_cosine"]["gap_to_random"]
    expected = (
        metrics["zero_shot_identity_cosine"]["value"] - metrics["zero_shot_random_cosine"]["value"]
    )
    assert gap["value"] == pytest.approx(expected) and gap["resampled"] == "references"
    assert gap["interval"][0] <= gap["value"] <= gap["interval"][1]
    sweep = record["guidance_sweep"]
    assert [row["guidance"] for row in sweep] == [0.0, 3.0]
    assert all(row["fd_effnet"] > 0 and -1 <= row["identity_cosine"] <= 1 for row in sweep)
    assert sweep[0]["fd_effnet"] != sweep[1]["fd_effnet"]  # the scale changes the samples
    table = (tmp_path / "plots" / "diffusion" / "guidance_sweep.csv").read_text().splitlines()
    assert table[0] == "guidance,fd_effnet,identity_cosine,same_person" and len(table) == 3
    assert (tmp_path / "plots" / "diffusion" / "guidance_3.png").is_file()
    # The zero-shot cosines computed again here from the same samples: judged by dlib (not the
    # conditioning network), each sample against its own reference, then against the next one.
    trained = load_generator(root / "models" / "diffusion" / "model.pt")
    test = load_split(root / "data" / "packed" / str(RESOLUTION), "test", RESOLUTION)
    inputs = EvaluationInputs(cfg, trained, test, len(test), "test", torch.device("cpu"))
    assert inputs.conditions is not None
    samples = inputs.sample_conditioned(inputs.conditions[:4].repeat_interleave(2, dim=0), None)
    judge = independent_judge(cfg.eval, "effnet_lite0/embedding", "cpu")
    assert not isinstance(judge, str) and judge.name.startswith("dlib")
    real, generated = judge.embed(np.asarray(test[:4])), judge.embed(samples)

    def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(
            np.mean(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))
        )

    own = mean_cosine(np.repeat(real, 2, axis=0), generated)
    other = mean_cosine(np.repeat(np.roll(real, -1, axis=0), 2, axis=0), generated)
    assert metrics["zero_shot_identity_cosine"]["value"] == pytest.approx(own, abs=1e-5)
    assert metrics["zero_shot_random_cosine"]["value"] == pytest.approx(other, abs=1e-5)
    assert own != pytest.approx(other, abs=1e-6)  # the baseline is not the sample's own reference

    report = report_markdown({"diffusion": record}, smoke_below=1000)
    assert "Guidance sweep of diffusion (conditioned on `effnet_lite0/embedding`" in report
    # every identity score beside the real-pair anchors of its judge, the sweep's included
    same, different = (f"{calibration[key]:.4g}" for key in ("same_cosine", "different_cosine"))
    anchors = f"(real pairs: same {same}, different {different})"
    assert (
        f"zero-shot metric, real pairs: same {same}, different {different}; "
        f"{SPLIT_SIZES['test']} samples, smoke-scale):"
    ) in report
    row = next(line for line in report.splitlines() if line.startswith("| zero_shot_identity_"))
    assert row.startswith(f"| zero_shot_identity_cosine ↑ | {own:.4g} {anchors} |"), row


def test_inference_draws_variants_of_each_reference_photo(
    conditioned: tuple[Path, TrainedGenerator], tmp_path: Path
) -> None:
    root, _ = conditioned
    faces = load_split(root / "data" / "packed" / str(RESOLUTION), "test", RESOLUTION)
    photos = torch.from_numpy(np.array(faces[:2])).permute(0, 3, 1, 2).float() / 127.5 - 1
    paths = [str(p) for p in save_each(photos, tmp_path / "photos")]
    checkpoint = str(root / "models" / "diffusion" / "model.pt")
    arguments = [checkpoint, "--reference", *paths, "--n", "3", "--steps", "4", "--guidance", "2"]
    inference_main([*arguments, "--out", str(tmp_path / "a")])
    inference_main([*arguments, "--out", str(tmp_path / "b")])
    first = sorted((tmp_path / "a" / "references").iterdir())
    assert len(first) == 6 and (tmp_path / "a" / "references.png").is_file()
    assert [f.read_bytes() for f in first] == [
        f.read_bytes() for f in sorted((tmp_path / "b" / "references").iterdir())
    ]
    with pytest.raises(SystemExit, match=r"--steps needs a value"):
        inference_main([checkpoint, "--steps"])
    with pytest.raises(SystemExit, match=r"diffusion has no option 'colour'; its options: steps"):
        inference_main([checkpoint, "--colour", "red", "--out", str(tmp_path / "c")])


def test_the_mlflow_model_takes_a_reference_photo_or_a_condition_row(
    conditioned: tuple[Path, TrainedGenerator],
) -> None:
    root, trained = conditioned
    signature = model_signature(trained.family, RESOLUTION, trained.config.model)
    columns = {c["name"] for c in signature.inputs.to_dict()}
    assert {"condition", "reference", "guidance", "steps"} <= columns
    faces = load_split(root / "data" / "packed" / str(RESOLUTION), "test", RESOLUTION)
    photo = torch.from_numpy(np.array(faces[:1])).permute(0, 3, 1, 2).float() / 127.5 - 1
    row = trained.conditions_from_photos(photo)[0]
    model = GeneratorModel()
    model.generator = trained
    request = pd.DataFrame(
        {
            "n": [2, 2],
            "seed": [3, 3],
            "steps": [4, 4],
            "reference": [png_bytes(np.asarray(faces[0])), None],
            "condition": [None, row.tolist()],
        }
    )
    images = model.predict(None, request)
    expected = to_uint8(generate(trained, 2, 3, cond=row.expand(2, -1), steps=4))
    assert np.array_equal(images[:2], expected) and np.array_equal(images[2:], expected)
    both = request.iloc[:1].assign(condition=[row.tolist()])
    with pytest.raises(MlflowException, match="either a condition or a reference photo"):
        model.predict(None, both)
