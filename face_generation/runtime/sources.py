"""Where a trained generator comes from: a checkpoint file or an MLflow model URI.

Inference and the web service both take either, so the rule that tells them apart and the
loader live here, below both.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from face_generation.runtime.generator import TrainedGenerator, load_generator


def is_mlflow_uri(model: str) -> bool:
    """runs:/..., models:/..., any scheme:/... URI, or a folder holding an MLmodel file."""
    if Path(model).is_file():
        return False
    return (Path(model) / "MLmodel").is_file() or re.match(
        r"^[a-z][a-z0-9+.-]*:/", model
    ) is not None


def load_model(model: str, device: torch.device, use_ema: bool = True) -> TrainedGenerator:
    """The trained generator of a checkpoint or an MLflow model URI (resolved against
    MLFLOW_TRACKING_URI); a URI of anything but a face_generation generator is a ValueError."""
    if is_mlflow_uri(model):
        import mlflow.pyfunc  # imported only when needed: it takes seconds

        from face_generation.runtime.mlflow_model import GeneratorModel

        python_model = mlflow.pyfunc.load_model(model).unwrap_python_model()
        if not isinstance(python_model, GeneratorModel) or python_model.generator is None:
            raise ValueError(f"{model} is not a face_generation generator model")
        python_model.generator.network.to(device)
        return python_model.generator
    return load_generator(model, device, use_ema=use_ema)
