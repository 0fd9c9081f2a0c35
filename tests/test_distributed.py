"""Data-parallel training for real: two processes on the CPU (gloo), started by torchrun or by
`train.nproc`, on real packed faces (tests/faces.py).

The ranks' gradients are averaged (two ranks on halves of a batch take exactly the step one
process takes on all of it, and the loop refuses ranks whose weights differ), only rank 0
writes files and MLflow records, a run resumes with another number of processes in the same
MLflow run, SIGTERM stops every rank with rank 0 checkpointing, and a killed rank ends the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from face_generation.families.optimization import optimizer_step
from face_generation.runtime.checkpoint import list_checkpoints, load_checkpoint, training_run_id
from face_generation.training.distributed import (
    RanksDiverged,
    check_same_weights,
    stop_requested,
    torchrun_command,
)
from tests.faces import REPO, overrides, write_packed
from tests.tracking_fixtures import MlflowServer, tracked

pytestmark = pytest.mark.slow  # each test starts two or more Python processes with torch
RANKS = 2
ROWS = 8  # one global batch of the gradient test, split between the ranks
TIMEOUT_S = 300  # the longest any command here may take before the test calls it hung


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_packed(tmp_path_factory.mktemp("faces") / "data")


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(ROWS, 3, generator=generator), torch.randn(ROWS, 2, generator=generator)


def one_step(network: nn.Linear, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    optimizer = torch.optim.SGD(network.parameters(), lr=0.5)
    loss = nn.functional.mse_loss(network(inputs), targets)
    optimizer_step(optimizer, loss, network, grad_clip=None)


def rank_worker(rank: int, store: str, out: str) -> None:
    """One of two ranks: a step on its half of the batch, then the checks every rank makes."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=RANKS)
    torch.manual_seed(0)  # the same initial weights on both ranks, as the loop seeds them
    network = nn.Linear(3, 2)
    inputs, targets = batch()
    share = slice(rank * ROWS // RANKS, (rank + 1) * ROWS // RANKS)
    one_step(network, inputs[share], targets[share])
    check_same_weights({"network": network}, RANKS)  # averaged: the same step on both
    agreed = stop_requested("SIGTERM" if rank == 1 else None, RANKS)
    with torch.no_grad():
        network.weight[0, 0] += rank  # rank 1's weights now differ
    try:
        check_same_weights({"network": network}, RANKS)
        refused = ""
    except RanksDiverged as error:
        refused = str(error)
    torch.save({"state": network.state_dict(), "agreed": agreed, "refused": refused}, out % rank)
    dist.destroy_process_group()


def test_two_ranks_on_halves_of_a_batch_take_the_step_of_one_process(tmp_path: Path) -> None:
    out = str(tmp_path / "rank-%d.pt")
    mp.spawn(rank_worker, args=(str(tmp_path / "store"), out), nprocs=RANKS)
    torch.manual_seed(0)
    alone = nn.Linear(3, 2)
    one_step(alone, *batch())  # the whole batch in one process
    for rank in range(RANKS):
        result = torch.load(out % rank)
        state = result["state"]
        if rank == 0:
            for name, value in alone.state_dict().items():
                torch.testing.assert_close(state[name], value, rtol=1e-6, atol=1e-7)
        assert result["agreed"] == "SIGTERM"  # rank 1's signal stops rank 0 after the same step
        assert "network differ" in result["refused"]  # the loop's check catches diverged ranks


def torchrun(data_dir: Path, models: Path, *extra: str, nproc: int = RANKS) -> list[str]:
    return torchrun_command(nproc, overrides("dcgan", data_dir, models, *extra))


def run(command: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_torchrun_trains_one_run_written_by_rank_zero_and_resumes_with_another_count(
    data_dir: Path, tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    """2 processes (torchrun) for 3 steps, 1 process to step 6, 2 again (train.nproc=2, the
    config switch) to step 9: one MLflow run, every logged step once, one writer."""
    from mlflow.tracking import MlflowClient

    models = tmp_path / "models"
    tracking = tracked(mlflow_server, tmp_path, "ddp")
    output = run(torchrun(data_dir, models, "train.steps=3", *tracking))
    assert output.count("batch 16 over 2 processes") == RANKS
    plain = [sys.executable, "-m", "face_generation.train"]
    resume = ["train.resume=auto", *tracking]
    output = run([*plain, *overrides("dcgan", data_dir, models, "train.steps=6", *resume)])
    assert "at step 3" in output and "over 2 processes" not in output
    nproc = "train.nproc=2"
    output = run([*plain, *overrides("dcgan", data_dir, models, "train.steps=9", nproc, *resume)])
    assert "torch.distributed.run --standalone --nproc_per_node=2" in output
    assert output.count("at step 6") == RANKS  # both ranks resumed from the same checkpoint

    output_dir = models / "dcgan"
    final = load_checkpoint(output_dir / "model.pt", expected_model="dcgan")
    assert final["step"] == 9
    run_id = training_run_id(output_dir / "model.pt", 9)
    client = MlflowClient(mlflow_server.uri)
    run_record = client.get_run(run_id)
    assert len(client.search_runs([run_record.info.experiment_id])) == 1
    assert run_record.info.status == "FINISHED" and run_record.data.tags["world_size"] == "2"
    logged = [metric.step for metric in client.get_metric_history(run_id, "train/d_loss")]
    assert sorted(logged) == [2, 3, 4, 6, 8, 9]  # rank 1 logged nothing
    lines = (output_dir / "losses.csv").read_text().splitlines()  # one writer, no doubled rows
    assert lines[0].startswith("step,") and [line.split(",")[0] for line in lines[1:]] == [
        "2", "3", "4", "6", "8", "9",
    ]  # fmt: skip
    assert [step for step, _ in list_checkpoints(output_dir / "checkpoints")] == [6, 9]


def started(process: subprocess.Popen[str]) -> list[str]:
    """The output up to both ranks' start lines (the run is under way once they print; a
    rank's line may follow the other's progress bar on one line)."""
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if "".join(lines).count("[train] dcgan on") == RANKS:
            return lines
    pytest.fail("training ended before it started:\n" + "".join(lines))


@contextmanager
def start(data_dir: Path, models: Path, *extra: str) -> Iterator[subprocess.Popen[str]]:
    """torchrun training for (nearly) ever, in its own process group, killed whole if the
    test fails before it ends."""
    command = torchrun(data_dir, models, "train.steps=100000", "train.log_every=1", *extra)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_sigterm_to_torchrun_stops_every_rank_and_rank_zero_checkpoints(
    data_dir: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    with start(data_dir, models, "train.ckpt_every=100000") as process:
        before = started(process)
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=TIMEOUT_S)
    output = "".join(before) + rest
    assert process.returncode != 0, output
    steps = {line.split(" at step ")[1].split(";")[0] for line in output.splitlines()
             if "stopped by SIGTERM at step" in line}  # fmt: skip
    assert len(steps) == 1, output  # every rank stopped after the same step
    [(step, path)] = list_checkpoints(models / "dcgan" / "checkpoints")
    assert str(step) in steps and load_checkpoint(path)["step"] == step


def child_with_rank(parent: int, rank: int) -> int:
    """The pid of torchrun's worker process of `rank`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"torchrun (pid {parent}) has no worker of rank {rank}")


def test_a_killed_rank_ends_the_job_instead_of_hanging(data_dir: Path, tmp_path: Path) -> None:
    with start(data_dir, tmp_path / "models", "train.dist_timeout_s=30") as process:
        before = started(process)
        os.kill(child_with_rank(process.pid, 1), signal.SIGKILL)
        rest, _ = process.communicate(timeout=TIMEOUT_S)  # a hang fails here
    output = "".join(before) + rest
    assert process.returncode != 0, output
    assert "Signal 9 (SIGKILL)" in output or "exitcode  : -9" in output, output


def test_a_rank_that_stops_answering_ends_the_job_after_the_timeout(
    data_dir: Path, tmp_path: Path
) -> None:
    """Rank 1 frozen (SIGSTOP): rank 0's next collective gives up after train.dist_timeout_s
    with a one-line error instead of waiting forever, and torchrun ends the job."""
    with start(data_dir, tmp_path / "models", "train.dist_timeout_s=3") as process:
        output = started(process)
        frozen = child_with_rank(process.pid, 1)
        os.kill(frozen, signal.SIGSTOP)
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if "did not answer within train.dist_timeout_s=3 s" in line:
                break
        os.kill(frozen, signal.SIGCONT)  # so that it takes torchrun's SIGTERM at once
        rest, _ = process.communicate(timeout=TIMEOUT_S)
    text = "".join(output) + rest
    assert process.returncode != 0, text
    assert "[train] error: another training process died or did not answer" in text, text
