"""Where a trained generator comes from: a checkpoint file or an MLflow model URI.

Inference and the web service both take either, so the rule that tells them apart and the
loader live here, below both.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from face_generation.errors import UserError
from face_generation.runtime.generator import TrainedGenerator, load_generator

TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"
SOURCES = (
    "give a checkpoint file (models/NAME/model.pt), runs:/RUN_ID/generator, "
    "models:/NAME/VERSION or a local MLflow model folder"
)
REGISTRY_SCHEMES = ("models:/", "runs:/")  # URIs that only a tracking server resolves


def is_mlflow_uri(model: str) -> bool:
    """runs:/..., models:/..., any scheme:/... URI, or a folder holding an MLmodel file."""
    if Path(model).is_file():
        return False
    return (Path(model) / "MLmodel").is_file() or re.match(
        r"^[a-z][a-z0-9+.-]*:/", model
    ) is not None


def load_model(model: str, device: torch.device, use_ema: bool = True) -> TrainedGenerator:
    """The trained generator of a checkpoint or an MLflow model URI (resolved against
    MLFLOW_TRACKING_URI); a URI that cannot be served is a UserError (a ValueError)."""
    if re.match(r"^https?://", model):  # MLflow reads these as artifact stores, not models
        raise UserError(f"{model}: an http(s) URL is not a model; {SOURCES}")
    if Path(model).is_dir() and not (Path(model) / "MLmodel").is_file():
        raise UserError(f"{model} is a folder, not a checkpoint: name the file in it, e.g. "
                        f"{Path(model) / 'model.pt'}; {SOURCES}")  # fmt: skip
    if is_mlflow_uri(model):
        import mlflow.pyfunc  # imported only when needed: it takes seconds
        from mlflow.exceptions import MlflowException

        from face_generation.runtime.mlflow_model import GeneratorModel

        if model.startswith(REGISTRY_SCHEMES) and not os.environ.get(TRACKING_URI_VARIABLE):
            # without it MLflow would quietly open (and create) ./mlflow.db instead of the server
            raise UserError(
                f"{model} is resolved by an MLflow server: set {TRACKING_URI_VARIABLE}, e.g. "
                f"export {TRACKING_URI_VARIABLE}=http://127.0.0.1:5000 (the project's server: "
                "python -m face_generation.tracking.server start)"
            )
        try:
            python_model = mlflow.pyfunc.load_model(model).unwrap_python_model()
        except MlflowException as error:
            raise UserError(f"{model}: {error.message.splitlines()[0]}") from None
        if not isinstance(python_model, GeneratorModel) or python_model.generator is None:
            raise UserError(f"{model} is not a face_generation generator model")
        python_model.generator.network.to(device)
        return python_model.generator
    return load_generator(model, device, use_ema=use_ema)
