"""A real MLflow tracking server for the tests, shared by the whole session.

Imported by tests/conftest.py, so every test module can use them:

    def test_something(tracking_cfg):           # configs' `tracking` group, aimed at the server
        run = TrackedRun(tracking_cfg, "name")  # own experiment and spool per test

    def test_other(mlflow_server):               # .uri, .cfg, .overrides, .root
        MlflowClient(mlflow_server.uri)

The server is started once (a cold start costs 10-40 s on 2 cores) on a free port, with its
SQLite store, artifacts, pid and log files in a session temporary folder, and stopped at the end.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

from face_generation.config import compose
from face_generation.tracking.server import start_server, stop_server
from face_generation.training.tracker import NullTracker


@dataclass
class MlflowServer:
    uri: str
    cfg: DictConfig  # the `tracking` config group the server was started with
    overrides: list[str]  # the Hydra overrides that compose that config (for CLI tests)
    root: Path  # where its store, artifacts, pid and log files are


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_overrides(root: Path, port: int) -> list[str]:
    """Hydra overrides that put a tracking server's files under `root`, listening on `port`."""
    return [
        f"tracking.port={port}",
        f"tracking.backend_store={root / 'mlflow.db'}",
        f"tracking.artifacts={root / 'artifacts'}",
        f"tracking.pid_file={root / 'server.pid'}",
        f"tracking.log_file={root / 'server.log'}",
        f"tracking.spool_dir={root / 'spool'}",
    ]


def tracked(server: MlflowServer, tmp_path: Path, name: str) -> list[str]:
    """Overrides that log to `server`, in this test's own experiment, registry names and spool."""
    return [
        *server.overrides,
        "tracking.enabled=true",
        f"tracking.experiment=test-{name}",
        f"tracking.registered_model_prefix=test-{name}",
        f"tracking.spool_dir={tmp_path / 'spool'}",
    ]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    root = tmp_path_factory.mktemp("mlflow_server")
    overrides = server_overrides(root, free_port())
    cfg = compose("config", overrides).tracking
    uri = start_server(cfg)
    yield MlflowServer(uri=uri, cfg=cfg, overrides=overrides, root=root)
    stop_server(cfg)


@pytest.fixture
def tracking_cfg(
    mlflow_server: MlflowServer, tmp_path: Path, request: pytest.FixtureRequest
) -> DictConfig:
    """The server's tracking config with this test's own experiment and spool, and no waiting
    between delivery attempts (every log call tries to deliver)."""
    return per_test_tracking_cfg(mlflow_server, tmp_path, request.node.name)


def per_test_tracking_cfg(server: MlflowServer, tmp_path: Path, test_name: str) -> DictConfig:
    """`tracking_cfg` for any server (the PostgreSQL-backed one too)."""
    experiment = re.sub(r"[^A-Za-z0-9_.-]", "_", test_name)
    overrides = OmegaConf.create(
        {
            "experiment": f"test-{experiment}",
            "spool_dir": str(tmp_path / "spool"),
            "flush_interval_s": 0,
            "retry_backoff_s": 0,
            "retry_backoff_max_s": 0,
        }
    )
    merged = OmegaConf.merge(server.cfg, overrides)
    assert isinstance(merged, DictConfig)
    return merged


class RecordingTracker(NullTracker):
    """The tracker protocol, recording what the loop sends (stands in for MLflow here)."""

    def __init__(self, run_id: str | None = None) -> None:
        super().__init__(run_id)
        self.params: dict[str, Any] = {}
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.artifacts: list[Path] = []
        self.images: list[tuple[str, int, Path]] = []  # key, step, file
        self.datasets: list[tuple[Path, str, int]] = []  # folder, digest, rows
        self.tags: dict[str, Any] = {}

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.artifacts.append(Path(path))

    def log_image(self, path: Path, key: str, step: int) -> None:
        self.images.append((key, step, path))

    def log_dataset(self, path: Path, digest: str, rows: int) -> None:
        self.datasets.append((path, digest, rows))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.tags.update(tags)
