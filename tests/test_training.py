"""Training: real networks trained for a few steps on the CPU on real faces (tests/faces.py
packs them in the documented format in a temporary folder)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from face_generation.config import compose, model_config_from_args, model_stage_parser
from face_generation.families.dcgan import DCGANFamily
from face_generation.families.vae import VAEFamily
from face_generation.models.dcgan import Discriminator, Generator
from face_generation.models.vae import VAE
from face_generation.runtime.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    training_run_id,
)
from face_generation.runtime.generator import load_generator
from face_generation.runtime.images import to_uint8
from face_generation.tracking.provenance import registered_model_name
from face_generation.train import main as train_main
from face_generation.training.loop import TrainingDiverged, train
from face_generation.training.tracker import NullTracker
from tests.faces import REPO, RESOLUTION, config, overrides, write_packed
from tests.tracking_fixtures import MlflowServer, RecordingTracker, tracked


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_packed(tmp_path_factory.mktemp("faces") / "data")


# --- networks -------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_networks_follow_the_resolution(resolution: int) -> None:
    vae = VAE(resolution, latent_dim=8, base_channels=4, max_channels=16, leaky_slope=0.2).eval()
    generator = Generator(
        resolution, latent_dim=8, base_channels=4, max_channels=16, init_std=0.02
    ).eval()
    discriminator = Discriminator(
        resolution, base_channels=4, max_channels=16, leaky_slope=0.2, init_std=0.02
    )
    images = torch.rand(2, 3, resolution, resolution) * 2 - 1
    reconstruction, mean, log_variance = vae(images)
    assert reconstruction.shape == images.shape and mean.shape == log_variance.shape == (2, 8)
    assert vae.reconstruct(images).shape == images.shape
    for family, network in ((VAEFamily, vae), (DCGANFamily, generator)):
        samples = family.sample(network, 3, generator=torch.Generator().manual_seed(0))
        assert samples.shape == (3, 3, resolution, resolution)
        assert samples.min() >= -1 and samples.max() <= 1
    assert discriminator(images).shape == (2,)


def test_networks_reject_a_resolution_they_cannot_reach() -> None:
    with pytest.raises(ValueError, match="power of two"):
        VAE(48, latent_dim=8, base_channels=4, max_channels=16, leaky_slope=0.2)


# --- the loop -------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["vae", "dcgan"])
def test_training_writes_checkpoints_samples_and_metrics(
    model: str, data_dir: Path, tmp_path: Path
) -> None:
    cfg = config(model, data_dir, tmp_path / "models")
    tracker = RecordingTracker()
    result = train(cfg, tracker)

    output = tmp_path / "models" / model
    assert result.step == 6 and result.checkpoint == output / "model.pt"
    assert [step for step, _ in list_checkpoints(output / "checkpoints")] == [3, 6]
    assert (output / "samples.png").is_file() and (
        output / "samples" / "step-00000003.png"
    ).is_file()
    assert tracker.status == "FINISHED"
    assert [step for step, _ in tracker.metrics] == [2, 3, 4, 6]
    assert all(np.isfinite(value) for _, logged in tracker.metrics for value in logged.values())
    assert tracker.params["model.name"] == model and tracker.params["train.steps"] == "6"
    assert tracker.tags["data_hash"] == "test"
    assert [path.name for path in tracker.artifacts] == ["losses.csv"]
    assert [(key, step, path.name) for key, step, path in tracker.images] == [
        ("samples", 0, "step-00000000.png"),  # where MLflow's image card opens
        ("samples", 3, "step-00000003.png"),  # the UI's step slider
        ("samples", 6, "step-00000006.png"),
    ]
    assert tracker.datasets == [(data_dir / "packed" / "32", "test", 48)]

    state = load_checkpoint(result.checkpoint, expected_model=model)
    # model.pt is the same bytes for the same training: the run id is in the step checkpoint
    assert state["step"] == 6 and state["run_id"] is None
    assert training_run_id(result.checkpoint, 6) == tracker.run_id
    assert state["config"]["train"]["steps"] == 6 and state["ema"] is not None
    assert set(state["optimizers"]) == set(state["networks"])

    trained = load_generator(result.checkpoint)
    samples = trained.sample(5, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (5, 3, RESOLUTION, RESOLUTION) and trained.config.model.name == model
    assert torch.isfinite(samples).all() and samples.min() >= -1 and samples.max() <= 1
    assert samples.std() > 1e-3  # not a constant image (6 steps: BatchNorm stats barely moved)
    grid = np.asarray(Image.open(output / "samples.png"))
    assert grid.shape == (4 * (RESOLUTION + 2) + 2, 4 * (RESOLUTION + 2) + 2, 3)


def test_the_same_training_writes_the_same_dvc_outputs(data_dir: Path, tmp_path: Path) -> None:
    """DVC records the hashes of model.pt, losses.csv and samples.png in dvc.lock: a rerun of
    the same training in another run (another run id) must write the same bytes."""
    outputs = [tmp_path / "first", tmp_path / "second"]
    for models in outputs:
        train(config("dcgan", data_dir, tmp_path / "models"), NullTracker())
        (tmp_path / "models").rename(models)
    for name in ("model.pt", "losses.csv", "samples.png"):
        first, second = (models / "dcgan" / name for models in outputs)
        assert first.read_bytes() == second.read_bytes(), name


@pytest.mark.slow
def test_a_training_run_logs_to_a_team_server_on_postgresql(
    data_dir: Path, tmp_path: Path, postgres: str, postgres_mlflow_server: MlflowServer
) -> None:
    """A team's server (runs in PostgreSQL, artifacts in a folder): the run, its curves, its
    grids and its registered generator land there, in PostgreSQL's tables."""
    import psycopg
    from mlflow.tracking import MlflowClient

    overrides = tracked(postgres_mlflow_server, tmp_path, "postgres")
    result = train(config("dcgan", data_dir, tmp_path / "models", *overrides))

    client = MlflowClient(postgres_mlflow_server.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["model.name"] == "dcgan"
    history = client.get_metric_history(result.run_id, "train/d_loss")
    assert [metric.step for metric in history] == [2, 3, 4, 6]
    assert client.list_artifacts(result.run_id, "images")  # the sample grids
    name = registered_model_name(compose("config", overrides).tracking, "dcgan")
    [version] = client.search_model_versions(f"name='{name}'")
    assert version.run_id == result.run_id
    with psycopg.connect(postgres) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT status FROM runs WHERE run_uuid = %s", (result.run_id,))
        assert cursor.fetchall() == [("FINISHED",)]
        cursor.execute(
            "SELECT step FROM metrics WHERE run_uuid = %s AND key = 'train/d_loss' ORDER BY step",
            (result.run_id,),
        )
        assert cursor.fetchall() == [(2,), (3,), (4,), (6,)]
    artifacts = Path(postgres_mlflow_server.cfg.artifacts)
    assert any(artifacts.rglob("*.png"))  # the grids are files in the shared artifact folder


@pytest.mark.slow
def test_tracked_run_logs_curves_samples_and_a_registered_generator(
    data_dir: Path, tmp_path: Path, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.tracking import MlflowClient

    cfg = config("dcgan", data_dir, tmp_path / "models", *tracked(mlflow_server, tmp_path, "run"))
    result = train(cfg)

    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "dcgan"
    assert run.data.params["model.name"] == "dcgan" and run.data.params["train.steps"] == "6"
    assert run.data.tags["data_hash"] == "test" and len(run.data.tags["git_commit"]) == 40
    history = client.get_metric_history(result.run_id, "train/d_loss")
    assert [metric.step for metric in history] == [2, 3, 4, 6]
    images = [a.path for a in client.list_artifacts(result.run_id, "images")]
    # The image card on the run's metrics tab opens at step 0, its slider goes to the others;
    # each grid is a PNG and the compressed copy the card shows.
    steps = (0, 3, 6)
    assert [sum(f"samples+step+{step}+" in path for path in images) for step in steps] == [2] * 3
    assert run.data.tags["mlflow.loggedImages"] == "True"
    (dataset,) = run.inputs.dataset_inputs  # the training data: the DVC output and its hash
    assert dataset.dataset.digest == "test" and dataset.dataset.name == "lfw_subset-32px"
    assert json.loads(dataset.dataset.source)["uri"] == str(data_dir / "packed" / "32")
    losses = (tmp_path / "models" / "dcgan" / "losses.csv").read_text().splitlines()
    assert losses[0].startswith("step,d_loss,") and [line.split(",")[0] for line in losses[1:]] == [
        "2",
        "3",
        "4",
        "6",
    ]

    name = registered_model_name(cfg.tracking, "dcgan")
    [version] = client.search_model_versions(f"name='{name}'")
    assert version.run_id == result.run_id
    assert version.description.startswith("dcgan generator, 32x32 px, 6 steps on data test")
    assert {key: version.tags[key] for key in ("family", "resolution", "steps", "data_hash")} == {
        "family": "dcgan",
        "resolution": "32",
        "steps": "6",
        "data_hash": "test",
    }
    link = json.loads((tmp_path / "models" / "dcgan" / "mlflow_run.json").read_text())
    assert link["run_id"] == result.run_id and link["version"] == version.version
    assert link["url"].endswith(f"/runs/{result.run_id}?workflowType=machine_learning")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
    served = model.predict(pd.DataFrame({"n": [3], "seed": [5]}))
    expected = to_uint8(
        load_generator(result.checkpoint).sample(3, generator=torch.Generator().manual_seed(5))
    )
    assert served.shape == (3, RESOLUTION, RESOLUTION, 3) and np.array_equal(served, expected)


def test_vae_loss_falls_on_real_faces(data_dir: Path, tmp_path: Path) -> None:
    tracker = RecordingTracker()
    train(
        config("vae", data_dir, tmp_path / "models", "train.steps=30", "train.log_every=5"), tracker
    )
    losses = [logged["train/loss"] for _, logged in tracker.metrics]
    assert losses[-1] < 0.5 * losses[0], losses


def test_resumed_run_matches_an_uninterrupted_one(data_dir: Path, tmp_path: Path) -> None:
    straight = train(config("vae", data_dir, tmp_path / "straight"), NullTracker())
    first = train(config("vae", data_dir, tmp_path / "resumed", "train.steps=3"), NullTracker())
    resumed = train(
        config("vae", data_dir, tmp_path / "resumed", "train.resume=auto"),
        NullTracker(first.run_id),
    )
    assert resumed.step == 6 and resumed.run_id == first.run_id
    expected = torch.load(straight.checkpoint, weights_only=True)
    actual = torch.load(resumed.checkpoint, weights_only=True)
    for key in ("networks", "ema"):
        flat_expected, flat_actual = expected[key], actual[key]
        if key == "networks":
            flat_expected, flat_actual = flat_expected["vae"], flat_actual["vae"]
        for name, tensor in flat_expected.items():
            assert torch.equal(tensor, flat_actual[name]), f"{key}.{name} differs after resuming"


def test_fresh_start_removes_checkpoints_of_an_earlier_run(data_dir: Path, tmp_path: Path) -> None:
    train(config("vae", data_dir, tmp_path / "models"), NullTracker())
    result = train(config("vae", data_dir, tmp_path / "models", "train.steps=3"), NullTracker())
    assert [step for step, _ in list_checkpoints(tmp_path / "models" / "vae" / "checkpoints")] == [
        3
    ]
    assert load_checkpoint(result.checkpoint)["step"] == 3


def test_nan_loss_stops_the_run_without_a_checkpoint(data_dir: Path, tmp_path: Path) -> None:
    tracker = RecordingTracker()
    with pytest.raises(TrainingDiverged, match=r"diverged.*step 2.*newest good one is \(none\)"):
        train(config("vae", data_dir, tmp_path / "models", "model.beta=nan"), tracker)
    assert list_checkpoints(tmp_path / "models" / "vae" / "checkpoints") == []
    assert not (tmp_path / "models" / "vae" / "model.pt").exists()
    assert tracker.status == "FAILED"


def test_truncated_checkpoint_is_a_clear_error(data_dir: Path, tmp_path: Path) -> None:
    result = train(config("vae", data_dir, tmp_path / "models"), NullTracker())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(result.checkpoint.read_bytes()[: result.checkpoint.stat().st_size // 2])
    with pytest.raises(
        CheckpointError, match=rf"{truncated}.*cannot be read.*truncated or corrupt"
    ):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match=str(truncated)):
        train(
            config("vae", data_dir, tmp_path / "models", f"train.resume={truncated}"), NullTracker()
        )
    not_a_checkpoint = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, not_a_checkpoint)
    with pytest.raises(CheckpointError, match=rf"{not_a_checkpoint} is not a face_generation"):
        load_checkpoint(not_a_checkpoint)


def test_checkpoint_of_another_model_is_a_clear_error(data_dir: Path, tmp_path: Path) -> None:
    dcgan = train(config("dcgan", data_dir, tmp_path / "models", "train.steps=3"), NullTracker())
    with pytest.raises(
        CheckpointError, match=rf"{dcgan.checkpoint} holds a 'dcgan' model, not 'vae'"
    ):
        train(
            config("vae", data_dir, tmp_path / "models", f"train.resume={dcgan.checkpoint}"),
            NullTracker(),
        )
    # same family, other sizes: named as a config difference, not a raw state_dict error
    with pytest.raises(CheckpointError, match=r"different config[\s\S]*latent_dim"):
        train(
            config(
                "dcgan", data_dir, tmp_path / "models", "train.resume=auto", "model.latent_dim=7"
            ),
            NullTracker(),
        )


def test_params_file_selects_one_model(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    OmegaConf.save(compose("pipeline"), params, resolve=True)
    parser_args = [
        "--params",
        str(params),
        "--model",
        "dcgan",
        "train.steps=2",
        "model.latent_dim=7",
    ]
    parser = model_stage_parser("test", "train")
    cfg = model_config_from_args(parser.parse_args(parser_args))
    assert cfg.model.name == "dcgan" and cfg.model.latent_dim == 7 and "models" not in cfg
    assert (
        cfg.train.steps == 2
        and cfg.model.generator_channels
        == compose("config", ["model=dcgan"]).model.generator_channels
    )


def test_missing_packed_data_names_the_stage(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"train.npy does not exist: run the data stages"):
        train_main(overrides("vae", tmp_path / "nothing", tmp_path / "models"))


# --- the command line: kill, resume, signals --------------------------------------------


def start_training(data_dir: Path, models_dir: Path, *extra: str) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        "-m",
        "face_generation.train",
        *overrides("vae", data_dir, models_dir, *extra),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_for_checkpoint(
    process: subprocess.Popen[str], checkpoints: Path, deadline_s: float = 120.0
) -> int:
    """Poll until a step checkpoint exists; returns its step."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        found = list_checkpoints(checkpoints)
        if found:
            return found[-1][0]
        if process.poll() is not None:
            pytest.fail(
                f"training exited early:\n{process.stdout.read() if process.stdout else ''}"
            )
        time.sleep(0.05)  # polling interval, not synchronisation
    process.kill()
    pytest.fail(f"no checkpoint in {checkpoints} after {deadline_s} s")


@pytest.mark.slow
def test_run_killed_with_sigkill_resumes_from_its_last_checkpoint(
    data_dir: Path, tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    from mlflow.tracking import MlflowClient

    models = tmp_path / "models"
    checkpoints = models / "vae" / "checkpoints"
    tracking = tracked(mlflow_server, tmp_path, "killed")
    process = start_training(
        data_dir,
        models,
        "train.steps=100000",
        "train.ckpt_every=2",
        "train.sample_every=1000",
        *tracking,
    )
    wait_for_checkpoint(process, checkpoints)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    step, newest = list_checkpoints(checkpoints)[-1]
    run_id = load_checkpoint(newest)["run_id"]

    resumed = start_training(
        data_dir, models, f"train.steps={step + 2}", "train.resume=auto", *tracking
    )
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert f"resumed from {newest} at step {step} (run {run_id})" in output
    final = models / "vae" / "model.pt"
    assert load_checkpoint(final, expected_model="vae")["step"] == step + 2
    assert training_run_id(final, step + 2) == run_id

    # One MLflow run, finished, holding every logged step of both processes.
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    logged = {metric.step for metric in client.get_metric_history(run_id, "train/loss")}
    assert logged >= set(range(2, step + 3, 2))


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits_cleanly(data_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    checkpoints = models / "vae" / "checkpoints"
    process = start_training(
        data_dir, models, "train.steps=100000", "train.ckpt_every=1000", "train.log_every=1"
    )
    process_output: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:  # the run has started once it prints its plan
        process_output.append(line)
        if line.startswith("[train] vae on"):
            break
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=120)
    output = "".join(process_output) + rest
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "stopped by SIGTERM" in output and "Traceback" not in output
    [(step, path)] = list_checkpoints(checkpoints)
    assert load_checkpoint(path)["step"] == step >= 1
