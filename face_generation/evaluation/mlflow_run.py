"""The evaluation's numbers and plots, logged to the model's MLflow run.

The run is the one the checkpoint names (`run_id`: training stores the MLflow run id, or the
run's local spool key while the server had not answered), so training curves and evaluation
sit side by side. The run is not reopened: it keeps the training's status and end time, so its
duration is the training's. Metrics are logged as `eval/<metric>` at the checkpoint's step,
also on the run's logged model (its page shows them); metrics that could not be computed get a
tag `eval/<metric>_unavailable` holding the reason. The version the run registered gets
`tracking.version_metrics`, the evaluation settings and its champion candidacy as tags.

The `tracking.champion` alias moves only on a comparison that means something: among versions
trained on the same data, evaluated with the same settings, each over at least
`tracking.champion.min_samples` samples, from runs in the user's workspace (not queued DVC
experiments, which run in a temporary copy and may never be applied). Otherwise evaluation says
why it left the alias alone; `python -m face_generation.tracking.promote` moves it by hand.
Logging goes through `TrackedRun`'s spool: with the server away nothing is lost, it is
delivered later.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from face_generation.evaluation.record import EvaluationResult, details_path
from face_generation.tracking.delivery import (
    CANDIDATE_TAG,
    REFUSAL_TAG,
    SETTINGS_TAG,
    http_settings,
)
from face_generation.tracking.provenance import (
    queued_experiment,
    registered_model_name,
    run_tags,
)
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
    tags = run_tags(data_hash).items()
    return {f"{PREFIX}{key}": value for key, value in tags if not key.startswith("mlflow.")}


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


def evaluation_settings(record: dict) -> str:
    """What makes two evaluations' numbers comparable, in one line: network, split, N, seed,
    sampling options and condition."""
    return (
        f"{record['feature_network']}, {record['split']} split, {record['n_generated']} generated "
        f"vs {record['n_real']} real, seed {record['seed']}, sampling "
        f"{json.dumps(record['sampling'], sort_keys=True)}, condition "
        f"{json.dumps(record.get('condition'), sort_keys=True)}"
    )


def champion_refusal(record: dict, champion: DictConfig) -> str | None:
    """Why this evaluation may not move the champion alias; None when it may."""
    entry = record["metrics"].get(champion.metric, {})
    if entry.get("value") is None:
        return f"{champion.metric} is unavailable here"
    samples = min(int(entry.get("n_generated", 0)), int(entry.get("n_real", 0)))
    if samples < int(champion.min_samples):
        return (
            f"{champion.metric} over {samples} samples is below tracking.champion.min_samples="
            f"{champion.min_samples}: its noise is larger than the differences between models"
        )
    if queued_experiment():
        return (
            "a queued DVC experiment (it runs in a temporary copy and may never be applied); "
            "after `dvc exp apply`, promote it by hand"
        )
    return None


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
            reopen=False,
        )
    try:
        run.log_metrics(
            eval_metrics(record),
            step=int(record["step"]),
            model=record["model"] if trained_here else None,
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
            update_version(run, tracking_cfg, record)
    finally:
        run.close()  # adds nothing to the run's status: it is the training's

    return run.resume_id


def update_version(run: TrackedRun, tracking_cfg: DictConfig, record: dict) -> None:
    """Tag the run's registered version with the numbers, the settings and its candidacy; move
    the champion alias when it is a candidate, else say why not."""
    name = registered_model_name(tracking_cfg, record["model"])
    champion = tracking_cfg.champion
    refusal = champion_refusal(record, champion)
    settings = evaluation_settings(record)
    tags = {
        **version_tags(record, tracking_cfg.version_metrics),
        SETTINGS_TAG: settings,
        CANDIDATE_TAG: str(refusal is None).lower(),
        **({REFUSAL_TAG: refusal} if refusal else {}),
    }
    crown = {
        "alias": champion.alias,
        "metric": champion.metric,
        "data_hash": record["data_hash"],
        "eval_settings": settings,
        "min_samples": int(champion.min_samples),
    }
    run.update_version(name, tags, None if refusal else crown)
    if refusal:
        tell(f"{name}: alias {champion.alias!r} left where it was: {refusal}")
