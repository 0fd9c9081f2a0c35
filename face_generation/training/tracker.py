"""What the training loop needs from experiment tracking, and where the tracker is made.

The loop talks to tracking only through `Tracker`; `create_tracker` is the one place that
decides which implementation a run gets (MLflow through face_generation.tracking, or
`NullTracker` when `tracking.enabled` is false and in tests).
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from omegaconf import DictConfig

from face_generation.runtime.family import Family
from face_generation.training.output import RUN_LINK


@runtime_checkable
class Tracker(Protocol):
    """One tracked run. `run_id` is stored in checkpoints, so a resumed run continues it."""

    @property
    def run_id(self) -> str: ...

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_image(self, path: Path, key: str, step: int) -> None:
        """An image file as the image `key` at `step` (the sample grids)."""
        ...

    def log_dataset(self, path: Path, digest: str, rows: int) -> None:
        """The training data: its folder (a DVC output), its hash and its number of rows."""
        ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def log_generator(self, checkpoint: Path, family: type[Family], resolution: int) -> None:
        """Log the final generator as an MLflow model (and register it)."""
        ...

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

    def log_image(self, path: Path, key: str, step: int) -> None:
        pass

    def log_dataset(self, path: Path, digest: str, rows: int) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_generator(self, checkpoint: Path, family: type[Family], resolution: int) -> None:
        pass

    def close(self, status: str) -> None:
        self.status = status


class MlflowTracker:
    """The training run in MLflow, through the outage-proof `TrackedRun` (tracking/run.py).

    `run_id` is what checkpoints store: the MLflow run id once the server has answered, the
    run's local spool key before that; either continues the same run on resume, from the
    checkpoint's step `resume_step` (the steps after it are logged once, not twice). The run's
    id, page and registered version are written to models/<name>/mlflow_run.json (RUN_LINK)
    at its start and end, for the DVC side.
    """

    def __init__(self, cfg: DictConfig, run_id: str | None, resume_step: int | None = None) -> None:
        from face_generation.tracking.provenance import registered_model_name
        from face_generation.tracking.run import TrackedRun  # mlflow imports take seconds

        self.cfg = cfg
        self.run = TrackedRun(
            cfg.tracking, run_name=run_name(cfg), resume=run_id, resume_step=resume_step
        )
        self.registered_name = registered_model_name(cfg.tracking, str(cfg.model.name))
        self.tags: dict[str, Any] = {}  # what the loop tagged the run with (data_hash, ...)
        try:
            self.write_run_link()
        except BaseException:  # a full disk: the run must not stay RUNNING
            self.run.close("FAILED")
            raise

    @property
    def run_id(self) -> str:
        return self.run.resume_id

    def write_run_link(self) -> Path:
        """models/<name>/mlflow_run.json: this run's id and page, its registered version."""
        path = Path(self.cfg.paths.models) / str(self.cfg.model.name) / RUN_LINK
        link = {
            "run_id": self.run.run_id,  # null while the server has not answered yet
            "local_key": self.run.local_key,  # its spool: tracking.sync delivers it later
            "tracking_uri": self.run.uri,
            "url": self.run.url,
            "registered_model": self.registered_name,
            "version": self.run.model_version(str(self.cfg.model.name)),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        try:
            temporary.write_text(json.dumps(link, indent=2) + "\n")
            os.replace(temporary, path)  # whole or not at all: DVC and the report read it
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return path

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.run.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log_metrics(metrics, step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.run.log_artifact(path, artifact_path)

    def log_image(self, path: Path, key: str, step: int) -> None:
        self.run.log_image(path, key, step)

    def log_dataset(self, path: Path, digest: str, rows: int) -> None:
        data = self.cfg.data
        self.run.log_input(
            f"{data.name}-{data.resolution}px",
            digest,
            str(path),
            {"rows": rows, "resolution": int(data.resolution)},
            context="training",
        )

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.tags.update(tags)
        self.run.set_tags(tags)

    def log_generator(self, checkpoint: Path, family: type[Family], resolution: int) -> None:
        from face_generation.runtime.mlflow_model import (
            CHECKPOINT_ARTIFACT,
            MODEL_CODE,
            input_example,
            model_signature,
            requirements,
        )
        from face_generation.tracking.provenance import version_metadata
        from face_generation.tracking.run import tell
        from face_generation.tracking.server import ui_url

        description, tags = version_metadata(
            family.name,
            resolution,
            int(self.cfg.train.steps),
            str(self.tags.get("data_hash", "unknown")),
        )
        self.run.log_model(
            str(MODEL_CODE),
            family.name,  # the logged model's name in the UI
            model_signature(family, resolution, self.cfg.model),
            registered_model_name=self.registered_name,
            version_description=description,
            model_description=model_description(family, self.cfg),
            version_tags=tags,
            input_example=input_example(),
            artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)},
            pip_requirements=requirements(),
            code_paths=[str(Path(__file__).resolve().parents[1])],  # the face_generation package
        )
        version = self.run.model_version(family.name)
        if version is not None:
            page = ui_url(self.run.uri, f"models/{self.registered_name}/versions/{version}")
            tell(f"registered {self.registered_name} version {version}: {page}")

    def close(self, status: str) -> None:
        self.run.close(status)
        self.write_run_link()  # the final run id and version


def run_name(cfg: DictConfig) -> str:
    """The run's name: the model, and under `dvc exp run` the DVC experiment's name too, so that
    an experiment's runs are told apart from the baseline's (`vae@brisk-lynx`)."""
    experiment = os.environ.get("DVC_EXP_NAME")
    return f"{cfg.model.name}@{experiment}" if experiment else str(cfg.model.name)


def model_description(family: type[Family], cfg: DictConfig) -> str:
    """The registered model's own description (each version has its own beside it): the
    family, from its module's docstring, and what its versions and alias are."""
    module = sys.modules[family.__module__].__doc__ or f"{family.name} family"
    title = " ".join(module.split(":")[0].split())
    champion = cfg.tracking.champion
    return (
        f"{title}, trained by face_generation (python -m face_generation.train "
        f"model={family.name}). One version per tracked training, each described with its "
        f"data, steps, code and evaluation; the alias `{champion.alias}`, when set, is the "
        f"version with the best {champion.metric} on a comparison its description states."
    )


def close_orphaned_runs(cfg: DictConfig) -> None:
    """End this model's MLflow runs that a dead training process left RUNNING (killed before
    its first checkpoint, nothing can resume them): marked KILLED once their records are in."""
    if not cfg.tracking.enabled:
        return
    from face_generation.tracking.run import SYNC_COMMAND
    from face_generation.tracking.sync import close_orphans

    for result in close_orphans(cfg.tracking, str(cfg.model.name)):
        later = f"; deliver the rest with: {SYNC_COMMAND}" if result.pending else ""
        print(f"[tracking] run {result.run_id or result.local_key}: {result.message}{later}")


def create_tracker(
    cfg: DictConfig, run_id: str | None = None, resume_step: int | None = None
) -> Tracker:
    """The tracker for a training run; `run_id` (from a resumed checkpoint) continues that run
    from the checkpoint's step `resume_step`.

    `tracking.enabled=false` tracks nothing (NullTracker); otherwise the run is logged to
    MLflow, kept on disk while the server is away.
    """
    if not cfg.tracking.enabled:
        return NullTracker(run_id)
    return MlflowTracker(cfg, run_id, resume_step)
