"""Evaluation: real models trained for a few steps on real faces, scored with the real networks.

Packed faces as tests/test_training.py writes them (CelebA-sample crops, or scikit-image's LFW
faces without ../shared/data): 48 train, 8 val, 8 test images at 32 x 32. Every evaluation
here runs EfficientNet-Lite0, dlib and torchmetrics for real on the CPU.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from face_generation.config import compose
from face_generation.evaluate import main as evaluate_main
from face_generation.evaluation.evaluate_model import evaluate
from face_generation.evaluation.neighbours import nearest_neighbours
from face_generation.evaluation.real_stats import cache_path
from face_generation.evaluation.record import NOT_IN_DVC_METRICS, read_record
from face_generation.evaluation.report import main as report_main
from face_generation.evaluation.report import write_report
from face_generation.networks.backbone import build_feature_extractor
from face_generation.networks.network import embed_images
from face_generation.runtime.checkpoint import load_checkpoint, step_path
from face_generation.tracking.provenance import registered_model_name
from face_generation.training.loop import train
from tests.conftest import TrainedModels
from tests.faces import RESOLUTION, SPLIT_SIZES
from tests.tracking_fixtures import MlflowServer, tracked

pytestmark = pytest.mark.slow  # every family evaluated once per worker: the module's fixture

# the families configs/pipeline.yaml trains, in its order: the report has a column for each
PIPELINE_MODELS = ("vae", "dcgan", "diffusion", "cond_gan", "translator", "progressive")
# the ones evaluated here (the tests' translator reads the tiny family's rows, not photos')
MODELS = ("vae", "dcgan", "diffusion", "progressive")
TEST_SIZE = SPLIT_SIZES["test"]
RECONSTRUCTION_METRICS = {"ssim", "psnr", "lpips"}
IDENTITY_METRICS = {"identity_cosine", "identity_distance", "identity_same_person"}
DISTRIBUTION_METRICS = {"fd_effnet", "kid_effnet", "precision_effnet", "recall_effnet"}


def overrides(root: Path, *extra: str) -> list[str]:
    """Train a few steps on the CPU and evaluate there, every path under `root`."""
    return [
        "train=smoke",
        "train.device=cpu",
        "eval.device=cpu",
        "tracking.enabled=false",
        *(f"paths.{key}={root / key}" for key in ("data", "models", "metrics", "plots")),
        *extra,
    ]


@pytest.fixture(scope="module")
def root(trained: TrainedModels) -> Path:
    """The session's packed faces and models trained on them for 6 steps (tests/conftest.py);
    evaluation writes metrics/ and plots/ beside them."""
    return trained.root


@pytest.fixture(scope="module")
def evaluated(root: Path) -> dict[str, Any]:
    """The records of every model (metrics/<model>.json and its details), evaluated with the
    default eval config."""
    for model in MODELS:
        evaluate(compose("config", [f"model={model}", *overrides(root)]))
    return {model: read_record(root / "metrics", model) for model in MODELS}


def data_hash(root: Path) -> str:
    meta = root / "data" / "packed" / str(RESOLUTION) / "meta.json"
    return str(json.loads(meta.read_text())["data_hash"])


# --- metrics/<model>.json and metrics/<model>.details.json ----------------------------


@pytest.mark.parametrize("model", MODELS)
def test_the_dvc_metrics_file_maps_each_metric_to_its_number(
    evaluated: dict[str, Any], root: Path, model: str
) -> None:
    values = json.loads((root / "metrics" / f"{model}.json").read_text())
    details = json.loads((root / "metrics" / f"{model}.details.json").read_text())
    computed = {
        name
        for name, entry in evaluated[model]["metrics"].items()
        if entry.get("value") is not None
    }
    own = {  # a family's own scores (runtime/family.py's evaluation_extras) stay in the details
        name
        for name, entry in evaluated[model]["metrics"].items()
        if entry.get("in_dvc_metrics") is False
    }
    assert set(values) == computed - set(NOT_IN_DVC_METRICS) - own
    assert all(type(value) is float for value in values.values())
    assert {name: evaluated[model]["metrics"][name]["value"] for name in values} == values
    # The details say how each number was measured, and hold no value the DVC file has.
    assert set(details["metrics"]) == set(evaluated[model]["metrics"])
    assert not any("value" in details["metrics"][name] for name in values)
    assert details["model"] == model and details["format"] == 2


@pytest.mark.parametrize("model", MODELS)
def test_every_metric_has_a_value_network_n_and_data_hash_or_a_reason(
    evaluated: dict[str, Any], root: Path, model: str
) -> None:
    record = evaluated[model]
    expected_hash = data_hash(root)
    # Small set: all of the test split, and as many samples (n = min(10000, 8)).
    assert record["num_samples"] == 10000 and record["split_size"] == TEST_SIZE
    assert record["n_generated"] == record["n_real"] == TEST_SIZE
    assert "min(num_samples, split_size)" in record["sample_rule"]
    assert record["model"] == model and record["step"] == 6 and record["resolution"] == RESOLUTION
    assert record["data_hash"] == expected_hash
    assert record["feature_network"] == "effnet_lite0-224px-antialias"
    # how the samples were drawn: the trained model's sampling options and their network passes
    sampling = load_checkpoint(root / "models" / model / "model.pt")["config"]["model"]["sampling"]
    assert record["sampling"] == sampling
    assert record["network_evaluations"] == (sampling["steps"] if model == "diffusion" else 1)
    assert record["sampling_precision"] == "fp32"  # eval.precision's default
    for name, entry in record["metrics"].items():
        assert entry["data_hash"] == expected_hash and entry["network"], name
        if entry["available"]:
            assert math.isfinite(entry["value"]), name
            counts = (
                [entry["n"]]
                if "n" in entry
                else [entry["references"]]  # a conditional model's zero-shot scores
                if "references" in entry
                else [entry["n_generated"], entry["n_real"]]
            )
            assert counts and all(count == TEST_SIZE for count in counts), name
        else:
            assert "value" not in entry and len(entry["reason"]) > 20, name

    metrics = record["metrics"]
    assert set(metrics) >= DISTRIBUTION_METRICS
    assert all(
        metrics[name]["network"] == record["feature_network"] for name in DISTRIBUTION_METRICS
    )
    assert metrics["fd_effnet"]["value"] > 0  # 6 training steps: far from the real faces
    assert metrics["kid_effnet"]["value"] > 0 and metrics["kid_effnet"]["subset_size"] == TEST_SIZE
    assert 0 <= metrics["precision_effnet"]["value"] <= 1
    assert 0 <= metrics["recall_effnet"]["value"] <= 1
    # No Inception-v3 weights on this machine: reported with the reason, never as a number.
    inception = metrics["fid_inception"]
    assert inception["network"] == "inception_v3"
    if not inception["available"]:
        assert "eval.fid_inception.weights_path" in inception["reason"]

    near = record["nearest_train"]
    assert near["train_images_searched"] == SPLIT_SIZES["train"]
    assert near["mean_distance_generated"] > 0 and near["mean_distance_test"] > 0


def test_only_the_vae_gets_reconstruction_and_identity_metrics(evaluated: dict[str, Any]) -> None:
    vae = evaluated["vae"]["metrics"]
    assert set(vae) >= (RECONSTRUCTION_METRICS | IDENTITY_METRICS)
    for model in ("dcgan", "diffusion"):
        assert not (RECONSTRUCTION_METRICS | IDENTITY_METRICS) & set(evaluated[model]["metrics"])
    assert vae["ssim"]["network"] == "pixels" and vae["ssim"]["n"] == TEST_SIZE
    assert -1 <= vae["ssim"]["value"] < 1 and 5 < vae["psnr"]["value"] < 60
    assert vae["lpips"]["available"] or "eval.lpips.weights_path" in vae["lpips"]["reason"]
    assert vae["identity_cosine"]["network"] == "dlib_resnet_v1"
    assert -1 <= vae["identity_cosine"]["value"] <= 1
    assert vae["identity_distance"]["value"] > 0
    assert 0 <= vae["identity_same_person"]["value"] <= 1
    # the share at the judge's threshold calibrated on the eval split's real pairs of known
    # people (tests/faces.identities: two people of three faces among the 8), as zero-shot's
    calibration = vae["identity_same_person"]["calibration"]
    assert (calibration["same_pairs"], calibration["different_pairs"]) == (6, 9)
    assert vae["identity_same_person"]["threshold"] == calibration["threshold"] > 0
    assert -1 <= calibration["different_cosine"] <= 1 and -1 <= calibration["same_cosine"] <= 1


def test_real_statistics_are_cached_by_data_hash_and_network(
    evaluated: dict[str, Any], root: Path
) -> None:
    network, hash_ = evaluated["vae"]["feature_network"], data_hash(root)
    cache = root / "data" / "real_stats"
    backbone = build_feature_extractor(compose("config", overrides(root)).eval)
    for split, count in (("test", TEST_SIZE), ("train", SPLIT_SIZES["train"])):
        with np.load(cache_path(cache, network, hash_, split, count)) as stored:
            assert stored["features"].shape == (count, 1280)
            # the features of that split's own faces, embedded again here, and their moments
            faces = np.load(root / "data" / "packed" / str(RESOLUTION) / f"{split}.npy")
            expected = embed_images(backbone, faces, batch_size=8, device=torch.device("cpu"))
            np.testing.assert_allclose(stored["features"], expected, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(stored["mean"], expected.mean(0), rtol=1e-4, atol=1e-5)


# --- plots ----------------------------------------------------------------------------


def grid_size(count: int, columns: int, width: int, height: int, gutter: int = 2) -> tuple:
    """(width, height) of a grid as documented in evaluation/plots.py."""
    columns = min(columns, count)
    rows = -(-count // columns)
    return columns * (width + gutter) + gutter, rows * (height + gutter) + gutter


@pytest.mark.parametrize("model", MODELS)
def test_plots_have_the_documented_sizes(evaluated: dict[str, Any], root: Path, model: str) -> None:
    folder, side, label = root / "plots" / model, RESOLUTION, 14
    cell = grid_size(TEST_SIZE, 8, side, side)  # 8 of each (the whole test split)
    pair_cell = grid_size(TEST_SIZE, 8, 2 * side, side)  # pairs: 8 samples, 8 neighbours
    expected = {
        "samples.png": cell,
        "real_vs_generated.png": (2 * cell[0], cell[1] + label),
        "nearest_train.png": (pair_cell[0], pair_cell[1] + label),
    }
    if model == "vae":
        expected["reconstructions.png"] = (pair_cell[0], pair_cell[1] + label)
    if model == "progressive":  # its evaluation extras: a row per test face, a column per level
        expected["coarse_to_fine.png"] = grid_size(4 * TEST_SIZE, 4, side, side)
    assert {path.name for path in folder.iterdir()} == set(expected)
    for name, size in expected.items():
        with Image.open(folder / name) as image:
            assert image.size == size and image.mode == "RGB", name


def test_real_vs_generated_shows_the_test_images(evaluated: dict[str, Any], root: Path) -> None:
    test = np.load(root / "data" / "packed" / str(RESOLUTION) / "test.npy")
    with Image.open(root / "plots" / "dcgan" / "real_vs_generated.png") as image:
        pixels = np.asarray(image)
    top, left = 14 + 2, 2  # below the caption, inside the gutter
    assert np.array_equal(pixels[top : top + RESOLUTION, left : left + RESOLUTION], test[0])


def test_nearest_neighbours_find_the_copied_rows() -> None:
    generator = np.random.default_rng(0)
    references = generator.normal(size=(300, 16)).astype(np.float32)
    order = generator.permutation(300)[:50]
    queries = references[order] + generator.normal(scale=1e-3, size=(50, 16)).astype(np.float32)
    indices, distances = nearest_neighbours(
        queries, references, block=7, device=torch.device("cpu")
    )
    assert np.array_equal(indices, order) and distances.max() < 0.01


# --- command line ---------------------------------------------------------------------


def params_file(root: Path, *extra: str) -> Path:
    """A params.yaml like DVC's (configs/pipeline.yaml composed), paths under `root`."""
    path = root / "params.yaml"
    path.write_text(OmegaConf.to_yaml(compose("pipeline", [*overrides(root), *extra])))
    return path


@pytest.mark.slow
def test_cli_with_params_reproduces_the_same_numbers(evaluated: dict[str, Any], root: Path) -> None:
    first = evaluated["dcgan"]
    evaluate_main(["--params", str(params_file(root)), "--model", "dcgan"])
    assert read_record(root / "metrics", "dcgan") == first  # fixed seed: same numbers


@pytest.mark.slow
def test_cli_takes_a_checkpoint_and_caps_n(evaluated: dict[str, Any], root: Path) -> None:
    checkpoint = root / "models" / "vae" / "checkpoints" / "step-00000003.pt"
    evaluate_main(
        [
            "model=vae",
            f"ckpt={checkpoint}",
            "eval.num_samples=5",
            "eval.precision=bf16",
            *overrides(
                root,
                f"paths.metrics={root / 'metrics-capped'}",
                f"paths.plots={root / 'plots-capped'}",
            ),
        ]
    )
    record = read_record(root / "metrics-capped", "vae")
    assert record is not None
    assert record["step"] == 3 and record["checkpoint"] == str(checkpoint)
    assert record["n_generated"] == record["n_real"] == 5 and record["split_size"] == TEST_SIZE
    assert record["metrics"]["fd_effnet"]["n_real"] == 5
    assert record["sampling_precision"] == "bf16"  # eval.precision reaches the sampling


def test_cli_refuses_a_checkpoint_of_another_family(root: Path) -> None:
    checkpoint = root / "models" / "dcgan" / "model.pt"
    with pytest.raises(SystemExit, match="holds a 'dcgan' model, not 'vae'"):
        evaluate_main(["model=vae", f"ckpt={checkpoint}", *overrides(root)])


def test_cli_names_a_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"checkpoint .*model.pt does not exist"):
        evaluate_main(["model=vae", *overrides(tmp_path)])


# --- report ---------------------------------------------------------------------------


def table(markdown: str, first_header: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the markdown table whose first column is `first_header`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return [cell.strip() for cell in lines[start].strip("|").split("|")], rows


def test_report_has_a_row_per_metric_and_a_column_per_model(
    evaluated: dict[str, Any], root: Path
) -> None:
    report_main(["--params", str(params_file(root))])
    markdown = (root / "plots" / "report.md").read_text()
    header, rows = table(markdown, "metric")
    assert header == ["metric", *PIPELINE_MODELS, "network", "N", "data hash"]
    metrics = {re.sub(r" [↑↓]$", "", row[0]): dict(zip(header, row, strict=True)) for row in rows}
    assert set(metrics) == set().union(*(evaluated[model]["metrics"] for model in MODELS))
    fd = metrics["fd_effnet"]
    assert float(fd["vae"]) == pytest.approx(
        evaluated["vae"]["metrics"]["fd_effnet"]["value"], rel=1e-3
    )
    assert float(fd["dcgan"]) == pytest.approx(
        evaluated["dcgan"]["metrics"]["fd_effnet"]["value"], rel=1e-3
    )
    assert fd["network"] == "effnet_lite0-224px-antialias"
    assert fd["N"] == f"{TEST_SIZE} generated / {TEST_SIZE} real"
    assert fd["data hash"] == data_hash(root)
    assert metrics["ssim"]["dcgan"] == "—" and metrics["ssim"]["N"] == f"{TEST_SIZE} pairs"
    # A generated identity score stands beside the real-pair anchors of its judge.
    anchors = evaluated["vae"]["metrics"]["identity_cosine"]["calibration"]
    cell = re.fullmatch(
        r"(\S+) \(real pairs: same (\S+), different (\S+)\)", metrics["identity_cosine"]["vae"]
    )
    assert cell is not None, metrics["identity_cosine"]["vae"]
    assert float(cell.group(2)) == pytest.approx(anchors["same_cosine"], rel=1e-3)
    assert float(cell.group(3)) == pytest.approx(anchors["different_cosine"], rel=1e-3)
    assert "Identity cosines stand beside their real-pair anchors" in markdown
    # An unavailable metric points at its footnote, which gives the reason.
    inception = evaluated["vae"]["metrics"]["fid_inception"]
    if not inception["available"]:
        note = re.fullmatch(r"unavailable \[(\d+)\]", metrics["fid_inception"]["vae"])
        assert note is not None
        assert f"{note.group(1)}. {inception['reason']}" in markdown
    with Image.open(root / "plots" / "report.png") as chart:
        assert chart.size[0] > 200 and chart.size[1] > 200


@pytest.mark.slow
def test_identity_is_uncalibrated_where_nobody_is_known(root: Path, tmp_path: Path) -> None:
    """Without the eval split's people (the embedded default: no labels), a reconstruction's
    same-person share would count strangers under a threshold nobody checked: the details and
    the report say "uncalibrated" instead, and the cosine has no anchors."""
    data = tmp_path / "data"
    shutil.copytree(root / "data" / "packed", data / "packed")  # faces, no labels
    paths = [f"paths.{key}={tmp_path / key}" for key in ("data", "metrics", "plots")]
    evaluate(compose("config", ["model=vae", *overrides(root), *paths]))
    details = json.loads((tmp_path / "metrics" / "vae.details.json").read_text())
    share = details["metrics"]["identity_same_person"]
    assert share["value"] is None and share["note"].startswith("uncalibrated")
    assert share["threshold"] is None and share["calibration"]["same_pairs"] == 0
    assert "identity_same_person" not in json.loads((tmp_path / "metrics" / "vae.json").read_text())
    cfg = compose("pipeline", [*overrides(root), *paths])
    cfg.models = {"vae": cfg.models.vae}
    markdown_path, _ = write_report(cfg)
    _, rows = table(markdown_path.read_text(), "metric")
    cells = {re.sub(r" [↑↓]$", "", row[0]): row[1] for row in rows}
    assert cells["identity_same_person"].startswith("uncalibrated")
    assert cells["identity_cosine"].endswith(" (real pairs unknown)")


def test_report_marks_a_model_without_metrics(evaluated: dict[str, Any], root: Path) -> None:
    cfg = compose("pipeline", [*overrides(root), f"paths.plots={root / 'plots-partial'}"])
    cfg.models = {"vae": cfg.models.vae, "dcgan": cfg.models.dcgan, "other": cfg.models.vae}
    markdown_path, _ = write_report(cfg)
    markdown = markdown_path.read_text()
    header, rows = table(markdown, "metric")
    assert header[1:4] == ["vae", "dcgan", "other"]
    assert all(row[3] == "—" for row in rows)
    assert "`other` (`dvc repro evaluate@other`)" in markdown


# --- MLflow ---------------------------------------------------------------------------


def tracked_config(root: Path, tmp_path: Path, *extra: str) -> DictConfig:
    return compose(
        "config",
        [
            *overrides(
                root,
                f"paths.models={tmp_path / 'models'}",
                f"paths.metrics={tmp_path / 'metrics'}",
                f"paths.plots={tmp_path / 'plots'}",
            ),
            *extra,
        ],
    )


def test_the_training_run_receives_the_eval_metrics_and_plots(
    evaluated: dict[str, Any],
    root: Path,
    tmp_path: Path,
    mlflow_server: MlflowServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = tracked_config(root, tmp_path, "model=vae", *tracked(mlflow_server, tmp_path, "eval"))
    monkeypatch.setenv("DVC_STAGE", "train@vae")  # as `dvc repro` runs the two stages
    trained = train(cfg)
    monkeypatch.setenv("DVC_STAGE", "evaluate@vae")
    result = evaluate(cfg)

    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(trained.run_id)
    assert result.run_id == trained.run_id and run.info.status == "FINISHED"
    record = result.record
    for name, entry in record["metrics"].items():
        if entry["available"]:
            assert run.data.metrics[f"eval/{name}"] == pytest.approx(entry["value"]), name
        else:
            assert run.data.tags[f"eval/{name}_unavailable"] == entry["reason"]
    assert run.data.metrics["eval/kid_effnet_std"] >= 0
    assert "train/loss" in run.data.metrics  # the same run as the training curves
    # The training's provenance tags stay; the evaluation's sit beside them.
    assert run.data.tags["dvc_stage"] == "train@vae"
    assert run.data.tags["eval/dvc_stage"] == "evaluate@vae"
    history = client.get_metric_history(trained.run_id, "eval/fd_effnet")
    assert [metric.step for metric in history] == [6]  # at the checkpoint's step
    logged = {artifact.path for artifact in client.list_artifacts(trained.run_id, "eval")}
    assert {"eval/vae.json", "eval/vae.details.json"} <= logged
    plots = {artifact.path for artifact in client.list_artifacts(trained.run_id, "eval/plots")}
    assert plots == {f"eval/plots/{plot.name}" for plot in result.plots}
    # The registered version carries the key numbers; a few test faces make no champion.
    name = registered_model_name(cfg.tracking, "vae")
    (version,) = client.search_model_versions(f"name = '{name}'")
    assert version.run_id == trained.run_id and version.tags["data_hash"] == record["data_hash"]
    assert version.tags["champion_candidate"] == "false"
    assert "tracking.champion.min_samples" in version.tags["champion_refused"]
    assert float(version.tags["fd_effnet"]) == pytest.approx(  # 6 significant digits
        record["metrics"]["fd_effnet"]["value"], rel=1e-5
    )
    (output,) = run.outputs.model_outputs  # the generator's model page shows the numbers
    logged_model = client.get_logged_model(output.model_id)
    assert logged_model.name == "vae"  # named by its family
    model_metrics = {m.key for m in logged_model.metrics}
    assert "eval/fd_effnet" in model_metrics and "train/loss" not in model_metrics


def test_a_checkpoint_without_a_run_on_the_server_gets_a_new_run(
    evaluated: dict[str, Any], root: Path, tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    checkpoint = root / "models" / "dcgan" / "model.pt"
    # model.pt has no run id; the step checkpoint beside it has a NullTracker's: trained untracked
    assert load_checkpoint(checkpoint)["run_id"] is None
    assert load_checkpoint(step_path(checkpoint.parent / "checkpoints", 6))["run_id"]
    cfg = tracked_config(
        root,
        tmp_path,
        "model=dcgan",
        f"ckpt={checkpoint}",
        *tracked(mlflow_server, tmp_path, "untracked"),
    )
    result = evaluate(cfg)

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("test-untracked")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == result.run_id and run.info.run_name == "dcgan-eval"
    assert run.data.tags["model"] == "dcgan" and run.info.status == "FINISHED"
    assert run.data.metrics["eval/fd_effnet"] == pytest.approx(
        result.record["metrics"]["fd_effnet"]["value"]
    )
