"""The evaluation's shared inputs (evaluation/inputs.py), each checked against the same
quantity computed here from real material (tests/evaluation_material.py): untrained real
generators on 8 real 32-pixel faces, the real dlib judge and EfficientNet-Lite0 at 32 px. No
fixture of conftest.py: `scripts/mutate.py` runs this file with `--noconftest`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from face_generation.evaluation.identity import calibrate
from face_generation.evaluation.inputs import (
    EvaluationInputs,
    generate,
    metric_prefix,
    reconstruct,
)
from face_generation.evaluation.real_stats import cache_path
from face_generation.networks.backbone import build_feature_extractor
from face_generation.networks.identity import FaceIdentityEncoder
from face_generation.networks.network import embed_images
from face_generation.runtime.images import to_uint8
from face_generation.runtime.pixels import to_float_nchw
from tests.evaluation_material import (
    COUNT,
    CPU,
    config,
    dlib_judge,
    eval_faces,
    inputs_of,
    linked,
    untrained,
    write_data,
)
from tests.faces import RESOLUTION, identities, write_packed
from tests.tiny_family import EMBEDDING_DIM

# Packed faces written once per module (64 JPEG files read), dlib and EfficientNet for real.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("evaluation"))


@pytest.fixture
def root(data: Path, tmp_path: Path) -> Path:
    return linked(data, tmp_path)


@pytest.fixture(scope="module")
def judge() -> FaceIdentityEncoder:
    return dlib_judge()


# --- inputs.py ------------------------------------------------------------------------


def test_metric_names_carry_the_backbone_s_short_name(tmp_path: Path) -> None:
    assert metric_prefix(config(tmp_path, "vae").eval) == "effnet"
    assert metric_prefix(config(tmp_path, "vae", "eval.backbone=dinov2").eval) == "dinov2"
    unnamed = config(tmp_path, "vae", "eval.backbones.effnet_lite0.short_name=''")
    assert metric_prefix(unnamed.eval) == "effnet_lite0"
    unknown = config(tmp_path, "vae", "eval.backbone=resnet")
    with pytest.raises(ValueError, match=r"eval.backbone='resnet'; configured: \['dinov2', 'eff"):
        metric_prefix(unknown.eval)


def test_generate_conditions_sample_i_on_row_i_in_batches(tmp_path: Path) -> None:
    trained = untrained(config(tmp_path, "tiny"))
    cond = torch.linspace(-2, 2, 7 * EMBEDDING_DIM).view(7, EMBEDDING_DIM)
    # Without noise (scale 0) a tiny sample is a function of its condition row alone.
    samples = generate(trained, 7, seed=0, batch_size=3, options={"scale": 0.0}, cond=cond)
    expected = to_uint8(trained.network(torch.zeros(7, 3), cond))
    assert samples.dtype == np.uint8 and samples.shape == (7, RESOLUTION, RESOLUTION, 3)
    np.testing.assert_array_equal(samples, expected)
    assert len(np.unique(samples.reshape(7, -1), axis=0)) == 7


def test_generate_draws_its_noise_from_the_seed(tmp_path: Path) -> None:
    trained = untrained(config(tmp_path, "vae"))
    first = generate(trained, 5, seed=3, batch_size=2, options={})
    np.testing.assert_array_equal(first, generate(trained, 5, seed=3, batch_size=2, options={}))
    assert not np.array_equal(first, generate(trained, 5, seed=4, batch_size=2, options={}))
    # the noise of each batch continues the seed's stream: no two batches repeat it
    assert not np.array_equal(first[:2], first[2:4])
    single = generate(trained, 1, seed=3, batch_size=2, options={})
    np.testing.assert_array_equal(single, first[:1])
    assert len(generate(trained, 5, seed=3, batch_size=10, options={})) == 5


def test_generate_shows_progress_only_when_given_a_label(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trained = untrained(config(tmp_path, "vae"))
    generate(trained, 2, seed=0, batch_size=2, options={})
    assert capsys.readouterr().err == ""
    generate(trained, 5, seed=0, batch_size=2, options={}, progress="sampling")
    shown = capsys.readouterr().err
    assert "sampling" in shown and "5/5" in shown and "6/5" not in shown  # 2 + 2 + 1 images


def test_reconstruct_is_the_family_s_reconstruction_batch_by_batch(root: Path) -> None:
    trained = untrained(config(root, "vae"))
    faces = eval_faces(root)[:5]
    outputs = reconstruct(trained, faces, batch_size=2, device=CPU)
    with torch.no_grad():
        expected = trained.reconstruct(to_float_nchw(faces, None, (-1.0, 1.0)))
    assert outputs.shape == (5, 3, RESOLUTION, RESOLUTION) and outputs.dtype == torch.float32
    torch.testing.assert_close(outputs, expected, rtol=1e-5, atol=1e-5)
    assert not outputs.requires_grad


def test_the_conditions_are_the_first_rows_of_the_eval_split(root: Path) -> None:
    rows = np.load(root / "data" / "features" / str(RESOLUTION) / "tiny" / "embedding" / "val.npy")
    inputs = inputs_of(config(root, "tiny", "eval.split=val"), root, count=5)
    assert inputs.conditions is not None and inputs.conditions.dtype == torch.float32
    np.testing.assert_array_equal(inputs.conditions.numpy(), rows[:5].astype(np.float32))
    assert inputs_of(config(root, "vae"), root).conditions is None


def test_the_people_are_the_first_labels_of_the_eval_split(root: Path, tmp_path: Path) -> None:
    inputs = inputs_of(config(root, "vae"), root, count=6)
    expected = identities(COUNT)[:6] + 48 + 8  # tests/faces.write_labels: after train and val
    expected[identities(COUNT)[:6] < 0] = -1
    assert inputs.people.dtype == np.int64
    np.testing.assert_array_equal(inputs.people, expected)
    # Without the labels stage's folder every face's person is unknown.
    write_packed(tmp_path / "unlabelled")
    unlabelled = config(tmp_path, "vae", f"paths.data={tmp_path / 'unlabelled'}")
    faces = np.load(tmp_path / "unlabelled" / "packed" / str(RESOLUTION) / "test.npy")
    nobody = EvaluationInputs(unlabelled, untrained(unlabelled), faces, 5, "hash", CPU)
    np.testing.assert_array_equal(nobody.people, np.full(5, -1))


def test_the_real_faces_are_judged_once_and_calibrated_on_known_people(
    root: Path, judge: FaceIdentityEncoder
) -> None:
    cfg = config(root, "vae", "eval.identity.calibration_faces=7", "eval.identity.far=0.2")
    inputs = inputs_of(cfg, root)
    embedded, calibration = inputs.judged_real_faces(judge, 3)
    everything = judge.embed(eval_faces(root))
    np.testing.assert_allclose(embedded, everything[:3], rtol=1e-5, atol=1e-6)
    # the first 7 faces: people 0, 0, 0, 1, 1, 1 and an unknown one
    assert calibration == calibrate(everything[:7], inputs.people[:7], 0.2)
    assert (calibration.same_pairs, calibration.different_pairs) == (6, 9)
    assert inputs.judged_real_faces(judge, 3)[0] is embedded  # computed once
    more, same_calibration = inputs.judged_real_faces(judge, 8)
    np.testing.assert_allclose(more, everything, rtol=1e-5, atol=1e-6)
    assert same_calibration == calibration


class CountingJudge(FaceIdentityEncoder):
    """The real judge, counting the faces it embeds."""

    embedded = 0

    def embed(self, images: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        self.embedded += len(images)
        return super().embed(images, *args, **kwargs)


def test_nobody_known_leaves_the_judge_uncalibrated(root: Path, judge: FaceIdentityEncoder) -> None:
    inputs = inputs_of(config(root, "vae"), root)
    inputs.__dict__["people"] = np.full(COUNT, -1)  # as without the labels stage
    counting = CountingJudge(judge.network, judge.threshold)
    embedded, calibration = inputs.judged_real_faces(counting, 2)
    assert embedded.shape == (2, 128)
    assert counting.embedded == 2  # no face embedded for a calibration that cannot be made
    assert calibration.threshold is None and calibration.same_pairs == 0
    # Person 0 alone known (twice): its faces are embedded, though one person calibrates nothing.
    inputs = inputs_of(config(root, "vae"), root)
    inputs.__dict__["people"] = np.r_[0, 0, np.full(COUNT - 2, -1)]
    embedded, calibration = inputs.judged_real_faces(judge, 1)
    assert embedded.shape == (1, 128)
    assert calibration.threshold is None and calibration.same_pairs == 1


def test_samples_come_from_the_eval_seed_and_options(root: Path) -> None:
    cfg = config(root, "tiny", "eval.seed=5", "+eval.sampling.scale=0.5")
    inputs = inputs_of(cfg, root, count=4)
    assert inputs.conditions is not None
    expected = generate(inputs.trained, 4, 5, 3, {"scale": 0.5}, None, inputs.conditions[:4])
    np.testing.assert_array_equal(inputs.generated, expected)
    np.testing.assert_array_equal(inputs.sample(4, None), expected)
    two = generate(inputs.trained, 2, 5, 3, {"scale": 0.0}, None, inputs.conditions[:2])
    np.testing.assert_array_equal(inputs.sample(2, None, scale=0.0), two)
    rows = inputs.conditions[[3, 1]]
    conditioned = generate(inputs.trained, 2, 5, 3, {"scale": 0.5}, None, rows)
    np.testing.assert_array_equal(inputs.sample_conditioned(rows, None), conditioned)
    unconditional = inputs_of(config(root, "vae", "eval.seed=5"), root, count=4)
    np.testing.assert_array_equal(
        unconditional.generated, generate(unconditional.trained, 4, 5, 3, {})
    )


def test_the_backbone_features_are_the_eval_split_s_first_faces(root: Path) -> None:
    cfg = config(root, "vae", f"eval.cache_dir={root / 'cache'}", "eval.split=val")
    val = np.load(root / "data" / "packed" / str(RESOLUTION) / "val.npy")
    inputs = EvaluationInputs(cfg, untrained(cfg), val, 6, "hash", CPU)
    assert inputs.prefix == "effnet"
    backbone = build_feature_extractor(cfg.eval)
    assert inputs.backbone.cache_key == backbone.cache_key == "effnet_lite0-32px-antialias"
    real = inputs.real_backbone_features
    expected = embed_images(backbone, val[:6], batch_size=6, device=CPU)
    np.testing.assert_allclose(real.features, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(real.statistics.mean, expected.mean(0), rtol=1e-4, atol=1e-5)
    assert not real.from_cache
    assert cache_path(root / "cache", backbone.cache_key, "hash", "val", 6).is_file()
    generated = embed_images(backbone, inputs.generated, batch_size=6, device=CPU)
    np.testing.assert_allclose(inputs.generated_backbone_features, generated, rtol=1e-4, atol=1e-5)
    again = EvaluationInputs(cfg, untrained(cfg), val, 6, "hash", CPU)
    assert again.real_backbone_features.from_cache  # the next evaluation reads the cache


def test_the_reconstructions_are_of_the_first_test_faces(root: Path) -> None:
    cfg = config(root, "vae", "eval.reconstruction.num_images=5")
    inputs = inputs_of(cfg, root)
    originals, outputs = inputs.reconstructions
    np.testing.assert_array_equal(originals, eval_faces(root)[:5])
    torch.testing.assert_close(outputs, reconstruct(inputs.trained, originals, 3, CPU))
    everything = inputs_of(config(root, "vae", "eval.reconstruction.num_images=100"), root)
    assert len(everything.reconstructions[0]) == COUNT
