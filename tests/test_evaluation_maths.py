"""The identity verification metric (evaluation/verification_scores.py) and its stage
(evaluation/verification.py) against hand-computed cases and scikit-learn: numpy, scikit-learn
and real feature folders on disk, no feature network and no fixture of conftest.py, so
`scripts/mutate.py` runs this file with `--noconftest` in a few seconds per mutant."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import DictConfig
from sklearn.metrics import roc_auc_score, roc_curve

from face_generation.config import compose
from face_generation.data.packed import features_dir
from face_generation.evaluation import verification
from face_generation.evaluation.verification_scores import (
    equal_error_rate,
    roc_auc,
    tar_at_far,
    verification_pairs,
    verify,
)
from face_generation.features.store import FeatureFolder

# --- the scores -------------------------------------------------------------------------


def tar_at_far_reference(same: np.ndarray, different: np.ndarray, far: float) -> float:
    """The best TAR over every threshold (accept: score > threshold) whose FAR is at most
    `far`, tried one by one: each different score, and below them all."""
    thresholds = [-np.inf, *np.unique(different)]
    return max(
        float((same > threshold).mean())
        for threshold in thresholds
        if (different > threshold).mean() <= far
    )


def equal_error_rate_reference(same: np.ndarray, different: np.ndarray) -> float:
    """scikit-learn's ROC (accept: score >= threshold, every score a threshold), read from
    the lowest threshold up: FAR and FRR meet between two thresholds, linearly."""
    scores = np.r_[same, different]
    labels = np.r_[np.ones(len(same)), np.zeros(len(different))]
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    false_accept, false_reject = fpr[::-1], 1 - tpr[::-1]  # from the lowest threshold up
    for index in range(1, len(false_accept)):
        before = false_accept[index - 1] - false_reject[index - 1]
        after = false_accept[index] - false_reject[index]
        if after <= 0 < before:
            share = before / (before - after)
            return float(
                false_accept[index - 1] + share * (false_accept[index] - false_accept[index - 1])
            )
    raise AssertionError("FAR and FRR never meet")


def score_sets(seed: int, same_count: int, different_count: int) -> tuple[np.ndarray, ...]:
    """Same-person scores above different-person ones on average, in steps of 0.05: ties."""
    rng = np.random.default_rng(seed)
    same = np.round(rng.normal(0.5, 0.2, same_count) / 0.05) * 0.05
    different = np.round(rng.normal(0.3, 0.2, different_count) / 0.05) * 0.05
    return same, different


@pytest.mark.parametrize(("seed", "same", "different"), [(0, 7, 9), (1, 30, 30), (2, 50, 11)])
def test_roc_auc_is_scikit_learns(seed: int, same: int, different: int) -> None:
    same_scores, different_scores = score_sets(seed, same, different)
    labels = np.r_[np.ones(same), np.zeros(different)]
    expected = roc_auc_score(labels, np.r_[same_scores, different_scores])
    assert 0.5 < expected < 1
    assert roc_auc(same_scores, different_scores) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_by_hand() -> None:
    # Of the 2 x 3 (same, different) pairs: 0.9 beats all three, 0.5 beats 0.1, ties 0.5 (a
    # half) and loses to 0.7: (3 + 1.5) / 6.
    assert roc_auc(np.array([0.9, 0.5]), np.array([0.7, 0.5, 0.1])) == 0.75
    assert roc_auc(np.array([0.1, 0.2]), np.array([0.3, 0.4, 0.5])) == 0.0
    assert roc_auc(np.array([0.6, 0.8, 0.7]), np.array([0.3])) == 1.0


@pytest.mark.parametrize("far", [0.0, 0.05, 0.1, 0.2, 1 / 3, 0.5, 0.99, 1.0])
@pytest.mark.parametrize(("seed", "same", "different"), [(3, 12, 30), (4, 40, 9), (5, 3, 3)])
def test_tar_at_far_is_the_best_threshold_tried_one_by_one(
    far: float, seed: int, same: int, different: int
) -> None:
    same_scores, different_scores = score_sets(seed, same, different)
    expected = tar_at_far_reference(same_scores, different_scores, far)
    assert tar_at_far(same_scores, different_scores, far) == expected


def test_tar_at_far_by_hand() -> None:
    same, different = np.array([0.9, 0.6, 0.5, 0.2]), np.array([0.8, 0.5, 0.4, 0.1])
    assert tar_at_far(same, different, 0.0) == 0.25  # above 0.8: 0.9 only
    assert tar_at_far(same, different, 0.24) == 0.25  # floor(0.96) = 0 false accepts allowed
    assert tar_at_far(same, different, 0.25) == 0.5  # one: above 0.5, 0.9 and 0.6 (not 0.5)
    assert tar_at_far(same, different, 0.5) == 0.75  # two: above 0.4
    assert tar_at_far(same, different, 0.75) == 1.0  # three: above 0.1, every same pair
    assert tar_at_far(same, different[:3], 1.0) == 1.0  # every pair accepted
    assert tar_at_far(np.array([0.3]), np.array([0.2, 0.5]), 0.5) == 1.0  # above 0.2
    assert tar_at_far(same, np.linspace(0, 1, 300), 1.0) == 1.0  # more pairs than small ints


@pytest.mark.parametrize(("seed", "same", "different"), [(6, 10, 10), (7, 25, 8), (8, 5, 40)])
def test_equal_error_rate_is_where_scikit_learns_rates_meet(
    seed: int, same: int, different: int
) -> None:
    same_scores, different_scores = score_sets(seed, same, different)
    expected = equal_error_rate_reference(same_scores, different_scores)
    assert 0.05 < expected < 0.7
    assert equal_error_rate(same_scores, different_scores) == pytest.approx(expected, abs=1e-12)


def test_equal_error_rate_by_hand() -> None:
    # At the thresholds 0.1, 0.2, 0.4, 0.5, 0.6: FAR (different >= t) 1, 3/4, 1/2, 1/4, 0 and
    # FRR (same < t) 0, 0, 0, 0, 1/3. Between 0.5 (FAR - FRR = 1/4) and 0.6 (-1/3) the rates
    # meet 3/7 of the way: FAR 1/4 - 3/7 · 1/4 = 1/7.
    same, different = np.array([0.5, 0.6, 0.9]), np.array([0.1, 0.2, 0.4, 0.5])
    assert equal_error_rate(same, different) == pytest.approx(1 / 7, abs=1e-12)
    # Rates that meet exactly at a threshold: 0.7 lets one of three through and rejects one.
    same, different = np.array([0.9, 0.8, 0.4]), np.array([0.7, 0.3, 0.2])
    assert equal_error_rate(same, different) == pytest.approx(1 / 3, abs=1e-12)
    assert equal_error_rate(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 0.0
    assert equal_error_rate(np.array([0.1]), np.array([0.9])) == 1.0


# --- the pairs --------------------------------------------------------------------------


def test_verification_pairs_by_hand() -> None:
    # Known rows 0, 1, 2, 3, 4, 6: same-person pairs (0, 1), (2, 3), (2, 4), (3, 4); row 5's
    # person is unknown. 15 pairs of known rows, 11 of two people: 4 of them are drawn.
    labels = np.array([0, 0, 1, 1, 1, -1, 2])
    first, second, same = verification_pairs(labels, seed=0)
    assert same.tolist() == [True] * 4 + [False] * 4
    pairs = list(zip(first.tolist(), second.tolist(), strict=True))
    assert pairs[:4] == [(0, 1), (2, 3), (2, 4), (3, 4)]
    different = pairs[4:]
    assert different == sorted(set(different))  # no repeats, in the order of the rows
    assert all(a < b and labels[a] != labels[b] and 5 not in (a, b) for a, b in different)
    # Another seed draws other different pairs; the same seed the same ones.
    drawn = {
        seed: tuple(map(tuple, np.stack(verification_pairs(labels, seed)[:2], 1)[4:].tolist()))
        for seed in range(8)
    }
    assert len(set(drawn.values())) > 1
    assert drawn[3] == tuple(map(tuple, np.stack(verification_pairs(labels, 3)[:2], 1)[4:]))


def test_verification_pairs_take_every_different_pair_when_there_are_fewer() -> None:
    labels = np.array([4, 4, 4, 4, 9])  # 6 same-person pairs, 4 of two people
    first, second, same = verification_pairs(labels, seed=1)
    assert same.tolist() == [True] * 6 + [False] * 4
    assert set(zip(first[~same].tolist(), second[~same].tolist(), strict=True)) == {
        (0, 4),
        (1, 4),
        (2, 4),
        (3, 4),
    }


def test_verification_pairs_do_not_depend_on_the_order_of_the_people() -> None:
    first, second, same = verification_pairs(np.array([1, 0, 1, 0]), seed=0)
    assert list(zip(first[same].tolist(), second[same].tolist(), strict=True)) == [(0, 2), (1, 3)]
    assert len(first) == 4  # and two pairs of two people


def test_verify_counts_the_pairs_of_two_people_when_there_are_fewer() -> None:
    labels = np.array([4, 4, 4, 4, 9])  # 6 same-person pairs, only 4 of two people
    result = verify(np.eye(5) + 0.1, np.ones(5, bool), labels, seed=0, far=0.01)
    assert (result["same_pairs"], result["different_pairs"]) == (6, 4)


def test_verify_scores_the_cosines_of_usable_rows() -> None:
    # Person 0 along x, person 1 along y, person 2 between; row 2 failed (ok False), row 6
    # unknown. Same pairs: (0, 1), (3, 4); as many different ones are drawn.
    labels = np.array([0, 0, 0, 1, 1, 2, -1])
    embeddings = np.array(
        [[2, 0], [1, 0.1], [1, -0.1], [0, 3], [0.1, 1], [1, 1], [1, 0]], dtype=np.float64
    )
    ok = np.array([True, True, False, True, True, True, True])
    result = verify(embeddings, ok, labels, seed=0, far=0.5)
    first, second, same = verification_pairs(np.where(ok, labels, -1), 0)
    a, b = embeddings[first], embeddings[second]
    cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    same_scores, different_scores = cosines[same], cosines[~same]
    assert set(result) == {
        "roc_auc",
        "tar_at_far_5e-01",
        "eer",
        "same_pairs",
        "different_pairs",
        "rows_skipped",
    }
    assert result["roc_auc"] == roc_auc(same_scores, different_scores)
    assert result["tar_at_far_5e-01"] == tar_at_far(same_scores, different_scores, 0.5)
    assert result["eer"] == equal_error_rate(same_scores, different_scores)
    assert (result["same_pairs"], result["different_pairs"], result["rows_skipped"]) == (2, 2, 1)
    assert result["roc_auc"] == 1.0 and result["eer"] == 0.0  # the people are far apart
    assert "tar_at_far_1e-02" in verify(embeddings, ok, labels, seed=0, far=0.01)


@pytest.mark.parametrize(
    "labels",
    [
        np.array([0, 1, 2, 3]),  # nobody twice: no same-person pair
        np.array([0, 0, -1, -1]),  # one person: no pair of two people
        np.array([-1, -1, -1, -1]),  # nobody known
    ],
)
def test_verify_needs_both_kinds_of_pair(labels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="two faces of one person and two different people"):
        verify(np.eye(4), np.ones(4, bool), labels, seed=0, far=0.01)


def test_verify_counts_every_known_row_it_skipped() -> None:
    # Rows 3, 4 and 5 failed: persons 0 (rows 0, 1) and 1 (row 2) are left, 3 of 6 rows.
    labels, ok = np.array([0, 0, 1, 1, 2, 2, -1]), np.array([1, 1, 1, 0, 0, 0, 1], bool)
    result = verify(np.eye(7) + 0.1, ok, labels, seed=0, far=0.01)
    assert (result["same_pairs"], result["different_pairs"], result["rows_skipped"]) == (1, 1, 3)


def test_verify_leaves_out_failed_rows_before_pairing() -> None:
    # Without row 1 (failed), person 0 has one face: no same-person pair is left.
    labels, ok = np.array([0, 0, 1, 2]), np.array([True, False, True, True])
    with pytest.raises(ValueError, match="two faces of one person"):
        verify(np.eye(4), ok, labels, seed=0, far=0.01)


# --- the stage: feature folders on disk, as the labels and identity stages write them ----

RESOLUTION = 8
TEST_LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, -1, -1], np.int64)  # 3 people, 2 unknown
WIDTHS = {"dlib": 6, "effnet_lite0": 5}


def write_folder(
    features: Path, network: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]
) -> None:
    with FeatureFolder(features, network) as folder:
        for name, array in arrays.items():
            folder.create(name, "test", array.shape, array.dtype)[:] = array
        folder.commit({"data_hash": "h", "network": {"name": network}, **meta})


def write_stage_inputs(data: Path, labels: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Packed test faces, the labels folder, and dlib's and the backbone's folders; the
    arrays written per network."""
    packed = data / "packed" / str(RESOLUTION)
    packed.mkdir(parents=True)
    np.save(packed / "test.npy", np.zeros((len(labels), RESOLUTION, RESOLUTION, 3), np.uint8))
    (packed / "meta.json").write_text(json.dumps({"data_hash": "h"}))
    features = features_dir(data, RESOLUTION)
    write_folder(features, "labels", {"identity": labels}, {"stage": "labels"})
    rng = np.random.default_rng(0)
    written = {}
    for network, width in WIDTHS.items():
        people = rng.normal(size=(len(labels), width)) + 3 * np.eye(width)[labels % width]
        ok = np.ones(len(labels), bool)
        ok[1 if network == "dlib" else 3] = False
        array = "identity" if network == "dlib" else "embedding"
        written[network] = {array: people.astype(np.float32), "ok": ok}
        meta = {"stage": network, "failed_rows": {"test": 1, "train": 2}}
        write_folder(features, network, written[network], meta)
    return written


def stage_config(root: Path, *overrides: str) -> DictConfig:
    return compose(
        "config",
        [
            f"paths.data={root / 'data'}",
            f"paths.models={root / 'models'}",
            f"paths.metrics={root / 'metrics'}",
            f"data.resolution={RESOLUTION}",
            "features.verification.far=0.25",
            "features.verification.seed=3",
            *overrides,
        ],
    )


@pytest.mark.slow  # the config composed by Hydra (most of a second each)
def test_the_verify_stage_scores_every_stored_network(tmp_path: Path) -> None:
    written = write_stage_inputs(tmp_path / "data", TEST_LABELS)
    cfg = stage_config(tmp_path)
    numbers, details = verification.run(cfg)
    for network, arrays in written.items():
        embeddings = arrays["identity" if network == "dlib" else "embedding"]
        expected = verify(embeddings, arrays["ok"], TEST_LABELS, seed=3, far=0.25)
        assert numbers["verification"][network] == expected
        assert details["networks"][network] == {
            "available": True,
            "name": network,
            "source": str(features_dir(tmp_path / "data", RESOLUTION) / network),
        }
    assert numbers["verification"]["dlib"] != numbers["verification"]["effnet_lite0"]
    contrastive = details["networks"]["effnet_contrastive"]  # no fine-tuned encoder trained
    assert contrastive["available"] is False and "model.pt does not exist" in contrastive["reason"]
    width = {name: WIDTHS.get(name, 0) for name in ("labels", "dlib", "effnet_lite0")}
    assert numbers["bytes_per_image"] == {
        "labels": 8,  # one int64
        "effnet_lite0": 4 * width["effnet_lite0"] + 1,  # float32 rows and an ok flag
        "dlib": 4 * width["dlib"] + 1,
    }
    assert numbers["failed_rows"] == {"labels": 0, "effnet_lite0": 3, "dlib": 3}
    assert {key: details[key] for key in details if key != "networks"} == {
        "split": "test",
        "split_size": 10,
        "faces_with_identity": 8,
        "identities": 3,
        "far": 0.25,
        "seed": 3,
    }
    # On disk: metric name → number (DVC's), the pair counts and folders' facts beside it.
    scores = json.loads((tmp_path / "metrics" / "features.json").read_text())
    assert scores == {
        f"{metric}_{network}": value
        for network, result in numbers["verification"].items()
        for metric, value in result.items()
        if metric not in verification.PAIR_COUNTS
    }
    assert len(scores) == 6 and all(type(value) is float for value in scores.values())
    stored = json.loads((tmp_path / "metrics" / "features.details.json").read_text())
    assert stored["metrics"] == ["eer", "roc_auc", "tar_at_far_2e-01"]
    assert stored["networks"]["dlib"]["same_pairs"] == numbers["verification"]["dlib"]["same_pairs"]
    assert stored["feature_folders"]["dlib"] == {"bytes_per_image": 25, "failed_rows": 3}
    assert stored["networks"]["effnet_contrastive"] == contrastive
    read = verification.read_verification(tmp_path / "metrics")
    assert read is not None and read[0] == numbers and read[1] == stored


@pytest.mark.slow  # the config composed by Hydra (most of a second each)
def test_the_verify_stage_of_a_split_where_nobody_is_known_twice(tmp_path: Path) -> None:
    labels = np.r_[np.arange(8), -1, -1]  # each known face once, and two nobody knows
    write_stage_inputs(tmp_path / "data", labels)
    numbers, details = verification.run(stage_config(tmp_path))
    assert numbers["verification"] == {}
    reason = "no two faces of the test split are known to show one person"
    assert details["networks"] == {
        network: {"available": False, "reason": reason}
        for network in ("dlib", "effnet_lite0", "effnet_contrastive")
    }
    assert (details["faces_with_identity"], details["identities"]) == (8, 8)
    assert json.loads((tmp_path / "metrics" / "features.json").read_text()) == {}
    read = verification.read_verification(tmp_path / "metrics")
    assert read is not None and read[0] == numbers and read[1]["networks"] == details["networks"]


@pytest.mark.slow  # the config composed by Hydra (most of a second)
def test_a_backbone_without_its_folder_is_named_unavailable(tmp_path: Path) -> None:
    """A name that sorts before dlib's and the fine-tuned encoder's takes neither's path."""
    write_stage_inputs(tmp_path / "data", TEST_LABELS)
    _, details = verification.run(stage_config(tmp_path, "backbone=dinov2_vits14"))
    assert details["networks"]["dinov2_vits14"] == {
        "available": False,
        "reason": "no way to embed with 'dinov2_vits14'",
    }


@pytest.mark.slow  # the config composed by Hydra (most of a second)
def test_the_folder_facts_skip_a_missing_folder_and_read_the_rest(tmp_path: Path) -> None:
    write_stage_inputs(tmp_path / "data", TEST_LABELS)
    shutil.rmtree(features_dir(tmp_path / "data", RESOLUTION) / "effnet_lite0")  # the backbone's
    sizes, failed = verification.folder_sizes(stage_config(tmp_path))
    assert sizes == {"labels": 8, "dlib": 4 * WIDTHS["dlib"] + 1}
    assert failed == {"labels": 0, "dlib": 3}


def test_read_verification_before_the_stage_and_without_a_network_s_scores(
    tmp_path: Path,
) -> None:
    metrics = tmp_path / "metrics"
    assert verification.read_verification(metrics) is None
    numbers = {
        "verification": {"dlib": {"roc_auc": 0.5, "eer": 0.25, "same_pairs": 4}},
        "bytes_per_image": {"dlib": 100},
        "failed_rows": {"dlib": 0},
    }
    details = {"networks": {"dlib": {"available": True}, "facenet": {"available": False}}}
    verification.write_verification(numbers, details, metrics)
    read = verification.read_verification(metrics)
    assert read is not None and read[0] == numbers
    assert read[1]["networks"] == {
        "dlib": {"available": True, "same_pairs": 4},  # the pair counts go to the details
        "facenet": {"available": False},
    }
    assert read[1]["metrics"] == ["eer", "roc_auc"]
    (metrics / "features.json").unlink()
    assert verification.read_verification(metrics) is None
    verification.write_verification(numbers, details, metrics)
    (metrics / "features.details.json").unlink()
    assert verification.read_verification(metrics) is None
    # A network listed as available whose scores are not all in features.json: left out.
    verification.write_verification(numbers, details, metrics)
    (metrics / "features.json").write_text(json.dumps({"roc_auc_dlib": 0.5}))
    read = verification.read_verification(metrics)
    assert read is not None and read[0]["verification"] == {}


@pytest.mark.slow  # the config composed by Hydra (most of a second each)
def test_the_networks_verified_each_once(tmp_path: Path) -> None:
    assert verification.networks_to_verify(stage_config(tmp_path)) == [
        "dlib",
        "effnet_lite0",
        "effnet_contrastive",
    ]
    assert verification.networks_to_verify(stage_config(tmp_path, "encoder=facenet")) == [
        "dlib",
        "facenet",
        "effnet_lite0",
        "effnet_contrastive",
    ]
    with pytest.raises(ValueError, match="no way to embed with 'facenet'"):
        verification.embeddings_of(
            stage_config(tmp_path, "encoder=facenet"), "facenet", np.zeros(1), "test"
        )


@pytest.mark.slow  # the config composed by Hydra (most of a second each)
def test_the_verify_stage_s_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = np.array([0, 0, 1, 1, 2, 2, -1, -1], np.int64)  # 6 known faces of 3 people
    written = write_stage_inputs(tmp_path / "data", labels)
    overrides = [
        f"paths.data={tmp_path / 'data'}",
        f"paths.models={tmp_path / 'models'}",
        f"paths.metrics={tmp_path / 'metrics'}",
        f"data.resolution={RESOLUTION}",
        "features.verification.far=0.25",
    ]
    verification.main(overrides)
    lines = capsys.readouterr().err.splitlines()
    for network, arrays in written.items():
        embeddings = arrays["identity" if network == "dlib" else "embedding"]
        result = verify(embeddings, arrays["ok"], labels, seed=0, far=0.25)
        shown = " ".join(f"{key} {value:.4g}" for key, value in result.items())
        assert f"[verify] {network:<20} {shown}" in lines
    unavailable = next(line for line in lines if "effnet_contrastive" in line)
    assert unavailable.startswith("[verify] effnet_contrastive   unavailable: ")
    assert lines[-1] == f"[verify] {tmp_path / 'metrics' / 'features.json'}"
    with pytest.raises(SystemExit, match=r"\[verify\] error: .*test.npy does not exist"):
        verification.main([*overrides, f"paths.data={tmp_path / 'nothing'}"])
    with pytest.raises(SystemExit):
        verification.main(["--help"])
    assert "Identity verification of the face encoders" in capsys.readouterr().out
