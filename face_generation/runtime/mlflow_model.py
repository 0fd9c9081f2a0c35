"""A trained generator as an MLflow pyfunc model: rows of (n, seed[, options]) in, uint8 faces out.

Training logs it (tracking code), along the lines of

    mlflow.pyfunc.log_model(
        name="vae",  # the family's name
        python_model=str(MODEL_CODE),  # models from code: nothing pickled
        artifacts={CHECKPOINT_ARTIFACT: "models/vae/model.pt"},
        signature=model_signature(family, resolution),
    )

`predict` takes a DataFrame with integer columns `n` and `seed`, plus optional columns named
after the family's sampling options (e.g. `temperature`; missing or empty: the model's
default) and, for conditional models, an optional `condition` (the row of the array the model
was trained on, a list of numbers) or, for those that embed photos, `reference` (the bytes of
a face photo: each row's n images are variants of that person), and returns one uint8 array of shape (sum of n, H, W, 3): the images of each row in
row order; with the param `format=png`, a list of base64-encoded PNG files instead (a tenth of
the JSON an array takes). The same (n, seed, options) give the same images as
`python -m face_generation.inference CHECKPOINT --n N --seed SEED --option NAME=VALUE`.
A request the model cannot serve (`n=-3`, an unknown format) is an MlflowException with
INVALID_PARAMETER_VALUE, which `mlflow models serve` answers as HTTP 400 with its reason.
"""

from __future__ import annotations

import base64
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec
from mlflow.types.schema import Array
from omegaconf import DictConfig, OmegaConf

from face_generation.data.images import ImageError
from face_generation.errors import describe
from face_generation.runtime.device import pick_device
from face_generation.runtime.family import Family
from face_generation.runtime.generator import (
    TrainedGenerator,
    generate,
    load_generator,
    photo_refusal,
    sampling_options,
    takes_photos,
)
from face_generation.runtime.images import face_pixels, png_bytes, to_uint8
from face_generation.runtime.options import (
    RequestLimits,
    check_range,
    configured_limits,
    read_options,
)

CHECKPOINT_ARTIFACT = "checkpoint"
CONDITION_COLUMN, REFERENCE_COLUMN = "condition", "reference"  # conditional models' inputs
# What `python_model=` gets when logging: the file that builds a GeneratorModel.
MODEL_CODE = Path(__file__).with_name("mlflow_model_code.py")
MAX_IMAGES_PER_CALL = 4096  # one request must not exhaust the server's memory
# What serving the model imports (its code travels with it as code_paths).
SERVING_PACKAGES = ("torch", "numpy", "pandas", "pillow", "omegaconf", "mlflow")
COLUMN_TYPES = {bool: "boolean", int: "long", float: "double", str: "string"}
FORMATS = ("array", "png")  # the `format` param: uint8 arrays, or base64-encoded PNG files


def requirements() -> list[str]:
    """The model's pip requirements, pinned to the versions installed here.

    Given explicitly: without them MLflow infers them by loading the model in a subprocess.
    """
    return [f"{name}=={version(name)}" for name in SERVING_PACKAGES]


def model_signature(
    family: type[Family], resolution: int, model_cfg: DictConfig | None = None
) -> ModelSignature:
    """Input: columns n, seed (long), the family's sampling options and, for a conditional
    model (its config `model_cfg`), a condition and a reference photo (all optional);
    output: uint8 images N×resolution×resolution×3 (param `format=png`: base64 PNG files)."""
    options = [
        ColSpec(COLUMN_TYPES[type(default)], name, required=False)
        for name, default in sampling_options(family).items()
    ]
    model_cfg = OmegaConf.create() if model_cfg is None else model_cfg
    if family.condition_of(model_cfg) is not None:
        options.append(ColSpec(Array(DataType.double), CONDITION_COLUMN, required=False))
    if takes_photos(family, model_cfg):
        options.append(ColSpec(DataType.binary, REFERENCE_COLUMN, required=False))
    return ModelSignature(
        inputs=Schema([ColSpec("long", "n"), ColSpec("long", "seed"), *options]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, resolution, resolution, 3))]),
        params=ParamSchema([ParamSpec("format", "string", FORMATS[0])]),
    )


def input_example() -> pd.DataFrame:
    """The request a registered model shows in the UI and in its `serving_input_example.json`:
    four images from seed 0 (every other column is optional)."""
    return pd.DataFrame({"n": [4], "seed": [0]})


def bad_request(message: str) -> MlflowException:
    """A request the model cannot serve: MLflow's scoring server answers 400 with `message`."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def row_options(
    row: pd.Series, generator: TrainedGenerator, limits: RequestLimits
) -> dict[str, Any]:
    """The sampling options a request row sets (its non-empty option columns), by the rule of
    runtime/options.py. pandas holds an integer column with empty cells as floats, so a whole
    float (5.0) in an integer option's column is that integer; 2.7 is refused."""
    known = sampling_options(generator.family)
    requested = {}
    for name, default in known.items():
        if name in row.index and not pd.isna(row[name]):
            value = row[name].item() if isinstance(row[name], np.generic) else row[name]
            if type(default) is int and isinstance(value, float) and value.is_integer():
                value = int(value)
            requested[name] = value
    return read_options(requested, generator, limits)


def present(row: pd.Series, column: str) -> bool:
    value = row.get(column) if column in row.index else None
    return value is not None and not (np.isscalar(value) and pd.isna(value))


def row_condition(
    row: pd.Series, n: int, generator: TrainedGenerator, max_pixels: int | None = None
) -> torch.Tensor | None:
    """The n condition rows a request row asks for (its `condition` or `reference`: a photo of
    at most `max_pixels` pixels, decoded as inference and the web service decode), or None."""
    condition, reference = present(row, CONDITION_COLUMN), present(row, REFERENCE_COLUMN)
    if not (condition or reference):
        return None
    if condition and reference:
        raise bad_request("give a row either a condition or a reference photo, not both")
    if generator.condition is None:
        raise bad_request(
            f"the {generator.name} family is unconditional: no condition or reference"
        )
    if reference:
        if not generator.takes_photos:
            raise bad_request(photo_refusal(generator.family, generator.config.model))
        data = row[REFERENCE_COLUMN]
        try:
            face = face_pixels(bytes(data), generator.resolution, max_pixels)
        except ImageError as error:
            raise bad_request(f"the reference photo cannot be used: {error}") from None
        photo = torch.from_numpy(face).permute(2, 0, 1)[None].float() / 127.5 - 1
        values = generator.conditions_from_photos(photo)[0]
    else:
        values = torch.as_tensor(np.asarray(row[CONDITION_COLUMN], np.float32))
    return values.float().cpu().expand(n, -1)


class GeneratorModel(PythonModel):
    """Samples faces from the face_generation checkpoint logged as its `checkpoint` artifact."""

    def __init__(self) -> None:
        self.generator: TrainedGenerator | None = None
        self.limits: RequestLimits | None = None  # configs/serve/'s, read at the first request
        self.max_pixels: int | None = None  # data.max_pixels of the training config

    def load_context(self, context: PythonModelContext) -> None:
        self.generator = load_generator(context.artifacts[CHECKPOINT_ARTIFACT], pick_device())

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray | list[str]:
        if self.generator is None:
            raise RuntimeError("the model has no weights: load it with mlflow.pyfunc.load_model")
        output = (params or {}).get("format") or FORMATS[0]
        if output not in FORMATS:
            raise bad_request(f"format={output!r} is not an output format; use one of {FORMATS}")
        missing = {"n", "seed"} - set(model_input.columns)
        if missing:
            raise bad_request(f"input needs integer columns n and seed; missing {sorted(missing)}")
        if self.limits is None:
            self.limits = configured_limits()
            max_pixels = self.generator.config.data.get("max_pixels")  # older checkpoints: none
            self.max_pixels = None if max_pixels is None else int(max_pixels)
        counts = [int(n) for n in model_input["n"]]
        if any(n < 1 for n in counts) or sum(counts) > MAX_IMAGES_PER_CALL:
            raise bad_request(
                f"n={counts}: each n must be at least 1 and all n at most "
                f"{MAX_IMAGES_PER_CALL} in total"
            )
        try:
            batches = [
                to_uint8(
                    generate(
                        self.generator,
                        n,
                        check_range("seed", int(row["seed"]), 0, self.limits.max_seed),
                        cond=row_condition(row, n, self.generator, self.max_pixels),
                        **row_options(row, self.generator, self.limits),
                    )
                )
                for n, (_, row) in zip(counts, model_input.iterrows(), strict=True)
            ]
        except ValueError as error:  # the rule's OptionError, or a value the family refuses
            raise bad_request(describe(error)) from None
        images = np.concatenate(batches)
        if output == "png":
            return [base64.b64encode(png_bytes(image)).decode("ascii") for image in images]
        return images
