"""The safe checkpoint reader (runtime/checkpoint.py) on small files written here, no training:
every way a file can be unusable is refused with a CheckpointError that names the file."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from face_generation.runtime.checkpoint import (
    CHECKPOINT_FORMAT,
    REQUIRED_KEYS,
    CheckpointError,
    load_checkpoint,
    load_weights,
)
from tests.unsafe_pickle import RunsCode


def tiny_checkpoint(**changes: Any) -> dict[str, Any]:
    """A checkpoint of the current format holding one small network, with `changes` applied."""
    network = nn.Linear(2, 1)
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": "tiny",
        "step": 3,
        "networks": {"generator": network.state_dict()},
        "optimizers": {"generator": {}},
        "ema": network.state_dict(),
        "generator": "generator",
        "family_state": {"calls": 3},
        "rng": {},
        "config": {"model": {"name": "tiny"}},
        "run_id": "abc",
    }
    return {**state, **changes}


def saved(state: object, path: Path) -> Path:
    torch.save(state, path)
    return path


def test_a_checkpoint_is_read_back_as_written(tmp_path: Path) -> None:
    state = tiny_checkpoint()
    loaded = load_checkpoint(saved(state, tmp_path / "step.pt"), expected_model="tiny")
    assert loaded.keys() == state.keys()
    assert (loaded["step"], loaded["model"], loaded["family_state"]) == (3, "tiny", {"calls": 3})
    for name, tensor in state["networks"]["generator"].items():
        assert torch.equal(loaded["networks"]["generator"][name], tensor)
    assert load_checkpoint(tmp_path / "step.pt")["run_id"] == "abc"  # no model asked: any


def test_a_format_1_checkpoint_is_read_with_empty_family_state(tmp_path: Path) -> None:
    state = tiny_checkpoint(format=1)
    del state["family_state"]  # format 1 had none
    loaded = load_checkpoint(saved(state, tmp_path / "old.pt"))
    assert loaded["format"] == 1 and loaded["family_state"] == {}


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=rf"checkpoint {tmp_path / 'nowhere.pt'} does not"):
        load_checkpoint(tmp_path / "nowhere.pt")
    with pytest.raises(CheckpointError, match="does not exist"):  # a folder is no checkpoint
        load_checkpoint(tmp_path)


def test_a_truncated_file_is_refused_as_corrupt(tmp_path: Path) -> None:
    whole = saved(tiny_checkpoint(), tmp_path / "whole.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(whole[: len(whole) // 2])  # a copy killed halfway
    with pytest.raises(CheckpointError, match=rf"{truncated} cannot be read.*truncated or corrupt"):
        load_checkpoint(truncated)


def test_a_file_that_is_not_a_dict_is_refused(tmp_path: Path) -> None:
    path = saved([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=rf"{path} is not a face_generation training"):
        load_checkpoint(path)


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_a_checkpoint_missing_a_key_is_refused_naming_it(key: str, tmp_path: Path) -> None:
    state = tiny_checkpoint()
    del state[key]
    path = saved(state, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=rf"{path} is not a .*missing keys \['{key}'\]\)$"):
        load_checkpoint(path)


def test_plain_weights_are_refused_naming_every_missing_key(tmp_path: Path) -> None:
    path = saved({"weight": torch.zeros(2)}, tmp_path / "weights.pt")
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    assert str(list(REQUIRED_KEYS)) in str(refused.value)


@pytest.mark.parametrize("number", [0, CHECKPOINT_FORMAT + 1])
def test_an_unknown_format_number_is_refused(number: int, tmp_path: Path) -> None:
    path = saved(tiny_checkpoint(format=number), tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=rf"{path} has format {number}; .*formats \[1, 2\]"):
        load_checkpoint(path)


@pytest.mark.parametrize(("model", "expected"), [("dcgan", "vae"), ("vae", "dcgan")])
def test_a_checkpoint_of_another_model_is_refused_naming_both(
    model: str, expected: str, tmp_path: Path
) -> None:
    path = saved(tiny_checkpoint(model=model), tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=rf"{path} holds a '{model}' model, not '{expected}'"):
        load_checkpoint(path, expected_model=expected)
    assert load_checkpoint(path, expected_model=model)["model"] == model


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = saved(tiny_checkpoint(payload=RunsCode(marker)), tmp_path / "malicious.pt")
    with pytest.raises(CheckpointError, match=rf"{path} is not a checkpoint of this project"):
        load_checkpoint(path)
    assert not marker.exists(), "loading the checkpoint ran code"
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    # torch's own message advises weights_only=False: never passed on, not even as the cause
    assert "weights_only" not in str(refused.value) and refused.value.__cause__ is None
    assert refused.value.__suppress_context__
    pickle.loads(pickle.dumps(RunsCode(marker)))  # the payload is real: unpickling runs it
    assert marker.exists()


def test_weights_that_fit_are_loaded(tmp_path: Path) -> None:
    source, target = nn.Linear(2, 1), nn.Linear(2, 1)
    load_weights(target, source.state_dict(), tmp_path / "step.pt", "generator")
    assert torch.equal(target.weight, source.weight) and torch.equal(target.bias, source.bias)


def test_weights_that_do_not_fit_name_the_file_and_the_network(tmp_path: Path) -> None:
    path = tmp_path / "step.pt"
    with pytest.raises(CheckpointError, match=rf"{path}: its generator weights do not fit"):
        load_weights(nn.Linear(3, 1), nn.Linear(2, 1).state_dict(), path, "generator")
    with pytest.raises(
        CheckpointError, match=r"different model\.\* settings[\s\S]*Missing key.*bias"
    ):
        load_weights(nn.Linear(2, 1), {"weight": torch.zeros(1, 2)}, path, "ema")  # no bias


# Every loader of pretrained weights refuses a file whose pickle would run code. ----------------


def weights_loaders() -> dict[str, Any]:
    """Each network that reads a pretrained-weights file the user may point it at
    (`*.weights_path`), as path → network."""
    from face_generation.networks.dinov2 import DinoV2
    from face_generation.networks.effnet import EfficientNetLite0
    from face_generation.networks.face_boxes import FaceBoxes
    from face_generation.networks.facenet import FaceNet
    from face_generation.networks.inception import InceptionV3
    from face_generation.networks.lpips import LPIPS

    return {
        "facenet": lambda path: FaceNet(path, 160, FaceBoxes("fixed", [0.0, 0.0, 1.0, 1.0], 0)),
        "effnet_lite0": lambda path: EfficientNetLite0(path, 64, antialias=True),
        "lpips": lambda path: LPIPS("alex", path),
        "dinov2": lambda path: DinoV2(path, "vit_small_patch14_dinov2.lvd142m", 56, True),
        "inception": lambda path: InceptionV3(path, antialias=True),
    }


@pytest.mark.parametrize("network", ["facenet", "effnet_lite0", "lpips", "dinov2", "inception"])
def test_no_weights_loader_runs_the_code_in_a_pickle(network: str, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = saved({"weight": RunsCode(marker)}, tmp_path / "weights.pt")
    with pytest.raises(Exception, match=r"weights_only|Unsupported global|pickle"):
        weights_loaders()[network](path)
    assert not marker.exists(), f"the {network} loader unpickled code"
