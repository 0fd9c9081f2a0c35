"""The evaluation metrics against references, known values and the behaviour they promise: the
feature networks, the input ranges, reconstruction and identity, the cache of real statistics.
The maths of the Fréchet distance, KID and precision/recall is in test_metric_maths.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage.data
import torch
from omegaconf import DictConfig, OmegaConf
from scipy import ndimage

from face_generation.config import compose
from face_generation.evaluation.frechet import (
    FeatureStatistics,
    feature_statistics,
    frechet_distance_between,
)
from face_generation.evaluation.identity import bootstrap_gap, calibrate, identity_similarity
from face_generation.evaluation.kid import kid
from face_generation.evaluation.precision_recall import precision_recall
from face_generation.evaluation.real_stats import real_features
from face_generation.evaluation.reconstruction import psnr, ssim
from face_generation.networks.effnet import EfficientNetLite0, packaged_effnet_weights
from face_generation.networks.inception import load_inception
from face_generation.networks.lpips import load_lpips, lpips_distance
from face_generation.networks.network import embed_images
from face_generation.networks.weights import WeightsUnavailableError
from tests.faces import lfw_faces
from tests.feature_samples import gaussian_features

# --- input ranges: the same images in any convention give the same metric ---


def lfw_rgb(count: int, offset: int = 0) -> np.ndarray:
    """Real faces embedded in scikit-image: 25 x 25 grey, as uint8 RGB N x H x W x 3."""
    return np.repeat(lfw_faces(count, offset)[..., None], 3, axis=-1)


def all_ranges(faces: np.ndarray) -> list[tuple[Any, tuple[float, float] | None]]:
    unit = torch.from_numpy(faces).permute(0, 3, 1, 2).double() / 255
    return [
        (faces, None),
        (unit.float(), (0.0, 1.0)),
        ((unit * 2 - 1).float(), (-1.0, 1.0)),
        ((unit * 2 - 1).numpy(), (-1.0, 1.0)),  # float numpy works as float tensors do
    ]


@pytest.mark.slow
def test_effnet_metrics_are_the_same_for_uint8_unit_and_signed_inputs() -> None:
    # 128 px rather than the configured 224 only to keep the test fast.
    network = EfficientNetLite0(packaged_effnet_weights(), image_size=128, antialias=True)
    real_faces, fake_faces = lfw_rgb(10), lfw_rgb(10, offset=40)
    real = embed_images(network, real_faces, batch_size=10, device="cpu")
    real_statistics = feature_statistics(real)
    results = []
    for images, value_range in all_ranges(fake_faces)[:3]:
        fake = embed_images(network, images, value_range, batch_size=10, device="cpu")
        assert fake.shape == (10, 1280) and fake.dtype == np.float32
        results.append(
            (
                frechet_distance_between(real_statistics, feature_statistics(fake)),
                kid(real, fake, subsets=5, subset_size=8).mean,
                precision_recall(real, fake, k=3, device="cpu"),
            )
        )
    (distance, kernel, pr), others = results[0], results[1:]
    assert distance > 1  # two different sets of faces
    for other_distance, other_kernel, other_pr in others:
        assert other_distance == pytest.approx(distance, rel=1e-4)
        assert other_kernel == pytest.approx(kernel, rel=1e-3, abs=1e-6)
        assert (other_pr.precision, other_pr.recall) == (pr.precision, pr.recall)


def test_float_images_without_a_value_range_are_refused() -> None:
    network = EfficientNetLite0(packaged_effnet_weights(), image_size=32, antialias=True)
    with pytest.raises(ValueError, match="value_range"):
        embed_images(network, torch.rand(2, 3, 16, 16), device="cpu")
    with pytest.raises(ValueError, match="N x H x W x 3"):
        ssim(np.zeros((2, 3, 8, 8), np.uint8), np.zeros((2, 3, 8, 8), np.uint8))


def test_ssim_and_psnr_are_the_same_for_every_input_range() -> None:
    originals = lfw_rgb(6)
    noisy = np.clip(
        originals.astype(int) + np.random.default_rng(21).integers(-25, 26, originals.shape), 0, 255
    ).astype(np.uint8)
    values = [
        (ssim(fake, real, value_range), psnr(fake, real, value_range))
        for (fake, value_range), (real, _) in zip(
            all_ranges(noisy), all_ranges(originals), strict=True
        )
    ]
    for other in values[1:]:
        assert other == pytest.approx(values[0], rel=1e-5)
    # Mixed: float [-1, 1] reconstructions against the uint8 packed originals.
    mixed = ssim(all_ranges(noisy)[2][0], originals, (-1.0, 1.0))
    assert mixed == pytest.approx(values[0][0], rel=1e-5)


# --- SSIM and PSNR on known pairs ---


def ssim_reference(first: np.ndarray, second: np.ndarray) -> float:
    """SSIM map with a Gaussian window (sigma 1.5, 11 taps) over mirror-padded images, averaged
    over every pixel: the convention torchmetrics follows (skimage averages the interior only)."""
    c1, c2 = 0.01**2, 0.03**2

    def blur(image: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(image, sigma=1.5, truncate=3.5, mode="mirror")

    mu_x, mu_y = blur(first), blur(second)
    var_x = np.clip(blur(first * first) - mu_x**2, 0, None)
    var_y = np.clip(blur(second * second) - mu_y**2, 0, None)
    cov = blur(first * second) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return float(ssim_map.mean())


def test_psnr_of_known_pairs() -> None:
    # rel 1e-6: torchmetrics converts dB with a float32 log(10).
    flat = np.full((2, 3, 16, 16), 0.5)
    assert psnr(flat + 0.1, flat, (0.0, 1.0)) == pytest.approx(20.0, rel=1e-6)  # MSE 0.01
    one_level = np.full((1, 8, 8, 3), 100, np.uint8)
    assert psnr(one_level + 1, one_level) == pytest.approx(20 * np.log10(255), rel=1e-6)
    # The mean of per-image PSNRs (20 dB and 40 dB), not the PSNR of the pooled MSE (23 dB).
    pair = np.stack([flat[0] + 0.1, flat[0] + 0.01])
    assert psnr(pair, flat, (0.0, 1.0)) == pytest.approx(30.0, rel=1e-6)
    assert psnr(flat, flat, (0.0, 1.0)) == float("inf")


def test_ssim_of_known_pairs() -> None:
    face = lfw_rgb(1)
    assert ssim(face, face) == pytest.approx(1.0, abs=1e-6)
    # Flat images: no variance, so SSIM is the luminance term (2 m1 m2 + C1) / (m1² + m2² + C1).
    first, second = np.full((1, 3, 32, 32), 0.5), np.full((1, 3, 32, 32), 0.6)
    expected = (2 * 0.5 * 0.6 + 1e-4) / (0.25 + 0.36 + 1e-4)
    assert ssim(first, second, (0.0, 1.0)) == pytest.approx(expected, rel=1e-6)
    # A real photograph and a noisy copy, against an independent SciPy implementation.
    photo = skimage.data.astronaut()[::8, ::8][:64, :64] / 255.0
    noisy = np.clip(photo + np.random.default_rng(22).normal(0, 0.08, photo.shape), 0, 1)
    expected = float(np.mean([ssim_reference(noisy[..., c], photo[..., c]) for c in range(3)]))
    to_batch = lambda image: image.transpose(2, 0, 1)[None]  # noqa: E731
    value = ssim(to_batch(noisy), to_batch(photo), (0.0, 1.0))
    assert value == pytest.approx(expected, abs=1e-5)
    assert 0.3 < value < 0.9


# --- identity similarity ---


def test_identity_similarity_of_embeddings_with_themselves_and_others() -> None:
    embeddings = np.random.default_rng(23).normal(size=(10, 128)) * 0.05
    same = identity_similarity(embeddings, embeddings, threshold=0.6)
    assert same.cosine_mean == pytest.approx(1.0, abs=1e-12) and same.distance_mean == 0.0
    assert same.same_person_share == 1.0 and same.count == 10
    orthogonal = identity_similarity(np.eye(4), np.roll(np.eye(4), 1, axis=1), threshold=0.6)
    assert orthogonal.cosine_mean == pytest.approx(0.0, abs=1e-12)
    assert (
        orthogonal.distance_mean == pytest.approx(np.sqrt(2))
        and orthogonal.same_person_share == 0.0
    )


def test_the_zero_shot_gap_interval_resamples_references() -> None:
    rng = np.random.default_rng(5)
    references, k = 400, 4
    # each reference's own offset (shared by its k samples) plus per-sample noise
    offsets = np.repeat(rng.normal(0.2, 0.1, references), k)
    same, other = offsets + rng.normal(0, 0.05, references * k), np.zeros(references * k)
    gap, low, high = bootstrap_gap(same, other, references, 2000, 0.95, seed=0)
    assert gap == pytest.approx(same.mean())
    # the interval of a mean of 400 references with spread about 0.1: ±1.96·0.1/√400 ≈ ±0.01
    assert low < gap < high and high - low == pytest.approx(2 * 1.96 * 0.1 / 20, rel=0.2)
    assert bootstrap_gap(same, other, references, 2000, 0.95, seed=0) == (gap, low, high)
    constant = bootstrap_gap(np.full(8, 0.3), np.full(8, 0.1), 4, 100, 0.95, seed=1)
    assert constant == pytest.approx((0.2, 0.2, 0.2))


def test_the_judge_is_calibrated_on_pairs_of_known_people_at_a_false_accept_rate() -> None:
    rng = np.random.default_rng(8)
    people = np.repeat(np.arange(40), 3)  # 40 people, 3 faces each
    centres = rng.normal(size=(40, 16))
    faces = centres[people] + rng.normal(scale=0.3, size=(120, 16))
    calibration = calibrate(faces, np.r_[people[:-2], -1, -1], far=0.01)
    assert calibration.same_pairs == 39 * 3 and calibration.different_pairs == 118 * 117 // 2 - 117
    first, second = np.triu_indices(118, k=1)
    different = people[first] != people[second]
    distance = np.linalg.norm(faces[first] - faces[second], axis=1)[different]
    assert calibration.threshold is not None
    assert (
        (distance < calibration.threshold).mean()
        <= 0.01
        < (distance <= calibration.threshold).mean() + 0.01
    )
    assert calibration.tar is not None and calibration.tar > 0.9
    assert calibration.same_cosine is not None and calibration.different_cosine is not None
    assert calibration.same_cosine > 0.8 > 0.2 > calibration.different_cosine
    unknown = calibrate(faces, np.full(120, -1), far=0.01)
    assert unknown.threshold is None and unknown.tar is None and unknown.same_pairs == 0


# --- standard networks, unavailable offline ---


@pytest.fixture(scope="module")
def eval_cfg() -> DictConfig:
    return compose("config").eval


def test_fid_inception_is_unavailable_offline_with_the_reason(
    eval_cfg: DictConfig, closed_port_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch_fidelity")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
    url = f"{closed_port_url}/weights-inception-2015-12-05-6726825d.pth"  # a host that is down
    with pytest.raises(WeightsUnavailableError) as raised:
        load_inception(eval_cfg.fid_inception, timeout_s=5.0, url=url)
    reason = str(raised.value)
    assert "not cached" in reason and "eval.fid_inception.weights_path" in reason
    assert "eval.fid_inception.enabled=false" in reason
    missing = OmegaConf.merge(eval_cfg.fid_inception, {"weights_path": str(tmp_path / "absent")})
    with pytest.raises(WeightsUnavailableError, match="is not a file"):
        load_inception(missing, timeout_s=5.0, url=url)


def test_fid_inception_runs_with_a_local_weights_file(eval_cfg: DictConfig, tmp_path: Path) -> None:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class RandomInception(FeatureExtractorInceptionV3):
        """Keeps its random initial weights: it reads an empty file and loads nothing."""

        def load_state_dict(
            self, state_dict: Any, strict: bool = True, assign: bool = False
        ) -> Any:
            return None

    # Stand-in weights (random, not the FID network's, which cannot be had offline).
    torch.save({}, tmp_path / "empty.pth")
    initial = RandomInception("inception-v3-compat", ["2048"], str(tmp_path / "empty.pth"))
    weights = tmp_path / "inception.pth"
    torch.save(initial.state_dict(), weights)

    network = load_inception(
        OmegaConf.merge(eval_cfg.fid_inception, {"weights_path": str(weights)}), timeout_s=5.0
    )
    features = embed_images(network, lfw_rgb(2), device="cpu")
    assert features.shape == (2, 2048) and np.isfinite(features).all()
    assert network.cache_key == "inception_v3-2048-tf1-resize"


def test_lpips_is_unavailable_offline_with_the_reason(
    eval_cfg: DictConfig, closed_port_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(WeightsUnavailableError) as raised:
        load_lpips(eval_cfg.lpips, timeout_s=5.0, url=f"{closed_port_url}/alexnet.pth")
    assert "not cached" in str(raised.value)
    assert "eval.lpips.weights_path" in str(raised.value)
    assert "eval.lpips.enabled=false" in str(raised.value)


def test_lpips_runs_with_a_local_backbone_weights_file(
    eval_cfg: DictConfig, tmp_path: Path
) -> None:
    from torchvision.models import alexnet

    # Stand-in weights (random, not ImageNet's): checks the loading path, not LPIPS' values.
    backbone = {
        k: v for k, v in alexnet(weights=None).state_dict().items() if k.startswith("features.")
    }
    weights = tmp_path / "alexnet.pth"
    torch.save(backbone, weights)
    model = load_lpips(OmegaConf.merge(eval_cfg.lpips, {"weights_path": str(weights)}), 5.0)
    # torchvision's features.3 is the first layer of lpips' second slice.
    assert torch.equal(
        model.model.net.slice2.get_submodule("3").weight, backbone["features.3.weight"]
    )
    faces = np.stack(
        [skimage.data.astronaut()[::4, ::4][:64, :64], skimage.data.chelsea()[:64, :64]]
    )
    noisy = np.clip(faces.astype(int) + 40, 0, 255).astype(np.uint8)
    assert lpips_distance(model, faces, faces, device="cpu") == pytest.approx(0.0, abs=1e-6)
    assert lpips_distance(model, faces, noisy, device="cpu") > 1e-3
    # Preprocess, forward and distance are lpips' own forward, split: the very same numbers.
    first = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 127.5 - 1
    second = torch.from_numpy(noisy).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.inference_mode():
        ours = model.distance(
            model.forward(model.preprocess(first, (-1.0, 1.0))),
            model.forward(model.preprocess(second, (-1.0, 1.0))),
        )
        assert torch.equal(ours, model.model(first, second))


# --- the cache of real statistics ---


def test_real_statistics_are_cached_by_data_hash_and_network(tmp_path: Path) -> None:
    features = gaussian_features(50, 8, seed=24).astype(np.float32)
    calls: list[int] = []

    def embed() -> np.ndarray:
        calls.append(1)
        return features

    first = real_features(tmp_path, "effnet_lite0-224px", "abc123", "test", 50, embed)
    again = real_features(tmp_path, "effnet_lite0-224px", "abc123", "test", 50, embed)
    assert len(calls) == 1 and not first.from_cache and again.from_cache
    np.testing.assert_array_equal(again.features, features)
    np.testing.assert_allclose(
        again.statistics.cov, np.cov(features.astype(np.float64), rowvar=False)
    )
    assert isinstance(again.statistics, FeatureStatistics) and again.statistics.count == 50
    # Another data hash, network or split is another entry; a corrupt entry is recomputed.
    real_features(tmp_path, "effnet_lite0-224px", "def456", "test", 50, embed)
    real_features(tmp_path, "dinov2-224px", "abc123", "test", 50, embed)
    assert len(calls) == 3
    entry = tmp_path / "effnet_lite0-224px" / "abc123-test-50.npz"
    entry.write_bytes(b"not an npz")
    assert not real_features(tmp_path, "effnet_lite0-224px", "abc123", "test", 50, embed).from_cache
    assert len(calls) == 4 and not list(tmp_path.rglob("*.tmp.npz"))
