"""Every loader of a feature network's weights refuses a file whose pickle would run code, and
runs none of it: EfficientNet-Lite0, FaceNet, LPIPS's backbone and Inception-v3 (torch files,
read with `weights_only=True`), and dlib's two models (its own format: a pickle is no model),
for the evaluation's judge and the stages' rows alike. The checkpoints' loaders are
tests/test_checkpoint_safety.py's and tests/test_family_contract.py's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from face_generation.networks.dlib_face import LANDMARKS_FILE, RECOGNITION_FILE, load_dlib
from face_generation.networks.dlib_rows import DlibDescriber
from face_generation.networks.effnet import load_effnet
from face_generation.networks.face_boxes import FaceBoxes
from face_generation.networks.facenet import load_facenet
from face_generation.networks.inception import load_inception
from face_generation.networks.lpips import load_lpips
from tests.unsafe_pickle import RunsCode

pytestmark = pytest.mark.slow  # builds each network (Inception-v3, FaceNet): seconds

BOXES = FaceBoxes("fixed", [0.22, 0.31, 0.81, 0.90], 0)


def effnet(path: Path) -> Any:
    settings = {"weights_path": str(path), "image_size": 32, "antialias": True}
    return load_effnet(OmegaConf.create(settings))


def facenet(path: Path) -> Any:
    settings = {"weights_path": str(path), "image_size": 160}
    return load_facenet(OmegaConf.create(settings), BOXES, timeout_s=1.0)


def lpips(path: Path) -> Any:
    return load_lpips(OmegaConf.create({"net": "alex", "weights_path": str(path)}), 1.0)


def inception(path: Path) -> Any:
    settings = {"weights_path": str(path), "antialias": False, "enabled": True}
    return load_inception(OmegaConf.create(settings), 1.0)


LOADERS: dict[str, Callable[[Path], Any]] = {
    "effnet": effnet,
    "facenet": facenet,
    "lpips": lpips,
    "inception": inception,
}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_a_weights_file_that_would_run_code_is_refused(loader: str, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    weights = tmp_path / "weights.pth"
    torch.save({"features.0.weight": torch.zeros(1), "payload": RunsCode(marker)}, weights)
    with pytest.raises(Exception) as refused:  # each loader words its refusal its own way
        LOADERS[loader](weights)
    assert not marker.exists(), f"loading {loader}'s weights ran code"
    assert "Weights only load failed" in str(refused.value)


def test_dlib_s_models_are_no_pickles(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    for name in (LANDMARKS_FILE, RECOGNITION_FILE):
        torch.save({"payload": RunsCode(marker)}, tmp_path / name)
    with pytest.raises(RuntimeError):
        load_dlib(OmegaConf.create({"weights_path": str(tmp_path)}), BOXES)
    with pytest.raises(RuntimeError):
        DlibDescriber(
            tmp_path / LANDMARKS_FILE, tmp_path / RECOGNITION_FILE, "fixed", [0, 0, 1, 1], 0
        )
    assert not marker.exists()
