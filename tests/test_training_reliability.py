"""Training never loses a trained model: bad settings, failures before the first checkpoint,
a second writer, and resumes under the pipeline (faults a user meets at the CLI)."""

from __future__ import annotations

import csv
import errno
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient

from face_generation.runtime.checkpoint import list_checkpoints, load_checkpoint
from face_generation.train import main as train_main
from face_generation.training.loop import TrainingDiverged, train
from face_generation.training.output import exclusive_writer
from face_generation.training.tracker import NullTracker, create_tracker
from tests.faces import config, overrides, write_packed
from tests.tracking_fixtures import MlflowServer, RecordingTracker, tracked


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_packed(tmp_path_factory.mktemp("faces") / "data")


@contextmanager
def disk_full_above(size: int) -> Iterator[None]:
    """Writes that take any file of this process past `size` bytes fail (EFBIG), as on a full
    disk: checkpoints (megabytes) cannot be written, logs and grids (kilobytes) can."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


class FullDiskTracker(NullTracker):
    """Writes its run link into the model folder at the start, as MlflowTracker does, and
    fails to write it again at the end, as MlflowTracker's close does on a full disk."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.link = folder / "mlflow_run.json"

    def log_params(self, params: Mapping[str, Any]) -> None:  # the run's start
        self.link.write_text('{"run_id": "failed"}\n')

    def close(self, status: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(self.link))


def leftovers(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.name.endswith(".tmp")]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (but the lock) with its bytes."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != ".lock"
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.batch_size=0", r"train\.batch_size=0 is not allowed: it must be at least 1"),
        ("train.steps=-1", r"train\.steps=-1 is not allowed: it must be at least 1"),
        ("train.steps=abc", r"train\.steps: Value 'abc' .* could not be converted to Integer"),
        (
            "train.precision=fp16",
            r"train\.precision=fp16 is not allowed: it must be auto, bf16, fp32",
        ),
        ("train.device=gpu", r"train\.device=gpu: device 'gpu' is not a device: use auto"),
        ("train.device=cuda:7", r"train\.device=cuda:7: device 'cuda:7' "),
        ("train.threads=0", r"train\.threads=0 is not allowed: it must be null .* or at least 1"),
        (
            "model.optimizer.lr=-1",
            r"model\.optimizer\.lr=-1\.0 is not allowed: it must be a positive",
        ),
    ],
)
def test_a_bad_setting_touches_neither_the_model_nor_mlflow(
    setting: str,
    message: str,
    data_dir: Path,
    tmp_path: Path,
    mlflow_server: MlflowServer,
) -> None:
    models = tmp_path / "models"
    train(config("vae", data_dir, models), NullTracker())
    before = snapshot(models / "vae")
    tracking = tracked(mlflow_server, tmp_path, "bad-setting")
    with pytest.raises(SystemExit, match=rf"^\[train\] error: {message}") as failure:
        train_main([*overrides("vae", data_dir, models), *tracking, setting])
    assert "\n" not in str(failure.value)
    assert snapshot(models / "vae") == before
    client = MlflowClient(mlflow_server.uri)
    assert client.get_experiment_by_name("test-bad-setting") is None  # no run, no FAILED run


def test_a_run_failing_before_its_first_checkpoint_gives_the_earlier_model_back(
    data_dir: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    train(config("vae", data_dir, models), NullTracker())
    before = snapshot(models / "vae")
    with pytest.raises(TrainingDiverged):  # NaN at step 2, the first checkpoint is at 3
        train(config("vae", data_dir, models, "model.beta=nan"), NullTracker())
    assert snapshot(models / "vae") == before
    assert not (models / "vae" / ".previous").exists()


def test_a_fresh_start_discards_the_earlier_run_once_it_has_a_checkpoint(
    data_dir: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    train(config("vae", data_dir, models), NullTracker())
    result = train(config("vae", data_dir, models, "train.steps=3"), NullTracker())
    assert [step for step, _ in list_checkpoints(models / "vae" / "checkpoints")] == [3]
    assert load_checkpoint(result.checkpoint)["step"] == 3
    assert not (models / "vae" / ".previous").exists()


def test_a_second_training_of_the_same_model_is_refused_naming_the_first(
    data_dir: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    busy = rf"another training \(PID {os.getpid()}\)"
    with exclusive_writer(models / "vae"), pytest.raises(SystemExit, match=busy):
        train_main(overrides("vae", data_dir, models))  # the folder is held as a training would
    assert not (models / "vae" / "model.pt").exists()
    assert train(config("vae", data_dir, models), NullTracker()).step == 6  # released


@pytest.mark.slow
def test_matching_resume_continues_an_interrupted_run_and_nothing_else(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    straight = train(config("vae", data_dir, tmp_path / "straight"), NullTracker())
    models = tmp_path / "models"
    train(config("vae", data_dir, models, "train.steps=3"), NullTracker())  # stopped at 3 of 6
    resumed = train(config("vae", data_dir, models, "train.resume=matching"), NullTracker())
    assert "resuming the interrupted run" in capsys.readouterr().out
    expected, actual = load_checkpoint(straight.checkpoint), load_checkpoint(resumed.checkpoint)
    for name, tensor in expected["networks"]["vae"].items():
        assert torch.equal(tensor, actual["networks"]["vae"][name]), name

    changed = config("vae", data_dir, models, "train.resume=matching", "model.beta=2")
    assert train(changed, NullTracker()).step == 6
    out = capsys.readouterr().out
    assert "starting afresh" in out and "model.beta: 1.0 → 2.0" in out


def test_resume_auto_on_a_finished_run_does_nothing(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    first = train(config("vae", data_dir, models), NullTracker())
    before = snapshot(models / "vae")
    tracker = RecordingTracker()
    result = train(config("vae", data_dir, models, "train.resume=auto"), tracker)
    assert result.step == 6 and result.checkpoint == first.checkpoint
    assert "already finished at step 6" in capsys.readouterr().out
    assert tracker.status is None and tracker.metrics == []  # no run touched, nothing registered
    assert snapshot(models / "vae") == before


def test_resume_auto_without_a_checkpoint_says_so(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = train(config("vae", data_dir, tmp_path / "models", "train.resume=auto"), NullTracker())
    assert result.step == 6
    assert "nothing to resume: no checkpoint in" in capsys.readouterr().out


def test_an_unknown_family_is_one_line_naming_the_known_ones(
    data_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(SystemExit, match=r"^\[train\] error: .*model/nonexistent.*vae") as failure:
        train_main(overrides("nonexistent", data_dir, tmp_path / "models"))
    assert "\n" not in str(failure.value)


def test_a_full_disk_at_the_first_checkpoint_gives_the_earlier_run_back(
    data_dir: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    train(config("vae", data_dir, models), NullTracker())
    before = snapshot(models / "vae")
    with disk_full_above(1_000_000), pytest.raises(OSError) as failure:
        train(config("vae", data_dir, models), FullDiskTracker(models / "vae"))
    # the first error, not the tracker's: the checkpoint's path and what is kept
    assert failure.value.filename == str(models / "vae" / "checkpoints" / "step-00000003.pt")
    assert f"kept the earlier run's files, back in {models / 'vae'}" in str(failure.value)
    assert snapshot(models / "vae") == before  # no losses.csv or run link of the failed run
    assert not (models / "vae" / ".previous").exists()
    assert leftovers(models) == []


def test_a_full_disk_at_a_later_checkpoint_names_it_and_keeps_the_earlier_one(
    data_dir: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    train(config("vae", data_dir, models, "train.steps=3"), NullTracker())
    earlier = models / "vae" / "checkpoints" / "step-00000003.pt"
    kept = earlier.read_bytes()
    with disk_full_above(1_000_000), pytest.raises(SystemExit) as failure:
        train_main([*overrides("vae", data_dir, models), "train.resume=auto"])
    message = str(failure.value)
    assert message.startswith(f"[train] error: {earlier.with_name('step-00000006.pt')}: ")
    assert message.endswith(f"; kept the checkpoint {earlier}")
    assert earlier.read_bytes() == kept
    assert leftovers(models) == []


def test_a_run_link_that_cannot_be_written_ends_the_mlflow_run_as_failed(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    models = tmp_path / "models"
    (models / "vae" / "mlflow_run.json").mkdir(parents=True)  # the link cannot replace it
    cfg = config("vae", tmp_path, models, *tracked(mlflow_server, tmp_path, "link-fails"))
    with pytest.raises(OSError):
        create_tracker(cfg)
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("test-link-fails")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    assert leftovers(models) == []


def test_train_threads_sets_torchs_threads_and_is_logged_with_the_run(
    data_dir: Path, tmp_path: Path
) -> None:
    before = torch.get_num_threads()
    tracker = RecordingTracker()
    try:
        train(config("vae", data_dir, tmp_path / "models", "train.threads=1"), tracker)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert tracker.tags["threads"] == 1
    assert tracker.params["train.threads"] == "1"


@pytest.mark.slow
def test_a_run_interrupted_under_dvc_repro_keeps_its_loss_history(
    data_dir: Path, tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    """Ctrl-C during `dvc repro`, then `dvc repro` again: DVC deletes the stage's outputs
    before it reruns it, yet losses.csv, `dvc plots show` and MLflow keep every logged step,
    the ones before the interruption included."""
    root = tmp_path / "project"
    root.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env["DVC_NO_ANALYTICS"] = "1"
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(command, cwd=root, env=env, check=True)
    train_command = " ".join(
        [
            "python -m face_generation.train",
            *overrides("dcgan", data_dir, root / "models"),
            *tracked(mlflow_server, tmp_path, "dvc-resume"),
            "train.steps=60",
            "train.sample_every=1000",
            "train.log_every=1",
            "train.ckpt_every=1000",  # only the interruption writes a checkpoint
            "train.resume=matching",
        ]
    )
    stage = {"cmd": train_command, "outs": ["models/dcgan/model.pt", "models/dcgan/losses.csv"]}
    (root / "dvc.yaml").write_text(json.dumps({"stages": {"train": stage}}))

    repro = subprocess.Popen(
        ["dvc", "repro"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C reaches
    )
    assert repro.stdout is not None
    for line in repro.stdout:  # the loop prints this once its signal handler is in place
        if line.startswith("[train] dcgan on"):
            break
    os.killpg(repro.pid, signal.SIGINT)
    interrupted = repro.stdout.read()
    assert repro.wait(timeout=600) != 0 and "stopped by SIGINT" in interrupted, interrupted
    stopped = load_checkpoint(list_checkpoints(root / "models" / "dcgan" / "checkpoints")[-1][1])[
        "step"
    ]
    assert 0 < stopped < 60

    resumed = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from" in resumed.stdout

    with (root / "models" / "dcgan" / "losses.csv").open() as file:
        rows = list(csv.DictReader(file))
    steps = [int(row["step"]) for row in rows]
    assert steps[0] == 1 and steps[-1] == 60 and stopped in steps
    assert steps == sorted(set(steps)) and len(steps) == 60  # every step once

    losses = "models/dcgan/losses.csv"
    plotted = subprocess.run(
        ["dvc", "plots", "show", "--json", "-x", "step", "-y", "d_loss", losses],
        cwd=root, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    points = json.loads(plotted)["data"][losses][0]["content"]["data"]["values"]
    assert [(point["step"], point["d_loss"]) for point in points] == [
        (row["step"], row["d_loss"]) for row in rows
    ]

    # a server too slow to answer within tracking.request_timeout_s (a loaded machine) leaves
    # records in the spool, as promised; the README's sync command delivers them
    sync = [sys.executable, "-m", "face_generation.tracking.sync"]
    subprocess.run([*sync, *tracked(mlflow_server, tmp_path, "dvc-resume")], env=env, check=True)
    run_id = load_checkpoint(root / "models" / "dcgan" / "checkpoints" / "step-00000060.pt")[
        "run_id"
    ]
    history = MlflowClient(mlflow_server.uri).get_metric_history(run_id, "train/d_loss")
    logged = {point.step: point.value for point in history}
    assert sorted(logged) == steps
    for row in rows:
        assert logged[int(row["step"])] == pytest.approx(float(row["d_loss"]), rel=1e-5)
