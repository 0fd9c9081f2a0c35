"""One training run in MLflow, logged so that an outage of the server loses nothing.

Every record (params, metrics, tags, artifacts, images, datasets, the final model and its
registry version, the run's status) is first appended to the run's on-disk spool
(tracking/spool.py) and then delivered in order (tracking/delivery.py). When the server does not
answer, the user is told once, training goes on, and delivery is tried again after a back-off,
at `close()`, or later by `python -m face_generation.tracking.sync`. A run that starts while the
server is down has a local key at once and gets its MLflow run when the server answers; a run
resumed from a checkpoint (`TrackedRun.state()`) continues the same MLflow run, and with the
checkpoint's step (`resume_step`) each metric step stays once in MLflow although the steps after
it are logged again. Its tags tie it to its code, data and DVC experiment
(tracking/provenance.py).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH
from omegaconf import DictConfig
from tqdm import tqdm

from face_generation.tracking.delivery import deliver, http_settings
from face_generation.tracking.provenance import flatten_config, run_tags
from face_generation.tracking.server import tracking_uri, ui_url
from face_generation.tracking.spool import (
    LOCAL_KEY_PATTERN,
    Event,
    Spool,
    new_local_key,
    spool_key_of_run,
)

SYNC_COMMAND = "python -m face_generation.tracking.sync"
START_COMMAND = "python -m face_generation.tracking.server start"


def tell(message: str) -> None:
    """A message for the user that does not break tqdm progress bars."""
    tqdm.write(f"[tracking] {message}", file=sys.stderr)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _resume_state(resume: Mapping[str, Any] | str | None) -> dict[str, Any] | None:
    """`TrackedRun.state()`, or the `resume_id` string: a local key or an MLflow run id."""
    if not resume:
        return None
    if isinstance(resume, str):
        key = "local_key" if LOCAL_KEY_PATTERN.fullmatch(resume) else "run_id"
        return {key: resume}
    return dict(resume)


class TrackedRun:
    """An MLflow run for the training loop, resilient to the server being away.

        run = TrackedRun(cfg.tracking, run_name="vae", data_hash=meta["data_hash"],
                         resume=checkpoint.get("tracking"), resume_step=checkpoint["step"])
        run.log_params(flatten_config(cfg))
        for step in ...:
            run.log_metrics({"loss": loss, "images_per_s": ips}, step)
            ... checkpoint["tracking"] = run.state()
        run.log_image("models/vae/samples/step-00000250.png", "samples", step=250)
        run.log_model(generator_pyfunc, "vae", signature,
                      registered_model_name=registered_model_name(cfg.tracking, "vae"))
        run.close()

    Resuming from a checkpoint, give its step as `resume_step`: the steps after it are run and
    logged again, and each stays once in MLflow. Also a context manager: leaving it by an
    exception ends the run as FAILED (KILLED on Ctrl-C). Use it on one process only (rank 0
    under DDP).
    """

    def __init__(
        self,
        cfg: DictConfig,
        run_name: str | None = None,
        *,
        resume: Mapping[str, Any] | str | None = None,
        resume_step: int | None = None,
        data_hash: str | None = None,
        tags: Mapping[str, str] | None = None,
        experiment: str | None = None,
        provenance: bool = True,
        reopen: bool = True,
    ) -> None:
        self.cfg = cfg
        # reopen=False: records are added to an ended run that stays as it ended (status, end
        # time): evaluation adds its numbers so, and the run's duration stays the training's.
        self._reopen = reopen
        self.uri = tracking_uri(cfg)
        self._root = Path(cfg.spool_dir)
        self._next_try = 0.0  # time.monotonic() before which delivery is not tried
        self._last_try = -float("inf")
        self._backoff_s = float(cfg.retry_backoff_s)
        self._unreachable_since: float | None = None
        self._closed = False
        self._client: MlflowClient | None = None
        self._model_seqs: dict[str, int] = {}
        self.rejected: list[Event] = []

        resume = _resume_state(resume)
        if resume and not resume.get("local_key") and resume.get("run_id"):
            # A run id alone: the run's spool may still hold records a killed process left.
            resume["local_key"] = spool_key_of_run(self._root, str(resume["run_id"]))
        key = str(resume["local_key"]) if resume and resume.get("local_key") else new_local_key()
        spool = Spool.open(self._root, key) if resume else None
        if spool is None:
            spool = Spool.create(
                self._root,
                key,
                {
                    "tracking_uri": self.uri,
                    "experiment": experiment or str(cfg.experiment),
                    "run_name": run_name,
                    "run_id": resume.get("run_id") if resume else None,
                    "start_time": now_ms(),
                },
            )
        elif resume and resume.get("run_id") and spool.run_id is None:
            spool.update_meta(run_id=resume["run_id"])
        self.spool = spool
        if resume:
            self.spool.update_meta(closed=False)
        if resume and reopen:
            self.spool.append({"kind": "status", "status": "RUNNING", "timestamp": now_ms()})
        if resume and resume_step is not None:
            # The steps after the checkpoint are run and logged again: what the lost steps
            # logged is dropped here, or not sent again once the server holds it (delivery.py).
            self.spool.drop_pending_metrics_after(resume_step)
            self.spool.append({"kind": "resume", "step": int(resume_step)})
        # provenance=False: another stage adds to this run; its git/DVC tags stay the run's own.
        self.set_tags({**(run_tags(data_hash) if provenance else {}), **(tags or {})})
        self.flush()
        if self.run_id is not None:
            tell(f"MLflow run {'resumed' if resume else 'started'}: {self.url}")

    # What the training loop calls. -----------------------------------------------------------

    @property
    def local_key(self) -> str:
        return self.spool.key

    @property
    def run_id(self) -> str | None:
        """The MLflow run id; None until the server has answered once."""
        return self.spool.run_id

    @property
    def url(self) -> str:
        """The run's page in the MLflow UI (the experiment's page until the run exists)."""
        experiment = self.spool.meta.get("experiment_id")
        if experiment is None:
            return ui_url(self.uri)
        if self.run_id is None:
            return ui_url(self.uri, f"experiments/{experiment}")
        return ui_url(self.uri, f"experiments/{experiment}/runs/{self.run_id}")

    def state(self) -> dict[str, str | None]:
        """What a checkpoint stores so that a resumed run continues this MLflow run."""
        return {"local_key": self.local_key, "run_id": self.run_id}

    @property
    def resume_id(self) -> str:
        """`state()` as one string (the run id, or the local key while there is none yet);
        `TrackedRun(cfg, resume=resume_id)` continues this run."""
        return self.run_id or self.local_key

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = list({key: str(value) for key, value in params.items()}.items())
        for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = dict(items[start : start + MAX_PARAMS_TAGS_PER_BATCH])
            self.spool.append({"kind": "params", "params": chunk})
        self._deliver_when_due()

    def log_config(self, cfg: DictConfig | Mapping[str, Any]) -> None:
        """Log a (resolved, flattened) config as params."""
        self.log_params(flatten_config(cfg))

    def log_metrics(
        self, metrics: Mapping[str, float], step: int, model: str | None = None
    ) -> None:
        """Log metrics at `step`; with `model`, the name this run logged a model under, they
        also describe that model (its page in the UI shows them)."""
        self.spool.append(
            {
                "kind": "metrics",
                "step": int(step),
                "timestamp": now_ms(),
                "metrics": {key: float(value) for key, value in metrics.items()},
                **({"model": model} if model else {}),
            }
        )
        self._deliver_when_due()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if tags:
            self.spool.append({"kind": "tags", "tags": {k: str(v) for k, v in tags.items()}})
        self._deliver_when_due()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file; it is copied now, so the caller may overwrite or delete it at once."""
        self.spool.append({"kind": "artifact", "path": self._copy(path), "to": artifact_path})
        self._deliver_when_due()

    def log_image(self, path: str | Path, key: str, step: int) -> None:
        """Log an image file as the image `key` at `step` (the UI's step slider), copied now."""
        self.spool.append(
            {
                "kind": "image",
                "path": self._copy(path),
                "key": key,
                "step": int(step),
                "timestamp": now_ms(),
            }
        )
        self._deliver_when_due()

    def log_input(
        self, name: str, digest: str, source: str, profile: Mapping[str, Any], context: str
    ) -> None:
        """Log a dataset this run used: `source` is where it lives (a DVC-tracked folder),
        `digest` its content hash, `context` its role (training)."""
        self.spool.append(
            {
                "kind": "dataset",
                "name": name,
                "digest": digest,
                "source": source,
                "profile": dict(profile),
                "context": context,
            }
        )
        self._deliver_when_due()

    def _copy(self, path: str | Path) -> str:
        """Copy a file into the spool; its place there, relative to the spool."""
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"cannot log artifact {source}: no such file")
        directory = self.spool.reserve_dir("files")
        shutil.copy2(source, directory / source.name)
        return str((directory / source.name).relative_to(self.spool.dir))

    def log_model(
        self,
        python_model: Any,
        name: str,
        signature: Any,
        *,
        registered_model_name: str | None = None,
        version_description: str = "",
        version_tags: Mapping[str, str] | None = None,
        model_description: str = "",
        step: int = 0,
        input_example: Any = None,
        artifacts: Mapping[str, str] | None = None,
        pip_requirements: Sequence[str] | None = None,
        code_paths: Sequence[str] | None = None,
    ) -> Path:
        """Save a pyfunc model (a `mlflow.pyfunc.PythonModel`) and log it to this run.

        The model is saved into the spool first, so it survives an outage; delivery makes it
        a LoggedModel of this run and, with `registered_model_name`, a new version in the
        Model Registry with `version_description` and `version_tags` (the registered model
        gets `model_description` when it has none yet; see
        `model_version()`). Give `pip_requirements`: without them MLflow
        infers them by loading the model in a subprocess, which is slow. Returns the local
        model folder (loadable with `mlflow.pyfunc.load_model`).
        """
        import mlflow.pyfunc

        directory = self.spool.reserve_dir("models")
        model_dir = directory / name
        mlflow.pyfunc.save_model(
            path=str(model_dir),
            python_model=python_model,
            signature=signature,
            input_example=input_example,
            artifacts=dict(artifacts) if artifacts else None,
            pip_requirements=list(pip_requirements) if pip_requirements is not None else None,
            code_paths=list(code_paths) if code_paths else None,
        )
        self._model_seqs[name] = self.spool.next_seq
        self.spool.append(
            {
                "kind": "model",
                "path": str(model_dir.relative_to(self.spool.dir)),
                "name": name,
                "registered_model_name": registered_model_name,
                "version_description": version_description,
                "version_tags": dict(version_tags or {}),
                "model_description": model_description,
                "step": int(step),
            }
        )
        self._deliver_when_due(now=True)
        return model_dir

    def update_version(
        self,
        registered_model_name: str,
        tags: Mapping[str, str],
        champion: Mapping[str, Any] | None,
    ) -> None:
        """Tag the version of `registered_model_name` that this run registered (evaluation's
        numbers); with `champion` (alias, metric, data_hash, eval_settings, min_samples), then
        point the alias at the best candidate version (delivery.crown_champion)."""
        self.spool.append(
            {
                "kind": "version",
                "registered_model_name": registered_model_name,
                "tags": {key: str(value) for key, value in tags.items()},
                "champion": dict(champion) if champion else None,
            }
        )
        self._deliver_when_due(now=True)

    def model_version(self, name: str) -> str | None:
        """The registry version the model logged as `name` got (None until delivered)."""
        seq = self._model_seqs.get(name)
        version = self.spool.model_state(seq).get("version") if seq is not None else None
        return str(version) if version is not None else None

    def flush(self) -> bool:
        """Deliver every pending record now (back-off or not); True when none is left."""
        self.spool.sync_to_disk()
        return self._deliver()

    def close(self, status: str = "FINISHED") -> bool:
        """End the run; True when everything reached the server.

        Otherwise the records stay in the spool and the user is told how to deliver them.
        """
        if self._closed:
            return not self.spool.pending
        self._closed = True
        self.spool.end(status if self._reopen else None, now_ms())
        delivered = self.flush()
        self.spool.finish(keep=self.cfg.keep_spool_after_delivery)
        if delivered:
            return True
        tell(
            f"{len(self.spool.pending)} records of run {self.local_key} are not in MLflow yet "
            f"(no answer from {self.uri}); they are kept in {self.spool.dir}. Once the server "
            f"runs ({START_COMMAND}), deliver them with: {SYNC_COMMAND}"
        )
        return False

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close("FINISHED")
        else:
            self.close("KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")

    # Delivery with back-off. -----------------------------------------------------------------

    def _deliver_when_due(self, now: bool = False) -> None:
        clock = time.monotonic()
        if clock < self._next_try and not now:
            return
        if clock - self._last_try < self.cfg.flush_interval_s and not now:
            return
        self._deliver()

    def _deliver(self) -> bool:
        self._last_try = time.monotonic()
        if not self.spool.pending:
            return True
        backlog = len(self.spool.pending)
        try:
            with http_settings(self.cfg.request_timeout_s, self.cfg.request_max_retries):
                if self._client is None:
                    self._client = MlflowClient(self.spool.meta["tracking_uri"])
                rejected = deliver(self.spool, self._client, self.cfg.upload_timeout_s)
        except Exception as error:
            self._on_failure(error)
            return False
        if rejected:
            tell(
                f"MLflow refused {len(rejected)} records as invalid (the first: "
                f"{_short_event(rejected[0])}); they are kept in {self.spool.rejected_path}"
            )
        self.rejected += rejected
        if self.spool.events_size > self.cfg.spool_compact_mb * 2**20:
            self.spool.compact()
        if self._unreachable_since is not None:
            tell(
                f"MLflow server at {self.uri} answers again: delivered {backlog} records to {self.url}"
            )
        self._unreachable_since = None
        self._backoff_s = float(self.cfg.retry_backoff_s)
        self._next_try = 0.0
        return True

    def _on_failure(self, error: Exception) -> None:
        if self._unreachable_since is None:
            tell(
                f"could not deliver to the MLflow server at {self.uri} ({_short(error)}). "
                f"Training goes on; metrics and artifacts are kept in {self.spool.dir} and "
                f"delivered when the server answers. Start it with: {START_COMMAND}"
            )
            self._unreachable_since = time.monotonic()
        self._next_try = time.monotonic() + self._backoff_s
        self._backoff_s = min(2 * self._backoff_s, float(self.cfg.retry_backoff_max_s))


def _short_event(event: Event) -> str:
    details = {k: v for k, v in event.items() if k not in ("seq", "timestamp")}
    return _short(ValueError(json.dumps(details)))


def _short(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text if len(text) < 200 else text[:200] + "..."
