"""The models a service serves: where they come from, what /models says about them, and one
lock each, so a model runs one request at a time.

Serialising per model keeps memory bounded (one batch per model at a time, never one per
waiting request) and lets a network that is not thread-safe be shared; requests for different
models still run side by side.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from omegaconf import DictConfig

from face_generation.data.packed import DataError, load_split
from face_generation.runtime.device import pick_device
from face_generation.runtime.family import RECONSTRUCT, SAMPLE
from face_generation.runtime.generator import TrainedGenerator
from face_generation.runtime.sources import load_model

T = TypeVar("T")
# models:/<registered name>/<version or alias> and MLflow's own models:/<name>@<alias>
REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)[/@](?P<reference>[^/]+)$")


@dataclass
class ServedModel:
    name: str  # what requests call it
    source: str  # the checkpoint or MLflow model URI it was loaded from
    version: str  # the registry version, or the checkpoint's training step
    generator: TrainedGenerator
    test_faces: np.ndarray | None = None  # the packed test split at its resolution, when offered
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, work: Callable[[], T]) -> tuple[T, float]:
        """`work()` holding this model's lock, and the seconds it took once it had the lock."""
        with self.lock:
            start = time.perf_counter()
            result = work()
            return result, time.perf_counter() - start

    def describe(self) -> dict[str, Any]:
        """What GET /models says about the model: enough for a client to build a request."""
        family = self.generator.family
        return {
            "name": self.name,
            "family": family.name,
            "version": self.version,
            "source": self.source,
            "resolution": self.generator.resolution,
            "inputs": {
                "generate": SAMPLE in family.capabilities,
                "reference": self.generator.takes_photos,
                "reconstruct": RECONSTRUCT in family.capabilities,
            },
            "condition": self.generator.condition,
            "options": self.generator.options(),
            "test_faces": 0 if self.test_faces is None else len(self.test_faces),
        }


def model_sources(cfg: DictConfig) -> dict[str, str]:
    """name → checkpoint or URI: `serve.models`, else every <paths.models>/<name>/model.pt."""
    if cfg.serve.models:
        return {str(name): str(source) for name, source in cfg.serve.models.items()}
    found = sorted(Path(cfg.paths.models).glob("*/model.pt"))
    return {path.parent.name: str(path) for path in found}


def resolve_registry_uri(source: str) -> tuple[str, str | None]:
    """(the URI to load, the registry version it names). An alias (`models:/NAME/champion` or
    `models:/NAME@champion`) or `latest` is resolved to its version number once, so the version
    reported is the version loaded; any other source is returned with None."""
    match = REGISTRY_URI.match(source)
    if match is None:
        return source, None
    name, reference = match["name"], match["reference"]
    if not reference.isdigit():
        from mlflow.tracking import MlflowClient  # imported only when needed: it takes seconds

        client = MlflowClient()
        if reference == "latest":
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise ValueError(
                    f"{source}: no version of a registered model {name!r} in the MLflow "
                    "registry (MLFLOW_TRACKING_URI); register one by training with tracking on"
                )
            reference = str(max(int(version.version) for version in versions))
        else:
            reference = str(client.get_model_version_by_alias(name, reference).version)
    return f"models:/{name}/{reference}", reference


def load_test_faces(cfg: DictConfig, resolution: int) -> np.ndarray | None:
    """The packed test split at `resolution` (memory-mapped), when offered and present."""
    if not cfg.serve.test_faces:
        return None
    try:
        return load_split(Path(cfg.paths.data) / "packed" / str(resolution), "test", resolution)
    except (FileNotFoundError, DataError):
        return None


def serving_refusal(generator: TrainedGenerator) -> str | None:
    """Why the service cannot serve a loaded model (it neither samples nor reconstructs: the
    face encoder), in one line; None when it can."""
    if generator.family.capabilities & {SAMPLE, RECONSTRUCT}:
        return None
    return f"the {generator.name} family makes no images (it embeds faces)"


def load_served_models(cfg: DictConfig) -> dict[str, ServedModel]:
    """Every configured model, loaded onto `serve.device`. A model found under paths.models
    that makes no images is skipped with one printed line; one named in serve.models is an
    error."""
    device = pick_device(str(cfg.serve.device))
    served = {}
    for name, source in model_sources(cfg).items():
        uri, version = resolve_registry_uri(source)
        generator = load_model(uri, device, use_ema=bool(cfg.serve.use_ema))
        refusal = serving_refusal(generator)
        if refusal and cfg.serve.models:
            raise ValueError(f"serve.models.{name}={source}: {refusal}")
        if refusal:
            print(f"[serve] skipped {name} ({source}): {refusal}", flush=True)
            continue
        served[name] = ServedModel(
            name,
            source,
            version or f"step {generator.step}",
            generator,
            load_test_faces(cfg, generator.resolution),
        )
    return served
