"""The generator as an MLflow pyfunc model: rows of (n, seed) in, uint8 face images out.

Logging it (the training run's final model) is done by tracking code, along the lines of

    mlflow.pyfunc.log_model(
        name="model",
        python_model=str(MODEL_CODE),  # models from code: nothing pickled
        artifacts={CHECKPOINT_ARTIFACT: "models/vae/model.pt"},
        signature=model_signature(resolution),
    )

`predict` takes a DataFrame with integer columns `n` and `seed` and returns one uint8 array
of shape (sum of n, H, W, 3): the images of each row in row order. The same (n, seed) gives
the same images as `python -m face_generation.inference CHECKPOINT --n N --seed SEED`.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import ColSpec, Schema, TensorSpec
from omegaconf import DictConfig
from torch import nn

from face_generation.training.checkpoint import load_generator
from face_generation.training.device import pick_device
from face_generation.training.families import sample_images
from face_generation.training.images import to_uint8

CHECKPOINT_ARTIFACT = "checkpoint"
# What `python_model=` gets when logging: the file that builds a GeneratorModel.
MODEL_CODE = Path(__file__).with_name("generator_model.py")
MAX_IMAGES_PER_CALL = 4096  # one request must not exhaust the server's memory
# What serving the model imports (its code travels with it as code_paths).
SERVING_PACKAGES = ("torch", "numpy", "pandas", "omegaconf", "mlflow")


def requirements() -> list[str]:
    """The model's pip requirements, pinned to the versions installed here.

    Given explicitly: without them MLflow infers them by loading the model in a subprocess.
    """
    return [f"{name}=={version(name)}" for name in SERVING_PACKAGES]


def model_signature(resolution: int) -> ModelSignature:
    """Input: columns n, seed (long); output: uint8 images N×resolution×resolution×3."""
    return ModelSignature(
        inputs=Schema([ColSpec("long", "n"), ColSpec("long", "seed")]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, resolution, resolution, 3))]),
    )


class GeneratorModel(PythonModel):
    """Samples faces from the face_generation checkpoint logged as its `checkpoint` artifact."""

    def __init__(self) -> None:
        self.network: nn.Module | None = None
        self.config: DictConfig | None = None

    def load_context(self, context: PythonModelContext) -> None:
        device = pick_device("auto")
        self.network, self.config = load_generator(context.artifacts[CHECKPOINT_ARTIFACT], device)

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        if self.network is None:
            raise RuntimeError("the model has no weights: load it with mlflow.pyfunc.load_model")
        missing = {"n", "seed"} - set(model_input.columns)
        if missing:
            raise ValueError(f"input needs integer columns n and seed; missing {sorted(missing)}")
        counts = [int(n) for n in model_input["n"]]
        if any(n < 1 for n in counts) or sum(counts) > MAX_IMAGES_PER_CALL:
            raise ValueError(
                f"each n must be at least 1 and all n at most {MAX_IMAGES_PER_CALL} in total"
            )
        batches = [
            to_uint8(
                sample_images(self.network, n, generator=torch.Generator().manual_seed(int(seed)))
            )
            for n, seed in zip(counts, model_input["seed"], strict=True)
        ]
        return np.concatenate(batches)
