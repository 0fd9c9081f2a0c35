"""The metric objects of an evaluation (evaluation/metrics.py): each entry checked against the
same quantity computed here, independently, from the inputs it was given (tests/
evaluation_material.py: untrained real generators on 8 real 32-pixel faces, the real dlib
judge; the backbone's features set on the inputs as the cache would give them, scikit-image's
PSNR). No fixture of conftest.py: `scripts/mutate.py` runs this file with `--noconftest`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from face_generation.evaluation.frechet import feature_statistics, frechet_distance_between
from face_generation.evaluation.identity import bootstrap_gap, calibrate
from face_generation.evaluation.inputs import (
    EvaluationInputs,
)
from face_generation.evaluation.kid import kid
from face_generation.evaluation.metrics import (
    CONDITIONS,
    RECONSTRUCTIONS,
    SAMPLES,
    UNCALIBRATED,
    BackboneDistribution,
    InceptionFID,
    LpipsReconstruction,
    PixelReconstruction,
    ReconstructionIdentity,
    ZeroShotIdentity,
    applicable_metrics,
    independent_judge,
    provided,
)
from face_generation.evaluation.precision_recall import precision_recall
from face_generation.evaluation.real_stats import RealFeatures
from face_generation.evaluation.reconstruction import psnr, ssim
from face_generation.networks.identity import FaceIdentityEncoder
from face_generation.networks.lpips import load_lpips, lpips_distance
from face_generation.runtime.pixels import to_float_nchw
from tests.evaluation_material import (
    COUNT,
    config,
    cosines,
    dlib_judge,
    eval_faces,
    inputs_of,
    linked,
    untrained,
    write_data,
)

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


# --- metrics.py: which metrics a model gets ---------------------------------------------


def test_the_metrics_a_model_gets_follow_its_capabilities(tmp_path: Path) -> None:
    vae, tiny = untrained(config(tmp_path, "vae")), untrained(config(tmp_path, "tiny"))
    assert provided(vae) == {SAMPLES, RECONSTRUCTIONS}
    assert provided(tiny) == {SAMPLES, CONDITIONS}
    eval_cfg = config(tmp_path, "vae").eval
    assert [type(metric) for metric in applicable_metrics(vae, eval_cfg)] == [
        BackboneDistribution,
        InceptionFID,
        PixelReconstruction,
        LpipsReconstruction,
        ReconstructionIdentity,
    ]
    chosen = applicable_metrics(tiny, eval_cfg)
    assert [type(metric) for metric in chosen] == [
        BackboneDistribution,
        InceptionFID,
        ZeroShotIdentity,
    ]
    assert all(metric.eval_cfg is eval_cfg for metric in chosen)


# --- metrics.py: the distribution metrics ------------------------------------------------


def seeded_features(inputs: EvaluationInputs, real: np.ndarray, fake: np.ndarray) -> None:
    """The features the backbone would give, set on the inputs as if computed (cached)."""
    inputs.__dict__["real_backbone_features"] = RealFeatures(real, feature_statistics(real), True)
    inputs.__dict__["generated_backbone_features"] = fake


def test_backbone_distribution_entries_are_the_maths_on_the_features(root: Path) -> None:
    cfg = config(
        root, "vae", "eval.kid.subsets=3", "eval.kid.subset_size=5", "eval.kid.degree=2",
        "eval.kid.gamma=0.5", "eval.kid.coef0=0.25", "eval.seed=4",
        "eval.precision_recall.k=2", "eval.precision_recall.block=3",
    )  # fmt: skip
    inputs = inputs_of(cfg, root)
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(9, 4)), rng.normal(0.5, 1.0, size=(7, 4))
    seeded_features(inputs, real, fake)
    entries = BackboneDistribution(cfg.eval).compute(inputs)
    assert list(entries) == ["fd_effnet", "kid_effnet", "precision_effnet", "recall_effnet"]
    base = {"available": True, "network": "effnet_lite0-32px-antialias", "n_generated": 7}
    base = {**base, "n_real": 9, "data_hash": "hash"}
    distance = frechet_distance_between(feature_statistics(real), feature_statistics(fake))
    assert entries["fd_effnet"] == {**base, "value": distance}
    expected = kid(real, fake, subsets=3, subset_size=5, degree=2, gamma=0.5, coef0=0.25, seed=4)
    assert expected != kid(real, fake, subsets=3, subset_size=5, seed=4)  # the settings matter
    assert entries["kid_effnet"] == {
        **base,
        "value": expected.mean,
        "std": expected.std,
        "subsets": 3,
        "subset_size": 5,
    }
    shares = precision_recall(real, fake, k=2, device="cpu")
    assert shares != precision_recall(real, fake, k=3, device="cpu")
    assert entries["precision_effnet"] == {**base, "value": shares.precision, "k": 2}
    assert entries["recall_effnet"] == {**base, "value": shares.recall, "k": 2}


@pytest.mark.parametrize(("real_rows", "fake_rows"), [(3, 9), (9, 3), (3, 3), (2, 9)])
def test_precision_and_recall_need_more_than_k_images_a_side(
    root: Path, real_rows: int, fake_rows: int
) -> None:
    cfg = config(root, "vae", "eval.precision_recall.k=3", "eval.kid.subset_size=3")
    inputs = inputs_of(cfg, root)
    rng = np.random.default_rng(1)
    seeded_features(inputs, rng.normal(size=(real_rows, 4)), rng.normal(size=(fake_rows, 4)))
    entries = BackboneDistribution(cfg.eval).compute(inputs)
    reason = "k=3 nearest neighbours need more than 3 images on each side"
    for name in ("precision_effnet", "recall_effnet"):
        assert entries[name] == {
            "available": False,
            "reason": reason,
            "network": "effnet_lite0-32px-antialias",
            "data_hash": "hash",
        }
    assert entries["fd_effnet"]["available"] and entries["kid_effnet"]["available"]
    inputs = inputs_of(cfg, root)
    seeded_features(inputs, rng.normal(size=(4, 4)), rng.normal(size=(4, 4)))
    assert BackboneDistribution(cfg.eval).compute(inputs)["recall_effnet"]["k"] == 3


def test_inception_fid_says_why_it_is_not_there(root: Path) -> None:
    disabled = config(root, "vae", "eval.fid_inception.enabled=false")
    assert InceptionFID(disabled.eval).compute(inputs_of(disabled, root)) == {
        "fid_inception": {
            "available": False,
            "reason": "disabled by eval.fid_inception.enabled=false",
            "network": "inception_v3",
            "data_hash": "hash",
        }
    }
    missing = root / "missing.pth"
    absent = config(root, "vae", f"eval.fid_inception.weights_path={missing}")
    entry = InceptionFID(absent.eval).compute(inputs_of(absent, root))["fid_inception"]
    assert entry["available"] is False and entry["network"] == "inception_v3"
    assert "Inception-v3 (FID) weights cannot be loaded" in entry["reason"]
    assert str(missing) in entry["reason"]


def test_lpips_says_why_it_is_not_there(root: Path) -> None:
    disabled = config(root, "vae", "eval.lpips.enabled=false", "eval.lpips.net=vgg")
    assert LpipsReconstruction(disabled.eval).compute(inputs_of(disabled, root)) == {
        "lpips": {
            "available": False,
            "reason": "disabled by eval.lpips.enabled=false",
            "network": "lpips_vgg",
            "data_hash": "hash",
        }
    }
    missing = root / "missing.pth"
    absent = config(root, "vae", f"eval.lpips.weights_path={missing}")
    entry = LpipsReconstruction(absent.eval).compute(inputs_of(absent, root))["lpips"]
    assert entry["available"] is False and entry["network"] == "lpips_alex"
    assert "LPIPS needs torchvision's ImageNet alex weights" in entry["reason"]


def test_lpips_is_the_distance_of_each_face_and_its_reconstruction(root: Path) -> None:
    from torchvision.models import alexnet

    # Stand-in weights (random, not ImageNet's, which cannot be had offline).
    torch.manual_seed(0)
    backbone = {
        k: v for k, v in alexnet(weights=None).state_dict().items() if k.startswith("features.")
    }
    torch.save(backbone, root / "alexnet.pth")
    cfg = config(root, "vae", f"eval.lpips.weights_path={root / 'alexnet.pth'}")
    inputs = inputs_of(cfg, root)
    originals, outputs = seeded_reconstructions(inputs, 4)
    entry = LpipsReconstruction(cfg.eval).compute(inputs)["lpips"]
    model = load_lpips(cfg.eval.lpips, 1.0)
    value = lpips_distance(model, outputs, originals, (-1.0, 1.0), device="cpu")
    assert value > 1e-4 and entry["value"] == pytest.approx(value, rel=1e-5)
    assert {key: entry[key] for key in ("network", "n", "data_hash")} == {
        "network": "lpips_alex", "n": 4, "data_hash": "hash"
    }  # fmt: skip


# --- metrics.py: reconstructions --------------------------------------------------------


def seeded_reconstructions(inputs: EvaluationInputs, count: int) -> tuple[np.ndarray, torch.Tensor]:
    """Reconstructions that are the originals with noise added, set on the inputs."""
    originals = faces_of(inputs)[:count]
    pixels = to_float_nchw(originals, None, (-1.0, 1.0))
    noise = torch.from_numpy(np.random.default_rng(2).normal(0, 0.1, pixels.shape)).float()
    outputs = (pixels + noise).clamp(-1, 1)
    inputs.__dict__["reconstructions"] = (originals, outputs)
    return originals, outputs


def faces_of(inputs: EvaluationInputs) -> np.ndarray:
    return np.asarray(inputs.test)


def test_ssim_and_psnr_of_the_reconstructions_are_scikit_image_s(root: Path) -> None:
    from skimage.metrics import peak_signal_noise_ratio

    cfg = config(
        root, "vae", "eval.reconstruction.ssim_kernel_size=7", "eval.reconstruction.ssim_sigma=1.0"
    )
    inputs = inputs_of(cfg, root)
    originals, outputs = seeded_reconstructions(inputs, 5)
    entries = PixelReconstruction(cfg.eval).compute(inputs)
    structural = ssim(outputs, originals, (-1.0, 1.0), kernel_size=7, sigma=1.0)
    assert structural != ssim(outputs, originals, (-1.0, 1.0))  # the settings matter
    assert entries["ssim"] == {
        "available": True, "value": structural, "network": "pixels", "n": 5, "data_hash": "hash"
    }  # fmt: skip
    # PSNR per image in [0, 1] (data range 1), averaged: scikit-image's, image by image.
    fake = ((outputs.double() + 1) / 2).permute(0, 2, 3, 1).numpy()
    real = originals / 255.0
    expected = np.mean(
        [peak_signal_noise_ratio(r, f, data_range=1.0) for r, f in zip(real, fake, strict=True)]
    )
    assert entries["psnr"]["value"] == pytest.approx(expected, rel=1e-6)
    assert entries["psnr"]["value"] == psnr(outputs, originals, (-1.0, 1.0))
    assert {key: entries["psnr"][key] for key in ("network", "n", "data_hash")} == {
        "network": "pixels", "n": 5, "data_hash": "hash"
    }  # fmt: skip


def test_reconstruction_identity_is_dlib_s_cosine_of_each_face_and_its_reconstruction(
    root: Path, judge: FaceIdentityEncoder
) -> None:
    cfg = config(
        root, "vae", "eval.identity.num_images=4", "eval.identity.calibration_faces=6",
        "eval.identity.far=0.2",
    )  # fmt: skip
    inputs = inputs_of(cfg, root)
    originals, outputs = seeded_reconstructions(inputs, 6)
    entries = ReconstructionIdentity(cfg.eval).compute(inputs)
    embedded = judge.embed(originals)
    real, rebuilt = embedded[:4], judge.embed(outputs[:4], (-1.0, 1.0))
    calibration = calibrate(embedded, inputs.people[:6], 0.2)
    assert calibration.threshold is not None
    distances = np.linalg.norm(real - rebuilt, axis=1)
    expected = {
        "identity_cosine": cosines(real, rebuilt).mean(),
        "identity_distance": distances.mean(),
        "identity_same_person": (distances < calibration.threshold).mean(),
    }
    assert list(entries) == list(expected)
    for name, value in expected.items():
        entry = entries[name]
        assert entry["value"] == pytest.approx(value, abs=1e-5), name
        assert entry["network"] == "dlib_resnet_v1" and entry["n"] == 4
        assert entry["calibration"] == asdict(calibration) and entry["data_hash"] == "hash"
        assert 0 <= entry["faces_detected"] <= 4 + 6  # of every face the judge embedded
    assert entries["identity_same_person"]["threshold"] == calibration.threshold
    assert "threshold" not in entries["identity_cosine"]
    assert 0 < expected["identity_cosine"] < 1


def test_reconstruction_identity_uncalibrated_and_without_a_judge(
    root: Path, tmp_path: Path
) -> None:
    cfg = config(root, "vae", "eval.identity.num_images=3")
    inputs = inputs_of(cfg, root)
    seeded_reconstructions(inputs, 3)
    inputs.__dict__["people"] = np.full(COUNT, -1)
    entries = ReconstructionIdentity(cfg.eval).compute(inputs)
    assert entries["identity_same_person"]["value"] is None
    assert entries["identity_same_person"]["note"] == UNCALIBRATED
    assert entries["identity_same_person"]["threshold"] is None
    assert entries["identity_cosine"]["value"] is not None and entries["identity_cosine"]["n"] == 3
    absent = config(root, "vae", f"eval.identity.dlib.weights_path={tmp_path / 'none'}")
    refused = ReconstructionIdentity(absent.eval).compute(inputs_of(absent, root))
    assert list(refused) == list(ReconstructionIdentity.names)
    for entry in refused.values():
        assert entry["available"] is False and entry["network"] == "dlib"
        assert "dlib's face recogniser cannot be loaded" in entry["reason"]


# --- metrics.py: zero-shot identity -----------------------------------------------------


def test_zero_shot_identity_judges_each_sample_against_its_own_and_the_next_reference(
    root: Path, judge: FaceIdentityEncoder
) -> None:
    cfg = config(
        root, "tiny", "eval.zero_shot.num_references=3", "eval.zero_shot.samples_per_reference=2",
        "eval.zero_shot.bootstrap_resamples=50", "eval.zero_shot.confidence=0.8",
        "eval.zero_shot.bootstrap_seed=2", "eval.identity.calibration_faces=6",
        "eval.identity.far=0.2",
    )  # fmt: skip
    inputs = inputs_of(cfg, root)
    entries = ZeroShotIdentity(cfg.eval).compute(inputs)
    assert inputs.conditions is not None
    # The same samples drawn again: 2 per reference, conditioned on that reference's row.
    samples = inputs.sample_conditioned(inputs.conditions[[0, 0, 1, 1, 2, 2]], None)
    faces = eval_faces(root)
    embedded, generated = judge.embed(faces[:6]), judge.embed(samples)
    real = embedded[:3]
    own, other = real[[0, 0, 1, 1, 2, 2]], real[[1, 1, 2, 2, 0, 0]]  # the next reference
    calibration = calibrate(embedded, inputs.people[:6], 0.2)
    assert calibration.threshold is not None
    expected = {
        "zero_shot_identity_cosine": cosines(own, generated).mean(),
        "zero_shot_same_person": (
            np.linalg.norm(own - generated, axis=1) < calibration.threshold
        ).mean(),
        "zero_shot_random_cosine": cosines(other, generated).mean(),
        "zero_shot_random_same_person": (
            np.linalg.norm(other - generated, axis=1) < calibration.threshold
        ).mean(),
    }
    assert list(entries) == list(expected)
    assert expected["zero_shot_identity_cosine"] != pytest.approx(
        expected["zero_shot_random_cosine"], abs=1e-4
    )
    details = {
        "references": 3,
        "samples_per_reference": 2,
        "condition": "tiny/embedding",
        "calibration": asdict(calibration),
    }
    for name, value in expected.items():
        entry = entries[name]
        assert entry["value"] == pytest.approx(value, abs=1e-5), name
        assert entry["network"] == "dlib_resnet_v1" and entry["data_hash"] == "hash"
        assert {key: entry[key] for key in details} == details
    for name in ("zero_shot_same_person", "zero_shot_random_same_person"):
        assert entries[name]["threshold"] == calibration.threshold
    gap, low, high = bootstrap_gap(
        cosines(own, generated), cosines(other, generated), 3, 50, 0.8, 2
    )
    assert entries["zero_shot_identity_cosine"]["gap_to_random"] == {
        "value": pytest.approx(gap, abs=1e-5),
        "interval": [pytest.approx(low, abs=1e-5), pytest.approx(high, abs=1e-5)],
        "confidence": 0.8,
        "resamples": 50,
        "resampled": "references",
    }
    assert low < high


def test_zero_shot_identity_uncalibrated_where_nobody_is_known(root: Path) -> None:
    cfg = config(
        root, "tiny", "eval.zero_shot.num_references=2", "eval.zero_shot.samples_per_reference=1"
    )
    inputs = inputs_of(cfg, root)
    inputs.__dict__["people"] = np.full(COUNT, -1)
    entries = ZeroShotIdentity(cfg.eval).compute(inputs)
    for name in ("zero_shot_same_person", "zero_shot_random_same_person"):
        assert entries[name]["value"] is None and entries[name]["note"] == UNCALIBRATED
    assert entries["zero_shot_identity_cosine"]["references"] == 2
    assert -1 <= entries["zero_shot_random_cosine"]["value"] <= 1


def test_zero_shot_identity_needs_two_references_and_an_independent_judge(
    root: Path, tmp_path: Path
) -> None:
    one = config(root, "tiny", "eval.zero_shot.num_references=1")
    entries = ZeroShotIdentity(one.eval).compute(inputs_of(one, root))
    assert list(entries) == list(ZeroShotIdentity.names)
    for entry in entries.values():
        assert entry["available"] is False and entry["network"] == "dlib_resnet_v1"
        assert entry["reason"] == "the random-reference baseline needs at least 2 references"
    # two references asked for, one image to compare: the same refusal
    few = config(root, "tiny", "eval.zero_shot.num_references=2")
    entries = ZeroShotIdentity(few.eval).compute(inputs_of(few, root, count=1))
    assert entries["zero_shot_random_cosine"]["available"] is False
    # The model's condition comes from the judge itself: no independent judge.
    own = config(root, "tiny", "eval.identity.encoder=tiny")
    entries = ZeroShotIdentity(own.eval).compute(inputs_of(own, root))
    for entry in entries.values():
        assert entry["available"] is False and entry["network"] == "tiny"
        assert (
            "conditioned on tiny/embedding, so tiny cannot judge it independently"
            in entry["reason"]
        )
    absent = config(root, "tiny", f"eval.identity.dlib.weights_path={tmp_path / 'none'}")
    entries = ZeroShotIdentity(absent.eval).compute(inputs_of(absent, root))
    for entry in entries.values():
        assert entry["available"] is False and entry["network"] == "dlib"
        assert "dlib's face recogniser cannot be loaded" in entry["reason"]
    for condition in ("effnet_lite0/embedding", "arcface/embedding"):  # names after and before
        judge = independent_judge(config(root, "tiny").eval, condition, "cpu")
        assert isinstance(judge, FaceIdentityEncoder) and judge.name == "dlib_resnet_v1"
