"""The evaluation's numbers and plots, logged to the model's MLflow run.

The run is the one the checkpoint names (`run_id`: training stores the MLflow run id, or the
run's local spool key while the server had not answered), so training curves and evaluation
sit side by side. Metrics are logged as `eval/<metric>` at the checkpoint's step, also on the
run's logged generator (its model page shows them); metrics that could not be computed get a
tag `eval/<metric>_unavailable` holding the reason. The version the run registered gets
`tracking.version_metrics` as tags, and the `tracking.champion` alias moves to the best version
on the same data. Logging goes through `TrackedRun`'s spool: with the server away nothing is
lost, it is delivered later.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from face_generation.evaluation.record import EvaluationResult, details_path
from face_generation.tracking.delivery import http_settings
from face_generation.tracking.provenance import GENERATOR, registered_model_name, run_tags
from face_generation.tracking.run import TrackedRun, tell
from face_generation.tracking.server import tracking_uri
from face_generation.tracking.spool import LOCAL_KEY_PATTERN

PREFIX = "eval/"


def server_tags(tracking_cfg: DictConfig, run_id: str) -> dict[str, str] | None:
    """The tags of MLflow run `run_id` on the server; {} when the server has no such run, None
    when that is unknown (no answer, or `run_id` is a spool key)."""
    if LOCAL_KEY_PATTERN.fullmatch(run_id):
        return None
    try:
        with http_settings(tracking_cfg.request_timeout_s, tracking_cfg.request_max_retries):
            run = MlflowClient(tracking_uri(tracking_cfg)).get_run(run_id)
    except MlflowException as error:
        return {} if error.error_code == "RESOURCE_DOES_NOT_EXIST" else None
    except Exception:  # unreachable: the spool keeps the records until it answers
        return None
    return dict(run.data.tags)


def provenance_tags(data_hash: str) -> dict[str, str]:
    """This evaluation's git commit, DVC stage, ... as `eval/<tag>` (the run keeps its own)."""
    return {f"{PREFIX}{key}": value for key, value in run_tags(data_hash).items()}


def eval_metrics(record: dict) -> dict[str, float]:
    """`eval/<metric>` for every metric with a value, plus KID's spread and the neighbour distances."""
    values: dict[str, float] = {}
    for name, entry in record["metrics"].items():
        if entry.get("value") is not None:
            values[f"{PREFIX}{name}"] = float(entry["value"])
        if entry.get("std") is not None:
            values[f"{PREFIX}{name}_std"] = float(entry["std"])
    for key in ("mean_distance_generated", "mean_distance_test"):
        values[f"{PREFIX}nearest_train_{key.removeprefix('mean_')}"] = float(
            record["nearest_train"][key]
        )
    return values


def version_tags(record: dict, names: Sequence[str]) -> dict[str, str]:
    """The metrics `names` that have a value, as registry tags."""
    values = {name: record["metrics"].get(name, {}).get("value") for name in names}
    return {name: f"{value:.6g}" for name, value in values.items() if value is not None}


def log_evaluation(cfg: DictConfig, run_id: str | None, result: EvaluationResult) -> str:
    """Log `result` to run `run_id` (a new run when there is none on the server); its id."""
    tracking_cfg = cfg.tracking
    record = result.record
    training_tags = server_tags(tracking_cfg, run_id) if run_id else {}
    if run_id and training_tags == {}:
        tell(
            f"the checkpoint's MLflow run {run_id} is not on {tracking_uri(tracking_cfg)} "
            "(trained with tracking.enabled=false, or against another server): logging the "
            "evaluation to a new run"
        )
    trained_here = bool(run_id) and training_tags != {}  # the run that logged the generator
    if not trained_here:
        run = TrackedRun(
            tracking_cfg,
            run_name=f"{record['model']}-eval",
            data_hash=record["data_hash"],
            tags={"model": record["model"]},
        )
    else:
        run = TrackedRun(
            tracking_cfg,
            resume=run_id,
            tags=provenance_tags(record["data_hash"]),
            provenance=False,
        )
    try:
        run.log_metrics(
            eval_metrics(record),
            step=int(record["step"]),
            model=GENERATOR if trained_here else None,
        )
        run.set_tags(
            {
                f"{PREFIX}checkpoint": record["checkpoint"],
                f"{PREFIX}feature_network": record["feature_network"],
                f"{PREFIX}n": record["n_generated"],
                f"{PREFIX}network_evaluations": record["network_evaluations"],
                f"{PREFIX}split": record["split"],
                **{
                    f"{PREFIX}{name}_unavailable": entry["reason"]
                    for name, entry in record["metrics"].items()
                    if not entry["available"]
                },
            }
        )
        run.log_artifact(result.metrics_path, "eval")
        run.log_artifact(details_path(result.metrics_path), "eval")
        for plot in result.plots:
            run.log_artifact(plot, "eval/plots")
        if trained_here:
            run.update_version(
                registered_model_name(tracking_cfg, record["model"]),
                version_tags(record, tracking_cfg.version_metrics),
                {**tracking_cfg.champion, "data_hash": record["data_hash"]},
            )
    finally:
        # FINISHED either way: the run is the training's, and training did finish.
        run.close("FINISHED")
    return run.resume_id
