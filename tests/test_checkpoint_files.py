"""Checkpoint files as training writes them (runtime/checkpoint.py), without training: step
names, the newest one, pruning, atomic saving, and RNG states that restore every stream."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from face_generation.runtime.checkpoint import (
    list_checkpoints,
    newest_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    rng_state,
    save_checkpoint,
    step_path,
)


def touch_steps(directory: Path, steps: list[int]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [step_path(directory, step) for step in steps]
    for path in paths:
        path.write_bytes(b"")
    return paths


def test_checkpoints_are_listed_by_step_and_other_files_ignored(tmp_path: Path) -> None:
    assert step_path(tmp_path, 120) == tmp_path / "step-00000120.pt"
    assert list_checkpoints(tmp_path / "none-yet") == []
    assert newest_checkpoint(tmp_path / "none-yet") is None
    paths = touch_steps(tmp_path, [1000, 20, 300])
    for other in ("model.pt", "step-00000400.pt.tmp", "step-abc.pt", "xstep-00000500.pt"):
        (tmp_path / other).write_bytes(b"")
    assert list_checkpoints(tmp_path) == [(20, paths[1]), (300, paths[2]), (1000, paths[0])]
    assert newest_checkpoint(tmp_path) == paths[0]  # by step, not by name or file time


def test_pruning_keeps_the_newest_and_removes_killed_saves(tmp_path: Path) -> None:
    touch_steps(tmp_path, [10, 20, 30, 40, 50])
    (tmp_path / "step-00000060.pt.tmp").write_bytes(b"half")  # a save killed midway
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "step-00000040.pt",
        "step-00000050.pt",
    ]
    for keep in (0, -1):  # 0 or less: keep them all
        prune_checkpoints(tmp_path, keep=keep)
        assert [step for step, _ in list_checkpoints(tmp_path)] == [40, 50]
    prune_checkpoints(tmp_path, keep=1)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [50]


def test_a_save_replaces_the_file_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "models" / "vae" / "checkpoints" / "step-00000002.pt"
    save_checkpoint({"step": 1, "weights": torch.ones(3)}, path)
    save_checkpoint({"step": 2, "weights": torch.zeros(3)}, path)
    state = torch.load(path, weights_only=True)
    assert state["step"] == 2 and torch.equal(state["weights"], torch.zeros(3))
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_rng_states_restore_every_stream_through_a_safe_file(tmp_path: Path) -> None:
    np.random.standard_normal()  # numpy now holds a cached Gaussian: it is saved too
    path = tmp_path / "rng.pt"
    save_checkpoint({"rng": rng_state()}, path)
    expected = draws()
    restore_rng_state(torch.load(path, weights_only=True)["rng"])  # the loader's safe mode
    assert draws() == expected


def test_cuda_states_are_restored_only_onto_as_many_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a GPU here, CUDA is stood in for: a checkpoint of two GPUs resumed on one, or
    on a CPU, must not fail on (or half-restore) the CUDA generators."""
    restored: list[list[torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.ones(2), torch.zeros(2)])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    state = rng_state()
    assert [s.tolist() for s in state["cuda"]] == [[1, 1], [0, 0]]
    restore_rng_state(state)
    assert len(restored) == 1 and restored[0] is state["cuda"]
    for devices in (1, 3):  # a machine with fewer or more GPUs: left as they are
        monkeypatch.setattr(torch.cuda, "device_count", lambda devices=devices: devices)
        restore_rng_state(state)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    restore_rng_state(state)  # resumed on a CPU
    assert rng_state()["cuda"] == []
    restore_rng_state(rng_state())  # saved on a CPU: no CUDA state to restore
    assert len(restored) == 1


def draws() -> list[float]:
    """One draw from each generator the training code uses (CUDA's on a machine that has it)."""
    cuda = [float(torch.rand(1, device="cuda"))] if torch.cuda.is_available() else []
    return [
        random.random(),
        float(np.random.standard_normal()),
        float(np.random.random()),
        float(torch.rand(1)),
        *cuda,
    ]
