"""The feature-guided progressive generator (families/progressive.py, models/progressive.py):
the fade-in, the schedule from the step, the pyramid loss against the features stage's own
arrays, the refusal of pyramids it cannot use, an exact resume at a stage boundary, and its
evaluation extras. Training reuses the session's smoke run (tests/conftest.py's `trained`:
its backbone features at 32 px, two grids, a new level every 2 steps)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from face_generation.data.packed import DataError, features_dir, load_feature_split, load_split
from face_generation.evaluation.evaluate_model import evaluate
from face_generation.evaluation.record import read_record
from face_generation.families.progressive import (
    Schedule,
    level_distance,
    load_backbone_pyramid,
    pyramid_arrays,
)
from face_generation.features.stage import run as run_features
from face_generation.models.progressive import ProgressiveGenerator, upsample
from face_generation.runtime.checkpoint import load_checkpoint
from face_generation.runtime.pixels import to_float_nchw
from face_generation.training.loop import train
from face_generation.training.tracker import NullTracker
from tests.conftest import TrainedModels
from tests.faces import RESOLUTION, config, write_packed


def generator(**changes: object) -> ProgressiveGenerator:
    settings = dict(
        resolution=32, cond_dim=6, noise_dim=3, style_dim=8, channels=[8, 8, 4, 4], slope=0.2
    )
    torch.manual_seed(0)
    return ProgressiveGenerator(**{**settings, **changes}).eval()  # type: ignore[arg-type]


# --- the network and the schedule ---------------------------------------------------------------


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_the_fade_in_goes_from_the_upsampled_lower_output_to_the_new_block(stage: int) -> None:
    network = generator()
    noise, cond = torch.randn(2, 3), torch.randn(2, 6)
    with torch.no_grad():
        lower = network(noise, cond, stage=stage - 1, alpha=1.0)
        start = network(noise, cond, stage=stage, alpha=0.0)
        end = network(noise, cond, stage=stage, alpha=1.0)
        new_block = network.outputs(network.style(noise, cond), stage)[-1]
    size = 4 * 2**stage
    assert start.shape == end.shape == (2, 3, size, size)
    assert torch.equal(start, upsample(lower, size))
    assert torch.equal(end, new_block)
    assert not torch.equal(start, end)


def test_the_stage_and_alpha_come_from_the_step_alone() -> None:
    schedule = Schedule(levels=4, grow_every=10, fade_steps=4)
    assert schedule.at(0) == (0, 1.0) and schedule.at(9) == (0, 1.0)
    assert schedule.at(10) == (1, 0.0)  # a boundary: the new level starts unseen
    assert schedule.at(12) == (1, 0.5) and schedule.at(14) == (1, 1.0)
    assert schedule.at(30) == (3, 0.0) and schedule.at(10_000) == (3, 1.0)
    assert schedule.progress(12) == 0.5 and schedule.progress(25) == 2.0


def test_sampling_draws_where_training_left_the_schedule() -> None:
    network = generator()
    noise, cond = torch.randn(2, 3), torch.randn(2, 6)
    network.progress.fill_(Schedule(4, 10, 4).progress(12))  # stage 1, alpha 0.5
    with torch.no_grad():
        assert torch.equal(network(noise, cond), network(noise, cond, stage=1, alpha=0.5))


# --- the pyramid loss ---------------------------------------------------------------------------


def stored_and_faces(data: Path, model_cfg: object, count: int) -> tuple[list, torch.Tensor]:
    """The first `count` test faces in [-1, 1] and their stored pyramid levels."""
    features = features_dir(data, RESOLUTION)
    faces = load_split(data / "packed" / str(RESOLUTION), "test", RESOLUTION)[:count]
    levels = [
        torch.from_numpy(np.asarray(load_feature_split(features, name, "test", 8)[:count], "f4"))
        for name in pyramid_arrays(model_cfg)  # type: ignore[arg-type]
    ]
    return levels, to_float_nchw(faces, None, (-1.0, 1.0))


def assert_zero_for_its_own_face(data: Path, *extra: str, tolerance: float) -> None:
    model_cfg = config("progressive", data, data.parent / "unused", *extra).model
    probe = load_backbone_pyramid(model_cfg)
    targets, faces = stored_and_faces(data, model_cfg, 4)
    with torch.no_grad():
        generated = probe(faces)
    other = torch.roll(torch.arange(4), 1)  # each face against another face's target
    for level, target in zip(generated, targets, strict=True):
        own = level_distance(level, target, "cosine")
        assert own.max() < tolerance  # float16 storage (and the PCA's float32 projection)
        assert level_distance(level, target[other], "cosine").min() > 10 * tolerance
        assert level_distance(level, target, "l2").max() < tolerance * target.square().mean()


def test_the_pyramid_loss_is_zero_for_the_real_face_against_its_own_target(
    trained: TrainedModels,
) -> None:
    assert_zero_for_its_own_face(trained.data, tolerance=1e-3)


@pytest.mark.slow
def test_the_pyramid_loss_is_zero_through_the_saved_pca_too(tmp_path: Path) -> None:
    pca = ["features.pyramid_dims=[8,8]", "features.pca_fit_images=48"]
    write_packed(tmp_path / "data")
    run_features(config("progressive", tmp_path / "data", tmp_path / "models", *pca), ["backbone"])
    assert_zero_for_its_own_face(tmp_path / "data", *pca, tolerance=1e-2)


# --- pyramids it cannot use ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (["backbone.image_size=64"], "another backbone"),
        (["features.pyramid_dims=[8,8]"], "PCA dims"),
        (["features.grids=[2]", "model.pyramid.weights=[1.0]"], r"holds grids \[2, 4\]"),
    ],
)
def test_pyramids_of_another_backbone_or_pca_stop_training_before_any_step(
    trained: TrainedModels, tmp_path: Path, changes: list[str], message: str
) -> None:
    cfg = config("progressive", trained.data, tmp_path / "models", *changes)
    with pytest.raises(DataError, match=message):
        train(cfg, NullTracker())
    assert not list((tmp_path / "models").rglob("*.pt"))


# --- training: every stage, and a resume at a stage boundary ------------------------------------


def test_the_smoke_run_trains_a_few_steps_at_each_stage(trained: TrainedModels) -> None:
    losses = pd.read_csv(trained.checkpoints["progressive"].parent / "losses.csv")
    assert set(losses["stage"]) == {0, 1, 2}  # a new level every 2 steps, logged every 2
    assert {"pyramid_2", "pyramid_4", "pixel", "coarse"} <= set(losses.columns)
    assert np.isfinite(losses.to_numpy()).all()
    state = load_checkpoint(trained.checkpoints["progressive"])
    assert float(state["ema"]["progress"]) == Schedule(4, 2, 1).progress(6)
    assert "backbone" not in state["networks"]  # frozen: never checkpointed


def test_a_resume_at_a_stage_boundary_continues_exactly(
    trained: TrainedModels, tmp_path: Path
) -> None:
    """The session's run stopped at step 6, where level 3 starts (alpha 0); resumed to step 8
    it must match a run that never stopped."""
    longer = ["train.steps=8"]
    straight = train(config("progressive", trained.data, tmp_path / "straight", *longer),
                     NullTracker())  # fmt: skip
    shutil.copytree(trained.checkpoints["progressive"].parent, tmp_path / "resumed" / "progressive")
    resumed_cfg = config(
        "progressive", trained.data, tmp_path / "resumed", *longer, "train.resume=auto"
    )
    resumed = train(resumed_cfg, NullTracker())
    first, second = load_checkpoint(straight.checkpoint), load_checkpoint(resumed.checkpoint)
    for key, weights in first["networks"]["generator"].items():
        assert torch.equal(weights, second["networks"]["generator"][key]), key
    assert straight.metrics == resumed.metrics
    assert straight.metrics["stage"] == 3


# --- evaluation extras --------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluation_adds_feature_fidelity_and_the_coarse_to_fine_grid(
    trained: TrainedModels, tmp_path: Path
) -> None:
    paths = [f"paths.{key}={tmp_path / key}" for key in ("metrics", "plots")]
    cfg = config("progressive", trained.data, trained.root / "models", "eval.device=cpu", *paths)
    result = evaluate(cfg)
    record = read_record(tmp_path / "metrics", "progressive")
    assert record is not None
    for grid in (2, 4):
        own = record["metrics"][f"feature_fidelity_{grid}"]["value"]
        random = record["metrics"][f"feature_fidelity_{grid}_random"]["value"]
        assert 0 <= own <= 2 and 0 <= random <= 2
    dvc_file = pd.read_json(tmp_path / "metrics" / "progressive.json", typ="series")
    assert not any(name.startswith("feature_fidelity") for name in dvc_file.index)
    grid_png = tmp_path / "plots" / "progressive" / "coarse_to_fine.png"
    assert grid_png.is_file() and grid_png in result.plots


def test_the_optional_realism_term_trains_a_discriminator_with_r1(
    trained: TrainedModels, tmp_path: Path
) -> None:
    cfg = config("progressive", trained.data, tmp_path, "model.discriminator.enabled=true")
    result = train(cfg, NullTracker())
    assert {"d_loss", "r1"} <= set(result.metrics)
    assert "discriminator" in load_checkpoint(result.checkpoint)["networks"]
