"""The features stages: row-aligned, float16 arrays per network; PCA fitted on train only;
DINOv2 and FaceNet through their real loading code with stand-in weights; clear failures;
stale and half-written folders refused; the identity verification metric."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from face_generation.data.packed import DataError, features_dir, load_feature_split, load_split
from face_generation.evaluation import verification, verification_report, verification_scores
from face_generation.features.__main__ import main as features_main
from face_generation.features.labels import partner_rows
from face_generation.features.pyramid import ChannelCovariance, level_sources, pool_levels
from face_generation.features.stage import run
from face_generation.networks.backbone import load_pyramid_backbone
from tests.conftest import TrainedModels
from tests.faces import RESOLUTION, SPLIT_SIZES, identities, write_labels, write_packed

# EfficientNet-Lite0 at 32 px: maps of 16, 8, 4, 2 and 1; grids 2 and 4 come from the last two
# that are large enough. Small and quick; the defaults (128 px, 4/8/16) are the same code.
SMALL = ["backbone.image_size=32", "features.grids=[2,4]", "features.batch_size=16"]


@pytest.fixture
def packed(tmp_path: Path) -> Path:
    """tmp_path/data with packed faces (tests/faces.py) and their labels."""
    write_packed(tmp_path / "data")
    write_labels(tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture
def cfg(make_config: Any, packed: Path) -> Any:
    def make(*overrides: str) -> DictConfig:
        return make_config("features.device=cpu", *SMALL, *overrides)

    return make


def arrays(data: Path, network: str, name: str) -> dict[str, np.ndarray]:
    folder = features_dir(data, RESOLUTION)
    return {
        split: load_feature_split(folder, f"{network}/{name}", split, size)
        for split, size in SPLIT_SIZES.items()
    }


def test_backbone_rows_are_the_packed_rows_in_float16(cfg: Any, packed: Path) -> None:
    settings = cfg()
    run(settings, ["backbone"])
    network = load_pyramid_backbone(settings.backbone)
    embedding, level = (
        arrays(packed, "effnet_lite0", "embedding"),
        arrays(packed, "effnet_lite0", "pyramid_4"),
    )
    for split, size in SPLIT_SIZES.items():
        faces = load_split(packed / "packed" / str(RESOLUTION), split, RESOLUTION)
        rows = [0, size // 2, size - 1]  # each alone: no batch shares its numbers
        with torch.inference_mode():
            alone = [network.forward(network.preprocess(faces[row : row + 1])) for row in rows]
        sources = level_sources([m.shape[-1] for m in alone[0].pyramid], [2, 4])
        expected = torch.cat([f.embedding for f in alone]).numpy()
        pooled = torch.cat([pool_levels(f.pyramid, [2, 4], sources)[1] for f in alone]).numpy()
        assert embedding[split].dtype == np.float16 and embedding[split].shape == (size, 1280)
        # float16 round trip: the float32 numbers, rounded once.
        np.testing.assert_allclose(embedding[split][rows], expected, rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(level[split][rows], pooled, rtol=2e-3, atol=2e-3)
        assert level[split].shape == (size, 40, 4, 4)
        assert bool(np.all(arrays(packed, "effnet_lite0", "ok")[split]))
    meta = json.loads((features_dir(packed, RESOLUTION) / "effnet_lite0" / "meta.json").read_text())
    assert meta["bytes_per_image"] == 1280 * 2 + 112 * 2 * 2 * 2 + 40 * 4 * 4 * 2 + 1
    assert meta["data_hash"] == "test" and meta["network"]["weights_sha256"]
    assert meta["pyramid"]["source_maps"] == [[112, 2, 2], [40, 4, 4]]


@pytest.mark.slow
def test_pca_is_fitted_on_the_train_split_only(cfg: Any, packed: Path) -> None:
    run(cfg("features.pyramid_dims=[8,16]"), ["backbone"])
    folder = features_dir(packed, RESOLUTION) / "effnet_lite0"
    fitted = np.load(folder / "pyramid_4" / "pca.npz")
    assert arrays(packed, "effnet_lite0", "pyramid_4")["test"].shape == (8, 16, 4, 4)
    # The same PCA from the train faces alone.
    settings = cfg()
    network = load_pyramid_backbone(settings.backbone)
    train = load_split(packed / "packed" / str(RESOLUTION), "train", RESOLUTION)
    covariance = None
    with torch.inference_mode():
        output = network.forward(network.preprocess(train))
        sources = level_sources([m.shape[-1] for m in output.pyramid], [2, 4])
        level = pool_levels(output.pyramid, [2, 4], sources)[1]
        covariance = ChannelCovariance(level.shape[1])
        covariance.add(level)
    expected = covariance.pca(16)
    np.testing.assert_allclose(fitted["mean"], expected.mean.numpy(), rtol=1e-4, atol=1e-5)
    # Components agree up to sign.
    alignment = np.abs((fitted["components"] * expected.components.numpy()).sum(axis=0))
    assert np.all(alignment > 0.99)
    # Other val and test faces change nothing in the fit.
    for split in ("val", "test"):
        path = packed / "packed" / str(RESOLUTION) / f"{split}.npy"
        np.save(path, np.load(path)[::-1].copy())
    run(cfg("features.pyramid_dims=[8,16]"), ["backbone"])
    refitted = np.load(folder / "pyramid_4" / "pca.npz")
    np.testing.assert_array_equal(refitted["components"], fitted["components"])


def test_labels_pair_each_face_with_another_of_the_same_person(packed: Path) -> None:
    labels, partners = arrays(packed, "labels", "identity"), arrays(packed, "labels", "partner_row")
    images = arrays(packed, "labels", "partner")
    for split, size in SPLIT_SIZES.items():
        codes = labels[split]
        np.testing.assert_array_equal(codes >= 0, identities(size) >= 0)
        faces = load_split(packed / "packed" / str(RESOLUTION), split, RESOLUTION)
        np.testing.assert_array_equal(images[split], faces[partners[split]])
        known = codes >= 0
        assert np.all(partners[split][known] != np.flatnonzero(known))
        assert np.all(codes[partners[split]] == codes)
        assert np.all(partners[split][~known] == np.flatnonzero(~known))
    assert not set(labels["train"][labels["train"] >= 0]) & set(labels["test"][labels["test"] >= 0])
    groups = np.array([5, 5, 5, 2, 2, -1, 9])
    drawn = partner_rows(groups, seed=1)
    assert list(drawn[3:]) == [4, 3, 5, 6] and set(drawn[:3]) <= {0, 1, 2}
    assert np.all(drawn[:3] != np.arange(3))


def test_stale_and_half_written_features_are_refused(cfg: Any, packed: Path) -> None:
    run(cfg(), ["backbone"])
    folder = features_dir(packed, RESOLUTION)
    # A run killed in the middle left its temporary folder: nobody reads it, the next run clears it.
    (folder / ".effnet_lite0.tmp" / "embedding").mkdir(parents=True)
    meta_path = packed / "packed" / str(RESOLUTION) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "data_hash": "repacked"}))
    with pytest.raises(
        DataError, match=r"stale; rerun the `features` stage \(`dvc repro features`\)"
    ):
        load_feature_split(folder, "effnet_lite0/embedding", "train", SPLIT_SIZES["train"])
    meta_path.write_text(json.dumps(meta))
    (folder / "effnet_lite0" / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match="is incomplete"):
        load_feature_split(folder, "effnet_lite0/embedding", "train", SPLIT_SIZES["train"])
    run(cfg(), ["backbone"])
    assert not (folder / ".effnet_lite0.tmp").exists()


def test_a_failing_run_leaves_the_previous_folder_whole(
    cfg: Any, packed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(cfg(), ["backbone"])
    before = arrays(packed, "effnet_lite0", "embedding")["test"].copy()
    from face_generation.networks import effnet

    def broken(self: Any, inputs: torch.Tensor) -> Any:
        raise RuntimeError("killed")

    monkeypatch.setattr(effnet.EfficientNetLite0, "trunk", broken)
    monkeypatch.setattr(effnet.EfficientNetLite0, "forward", broken)
    with pytest.raises(RuntimeError, match="killed"):
        run(cfg(), ["backbone"])
    np.testing.assert_array_equal(arrays(packed, "effnet_lite0", "embedding")["test"], before)
    assert not (features_dir(packed, RESOLUTION) / ".effnet_lite0.tmp").exists()


@pytest.mark.slow  # builds and saves a whole network's stand-in weights
def test_dinov2_pyramids_through_the_real_loading_code(
    cfg: Any, packed: Path, tmp_path: Path
) -> None:
    import timm

    # Stand-in weights (random) saved as a local file: the loading, preprocessing and pooling
    # code is the real one.
    source: Any = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "dinov2.pth")
    settings = cfg(
        "backbone=dinov2_vits14",
        f"backbone.weights_path={tmp_path / 'dinov2.pth'}",
        "backbone.image_size=56",  # 4 x 4 patches
    )
    run(settings, ["backbone"])
    level, embedding = (
        arrays(packed, "dinov2_vits14", "pyramid_2"),
        arrays(packed, "dinov2_vits14", "embedding"),
    )
    assert level["train"].shape == (48, 384, 2, 2) and embedding["val"].shape == (8, 384)
    network = load_pyramid_backbone(settings.backbone)
    faces = load_split(packed / "packed" / str(RESOLUTION), "val", RESOLUTION)
    with torch.inference_mode():
        output = network.forward(network.preprocess(faces[:2]))
    assert output.pyramid[0].shape == (2, 384, 4, 4)
    pooled = torch.nn.functional.avg_pool2d(output.pyramid[0], 2).numpy()
    np.testing.assert_allclose(level["val"][:2], pooled, rtol=5e-3, atol=5e-3)


def test_dinov2_without_weights_fails_fast_naming_the_switch(
    make_config: Any,
    packed: Path,
    tmp_path: Path,
    closed_port_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", closed_port_url)
    overrides = [f"paths.data={packed}", "backbone=dinov2_vits14", "backbone.network_timeout_s=2"]
    with pytest.raises(SystemExit) as failure:
        features_main(["--only", "backbone", *overrides])
    message = str(failure.value)
    assert "backbone=effnet_lite0" in message and "backbone.weights_path=" in message
    assert not (features_dir(packed, RESOLUTION) / "dinov2_vits14").exists()


def test_facenet_without_weights_fails_fast_naming_the_switch(
    packed: Path, tmp_path: Path, closed_port_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache
    with pytest.raises(SystemExit) as failure:
        features_main(
            ["--only", "encoder", f"paths.data={packed}", "encoder=facenet",
             f"encoder.url={closed_port_url}/vggface2.pt", "encoder.network_timeout_s=2"]
        )  # fmt: skip
    assert "encoder=dlib" in str(failure.value) and "encoder.weights_path=" in str(failure.value)


@pytest.mark.slow  # builds and saves a whole network's stand-in weights
def test_facenet_identity_through_the_real_loading_code(
    cfg: Any, packed: Path, tmp_path: Path
) -> None:
    from facenet_pytorch import InceptionResnetV1

    source = InceptionResnetV1(pretrained=None, classify=True, num_classes=8631)
    torch.save(source.state_dict(), tmp_path / "vggface2.pt")
    settings = cfg(
        "encoder=facenet",
        f"encoder.weights_path={tmp_path / 'vggface2.pt'}",
        "encoder.face_box=fixed",
        "encoder.image_size=80",  # smaller than the network's 160: quicker, the same code
    )
    run(settings, ["encoder"])
    identity = arrays(packed, "facenet", "identity")
    assert identity["test"].shape == (8, 512) and identity["test"].dtype == np.float16
    norms = np.linalg.norm(identity["train"].astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)
    meta = json.loads((features_dir(packed, RESOLUTION) / "facenet" / "meta.json").read_text())
    assert meta["network"]["network"] == "facenet_vggface2" and meta["failed_rows"]["train"] == 0


def test_the_fine_tuned_encoder_is_loadable_by_the_features_stage(
    trained: TrainedModels, make_config: Any, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(trained.data / "packed", data / "packed")
    checkpoint = trained.checkpoints["encoder"]
    settings = make_config(
        "features.device=cpu", "encoder=effnet_contrastive", f"encoder.checkpoint={checkpoint}"
    )
    run(settings, ["encoder"])
    identity = arrays(data, "effnet_contrastive", "identity")
    assert identity["train"].shape == (48, 128)
    from face_generation.networks.contrastive import load_contrastive_encoder
    from face_generation.networks.network import embed_images

    faces = load_split(data / "packed" / str(RESOLUTION), "test", RESOLUTION)
    direct = embed_images(load_contrastive_encoder(settings.encoder), faces, device="cpu")
    np.testing.assert_allclose(identity["test"], direct, atol=2e-3)


# --- identity verification ---


def test_verification_metrics_match_a_hand_computed_case() -> None:
    same, different = np.array([0.9, 0.8, 0.4]), np.array([0.7, 0.3, 0.2])
    # 8 of the 9 (same, different) score pairs are ordered right.
    assert verification_scores.roc_auc(same, different) == pytest.approx(8 / 9)
    # Accepting above 0.7 lets no different pair through and accepts 2 of 3 same pairs.
    assert verification_scores.tar_at_far(same, different, far=0.0) == pytest.approx(2 / 3)
    assert verification_scores.tar_at_far(same, different, far=0.34) == pytest.approx(1.0)
    # At threshold 0.7 one of three is falsely accepted and one of three falsely rejected.
    assert verification_scores.equal_error_rate(same, different) == pytest.approx(1 / 3)
    assert verification_scores.equal_error_rate(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 0
    assert verification_scores.roc_auc(np.array([0.5]), np.array([0.5])) == 0.5  # a tie counts half


def test_verification_pairs_every_same_pair_and_as_many_different_ones() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, -1, 3])
    first, second, same = verification_scores.verification_pairs(labels, seed=0)
    same_pairs = {(int(a), int(b)) for a, b, s in zip(first, second, same, strict=True) if s}
    assert same_pairs == {(0, 1), (0, 2), (1, 2), (3, 4)}
    assert (~same).sum() == 4 and np.all(labels[first[~same]] != labels[second[~same]])
    assert 6 not in set(first) | set(second)  # unknown people take part in no pair
    # Embeddings where the two people are far apart: AUC 1; a failed row is left out.
    embeddings = np.array([[1, 0], [1, 0.1], [1, -0.1], [0, 1], [0.1, 1], [-1, 0], [0, 0], [0, -1]])
    ok = np.ones(8, bool)
    ok[2] = False
    result = verification_scores.verify(embeddings, ok, labels, seed=0, far=0.01)
    assert result["roc_auc"] == 1.0 and result["eer"] == 0.0 and result["same_pairs"] == 2
    assert result["rows_skipped"] == 1


@pytest.mark.slow
def test_verify_scores_dlib_the_frozen_backbone_and_the_fine_tuned_encoder(
    trained: TrainedModels, make_config: Any, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(trained.data / "packed", data / "packed")
    write_labels(data)
    settings = make_config(
        "features.device=cpu",
        *SMALL,
        f"features.verification.encoder_checkpoint={trained.checkpoints['encoder']}",
        "features.verification.workers=0",
    )
    run(settings, ["backbone"])  # dlib's arrays are not there: verify computes them itself
    numbers, details = verification.run(settings)
    assert set(numbers["verification"]) == {"dlib", "effnet_lite0", "effnet_contrastive"}
    for result in numbers["verification"].values():
        assert 0 <= result["roc_auc"] <= 1 and result["same_pairs"] == 6
    assert details["networks"]["dlib"]["source"] == "computed"
    assert details["networks"]["effnet_lite0"]["source"].endswith("effnet_lite0")  # read
    assert numbers["bytes_per_image"]["effnet_lite0"] > 1280 * 2
    # On disk: metric name → number for DVC, the pair counts in the details beside it.
    metrics = Path(settings.paths.metrics)
    flat = json.loads((metrics / "features.json").read_text())
    assert flat["roc_auc_dlib"] == numbers["verification"]["dlib"]["roc_auc"]
    assert len(flat) == 3 * 3 and all(type(value) is float for value in flat.values())
    stored = json.loads((metrics / "features.details.json").read_text())
    assert stored["networks"]["dlib"]["same_pairs"] == 6 and "same_pairs_dlib" not in flat
    folder = stored["feature_folders"]["effnet_lite0"]
    assert folder["bytes_per_image"] == numbers["bytes_per_image"]["effnet_lite0"]
    read = verification.read_verification(metrics)
    assert read is not None and read[0] == numbers  # as the report reads them back
    section = verification_report.verification_markdown(metrics)
    assert "| effnet_contrastive | " in section and "TAR at FAR=1e-02" in section


# --- the real data stages, then the features stage, end to end ---


def run_data_stages(cfg: DictConfig) -> Path:
    """fetch, then download, split, crop, pack; the packed folder."""
    from face_generation.data import crop, download, fetch, pack, split

    for stage in (fetch, download, split, crop, pack):
        stage.run(cfg)
    return Path(cfg.paths.data) / "packed" / str(cfg.data.resolution)


@pytest.mark.slow
def test_rows_align_with_the_packed_index_on_the_embedded_default(make_config: Any) -> None:
    from face_generation.networks.dlib_face import dlib_model_dir
    from face_generation.networks.dlib_rows import DlibDescriber

    # Two processes over chunks of 40 faces: the worker pool's path.
    pool = ["encoder.workers=2", "encoder.chunk_size=40"]
    cfg = make_config("features.device=cpu", *pool)
    packed = run_data_stages(cfg)
    features_main(["--only", "labels", "--only", "encoder", f"paths.data={cfg.paths.data}", *pool])
    identity_settings = cfg.eval.identity
    describer = DlibDescriber(
        dlib_model_dir() / "shape_predictor_5_face_landmarks.dat",
        dlib_model_dir() / "dlib_face_recognition_resnet_model_v1.dat",
        str(identity_settings.face_box),
        list(identity_settings.fallback_box),
        int(identity_settings.detector_upsample),
    )
    folder = features_dir(Path(cfg.paths.data), RESOLUTION)
    meta = json.loads((folder / "dlib" / "meta.json").read_text())
    for split, size in json.loads((packed / "meta.json").read_text())["counts"].items():
        faces = load_split(packed, split, RESOLUTION)
        identity = load_feature_split(folder, "dlib/identity", split, size)
        rows = [0, size - 1]
        expected = describer.describe(faces[rows]).vectors
        np.testing.assert_allclose(identity[rows], expected, atol=1e-3)
        assert sum(meta["how_embedded"][split].values()) == size  # every row, none dropped
        # The embedded default knows nobody's identity.
        assert np.all(load_feature_split(folder, "labels/identity", split, size) == -1)


@pytest.mark.slow
@pytest.mark.shared_data
def test_rows_align_with_the_packed_index_on_celeba_faces(
    celeba_sample: Path, make_config: Any, tmp_path: Path
) -> None:
    from face_generation.data.tables import read_table
    from tests.conftest import link_images

    names = sorted(path.name for path in (celeba_sample / "img_align_celeba").glob("*.jpg"))
    faces_dir = tmp_path / "celeba"
    link_images(celeba_sample / "img_align_celeba", faces_dir / "img_align_celeba", names[:300])
    for name in ("identity_CelebA.txt", "list_eval_partition.txt"):
        (faces_dir / name).symlink_to(celeba_sample / name)
    cfg = make_config(
        "data=folder", f"data.path={faces_dir}", "data.resolution=32", "features.device=cpu", *SMALL
    )
    packed = run_data_stages(cfg)
    run(cfg, ["labels", "backbone"])
    people = dict(
        line.split() for line in (celeba_sample / "identity_CelebA.txt").read_text().splitlines()
    )
    index = read_table(packed / "index.csv", "pack")
    folder = features_dir(Path(cfg.paths.data), RESOLUTION)
    network = load_pyramid_backbone(cfg.backbone)
    for split in ("train", "val", "test"):
        rows = sorted(
            (int(r["row"]), people[Path(r["path"]).name]) for r in index if r["split"] == split
        )
        persons = [person for _, person in rows]
        codes = load_feature_split(folder, "labels/identity", split, len(rows))
        # Row by row, the same code exactly when the same CelebA person.
        for first in range(0, len(rows), 7):
            for second in range(first + 1, len(rows)):
                assert (codes[first] == codes[second]) == (persons[first] == persons[second])
        faces = load_split(packed, split, RESOLUTION)
        embedding = load_feature_split(folder, "effnet_lite0/embedding", split, len(rows))
        with torch.inference_mode():
            last = network.forward(network.preprocess(faces[-1:])).embedding.numpy()
        np.testing.assert_allclose(embedding[-1:], last, rtol=2e-3, atol=2e-3)


def test_feature_rows_reach_the_step_alike_on_the_device_and_cpu_paths(packed: Path) -> None:
    from face_generation.runtime.family import IMAGES, RowInput
    from face_generation.training.data import PackedBatches
    from tests import tiny_family

    tiny_family.write_features(packed, RESOLUTION, SPLIT_SIZES)
    folder = features_dir(packed, RESOLUTION)
    inputs = (IMAGES, RowInput("tiny/pyramid", flip="map"), RowInput("labels/identity"))
    arrays = {"images": load_split(packed / "packed" / str(RESOLUTION), "train", RESOLUTION)}
    for row_input in inputs[1:]:
        arrays[row_input.name] = load_feature_split(
            folder, row_input.name, "train", SPLIT_SIZES["train"]
        )
    cpu = torch.device("cpu")
    # on_device: every array uploaded once and gathered there (the CUDA path, here on the CPU).
    batches = [
        next(PackedBatches(arrays, 8, 3, True, cpu, on_device, inputs=inputs).iterate(2, 3))
        for on_device in (True, False)
    ]
    for name in ("tiny/pyramid", "labels/identity"):
        assert torch.equal(batches[0].features[name], batches[1].features[name])
    assert batches[0].features["tiny/pyramid"].dtype == torch.float16
    rows = batches[0].rows.numpy()
    expected = np.asarray(arrays["labels/identity"])[rows]
    assert np.array_equal(batches[0].features["labels/identity"].numpy(), expected)


@pytest.mark.slow
def test_the_judge_describes_faces_with_the_stages_dlib_code() -> None:
    """Evaluation's dlib judge and the identity and verify stages' rows are one wrapper's
    descriptors: the same vectors for the same faces (the stages' unit length)."""
    from face_generation.config import compose
    from face_generation.networks.dlib_face import dlib_files, load_dlib
    from face_generation.networks.dlib_rows import DlibDescriber
    from face_generation.networks.face_boxes import FaceBoxes
    from tests.faces import real_faces

    identity = compose("config").eval.identity
    faces = real_faces(4, 64)
    judge = load_dlib(identity.dlib, FaceBoxes.from_config(identity))
    judged = judge.forward(judge.preprocess(faces)).embedding.numpy()
    stage = DlibDescriber(
        *dlib_files(identity.dlib),
        str(identity.face_box),
        list(identity.fallback_box),
        int(identity.detector_upsample),
    ).describe(faces)
    assert stage.ok.all()
    unit = judged / np.linalg.norm(judged, axis=1, keepdims=True)
    np.testing.assert_allclose(unit, stage.vectors, atol=1e-6)
