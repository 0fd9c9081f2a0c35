"""The real `dvc` CLI runs the pipeline in a fresh git repository holding a copy of the project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from face_generation.pipeline import write_params
from tests.conftest import REPO_ROOT
from tests.tracking_fixtures import MlflowServer

pytestmark = pytest.mark.slow


def project_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [name for name in listed if (REPO_ROOT / name).is_file() or is_link(name)]


def is_link(name: str) -> bool:
    return (REPO_ROOT / name).is_symlink()  # configs/ -> face_generation/configs


def run(command: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def stages_run(output: str) -> set[str]:
    return {
        line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")
    }


@pytest.fixture
def project(tmp_path: Path) -> Path:
    repo = tmp_path / "project"
    for name in project_files():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        if is_link(name):
            (repo / name).symlink_to((REPO_ROOT / name).readlink())
        else:
            shutil.copy2(REPO_ROOT / name, repo / name)
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(
        [
            "git",
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.com",
            "commit",
            "-qm",
            "project",
        ],
        repo,
    )
    return repo


# A few steps of each model: the pipeline's machinery, not model quality.
SMALL_TRAINING = [
    "train.steps=4",
    "train.log_every=2",
    "train.sample_every=2",
    "train.ckpt_every=2",
    "train.batch_size=16",
    "feature_models.encoder.train.steps=4",
    "feature_models.encoder.train.ckpt_every=2",
]


def test_dvc_repro_runs_the_pipeline_then_only_what_changed(
    project: Path, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    dvc = [sys.executable, "-m", "dvc"]
    overrides = [*SMALL_TRAINING, *mlflow_server.overrides, "tracking.experiment=test-dvc"]
    write_params(overrides)
    first = run([*dvc, "repro"], project)
    trains = {"train@vae", "train@dcgan", "train@diffusion"}
    assert {"download", "split", "crop", "pack", *trains} <= stages_run(first)
    features = {"labels", "features", "identity", "train_encoder", "verify"}
    assert features <= stages_run(first)
    assert (project / "data" / "features" / "32" / "effnet_lite0" / "meta.json").is_file()
    assert "## Identity verification" in (project / "plots" / "report.md").read_text()
    assert (project / "data" / "packed" / "32" / "train.npy").is_file()
    assert (project / "models" / "vae" / "model.pt").is_file()
    assert "images_packed" in run([*dvc, "metrics", "show"], project)
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("test-dvc")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["dcgan", "diffusion", "encoder", "vae"]
    stages = {r.info.run_name: r.data.tags["dvc_stage"] for r in runs}
    assert stages == {
        "vae": "train@vae",
        "dcgan": "train@dcgan",
        "diffusion": "train@diffusion",
        "encoder": "train_encoder",
    }
    generators = [r for r in runs if r.info.run_name != "encoder"]
    assert all("eval/fd_effnet" in r.data.metrics for r in generators)
    encoder = next(r for r in runs if r.info.run_name == "encoder")
    assert encoder.data.params["encoder.name"] == "dlib"  # which networks the run saw
    assert encoder.data.params["backbone.name"] == "effnet_lite0"
    assert {"evaluate@vae", "evaluate@dcgan", "evaluate@diffusion", "report"} <= stages_run(first)
    shown = run([*dvc, "metrics", "show"], project)
    assert "fd_effnet.value" in shown and "metrics/dcgan.json" in shown
    assert "| fd_effnet" in (project / "plots" / "report.md").read_text()
    run([*dvc, "plots", "show"], project)
    assert (project / "dvc_plots" / "index.html").is_file()

    second = run([*dvc, "repro"], project)
    assert stages_run(second) == set()

    # Another backbone setting reruns its folder and what reads it, nothing else.
    write_params([*overrides, "backbone.image_size=96"])
    assert stages_run(run([*dvc, "repro"], project)) == {"features", "verify", "report"}

    write_params([*overrides, "data.resolution=16"])
    third = run([*dvc, "repro"], project)
    assert {"pack", *trains} <= stages_run(third)
    assert not stages_run(third) & {"download", "split", "crop"}
    assert (project / "data" / "packed" / "16" / "train.npy").is_file()


def test_a_sweep_queues_one_dvc_experiment_per_combination(project: Path) -> None:
    """The README's sweep: DVC composes params.yaml for each combination through its Hydra
    integration (configs/, without the package's schemas) and queues them."""
    dvc = [sys.executable, "-m", "dvc"]
    queued = run([*dvc, "exp", "run", "--queue", "-S", "train.steps=1000,2000"], project)
    assert queued.count("Queueing with overrides") == 2
    assert "train.steps=1000" in queued and "train.steps=2000" in queued
    status = run([*dvc, "queue", "status"], project)
    assert status.count("Queued") == 2
