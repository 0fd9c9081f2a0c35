"""An in-process stand-in for the part of MLflow's REST API that tracking/delivery.py uses.

A real MLflow server takes 10-40 s to start on 2 cores, which made every mutant of delivery.py
and sync.py cost a minute. This one starts in milliseconds (a ThreadingHTTPServer on 127.0.0.1,
port 0), keeps what it is sent in memory, so that a test can assert on every metric point, and
can be made to fail the way an outage does:

    standin.stop(); standin.start()        # connections refused, then the same port again
    standin.fail(Fault.ERROR, "runs/log-batch")   # 503, nothing applied
    standin.fail(Fault.LOST_REPLY, at=7)   # the 7th request from now is applied, its reply lost
    standin.fail(Fault.HANG, "mlflow-artifacts")  # no answer until the client gives up

It answers as MLflow 3 does (the same JSON shapes, MLflow's own batch limits, the same error
codes and statuses for a changed param, a missing run or alias, a name taken):
test_mlflow_standin.py's slow test sends the same requests to both and compares the answers.
What it does not model (auth, pagination of runs, stages) delivery never asks for.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from mlflow.utils.validation import (
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

SHUTDOWN_POLL_S = 0.02  # how soon `stop` is noticed (the default half second, in every test)
API = "/api/2.0/mlflow/"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
Json = dict[str, Any]


class Fault(enum.Enum):
    """How one request fails."""

    ERROR = "error"  # answered with an HTTP error (503 unless told), nothing applied
    DROP = "drop"  # the connection closes before anything is applied (the server died)
    LOST_REPLY = "lost reply"  # applied, then the connection closes: the client never knows
    HANG = "hang"  # no answer until the test ends (the client's timeout ends the request)


@dataclass
class _PlannedFault:
    fault: Fault
    path: str  # a part of the request's path ("" matches every request)
    skip: int  # matching requests to let through first
    status: int
    meanwhile: Callable[[MlflowState], object] | None  # what another client did meanwhile
    message: str  # an ERROR's words ("" for the status's phrase)


class ApiError(Exception):
    """An error answer, as MLflow words it."""

    def __init__(self, status: HTTPStatus, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _not_found(message: str) -> ApiError:
    return ApiError(HTTPStatus.NOT_FOUND, "RESOURCE_DOES_NOT_EXIST", message)


def _invalid(message: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, "INVALID_PARAMETER_VALUE", message)


def _tags(pairs: dict[str, str]) -> list[Json]:
    return [{"key": key, "value": value} for key, value in pairs.items()]


def _listed(name: str, items: list[Json]) -> Json:
    """MLflow leaves an empty repeated field out of its answer."""
    return {name: items} if items else {}


def _point(metric: Json) -> Json:
    """A metric point as MLflow answers it (the model id it was logged with is not shown)."""
    return {key: metric[key] for key in ("key", "value", "timestamp", "step")}


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Run:
    info: Json
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[Json] = field(default_factory=list)  # every point, in arrival order
    datasets: list[Json] = field(default_factory=list)
    model_outputs: list[Json] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return str(self.info["run_id"])

    def latest_metrics(self) -> list[Json]:
        """Each key's latest point, as MLflow orders them: by step, then time, then value."""
        latest: dict[str, Json] = {}
        for point in map(_point, self.metrics):
            held = latest.get(point["key"])
            order = (point["step"], point["timestamp"], point["value"])
            if held is None or order > (held["step"], held["timestamp"], held["value"]):
                latest[point["key"]] = point
        return list(latest.values())

    def as_json(self) -> Json:
        return {
            "info": dict(self.info),
            "data": {
                **_listed("metrics", self.latest_metrics()),
                **_listed("params", _tags(self.params)),
                **_listed("tags", _tags(self.tags)),
            },
            "inputs": _listed("dataset_inputs", self.datasets),
            "outputs": _listed("model_outputs", self.model_outputs),
        }


class MlflowState:
    """What the stand-in holds: experiments, runs, artifacts, logged and registered models."""

    def __init__(self) -> None:
        self.experiments: dict[str, Json] = {}  # id → the experiment's JSON
        self.runs: dict[str, Run] = {}
        self.artifacts: dict[str, bytes] = {}  # "1/<run id>/artifacts/samples/a.png" → bytes
        self.logged_models: dict[str, Json] = {}  # model id → its "info"
        self.registered: dict[str, Json] = {}  # name → the registered model's JSON
        self.versions: dict[str, list[Json]] = {}  # name → its versions, oldest first
        self.aliases: dict[str, dict[str, str]] = {}  # name → alias → version
        self._ids = itertools.count(1)

    # Reading back, for the tests. -------------------------------------------------------------

    def run(self, run_id: str) -> Run:
        if run_id not in self.runs:
            raise _not_found(f"Run with id={run_id} not found")
        return self.runs[run_id]

    def only_run(self) -> Run:
        (run,) = self.runs.values()
        return run

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of every point of metric `key`, in arrival order."""
        return [(p["step"], p["value"]) for p in self.run(run_id).metrics if p["key"] == key]

    def experiment_named(self, name: str) -> Json | None:
        return next((e for e in self.experiments.values() if e["name"] == name), None)

    # Experiments. ------------------------------------------------------------------------------

    def get_experiment_by_name(self, query: Json) -> Json:
        experiment = self.experiment_named(query["experiment_name"])
        if experiment is None:
            raise _not_found(f"Could not find experiment with name '{query['experiment_name']}'")
        return {"experiment": experiment}

    def create_experiment(self, body: Json) -> Json:
        name = body["name"]
        if self.experiment_named(name) is not None:
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                "RESOURCE_ALREADY_EXISTS",
                f"Experiment(name={name}) already exists.",
            )
        experiment_id = str(next(self._ids))
        now = _now_ms()
        self.experiments[experiment_id] = {
            "experiment_id": experiment_id,
            "name": name,
            "artifact_location": f"mlflow-artifacts:/{experiment_id}",
            "lifecycle_stage": "active",
            "last_update_time": now,
            "creation_time": now,
            **_listed("tags", body.get("tags", [])),
            "workspace": "default",
        }
        return {"experiment_id": experiment_id}

    def _experiment(self, experiment_id: str) -> Json:
        if experiment_id not in self.experiments:
            raise _not_found(f"No Experiment with id={experiment_id} exists")
        return self.experiments[experiment_id]

    def set_experiment_tag(self, body: Json) -> Json:
        experiment = self._experiment(body["experiment_id"])
        tags = {t["key"]: t["value"] for t in experiment.get("tags", [])}
        tags[body["key"]] = body["value"]
        experiment["tags"] = _tags(tags)
        return {}

    def delete_experiment(self, body: Json) -> Json:
        self._experiment(body["experiment_id"])["lifecycle_stage"] = "deleted"
        return {}

    # Runs. -------------------------------------------------------------------------------------

    def create_run(self, body: Json) -> Json:
        experiment_id = body["experiment_id"]
        self._experiment(experiment_id)
        run_id = uuid.uuid4().hex
        tags = {t["key"]: t["value"] for t in body.get("tags", [])}
        tags["mlflow.runName"] = body.get("run_name") or run_id[:8]
        run = Run(
            info={
                "run_uuid": run_id,
                "experiment_id": experiment_id,
                "run_name": tags["mlflow.runName"],
                "user_id": body.get("user_id", ""),
                "status": "RUNNING",
                "start_time": body.get("start_time", _now_ms()),
                "artifact_uri": f"mlflow-artifacts:/{experiment_id}/{run_id}/artifacts",
                "lifecycle_stage": "active",
                "run_id": run_id,
            },
            tags=tags,
        )
        self.runs[run_id] = run
        answer = run.as_json()
        del answer["outputs"]  # MLflow's create answer has none
        return {"run": answer}

    def get_run(self, query: Json) -> Json:
        return {"run": self.run(query["run_id"]).as_json()}

    def update_run(self, body: Json) -> Json:
        run = self.run(body["run_id"])
        run.info["status"] = body.get("status", run.info["status"])
        if "end_time" in body:
            run.info["end_time"] = body["end_time"]
        run.info = {k: run.info[k] for k in RUN_INFO_ORDER if k in run.info}
        return {"run_info": dict(run.info)}

    def search_runs(self, body: Json) -> Json:
        match = re.fullmatch(r"tags\.`([^`]+)` = '([^']*)'", body.get("filter", ""))
        if body.get("filter") and match is None:
            raise _invalid(f"the stand-in does not parse the filter {body['filter']!r}")
        found = [
            run.as_json()
            for run in self.runs.values()
            if run.info["experiment_id"] in body["experiment_ids"]
            and (match is None or run.tags.get(match[1]) == match[2])
        ]
        return _listed("runs", found[: body.get("max_results", len(found))])

    def log_batch(self, body: Json) -> Json:
        run = self.run(body["run_id"])
        metrics, params, tags = (body.get(name, []) for name in ("metrics", "params", "tags"))
        for name, entities, limit in (
            ("metrics", metrics, MAX_METRICS_PER_BATCH),
            ("params", params, MAX_PARAMS_TAGS_PER_BATCH),
            ("tags", tags, MAX_PARAMS_TAGS_PER_BATCH),
        ):
            if len(entities) > limit:
                raise _invalid(
                    f"A batch logging request can contain at most {limit} {name}. Got "
                    f"{len(entities)} {name}. Please split up {name} across multiple requests "
                    "and try again."
                )
        total = len(metrics) + len(params) + len(tags)
        if total > MAX_ENTITIES_PER_BATCH:
            raise _invalid(
                f"A batch logging request can contain at most {MAX_ENTITIES_PER_BATCH} total "
                f"metrics, params, and tags. Got {total} total entities."
            )
        keys = [p["key"] for p in params]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise _invalid(
                f"Duplicate parameter keys have been submitted: {repeated}. Please ensure the "
                "request contains only one param value per param key."
            )
        changed = [
            {"key": p["key"], "old_value": run.params[p["key"]], "new_value": p["value"]}
            for p in params
            if p["key"] in run.params and run.params[p["key"]] != p["value"]
        ]
        if changed:
            raise _invalid(
                f"Changing param values is not allowed. Params were already logged='{changed}' "
                f"for run ID='{run.run_id}'."
            )
        too_long = [p["key"] for p in params if len(p["value"]) > MAX_PARAM_VAL_LENGTH]
        if too_long:
            raise _invalid(f"Param value for {too_long[0]} exceeds {MAX_PARAM_VAL_LENGTH}")
        run.params.update({p["key"]: p["value"] for p in params})
        run.tags.update({t["key"]: t["value"] for t in tags})
        for metric in metrics:  # a point identical to one held is dropped, as by MLflow
            point = {k: metric[k] for k in ("key", "value", "timestamp", "step") if k in metric}
            point.setdefault("step", 0)
            if all(_point(held) != point for held in run.metrics):
                run.metrics.append({**point, "model_id": metric.get("model_id")})
        return {}

    def set_tag(self, body: Json) -> Json:
        self.run(body["run_id"]).tags[body["key"]] = body["value"]
        return {}

    def get_metric_history(self, query: Json) -> Json:
        run = self.run(query["run_id"])
        points = [_point(p) for p in run.metrics if p["key"] == query["metric_key"]]
        return _listed("metrics", points)

    def log_inputs(self, body: Json) -> Json:
        run = self.run(body["run_id"])
        for entry in body.get("datasets", []):  # one input per dataset and run
            same = (entry["dataset"]["name"], entry["dataset"]["digest"])
            if all((d["dataset"]["name"], d["dataset"]["digest"]) != same for d in run.datasets):
                run.datasets.append({key: value for key, value in entry.items() if value != []})
        return {}

    def log_outputs(self, body: Json) -> Json:
        self.run(body["run_id"]).model_outputs += body["models"]
        return {}

    # Logged models. ----------------------------------------------------------------------------

    def create_logged_model(self, body: Json) -> Json:
        experiment_id = body["experiment_id"]
        self._experiment(experiment_id)
        model_id = f"m-{uuid.uuid4().hex}"
        now = _now_ms()
        self.logged_models[model_id] = {
            "model_id": model_id,
            "experiment_id": experiment_id,
            "name": body["name"],
            "creation_timestamp_ms": now,
            "last_updated_timestamp_ms": now,
            "artifact_uri": f"mlflow-artifacts:/{experiment_id}/models/{model_id}/artifacts",
            "status": "LOGGED_MODEL_PENDING",
            "model_type": "",
            "source_run_id": body.get("source_run_id", ""),
            **_listed("tags", body.get("tags", [])),
        }
        return self.get_logged_model(model_id)

    def get_logged_model(self, model_id: str) -> Json:
        if model_id not in self.logged_models:
            raise _not_found(f"Logged model with ID '{model_id}' not found.")
        return {"model": {"info": dict(self.logged_models[model_id]), "data": {}}}

    def finalize_logged_model(self, model_id: str, body: Json) -> Json:
        self.get_logged_model(model_id)
        self.logged_models[model_id].update(
            status=body["status"], last_updated_timestamp_ms=_now_ms()
        )
        return self.get_logged_model(model_id)

    def search_logged_models(self, body: Json) -> Json:
        match = re.fullmatch(r"name = '([^']*)'", body.get("filter", ""))
        found = [
            {"info": dict(info), "data": {}}
            for info in self.logged_models.values()
            if info["experiment_id"] in body.get("experiment_ids", [])
            and (match is None or info["name"] == match[1])
        ]
        return _listed("models", found)

    # The model registry. -----------------------------------------------------------------------

    def _registered_model(self, name: str) -> Json:
        if name not in self.registered:
            raise _not_found(f"Registered Model with name={name} not found")
        return self.registered[name]

    def create_registered_model(self, body: Json) -> Json:
        name = body["name"]
        if name in self.registered:
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                "RESOURCE_ALREADY_EXISTS",
                f"Registered Model (name={name}) already exists.",
            )
        now = _now_ms()
        self.registered[name] = {
            "name": name,
            "creation_timestamp": now,
            "last_updated_timestamp": now,
            **({"description": body["description"]} if body.get("description") else {}),
        }
        self.versions[name], self.aliases[name] = [], {}
        return {"registered_model": dict(self.registered[name])}

    def get_registered_model(self, query: Json) -> Json:
        model = dict(self._registered_model(query["name"]))
        versions = self.versions[query["name"]]
        return {
            "registered_model": {
                **model,
                **_listed("latest_versions", [self._version_json(v) for v in versions[-1:]]),
            }
        }

    def update_registered_model(self, body: Json) -> Json:
        model = self._registered_model(body["name"])
        model.update(description=body.get("description", ""), last_updated_timestamp=_now_ms())
        return {"registered_model": dict(model)}

    def create_model_version(self, body: Json) -> Json:
        name = body["name"]
        self._registered_model(name)
        now = _now_ms()
        version = {
            "name": name,
            "version": str(len(self.versions[name]) + 1),
            "creation_timestamp": now,
            "last_updated_timestamp": now,
            "current_stage": "None",
            "description": body.get("description", ""),
            "source": body["source"],
            "run_id": body.get("run_id", ""),
            "status": "READY",
            "tags": {t["key"]: t["value"] for t in body.get("tags", [])},
            "run_link": "",
        }  # MLflow's answer does not carry the model id: delivery matches the source
        self.versions[name].append(version)
        if body.get("model_id") in self.logged_models:  # the model's page lists its versions
            model = self.logged_models[body["model_id"]]
            tags = {t["key"]: t["value"] for t in model.get("tags", [])}
            listed = json.loads(tags.get("mlflow.modelVersions", "[]"))
            listed.append({"name": name, "version": int(version["version"])})
            model["tags"] = _tags({**tags, "mlflow.modelVersions": json.dumps(listed)})
        return {"model_version": self._version_json(version)}

    def _version(self, name: str, version: str) -> Json:
        for held in self.versions.get(name, []):
            if held["version"] == str(version):
                return held
        raise _not_found(f"Model Version (name={name}, version={version}) not found")

    def _version_json(self, version: Json, aliases: bool = True) -> Json:
        held = self.aliases[version["name"]].items() if aliases else ()
        names = sorted(alias for alias, number in held if number == version["version"])
        answer = {
            **version,
            **_listed("tags", _tags(version["tags"])),
            **_listed("aliases", names),
        }
        if not version["tags"]:
            del answer["tags"]
        return answer

    def search_model_versions(self, query: Json) -> Json:
        match = re.fullmatch(
            r"name = '([^']*)'(?: and run_id = '([^']*)')?", query.get("filter", "")
        )
        if match is None:
            raise _invalid(f"the stand-in does not parse the filter {query.get('filter')!r}")
        found = [
            self._version_json(version, aliases=False)  # a search does not list them
            for version in self.versions.get(match[1], [])
            if match[2] is None or version["run_id"] == match[2]
        ]
        return _listed("model_versions", found[::-1])  # MLflow lists the newest first

    def get_model_version(self, query: Json) -> Json:
        return {"model_version": self._version_json(self._version(query["name"], query["version"]))}

    def update_model_version(self, body: Json) -> Json:
        version = self._version(body["name"], body["version"])
        version.update(description=body.get("description", ""), last_updated_timestamp=_now_ms())
        return {"model_version": self._version_json(version)}

    def set_model_version_tag(self, body: Json) -> Json:
        self._version(body["name"], body["version"])["tags"][body["key"]] = body["value"]
        return {}

    def delete_model_version_tag(self, body: Json) -> Json:
        self._version(body["name"], body["version"])["tags"].pop(body["key"], None)
        return {}

    def set_alias(self, body: Json) -> Json:
        self._version(body["name"], body["version"])
        self.aliases[body["name"]][body["alias"]] = str(body["version"])
        return {}

    def get_version_by_alias(self, query: Json) -> Json:
        version = self.aliases.get(query["name"], {}).get(query["alias"])
        if version is None:
            raise _invalid(f"Registered model alias {query['alias']} not found.")
        return self.get_model_version({"name": query["name"], "version": version})

    # Artifacts (served by the server, as `--serve-artifacts` does). ----------------------------

    def list_artifacts(self, query: Json) -> Json:
        folder = query.get("path", "").strip("/")
        prefix = f"{folder}/" if folder else ""
        entries: dict[str, Json] = {}
        for path, content in sorted(self.artifacts.items()):
            if not path.startswith(prefix):
                continue
            name, _, below = path[len(prefix) :].partition("/")
            entries[name] = (
                {"path": name, "is_dir": True}
                if below
                else {"path": name, "is_dir": False, "file_size": len(content)}
            )
        return _listed("files", list(entries.values()))


RUN_INFO_ORDER = (
    "run_uuid",
    "experiment_id",
    "run_name",
    "user_id",
    "status",
    "start_time",
    "end_time",
    "artifact_uri",
    "lifecycle_stage",
    "run_id",
)

# (HTTP method, path after /api/2.0/mlflow/) → the state's method, called with the request's JSON
# body (POST, PATCH, DELETE) or query (GET), as MLflow's client sends them.
ROUTES: dict[tuple[str, str], Callable[[MlflowState, Json], Json]] = {
    ("GET", "experiments/get-by-name"): MlflowState.get_experiment_by_name,
    ("POST", "experiments/create"): MlflowState.create_experiment,
    ("POST", "experiments/set-experiment-tag"): MlflowState.set_experiment_tag,
    ("POST", "experiments/delete"): MlflowState.delete_experiment,
    ("POST", "runs/create"): MlflowState.create_run,
    ("GET", "runs/get"): MlflowState.get_run,
    ("POST", "runs/update"): MlflowState.update_run,
    ("POST", "runs/search"): MlflowState.search_runs,
    ("POST", "runs/log-batch"): MlflowState.log_batch,
    ("POST", "runs/set-tag"): MlflowState.set_tag,
    ("GET", "metrics/get-history"): MlflowState.get_metric_history,
    ("POST", "runs/log-inputs"): MlflowState.log_inputs,
    ("POST", "runs/outputs"): MlflowState.log_outputs,
    ("POST", "logged-models"): MlflowState.create_logged_model,
    ("POST", "logged-models/search"): MlflowState.search_logged_models,
    ("POST", "registered-models/create"): MlflowState.create_registered_model,
    ("GET", "registered-models/get"): MlflowState.get_registered_model,
    ("PATCH", "registered-models/update"): MlflowState.update_registered_model,
    ("POST", "model-versions/create"): MlflowState.create_model_version,
    ("GET", "model-versions/search"): MlflowState.search_model_versions,
    ("GET", "model-versions/get"): MlflowState.get_model_version,
    ("PATCH", "model-versions/update"): MlflowState.update_model_version,
    ("POST", "model-versions/set-tag"): MlflowState.set_model_version_tag,
    ("DELETE", "model-versions/delete-tag"): MlflowState.delete_model_version_tag,
    ("POST", "registered-models/alias"): MlflowState.set_alias,
    ("GET", "registered-models/alias"): MlflowState.get_version_by_alias,
}


@dataclass
class Request:
    """One request the stand-in received, as the tests read them back."""

    method: str
    path: str  # without the query
    timeout: str | None  # MLFLOW_HTTP_REQUEST_TIMEOUT while the client sent it (same process)
    fault: Fault | None
    body: bytes


class MlflowStandin:
    """The stand-in server: `uri`, `state`, the `requests` it received, and its faults."""

    def __init__(self) -> None:
        self.state = MlflowState()
        self.requests: list[Request] = []
        self._faults: list[_PlannedFault] = []
        self._lock = threading.Lock()  # one request changes the state at a time
        self._released = threading.Event()  # ends the HANG faults
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen (again, on the same port after `stop`)."""
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        serve = threading.Thread(
            target=self._server.serve_forever, args=(SHUTDOWN_POLL_S,), daemon=True
        )
        serve.start()

    def stop(self) -> None:
        """Stop listening and cut the open connections: the next request is refused."""
        if self._server is None:
            return
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        for connection in list(self._connections):
            _cut(connection)
        self._server = None
        self._released = threading.Event()

    def fail(
        self,
        fault: Fault,
        path: str = "",
        at: int = 1,
        status: int = HTTPStatus.SERVICE_UNAVAILABLE,
        meanwhile: Callable[[MlflowState], object] | None = None,
        message: str = "",
    ) -> None:
        """Make the `at`-th request from now whose path contains `path` fail with `fault`;
        `meanwhile` changes the state first (another process got there before this request)."""
        self._faults.append(_PlannedFault(fault, path, at - 1, status, meanwhile, message))

    @property
    def unused_faults(self) -> int:
        return len(self._faults)

    def paths(self) -> list[str]:
        return [request.path for request in self.requests]

    @property
    def batch_sizes(self) -> list[tuple[int, int, int]]:
        """(metrics, params, tags) in each log-batch request received, in order."""
        bodies = [json.loads(r.body) for r in self.requests if r.path == f"{API}runs/log-batch"]
        return [
            (len(b.get("metrics", [])), len(b.get("params", [])), len(b.get("tags", [])))
            for b in bodies
        ]

    def _planned_fault(self, path: str) -> _PlannedFault | None:
        for planned in self._faults:
            if planned.path in path:
                if planned.skip == 0:
                    self._faults.remove(planned)
                    return planned
                planned.skip -= 1
        return None

    def _answer(self, method: str, target: str, body: bytes) -> tuple[int, bytes]:
        parts = urlsplit(target)
        path = unquote(parts.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        if path.startswith(ARTIFACTS):
            return self._artifact(method, path[len(ARTIFACTS) :].strip("/"), query, body)
        if not path.startswith(API):
            return _error(ApiError(HTTPStatus.NOT_FOUND, "ENDPOINT_NOT_FOUND", path))
        endpoint = path[len(API) :]
        arguments = query if method == "GET" else json.loads(body or b"{}")
        try:
            if endpoint.startswith("logged-models/") and endpoint != "logged-models/search":
                model_id = endpoint.removeprefix("logged-models/")
                if method == "GET":
                    answer = self.state.get_logged_model(model_id)
                else:
                    answer = self.state.finalize_logged_model(model_id, arguments)
            elif (method, endpoint) in ROUTES:
                answer = ROUTES[method, endpoint](self.state, arguments)
            else:
                raise ApiError(HTTPStatus.NOT_FOUND, "ENDPOINT_NOT_FOUND", f"{method} {path}")
        except ApiError as error:
            return _error(error)
        return HTTPStatus.OK, json.dumps(answer).encode()

    def _artifact(self, method: str, path: str, query: Json, body: bytes) -> tuple[int, bytes]:
        if method == "PUT":
            self.state.artifacts[path] = body
            return HTTPStatus.OK, b""
        if path:  # a download
            if path not in self.state.artifacts:
                return _error(_not_found(f"{path} not found"))
            return HTTPStatus.OK, self.state.artifacts[path]
        return HTTPStatus.OK, json.dumps(self.state.list_artifacts(query)).encode()


def _error(error: ApiError) -> tuple[int, bytes]:
    answer = {"error_code": error.code, "message": error.message}
    return error.status, json.dumps(answer).encode()


def _cut(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the client
        connection.shutdown(socket.SHUT_RDWR)


def _handler(standin: MlflowStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as MLflow's client expects

        def setup(self) -> None:
            super().setup()
            # headers and body are two writes: without this each answer waits for a delayed ACK
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            standin._connections.add(self.connection)

        def finish(self) -> None:
            standin._connections.discard(self.connection)
            super().finish()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the tests read `standin.requests` instead

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding") == "chunked":
                chunks = []
                while size := int(self.rfile.readline().strip(), 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _serve(self) -> None:
            body = self._body()
            path = urlsplit(self.path).path
            with standin._lock:
                planned = standin._planned_fault(path)
                fault = planned.fault if planned else None
                if planned is not None and planned.meanwhile is not None:
                    planned.meanwhile(standin.state)
                timeout = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT")
                standin.requests.append(Request(self.command, path, timeout, fault, body))
                if fault in (Fault.DROP, Fault.HANG):
                    status, answer = 0, b""
                elif fault is Fault.ERROR and planned is not None:
                    message = planned.message or HTTPStatus(planned.status).phrase
                    status, answer = (
                        planned.status,
                        json.dumps({"error_code": "INTERNAL_ERROR", "message": message}).encode(),
                    )
                else:
                    status, answer = standin._answer(self.command, self.path, body)
            if fault is Fault.HANG:
                standin._released.wait()
            if fault in (Fault.DROP, Fault.HANG, Fault.LOST_REPLY):
                self.close_connection = True
                _cut(self.connection)
                return
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    return Handler


def running_standin() -> Iterator[MlflowStandin]:
    """A started stand-in, stopped afterwards (the body of the `mlflow_standin` fixtures)."""
    standin = MlflowStandin()
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()
