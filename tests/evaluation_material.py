"""What the evaluation's fast tests (test_evaluation_inputs.py, test_evaluation_metrics.py)
evaluate: untrained real generators (VAE, and the tests' conditional tiny family) at 32 px, the
packed faces of tests/faces.py with their labels and the tiny family's feature folder, and the
real dlib judge (in the fixed face box: no detector). No fixture of conftest.py, so
`scripts/mutate.py` runs those files with `--noconftest`."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import numpy as np
import torch
import yaml
from omegaconf import DictConfig, OmegaConf

import tests.tiny_family  # noqa: F401  (registers `model=tiny`)
from face_generation.config import compose
from face_generation.evaluation.inputs import EvaluationInputs
from face_generation.networks.identity import FaceIdentityEncoder
from face_generation.runtime.generator import TrainedGenerator
from face_generation.runtime.registry import family_class
from tests.faces import RESOLUTION, write_labels, write_packed
from tests.tiny_family import write_features

COUNT = 8  # the packed test split of tests/faces.py: 8 faces, people of three then unknown
CPU = torch.device("cpu")


@functools.cache
def composed(model: str) -> DictConfig:
    """The config of `model` at 32 px, evaluated on the CPU quickly (composed once: Hydra takes
    most of a second)."""
    return compose(
        "config",
        [
            f"model={model}",
            f"data.resolution={RESOLUTION}",
            "eval.device=cpu",
            "eval.backbones.effnet_lite0.image_size=32",  # the faces' own size: fast
            "eval.batch_size=3",
            "eval.sample_batch_size=3",  # batches that do not divide the count
            "eval.identity.face_box=fixed",  # dlib's landmarks in the fixed box: no detector
        ],
    )


def config(root: Path, model: str, *overrides: str) -> DictConfig:
    """`composed(model)` with data under `root` and `key=value` overrides (YAML values)."""
    cfg = copy.deepcopy(composed(model))
    for override in (f"paths.data={root / 'data'}", *overrides):
        key, value = override.lstrip("+").split("=", 1)
        OmegaConf.update(cfg, key, yaml.safe_load(value), force_add=True)
    return cfg


def untrained(cfg: DictConfig) -> TrainedGenerator:
    family = family_class(str(cfg.model.name))
    torch.manual_seed(0)
    return TrainedGenerator(family, family.build_generator(cfg.model, RESOLUTION).eval(), cfg)


def write_data(root: Path) -> Path:
    """root/data/packed/32 (tests/faces.py), its labels and the tiny family's feature folder."""
    write_packed(root / "data")
    write_labels(root / "data")
    write_features(root / "data", RESOLUTION, {"train": 48, "val": 8, "test": COUNT})
    return root


def linked(data: Path, root: Path) -> Path:
    """`data`'s data folder under `root` (a test's own: caches are not shared)."""
    (root / "data").symlink_to(data / "data")
    return root


def eval_faces(root: Path) -> np.ndarray:
    return np.load(root / "data" / "packed" / str(RESOLUTION) / "test.npy")


def inputs_of(cfg: DictConfig, root: Path, count: int = COUNT) -> EvaluationInputs:
    return EvaluationInputs(cfg, untrained(cfg), eval_faces(root), count, "hash", CPU)


def dlib_judge() -> FaceIdentityEncoder:
    """dlib, built as the metrics build their judge: the independent computation's."""
    return FaceIdentityEncoder.from_config(composed("vae").eval.identity, 10.0, "cpu")


def cosines(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return (first * second).sum(1) / np.linalg.norm(first, axis=1) / np.linalg.norm(second, axis=1)
