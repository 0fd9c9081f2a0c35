"""What the training loop needs from experiment tracking, and where the tracker is made.

The loop talks to tracking only through `Tracker`; `create_tracker` is the one place that
decides which implementation a run gets (MLflow through face_generation.tracking, or
`NullTracker` when `tracking.enabled` is false and in tests).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from omegaconf import DictConfig, OmegaConf


@runtime_checkable
class Tracker(Protocol):
    """One tracked run. `run_id` is stored in checkpoints, so a resumed run continues it."""

    run_id: str

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def close(self, status: str) -> None:
        """End the run: status is FINISHED, FAILED or KILLED (MLflow's run statuses)."""
        ...


class NullTracker:
    """Tracks nothing; keeps a run id (given, or a fresh one) so resumes can be checked."""

    def __init__(self, run_id: str | None = None) -> None:
        self.run_id = run_id or uuid.uuid4().hex
        self.status: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def close(self, status: str) -> None:
        self.status = status


def create_tracker(cfg: DictConfig, run_id: str | None = None) -> Tracker:
    """The tracker for a training run; `run_id` (from a resumed checkpoint) continues that run.

    The MLflow-backed tracker from face_generation.tracking replaces the enabled branch.
    """
    if not cfg.get("tracking", {}).get("enabled", False):
        return NullTracker(run_id)
    print(
        "[train] tracking.enabled is true but MLflow tracking is not wired into training yet; "
        "this run is not tracked"
    )
    return NullTracker(run_id)


def flatten_config(cfg: DictConfig) -> dict[str, Any]:
    """`{"train.lr": 0.0002, ...}`: a config as flat dotted keys, the form run params take."""
    flat: dict[str, Any] = {}

    def visit(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                visit(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    visit(OmegaConf.to_container(cfg, resolve=True), "")
    return flat
