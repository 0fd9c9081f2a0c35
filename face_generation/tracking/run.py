"""One training run in MLflow, logged so that an outage of the server loses nothing.

Every record (params, metrics, tags, artifacts, the final model, the run's status) is first
appended to an on-disk spool, `<tracking.spool_dir>/<local key>/`:

    run.json        the run's identity: local key, tracking URI, experiment, MLflow run id
    events.jsonl    append-only records, numbered by `seq`
    cursor          the last `seq` the server has acknowledged
    files/<seq>/    copies of logged artifact files, taken when they were logged
    models/<seq>/   MLflow models saved locally, uploaded on delivery
    rejected.jsonl  records the server refused as invalid (kept, and reported)

and then delivered in order with MLflow's batch API. When the server does not answer, the
user is told once, training goes on, and delivery is tried again after a back-off, at
`close()`, or later by `python -m face_generation.tracking.sync`. A run that starts while the
server is down has a local key at once and gets its MLflow run when the server answers; a run
resumed from a checkpoint (`TrackedRun.state()`) continues the same MLflow run. Replays never
double-log: the cursor records what was acknowledged, and the server drops a metric identical
to one it holds (same key, value, step and timestamp), which covers a reply lost in transit.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import requests
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_ENTITIES_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from face_generation.tracking.server import tracking_uri

LOCAL_KEY_TAG = "face_generation.local_key"  # ties an MLflow run (or model) to its spool
SYNC_COMMAND = "python -m face_generation.tracking.sync"
START_COMMAND = "python -m face_generation.tracking.server start"
END_STATUSES = ("FINISHED", "FAILED", "KILLED")

Event = dict[str, Any]


def tell(message: str) -> None:
    """A message for the user that does not break tqdm progress bars."""
    tqdm.write(f"[tracking] {message}", file=sys.stderr)


def flatten_config(cfg: DictConfig | Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"model.channels": "64", ...}`: a (resolved) config as MLflow params.

    Lists of plain values stay one param (`"[64, 128]"`); lists holding mappings are indexed
    (`"stages.0.size"`).
    """
    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    assert isinstance(tree, Mapping)
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key!s}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{name}."))
        elif isinstance(value, list) and any(isinstance(v, Mapping | list) for v in value):
            flat.update(flatten_config({str(i): v for i, v in enumerate(value)}, f"{name}."))
        elif isinstance(value, list):
            flat[name] = json.dumps(value)
        else:
            flat[name] = str(value)
    return flat


def git_commit(cwd: str | Path | None = None) -> tuple[str, bool] | None:
    """(HEAD commit, whether tracked files differ from it), or None outside a git work tree.

    By default the work tree holding this package's code, else the working directory.
    """
    if cwd is None:
        return git_commit(Path(__file__).resolve().parent) or git_commit(Path.cwd())
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head, bool(changes)


def run_tags(data_hash: str | None = None) -> dict[str, str]:
    """Tags that tie a run to its code, data and DVC experiment."""
    tags: dict[str, str] = {}
    if (commit := git_commit()) is not None:
        tags["git_commit"] = commit[0]
        tags["mlflow.source.git.commit"] = commit[0]  # shown by the MLflow UI
        tags["git_dirty"] = str(commit[1]).lower()
    if data_hash:
        tags["data_hash"] = data_hash
    # `dvc exp run` sets DVC_EXP_NAME and DVC_EXP_BASELINE_REV; every DVC stage sets DVC_STAGE.
    for variable, tag in (
        ("DVC_EXP_NAME", "dvc_exp"),
        ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev"),
        ("DVC_STAGE", "dvc_stage"),
    ):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    return tags


def registered_model_name(cfg: DictConfig, family: str) -> str:
    """The Model Registry name of a model family: `<registered_model_prefix>-<family>`."""
    return f"{cfg.registered_model_prefix}-{family}"


def new_local_key() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


LOCAL_KEY_PATTERN = re.compile(r"\d{8}-\d{6}-[0-9a-f]{8}")  # what new_local_key() makes


def _resume_state(resume: Mapping[str, Any] | str | None) -> dict[str, Any] | None:
    """`TrackedRun.state()`, or the `resume_id` string: a local key or an MLflow run id."""
    if not resume:
        return None
    if isinstance(resume, str):
        key = "local_key" if LOCAL_KEY_PATTERN.fullmatch(resume) else "run_id"
        return {key: resume}
    return dict(resume)


def spool_key_of_run(root: Path, run_id: str) -> str | None:
    """The local key of the spool kept on disk for MLflow run `run_id`, if there is one."""
    for meta_path in sorted(root.glob("*/run.json")):
        meta = json.loads(_read_text(meta_path) or "{}")
        if meta.get("run_id") == run_id:
            return str(meta["local_key"])
    return None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class SpoolBusyError(RuntimeError):
    """Another process holds this spool (a training run still logging to it)."""


class Spool:
    """The on-disk record of one run, and its delivery to the MLflow server."""

    def __init__(self, directory: Path, meta: dict[str, Any]) -> None:
        self.dir = directory
        self.meta = meta
        self._lock = _lock(directory / "lock")
        self._events_path = directory / "events.jsonl"
        self.delivered_seq = int(_read_text(directory / "cursor") or 0)
        events = _read_events(self._events_path)
        # The cursor outlives compaction (an emptied events.jsonl): numbering goes on from it.
        self.next_seq = max(events[-1]["seq"] if events else 0, self.delivered_seq) + 1
        self.pending: list[Event] = [e for e in events if e["seq"] > self.delivered_seq]
        self._events: TextIO | None = self._events_path.open("a", encoding="utf-8")
        self._models = json.loads(_read_text(directory / "models.json") or "{}")

    @classmethod
    def create(cls, root: Path, key: str, meta: dict[str, Any]) -> Spool:
        directory = root / key
        directory.mkdir(parents=True, exist_ok=True)
        _write_json(directory / "run.json", {"local_key": key, **meta})
        return cls(directory, json.loads((directory / "run.json").read_text()))

    @classmethod
    def open(cls, root: Path, key: str) -> Spool | None:
        """The spool of local key `key`, or None when there is none."""
        path = root / key / "run.json"
        return cls(path.parent, json.loads(path.read_text())) if path.is_file() else None

    @property
    def key(self) -> str:
        return str(self.meta["local_key"])

    @property
    def run_id(self) -> str | None:
        return self.meta.get("run_id")

    @property
    def closed(self) -> bool:
        return bool(self.meta.get("closed"))

    @property
    def rejected_path(self) -> Path:
        return self.dir / "rejected.jsonl"

    def update_meta(self, **values: Any) -> None:
        self.meta.update(values)
        _write_json(self.dir / "run.json", self.meta)

    def append(self, event: Event) -> Event:
        """Write one record to disk; it is pending until the server acknowledges it."""
        assert self._events is not None, "spool closed"
        event = {"seq": self.next_seq, **event}
        self._events.write(json.dumps(event) + "\n")
        self._events.flush()
        self.next_seq += 1
        self.pending.append(event)
        return event

    def reserve_dir(self, kind: str) -> Path:
        """A fresh folder for the files of the next record (`files/<seq>`, `models/<seq>`)."""
        directory = self.dir / kind / f"{self.next_seq:08d}"
        shutil.rmtree(directory, ignore_errors=True)  # left by a crash before the record
        directory.mkdir(parents=True)
        return directory

    @property
    def events_size(self) -> int:
        return self._events_path.stat().st_size if self._events_path.exists() else 0

    def sync_to_disk(self) -> None:
        if self._events is not None:
            os.fsync(self._events.fileno())

    def release(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
        self._lock.close()

    def remove(self) -> None:
        self.release()
        shutil.rmtree(self.dir, ignore_errors=True)

    def finish(self, keep: bool) -> bool:
        """Let go of the spool; remove it (True) when the run ended and MLflow holds all of it.

        A spool with records the server rejected is kept, so that nothing is lost unseen.
        """
        if keep or self.pending or not self.closed or self.rejected_path.exists():
            self.release()
            return False
        self.remove()
        return True

    def compact(self) -> None:
        """Empty events.jsonl once everything in it is delivered (the cursor keeps the count)."""
        assert not self.pending and self._events is not None
        self._events.close()
        self._events = self._events_path.open("w", encoding="utf-8")

    # Delivery. -------------------------------------------------------------------------------

    def deliver(self, client: MlflowClient, upload_timeout_s: float) -> list[Event]:
        """Send every pending record, in order; return the records the server rejected.

        Raises whatever the client raised when the server is unreachable or failing; the
        records not yet acknowledged stay pending.
        """
        rejected: list[Event] = []
        while self.pending:
            run_id = self.ensure_run(client)
            group = _next_group(self.pending)
            try:
                self._send(client, run_id, group, upload_timeout_s)
            except Exception as error:
                if not _is_rejection(error):
                    raise
                # One invalid record (say a changed param value on resume) must not block the
                # rest: send the group record by record and keep the refused ones aside.
                for event in group:
                    try:
                        self._send(client, run_id, [event], upload_timeout_s)
                    except Exception as single_error:
                        if not _is_rejection(single_error):
                            raise
                        self._reject(event, single_error)
                        rejected.append(event)
                    self._acknowledge(event["seq"])
            self._acknowledge(group[-1]["seq"])
        return rejected

    def ensure_run(self, client: MlflowClient) -> str:
        """The MLflow run id, creating the run (or finding one made before) on first use."""
        if self.run_id is not None:
            if not self.meta.get("experiment_id"):  # known from a checkpoint only
                run = client.get_run(self.run_id)  # also checks the run exists on this server
                self.update_meta(experiment_id=run.info.experiment_id)
            return self.run_id
        experiment_id = self.experiment_id(client)
        # A reply lost after the run was created would otherwise make a second run.
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{LOCAL_KEY_TAG}` = '{self.key}'",
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
        else:
            run = client.create_run(
                experiment_id,
                start_time=self.meta["start_time"],
                tags={LOCAL_KEY_TAG: self.key},
                run_name=self.meta.get("run_name"),
            )
            run_id = run.info.run_id
        self.update_meta(run_id=run_id, experiment_id=experiment_id)
        return run_id

    def experiment_id(self, client: MlflowClient) -> str:
        if self.meta.get("experiment_id"):
            return str(self.meta["experiment_id"])
        name = self.meta["experiment"]
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return client.create_experiment(name)
            except MlflowException:  # created meanwhile by another process
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage != "active":
            raise MlflowException(
                f"MLflow experiment {name!r} is deleted; restore it in the UI "
                "or choose another with tracking.experiment=NAME"
            )
        return str(experiment.experiment_id)

    def _send(
        self, client: MlflowClient, run_id: str, group: list[Event], upload_timeout_s: float
    ) -> None:
        kind = group[0]["kind"]
        if kind in ("metrics", "params", "tags"):
            metrics, params, tags = [], [], []
            for event in group:
                if event["kind"] == "metrics":
                    metrics += [
                        Metric(key, float(value), event["timestamp"], event["step"])
                        for key, value in event["metrics"].items()
                    ]
                elif event["kind"] == "params":
                    params += [Param(key, value) for key, value in event["params"].items()]
                else:
                    tags += [RunTag(key, value) for key, value in event["tags"].items()]
            client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        elif kind == "artifact":
            with http_settings(upload_timeout_s, None):
                client.log_artifact(run_id, str(self.dir / event_path(group[0])), group[0]["to"])
        elif kind == "model":
            self._send_model(client, run_id, group[0], upload_timeout_s)
        elif kind == "status":
            event = group[0]
            if event["status"] in END_STATUSES:
                client.set_terminated(run_id, event["status"], event["timestamp"])
            else:
                client.update_run(run_id, status=event["status"])
        else:
            raise ValueError(f"unknown record kind {kind!r} in {self._events_path}")

    def _send_model(
        self, client: MlflowClient, run_id: str, event: Event, upload_timeout_s: float
    ) -> None:
        """Upload a locally saved MLflow model as a LoggedModel of the run, then register it.

        Each step is recorded in models.json so that a retry resumes where delivery stopped.
        """
        from mlflow.models import Model

        state = self._models.setdefault(str(event["seq"]), {})
        local_dir = self.dir / event_path(event)
        if "model_id" not in state:
            logged = client.create_logged_model(
                self.experiment_id(client),
                name=event["name"],
                source_run_id=run_id,
                tags={LOCAL_KEY_TAG: f"{self.key}/{event['seq']}"},
            )
            client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, event["step"])])
            state.update(model_id=logged.model_id, artifact_location=logged.artifact_location)
            self._save_models_state()
        model_id = state["model_id"]
        if not state.get("uploaded"):
            mlmodel = Model.load(str(local_dir))
            mlmodel.run_id, mlmodel.model_id, mlmodel.model_uuid = run_id, model_id, model_id
            mlmodel.artifact_path = state["artifact_location"]
            mlmodel.save(str(local_dir / "MLmodel"))
            with http_settings(upload_timeout_s, None):
                client.log_model_artifacts(model_id, str(local_dir))
            client.finalize_logged_model(model_id, LoggedModelStatus.READY)
            state["uploaded"] = True
            self._save_models_state()
        name = event.get("registered_model_name")
        if name and "version" not in state:
            try:
                client.create_registered_model(name)
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            source = f"models:/{model_id}"
            # A version made before a lost reply (the OSS registry reports the source, not
            # always the model id).
            existing = [
                version
                for version in client.search_model_versions(
                    f"name = '{name}' and run_id = '{run_id}'"
                )
                if model_id in (version.model_id, (version.source or "").removeprefix("models:/"))
            ]
            version = existing[0] if existing else None
            if version is None:
                version = client.create_model_version(
                    name, source, run_id=run_id, model_id=model_id
                )
            state["version"] = str(version.version)
            self._save_models_state()

    def model_state(self, seq: int) -> dict[str, Any]:
        """What delivery has done for the model record `seq` (model_id, uploaded, version)."""
        return dict(self._models.get(str(seq), {}))

    def _save_models_state(self) -> None:
        _write_json(self.dir / "models.json", self._models)

    def _acknowledge(self, seq: int) -> None:
        if seq <= self.delivered_seq:
            return
        self.delivered_seq = seq
        done = [e for e in self.pending if e["seq"] <= seq]
        self.pending = [e for e in self.pending if e["seq"] > seq]
        _write_text(self.dir / "cursor", str(seq))
        for event in done:  # the copies of files MLflow now holds
            if event["kind"] in ("artifact", "model"):
                shutil.rmtree(self.dir / Path(event_path(event)).parent, ignore_errors=True)

    def _reject(self, event: Event, error: Exception) -> None:
        with self.rejected_path.open("a", encoding="utf-8") as rejected:
            rejected.write(json.dumps({**event, "error": str(error)}) + "\n")


class TrackedRun:
    """An MLflow run for the training loop, resilient to the server being away.

        run = TrackedRun(cfg.tracking, run_name="vae", data_hash=meta["data_hash"],
                         resume=checkpoint.get("tracking"))
        run.log_params(flatten_config(cfg))
        for step in ...:
            run.log_metrics({"loss": loss, "images_per_s": ips}, step)
            ... checkpoint["tracking"] = run.state()
        run.log_artifact("plots/vae/samples_000100.png", "samples")
        run.log_model(generator_pyfunc, "generator", signature,
                      registered_model_name=registered_model_name(cfg.tracking, "vae"))
        run.close()

    Also a context manager: leaving it by an exception ends the run as FAILED (KILLED on
    Ctrl-C). Use it on one process only (rank 0 under DDP).
    """

    def __init__(
        self,
        cfg: DictConfig,
        run_name: str | None = None,
        *,
        resume: Mapping[str, Any] | str | None = None,
        data_hash: str | None = None,
        tags: Mapping[str, str] | None = None,
        experiment: str | None = None,
        provenance: bool = True,
    ) -> None:
        self.cfg = cfg
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
            self.spool.append({"kind": "status", "status": "RUNNING", "timestamp": now_ms()})
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
            return self.uri
        if self.run_id is None:
            return f"{self.uri}/#/experiments/{experiment}"
        return f"{self.uri}/#/experiments/{experiment}/runs/{self.run_id}"

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

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.spool.append(
            {
                "kind": "metrics",
                "step": int(step),
                "timestamp": now_ms(),
                "metrics": {key: float(value) for key, value in metrics.items()},
            }
        )
        self._deliver_when_due()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if tags:
            self.spool.append({"kind": "tags", "tags": {k: str(v) for k, v in tags.items()}})
        self._deliver_when_due()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file; it is copied now, so the caller may overwrite or delete it at once."""
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"cannot log artifact {source}: no such file")
        directory = self.spool.reserve_dir("files")
        shutil.copy2(source, directory / source.name)
        self.spool.append(
            {
                "kind": "artifact",
                "path": str((directory / source.name).relative_to(self.spool.dir)),
                "to": artifact_path,
            }
        )
        self._deliver_when_due()

    def log_model(
        self,
        python_model: Any,
        name: str,
        signature: Any,
        *,
        registered_model_name: str | None = None,
        step: int = 0,
        input_example: Any = None,
        artifacts: Mapping[str, str] | None = None,
        pip_requirements: Sequence[str] | None = None,
        code_paths: Sequence[str] | None = None,
    ) -> Path:
        """Save a pyfunc model (a `mlflow.pyfunc.PythonModel`) and log it to this run.

        The model is saved into the spool first, so it survives an outage; delivery makes it
        a LoggedModel of this run and, with `registered_model_name`, a new version in the
        Model Registry (see `model_version()`). Give `pip_requirements`: without them MLflow
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
                "step": int(step),
            }
        )
        self._deliver_when_due(now=True)
        return model_dir

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
        self.spool.append({"kind": "status", "status": status, "timestamp": now_ms()})
        self.spool.update_meta(closed=True)
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
                rejected = self.spool.deliver(self._client, self.cfg.upload_timeout_s)
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


def deliver_spool(spool: Spool, cfg: DictConfig, uri: str | None = None) -> list[Event]:
    """Deliver one spool now (what `tracking.sync` does); raises when the server fails."""
    if uri is not None and uri != spool.meta["tracking_uri"]:
        spool.update_meta(tracking_uri=uri)
    with http_settings(cfg.request_timeout_s, cfg.request_max_retries):
        return spool.deliver(MlflowClient(spool.meta["tracking_uri"]), cfg.upload_timeout_s)


@contextlib.contextmanager
def http_settings(timeout_s: float, max_retries: int | None) -> Iterator[None]:
    """Set MLflow's HTTP timeout and retries for the calls inside (MLflow reads them per call)."""
    values = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(timeout_s))}
    if max_retries is not None:
        values["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(int(max_retries))
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def event_path(event: Event) -> str:
    return str(event["path"])


def _next_group(pending: list[Event]) -> list[Event]:
    """The next request's records: consecutive metrics/params/tags up to MLflow's batch limit,
    or one artifact, model or status record."""
    first = pending[0]
    if first["kind"] not in ("metrics", "params", "tags"):
        return [first]
    group: list[Event] = []
    entities = 0
    for event in pending:
        if event["kind"] not in ("metrics", "params", "tags"):
            break
        size = len(event.get("metrics") or event.get("params") or event.get("tags") or {})
        if group and entities + size > MAX_ENTITIES_PER_BATCH:
            break
        group.append(event)
        entities += size
    return group


def _is_rejection(error: Exception) -> bool:
    """The server answered that the record is invalid: retrying will not help."""
    if isinstance(error, MlflowException):
        return error.get_http_status_code() == HTTPStatus.BAD_REQUEST
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return error.response.status_code == HTTPStatus.BAD_REQUEST
    return False


def _short_event(event: Event) -> str:
    details = {k: v for k, v in event.items() if k not in ("seq", "timestamp")}
    return _short(ValueError(json.dumps(details)))


def _short(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text if len(text) < 200 else text[:200] + "..."


def _lock(path: Path) -> TextIO:
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SpoolBusyError(
            f"{path.parent} is in use by another process (a run still logging to it)"
        ) from None
    return handle


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def _write_text(path: Path, text: str) -> None:
    """Atomic: readers see the old or the new content, never half of it."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _write_json(path: Path, value: Any) -> None:
    _write_text(path, json.dumps(value, indent=1))


def _read_events(path: Path) -> list[Event]:
    """The records of an events.jsonl; a last line cut short by a crash is dropped."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    events = []
    for number, line in enumerate(lines):
        if not line:
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines) - 1:
                raise ValueError(f"{path} line {number + 1} is corrupt: {line[:80]!r}") from None
            with path.open("r+", encoding="utf-8") as handle:  # drop the torn last line
                handle.truncate(len(text.encode()) - len(line.encode()))
    return events
