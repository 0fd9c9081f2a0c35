"""Delivery of a spool's records to the MLflow server.

Pending records are sent in order with MLflow's batch API: consecutive metrics, params and tags
share a request; an artifact, an image, a dataset, a model, a registry version's update, a
status change or a resume point goes alone. The
spool's cursor advances after each acknowledged request. Replays never double-log: the cursor
records what was acknowledged, and the server drops a metric identical to one it holds (same
key, value, step and timestamp), which covers a reply lost in transit. Resumes never double-log
either: a run resumed from the checkpoint of step S logs the steps after S again, so a resume
record asks the server which steps after S it holds, and those (key, step) points are not sent
again (MLflow cannot delete a metric point). The MLflow run (and experiment) is created on
first delivery, found again by its local key tag when that reply was lost; an image already on
the server (same key, step and time) is not sent again. A run registers at most one version of
a registered model (with the description and tags training gave it): a finished run resumed
and ended again adds none. Evaluation's "version" record tags that version with its numbers and
moves the champion alias (`crown_champion`).

A record the server refuses as invalid (HTTP 400) is kept in the spool's rejected.jsonl and
does not block the rest; any other failure stops delivery, leaving the records pending.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from http import HTTPStatus

import requests
from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    LoggedModelOutput,
    LoggedModelStatus,
    Metric,
    Param,
    RunTag,
)
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from mlflow.utils.validation import MAX_ENTITIES_PER_BATCH
from omegaconf import DictConfig

from face_generation.tracking.spool import Event, Spool

LOCAL_KEY_TAG = "face_generation.local_key"  # ties an MLflow run (or model) to its spool
# Version tags evaluation sets: the settings its numbers were measured with, and whether the
# version may take the champion alias (enough samples, a run the user applied), or why not.
SETTINGS_TAG, CANDIDATE_TAG, REFUSAL_TAG = "eval_settings", "champion_candidate", "champion_refused"
CHAMPION_HEADING = "Champion, alias"  # starts the description paragraph of the alias holder
END_STATUSES = ("FINISHED", "FAILED", "KILLED")
BATCHED_KINDS = ("metrics", "params", "tags")  # records that go to MLflow by log_batch
# The experiment tag the MLflow 3 UI reads to open an experiment on its training runs (and
# its machine-learning view) instead of GenAI traces.
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


def deliver(spool: Spool, client: MlflowClient, upload_timeout_s: float) -> list[Event]:
    """Send every pending record, in order; return the records the server rejected.

    Raises whatever the client raised when the server is unreachable or failing; the
    records not yet acknowledged stay pending.
    """
    rejected: list[Event] = []
    while spool.pending:
        run_id = ensure_run(spool, client)
        group = _next_group(spool.pending)
        try:
            _send(spool, client, run_id, group, upload_timeout_s)
        except Exception as error:
            if not is_rejection(error):
                raise
            # One invalid record (say a changed param value on resume) must not block the
            # rest: send the group record by record and keep the refused ones aside.
            for event in group:
                try:
                    _send(spool, client, run_id, [event], upload_timeout_s)
                except Exception as single_error:
                    if not is_rejection(single_error):
                        raise
                    spool.reject(event, single_error)
                    rejected.append(event)
                spool.acknowledge(event["seq"])
        spool.acknowledge(group[-1]["seq"])
    return rejected


def deliver_spool(spool: Spool, cfg: DictConfig, uri: str | None = None) -> list[Event]:
    """Deliver one spool now (what `tracking.sync` does); raises when the server fails."""
    if uri is not None and uri != spool.meta["tracking_uri"]:
        spool.update_meta(tracking_uri=uri)
    with http_settings(cfg.request_timeout_s, cfg.request_max_retries):
        return deliver(spool, MlflowClient(spool.meta["tracking_uri"]), cfg.upload_timeout_s)


def ensure_run(spool: Spool, client: MlflowClient) -> str:
    """The MLflow run id, creating the run (or finding one made before) on first use."""
    if spool.run_id is not None:
        if not spool.meta.get("experiment_id"):  # known from a checkpoint only
            run = client.get_run(spool.run_id)  # also checks the run exists on this server
            spool.update_meta(experiment_id=run.info.experiment_id)
        return spool.run_id
    experiment_id = ensure_experiment(spool, client)
    # A reply lost after the run was created would otherwise make a second run.
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{LOCAL_KEY_TAG}` = '{spool.key}'",
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
    else:
        run = client.create_run(
            experiment_id,
            start_time=spool.meta["start_time"],
            tags={LOCAL_KEY_TAG: spool.key},
            run_name=spool.meta.get("run_name"),
        )
        run_id = run.info.run_id
    spool.update_meta(run_id=run_id, experiment_id=experiment_id)
    return run_id


def ensure_experiment(spool: Spool, client: MlflowClient) -> str:
    """The id of the spool's experiment, creating the experiment when the server has none.

    It is marked as model training (EXPERIMENT_KIND_TAG), so that the UI opens it on its runs; an
    experiment made before without a kind gets it too, one a user set is left alone.
    """
    if spool.meta.get("experiment_id"):
        return str(spool.meta["experiment_id"])
    name = spool.meta["experiment"]
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
        except MlflowException:  # created meanwhile by another process
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage != "active":
        raise MlflowException(
            f"MLflow experiment {name!r} is deleted; restore it in the UI "
            "or choose another with tracking.experiment=NAME"
        )
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    return str(experiment.experiment_id)


@contextlib.contextmanager
def http_settings(timeout_s: float, max_retries: int | None) -> Iterator[None]:
    """Set MLflow's HTTP timeout and retries for the calls inside (MLflow reads them per call)."""
    values = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(timeout_s)),
        # ending a run prints MLflow's own run link, without the UI's machine-learning view;
        # the project prints its own links (tracking/server.ui_url)
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    }
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


def is_rejection(error: Exception) -> bool:
    """The server answered that the record is invalid: retrying will not help."""
    if isinstance(error, MlflowException):
        return error.get_http_status_code() == HTTPStatus.BAD_REQUEST
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return error.response.status_code == HTTPStatus.BAD_REQUEST
    return False


def _next_group(pending: list[Event]) -> list[Event]:
    """The next request's records: consecutive metrics/params/tags up to MLflow's batch limit,
    or one artifact, model or status record."""
    first = pending[0]
    if first["kind"] not in BATCHED_KINDS:
        return [first]
    group: list[Event] = []
    entities = 0
    for event in pending:
        if event["kind"] not in BATCHED_KINDS:
            break
        size = len(event.get("metrics") or event.get("params") or event.get("tags") or {})
        if group and entities + size > MAX_ENTITIES_PER_BATCH:
            break
        group.append(event)
        entities += size
    return group


def _send(
    spool: Spool, client: MlflowClient, run_id: str, group: list[Event], upload_timeout_s: float
) -> None:
    """One request: a batch of metrics/params/tags, or one artifact, model or status record."""
    kind = group[0]["kind"]
    if kind in BATCHED_KINDS:
        models = _logged_models(client, run_id, {e["model"] for e in group if e.get("model")})
        metrics, params, tags = [], [], []
        for event in group:
            if event["kind"] == "metrics":
                model_id = models.get(event.get("model", ""))  # the model page shows these too
                metrics += [
                    Metric(key, float(value), event["timestamp"], event["step"], model_id=model_id)
                    for key, value in event["metrics"].items()
                    if event["step"] not in spool.held_steps.get(key, ())
                ]
            elif event["kind"] == "params":
                params += [Param(key, value) for key, value in event["params"].items()]
            else:
                tags += [RunTag(key, value) for key, value in event["tags"].items()]
        if metrics or params or tags:
            client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
    elif kind == "artifact":
        with http_settings(upload_timeout_s, None):
            client.log_artifact(run_id, str(spool.files_of(group[0])), group[0]["to"])
    elif kind == "image":
        _send_image(spool, client, run_id, group[0], upload_timeout_s)
    elif kind == "dataset":
        _send_dataset(client, run_id, group[0])
    elif kind == "model":
        _send_model(spool, client, run_id, group[0], upload_timeout_s)
    elif kind == "version":
        _send_version(client, run_id, group[0])
    elif kind == "status":
        event = group[0]
        if event["status"] in END_STATUSES:
            client.set_terminated(run_id, event["status"], event["timestamp"])
        else:
            client.update_run(run_id, status=event["status"])
    elif kind == "resume":
        spool.hold_steps(_steps_after(client, run_id, group[0]["step"]))
    else:
        raise ValueError(f"unknown record kind {kind!r} in {spool.events_path}")


def _logged_models(client: MlflowClient, run_id: str, names: set[str]) -> dict[str, str]:
    """The ids of the models the run logged under `names`."""
    if not names:
        return {}
    outputs = client.get_run(run_id).outputs
    ids = [output.model_id for output in outputs.model_outputs] if outputs else []
    models = {client.get_logged_model(model_id).name: model_id for model_id in ids}
    return {name: model_id for name, model_id in models.items() if name in names}


def _send_image(
    spool: Spool, client: MlflowClient, run_id: str, event: Event, upload_timeout_s: float
) -> None:
    """An image at its step; nothing when an earlier try already logged it (a lost reply)."""
    from PIL import Image

    # MLflow's file name: images/<key, / as ~>+step+<step>+timestamp+<ms>+<uuid>.png
    key = str(event["key"]).replace("/", "~")
    logged = f"images/{key}+step+{event['step']}+timestamp+{event['timestamp']}+"
    if any(
        artifact.path.startswith(logged) for artifact in client.list_artifacts(run_id, "images")
    ):
        return
    with Image.open(spool.files_of(event)) as image, http_settings(upload_timeout_s, None):
        client.log_image(
            run_id,
            image.convert("RGB"),
            key=event["key"],
            step=event["step"],
            timestamp=event["timestamp"],
        )


def _send_dataset(client: MlflowClient, run_id: str, event: Event) -> None:
    """A dataset input of the run (the server keeps one per dataset and run: retries add none)."""
    dataset = Dataset(
        name=event["name"],
        digest=event["digest"],
        source_type="local",  # a folder the UI shows as a path
        source=json.dumps({"uri": event["source"]}),
        profile=json.dumps(event["profile"]),
    )
    context = InputTag(MLFLOW_DATASET_CONTEXT, event["context"])
    client.log_inputs(run_id, [DatasetInput(dataset, [context])])


def _send_version(client: MlflowClient, run_id: str, event: Event) -> None:
    """Tag the version the run registered, then (when evaluation made it a candidate) move the
    champion alias; nothing when the run registered no version (its training was not tracked
    on this server)."""
    name = event["registered_model_name"]
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if not versions:
        return
    for key, value in event["tags"].items():
        client.set_model_version_tag(name, versions[0].version, key, value)
    if event["tags"].get(CANDIDATE_TAG) == "true" and REFUSAL_TAG in versions[0].tags:
        client.delete_model_version_tag(name, versions[0].version, REFUSAL_TAG)  # re-evaluated
    if event.get("champion"):
        crown_champion(client, name, **event["champion"])


def crown_champion(
    client: MlflowClient,
    name: str,
    alias: str,
    metric: str,
    data_hash: str,
    eval_settings: str = "",
    min_samples: int = 0,
) -> str | None:
    """Point `alias` at the version of `name` with the lowest `metric` (a distance) among the
    candidates: versions trained on `data_hash`, evaluated with the same `eval_settings`, each
    tagged a champion candidate (CANDIDATE_TAG: enough samples, a run the user applied). Its
    version number, None when there is no such version. The winner's description says on what
    it won; the version that held the alias before loses that paragraph."""
    candidates = [
        version
        for version in client.search_model_versions(f"name = '{name}'")
        if version.tags.get("data_hash") == data_hash
        and version.tags.get(SETTINGS_TAG, "") == eval_settings
        and version.tags.get(CANDIDATE_TAG) == "true"
        and metric in version.tags
    ]
    if not candidates:
        return None
    ranked = sorted(candidates, key=lambda v: (float(v.tags[metric]), -int(v.version)))
    best = ranked[0]  # a tie goes to the newest
    others = ", ".join(f"version {v.version}: {v.tags[metric]}" for v in ranked[1:4])
    won = (
        f"the lowest {metric} ({best.tags[metric]}) of {len(ranked)} candidate versions on "
        f"data {data_hash}, each evaluated over at least {min_samples} samples with the same "
        f"settings ({eval_settings})" + (f"; next: {others}" if others else "")
    )
    hand_alias(client, name, alias, str(best.version), won)
    return str(best.version)


def hand_alias(client: MlflowClient, name: str, alias: str, version: str, why: str) -> None:
    """Point `alias` at `version`, whose description gets a paragraph saying `why`; the version
    that held the alias before loses its paragraph."""
    try:
        holder = client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if not is_rejection(error):  # an outage: the holder would keep its paragraph
            raise
        holder = None  # no version holds it yet (MLflow answers 400)
    if holder is not None and str(holder.version) != version:
        client.update_model_version(name, holder.version, _without_win(holder.description))
    described = client.get_model_version(name, version).description
    paragraph = f"{CHAMPION_HEADING} `{alias}`: {why}"
    client.update_model_version(name, version, f"{_without_win(described)}\n\n{paragraph}")
    client.set_registered_model_alias(name, alias, version)


def _without_win(description: str | None) -> str:
    """A version's description without the paragraph that says why it holds the alias."""
    return (description or "").split(f"\n\n{CHAMPION_HEADING}")[0]


def _steps_after(client: MlflowClient, run_id: str, step: int) -> dict[str, set[int]]:
    """The steps after `step` at which the server holds each metric of the run."""
    held: dict[str, set[int]] = {}
    for key in client.get_run(run_id).data.metrics:
        history = client.get_metric_history(run_id, key)
        held[key] = {metric.step for metric in history if metric.step > step}
    return held


def _send_model(
    spool: Spool, client: MlflowClient, run_id: str, event: Event, upload_timeout_s: float
) -> None:
    """Upload a locally saved MLflow model as a LoggedModel of the run, then register it;
    nothing when the run already has a version of that registered model.

    Each step is recorded in models.json so that a retry resumes where delivery stopped.
    """
    from mlflow.models import Model

    seq = event["seq"]
    state = spool.model_state(seq)
    local_dir = spool.files_of(event)
    name = event.get("registered_model_name")
    if name and "model_id" not in state:
        earlier = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        if earlier:  # a finished run, resumed and ended again: its model is registered
            spool.update_model_state(seq, version=str(earlier[0].version))
            return
    if "model_id" not in state:
        logged = client.create_logged_model(
            ensure_experiment(spool, client),
            name=event["name"],
            source_run_id=run_id,
            tags={LOCAL_KEY_TAG: f"{spool.key}/{seq}"},
        )
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, event["step"])])
        state = spool.update_model_state(
            seq, model_id=logged.model_id, artifact_location=logged.artifact_location
        )
    model_id = state["model_id"]
    if not state.get("uploaded"):
        mlmodel = Model.load(str(local_dir))
        mlmodel.run_id, mlmodel.model_id, mlmodel.model_uuid = run_id, model_id, model_id
        mlmodel.artifact_path = state["artifact_location"]
        mlmodel.save(str(local_dir / "MLmodel"))
        with http_settings(upload_timeout_s, None):
            client.log_model_artifacts(model_id, str(local_dir))
        client.finalize_logged_model(model_id, LoggedModelStatus.READY)
        state = spool.update_model_state(seq, uploaded=True)
    if name and "version" not in state:
        described = event.get("model_description") or None
        try:
            client.create_registered_model(name, description=described)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            if described and not client.get_registered_model(name).description:
                client.update_registered_model(name, described)  # registered before descriptions
        source = f"models:/{model_id}"
        # A version made before a lost reply (the OSS registry reports the source, not
        # always the model id).
        existing = [
            version
            for version in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
            if model_id in (version.model_id, (version.source or "").removeprefix("models:/"))
        ]
        version = existing[0] if existing else None
        if version is None:
            version = client.create_model_version(
                name,
                source,
                run_id=run_id,
                model_id=model_id,
                tags=event.get("version_tags"),
                description=event.get("version_description"),
            )
        spool.update_model_state(seq, version=str(version.version))
