"""dlib's ResNet face recogniser, `eval.identity.encoder=dlib`: the default, works offline.

128-d descriptors from the `dlib-bin` and `face-recognition-models` wheels; two faces of one
person lie closer than Euclidean distance 0.6 (dlib's threshold). dlib finds 5 landmarks in
the face box (face_boxes.py), aligns a 150 x 150 chip on them and runs its ResNet; it runs on
the CPU, one image at a time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Self

import numpy as np
import torch
from omegaconf import DictConfig

from face_generation.features.dlib_rows import DlibDescriber
from face_generation.networks.face_boxes import FaceBoxes
from face_generation.networks.network import Features
from face_generation.networks.weights import WeightsUnavailableError, local_file
from face_generation.runtime.pixels import ImageBatch, ValueRange, to_uint8_nhwc

RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"


def dlib_advice(reason: str) -> str:
    return (
        f"dlib's face recogniser cannot be loaded: {reason}. Install it with "
        "`pip install dlib-bin face-recognition-models`, or set "
        f"eval.identity.dlib.weights_path=/folder/holding/{RECOGNITION_FILE}+{LANDMARKS_FILE}, "
        "or use encoder=facenet"
    )


def dlib_model_dir() -> Path:
    """The `face-recognition-models` data folder, found without importing the package.

    (Its __init__ imports pkg_resources, which recent setuptools no longer provides.)
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailableError(
            dlib_advice("the package face-recognition-models is not installed")
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class DlibFaceRecogniser:
    """dlib's face recogniser: uint8 faces -> 128-d identity descriptors."""

    name = "dlib_resnet_v1"
    num_features = 128

    def __init__(self, folder: Path, boxes: FaceBoxes) -> None:
        landmarks = local_file(folder / LANDMARKS_FILE, dlib_advice)
        recognition = local_file(folder / RECOGNITION_FILE, dlib_advice)
        # the stages' describer (dlib_rows.py) holds the networks; the judge keeps its boxes
        self.describer = DlibDescriber(landmarks, recognition, "fixed", boxes.fallback_box, 0)
        self.boxes = self.describer.boxes = boxes
        self.weights_files = (landmarks, recognition)

    @property
    def cache_key(self) -> str:
        return f"{self.name}-{self.boxes.cache_key}"

    def to(self, device: torch.device) -> Self:
        return self  # dlib runs on the CPU

    def preprocess(self, images: ImageBatch, value_range: ValueRange = None) -> torch.Tensor:
        """Images -> uint8 N x H x W x 3 RGB on the CPU (float input clipped and rounded)."""
        return torch.tensor(to_uint8_nhwc(images, value_range))

    def forward(self, inputs: torch.Tensor) -> Features:
        """N x 128 float64 descriptors; `boxes` counts the faces its detector found."""
        rows = []
        for image in inputs.numpy():
            image = np.ascontiguousarray(image)
            rows.append(self.describer.descriptor(image, self.boxes.box(image)))
        descriptors = np.array(rows, np.float64).reshape(len(rows), self.num_features)
        return Features(embedding=torch.from_numpy(descriptors))


def dlib_folder(settings: DictConfig) -> Path:
    """`weights_path`, a folder with both .dat files, else the wheel's; dlib must be installed."""
    if importlib.util.find_spec("dlib") is None:
        raise WeightsUnavailableError(dlib_advice("dlib is not installed"))
    return Path(settings.weights_path).expanduser() if settings.weights_path else dlib_model_dir()


def dlib_files(settings: DictConfig) -> tuple[Path, Path]:
    """(landmark model, recogniser) files of `dlib_folder`, checked to exist, not loaded."""
    folder = dlib_folder(settings)
    return (
        local_file(folder / LANDMARKS_FILE, dlib_advice),
        local_file(folder / RECOGNITION_FILE, dlib_advice),
    )


def load_dlib(settings: DictConfig, boxes: FaceBoxes) -> DlibFaceRecogniser:
    """From `eval.identity.dlib`: `weights_path` is a folder with both .dat files, else the wheel's."""
    return DlibFaceRecogniser(dlib_folder(settings), boxes)
