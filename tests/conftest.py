"""Fixtures shared by the test suite: real data locations, configs that write into tmp, and the
one copy of each family trained for a few steps that every test reading a trained model uses."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from graphlib import TopologicalSorter
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from face_generation.config import compose
from face_generation.runtime.registry import family_class, family_names
from face_generation.training.loop import train
from face_generation.training.tracker import NullTracker
from tests import (  # noqa: F401  (importing registers them)
    conditional_family,
    diffusion_family,
    tiny_family,
)
from tests.browser import browser  # noqa: F401  (fixture)
from tests.faces import (
    RESOLUTION,
    SPLIT_SIZES,
    config,
    write_backbone_features,
    write_labels,
    write_packed,
)
from tests.postgres_fixtures import postgres, postgres_mlflow_server  # noqa: F401  (fixtures)
from tests.tracking_fixtures import mlflow_server, tracking_cfg  # noqa: F401  (fixtures)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
CELEBA_SAMPLE = SHARED_DATA / "celeba-sample-10k"
UTKFACE_SAMPLE = SHARED_DATA / "utkface-sample-4k"

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs a worker per core: one thread each (and in the stages they start), or
    # torch's default threads oversubscribe the cores and steps get 5-20× slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest tests first (the README's pipeline, then the other slow ones), so that with a
    worker per core (`make test`: whole files per worker, in this order) they start at once
    instead of ending the run alone."""
    items.sort(key=lambda item: (item.path.name != "test_readme_dvc.py", not slow(item)))


def slow(item: pytest.Item) -> bool:
    return item.get_closest_marker("slow") is not None


def _require(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"real face data not found at {path} (../shared/data beside the repo)")
    return path


@pytest.fixture
def celeba_sample() -> Path:
    return _require(CELEBA_SAMPLE)


@pytest.fixture
def utkface_sample() -> Path:
    return _require(UTKFACE_SAMPLE)


def path_overrides(base: Path) -> list[str]:
    """Overrides that put every output path inside `base`: base/data, base/metrics, ..."""
    return [f"paths.{key}={base / key}" for key in ("data", "metrics", "models", "plots")]


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose configs/config.yaml with overrides, every output path inside tmp_path."""

    def make(*overrides: str, root: Path | None = None, config_name: str = "config") -> DictConfig:
        return compose(config_name, [*path_overrides(root or tmp_path), *overrides])

    return make


def link_images(source: Path, destination: Path, names: Sequence[str]) -> Path:
    """A folder of symlinks to some real images: the tests read them in place, never copy them."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in names:
        (destination / name).symlink_to(source / name)
    return destination


@dataclass
class TrainedModels:
    """Every registered family trained for train=smoke's 6 steps on the same packed faces."""

    root: Path  # root/data (packed faces and feature arrays), root/models/<family>/
    checkpoints: dict[str, Path]  # family → root/models/<family>/model.pt

    @property
    def data(self) -> Path:
        return self.root / "data"


def training_order(names: list[str]) -> list[str]:
    """Every family after the models whose checkpoints its training reads (`trained_after`:
    cond_gan's identity loss reads the encoder's, the translator inverts cond_gan's)."""
    graph = {name: set(family_class(name).trained_after) & set(names) for name in names}
    return list(TopologicalSorter(graph).static_order())


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedModels:
    root = tmp_path_factory.mktemp("trained")
    write_packed(root / "data")
    write_labels(root / "data")  # what the face encoder trains on
    tiny_family.write_features(root / "data", RESOLUTION, SPLIT_SIZES)
    write_backbone_features(root / "data")  # the progressive generator's pyramids
    checkpoints = {
        name: train(config(name, root / "data", root / "models"), NullTracker()).checkpoint
        for name in training_order(family_names())
    }
    return TrainedModels(root, checkpoints)


@pytest.fixture
def closed_port_url() -> str:
    """An http URL on this machine whose port refuses connections: a weights host that is down.

    (A port the OS just handed out and that was closed again; nothing listens on it.)
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
