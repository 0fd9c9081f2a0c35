"""The stand-in (tests/mlflow_standin.py) answers as the real MLflow server does: the same
requests, sent to both, get the same statuses, error codes and JSON shapes, and the same
values where they do not depend on ids or the clock. If MLflow changes its API, this fails
before the fast tests of delivery and sync start testing a server that no longer exists.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests
from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

from tests.mlflow_standin import API, ARTIFACTS, running_standin
from tests.tracking_fixtures import MlflowServer

TIMEOUT_S = 30  # one request to a server on this machine


def shape(value: Any) -> Any:
    """The structure of an answer: keys and types, not values."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


class Session:
    """Sends one script of requests to a server, filling in the ids its answers gave."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.ids: dict[str, str] = {}
        self.answers: list[tuple[str, int, Any]] = []

    def send(self, method: str, endpoint: str, body: dict[str, Any] | None = None) -> Any:
        filled = _fill(body or {}, self.ids)
        if endpoint.startswith("artifacts"):  # the artifact proxy: /.../artifacts/<path>
            url = self.uri + ARTIFACTS + _fill(endpoint.removeprefix("artifacts"), self.ids)
        else:
            url = self.uri + API + _fill(endpoint, self.ids)
        if method == "GET":
            response = requests.get(url, params=filled, timeout=TIMEOUT_S)
        elif method == "PUT":
            response = requests.put(url, data=b"bytes", timeout=TIMEOUT_S)
        else:
            response = requests.request(method, url, json=filled, timeout=TIMEOUT_S)
        answer = response.json() if response.content else None
        self.answers.append((f"{method} {endpoint}", response.status_code, answer))
        return answer


def _fill(value: Any, ids: dict[str, str]) -> Any:
    """`value` with the ids the earlier answers gave put in (`{run}`, `{experiment}`...)."""
    if isinstance(value, dict):
        return {key: _fill(item, ids) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, ids) for item in value]
    return value.format(**ids) if isinstance(value, str) else value


def script(session: Session, name: str) -> None:
    """Every request delivery makes, in the cases it meets (found, missing, refused)."""
    send = session.send
    send("GET", "experiments/get-by-name", {"experiment_name": name})
    tags = [{"key": "mlflow.experimentKind", "value": "custom_model_development"}]
    session.ids["experiment"] = send("POST", "experiments/create", {"name": name, "tags": tags})[
        "experiment_id"
    ]
    send("POST", "experiments/create", {"name": name})
    send("GET", "experiments/get-by-name", {"experiment_name": name})
    send(
        "POST",
        "experiments/set-experiment-tag",
        {"experiment_id": "{experiment}", "key": "k", "value": "v"},
    )
    run = send(
        "POST",
        "runs/create",
        {
            "experiment_id": "{experiment}",
            "start_time": 1000,
            "run_name": "tiny",
            "tags": [{"key": "local", "value": "key-1"}],
        },
    )
    session.ids["run"] = run["run"]["info"]["run_id"]
    for key in ("key-1", "key-2"):
        send(
            "POST",
            "runs/search",
            {
                "experiment_ids": ["{experiment}"],
                "filter": f"tags.`local` = '{key}'",
                "max_results": 1,
            },
        )
    point = {"key": "loss", "value": 0.5, "timestamp": 7, "step": 1}
    batch = {
        "run_id": "{run}",
        "metrics": [point, {**point, "step": 2}],
        "params": [{"key": "lr", "value": "0.1"}],
        "tags": [{"key": "t", "value": "1"}],
    }
    send("POST", "runs/log-batch", batch)
    send("POST", "runs/log-batch", batch)  # a replay: the identical points are dropped
    send("POST", "runs/log-batch", {"run_id": "{run}", "params": [{"key": "lr", "value": "0.2"}]})
    too_many = [{"key": f"p{i}", "value": "1"} for i in range(MAX_PARAMS_TAGS_PER_BATCH + 1)]
    send("POST", "runs/log-batch", {"run_id": "{run}", "params": too_many})
    twice = [{"key": "x", "value": "1"}, {"key": "x", "value": "1"}]
    send("POST", "runs/log-batch", {"run_id": "{run}", "params": twice})
    send("POST", "runs/log-batch", {"run_id": "missing", "params": [{"key": "a", "value": "1"}]})
    send("GET", "metrics/get-history", {"run_id": "{run}", "metric_key": "loss"})
    send("GET", "metrics/get-history", {"run_id": "{run}", "metric_key": "absent"})
    dataset = {"name": "faces", "digest": "d41d", "source_type": "local", "source": "{{}}"}
    inputs = {"run_id": "{run}", "datasets": [{"dataset": dataset, "tags": []}]}
    send("POST", "runs/log-inputs", inputs)
    send("POST", "runs/log-inputs", inputs)  # one input per dataset and run
    send("POST", "runs/set-tag", {"run_id": "{run}", "key": "mlflow.loggedImages", "value": "True"})
    send("PUT", "artifacts/{experiment}/{run}/artifacts/images/a.png")
    send("GET", "artifacts", {"path": "{experiment}/{run}/artifacts"})
    send("GET", "artifacts", {"path": "{experiment}/{run}/artifacts/images"})
    send("GET", "artifacts", {"path": "{experiment}/{run}/artifacts/none"})

    model = send(
        "POST",
        "logged-models",
        {"experiment_id": "{experiment}", "name": "generator", "source_run_id": "{run}"},
    )
    session.ids["model"] = model["model"]["info"]["model_id"]
    send(
        "POST", "runs/outputs", {"run_id": "{run}", "models": [{"model_id": "{model}", "step": 3}]}
    )
    send("GET", "logged-models/{model}")
    send("PATCH", "logged-models/{model}", {"model_id": "{model}", "status": "LOGGED_MODEL_READY"})
    send(
        "POST",
        "logged-models/search",
        {"experiment_ids": ["{experiment}"], "filter": "name = 'images'"},
    )
    send("GET", "runs/get", {"run_id": "{run}"})
    send("GET", "runs/get", {"run_id": "missing"})

    send("POST", "registered-models/create", {"name": name, "description": "d"})
    send("POST", "registered-models/create", {"name": name})
    send("GET", "registered-models/get", {"name": f"{name}-missing"})
    send("PATCH", "registered-models/update", {"name": name, "description": "e"})
    version = {"name": name, "source": "models:/{model}", "run_id": "{run}", "model_id": "{model}"}
    send("POST", "model-versions/create", {**version, "tags": [{"key": "fd", "value": "2"}]})
    send("GET", "registered-models/get", {"name": name})
    send("GET", "model-versions/search", {"filter": f"name = '{name}' and run_id = '{{run}}'"})
    send("GET", "model-versions/search", {"filter": f"name = '{name}' and run_id = 'other'"})
    send("POST", "model-versions/set-tag", {"name": name, "version": "1", "key": "a", "value": "b"})
    send("DELETE", "model-versions/delete-tag", {"name": name, "version": "1", "key": "a"})
    send("GET", "registered-models/alias", {"name": name, "alias": "champion"})
    send("POST", "registered-models/alias", {"name": name, "alias": "champion", "version": "1"})
    send("GET", "registered-models/alias", {"name": name, "alias": "champion"})
    send("PATCH", "model-versions/update", {"name": name, "version": "1", "description": "x"})
    send("GET", "model-versions/get", {"name": name, "version": "1"})
    send("GET", "model-versions/search", {"filter": f"name = '{name}'"})
    send("POST", "runs/update", {"run_id": "{run}", "status": "KILLED", "end_time": 99})
    send("GET", "runs/get", {"run_id": "{run}"})
    send("POST", "experiments/delete", {"experiment_id": "{experiment}"})
    send("GET", "experiments/get-by-name", {"experiment_name": name})


def comparable(answer: Any) -> Any:
    """What must agree: an error's code, or a success's shape (ids and times differ)."""
    if isinstance(answer, dict) and "error_code" in answer:
        return answer["error_code"]
    return shape(answer)


# Answers that hold no id or time, compared value for value.
SAME_VALUES = ("GET metrics/get-history", "GET artifacts")


@pytest.mark.slow
def test_the_standin_answers_as_mlflow_does(mlflow_server: MlflowServer) -> None:
    name = f"standin-{uuid.uuid4().hex[:8]}"  # the session's server is shared
    real = Session(mlflow_server.uri)
    script(real, name)
    standin = Session("")
    for running in running_standin():
        standin = Session(running.uri)
        script(standin, name)
    assert [(call, status, comparable(a)) for call, status, a in standin.answers] == [
        (call, status, comparable(a)) for call, status, a in real.answers
    ]
    values = [(call, answer) for call, _, answer in real.answers if call in SAME_VALUES]
    assert [(call, a) for call, _, a in standin.answers if call in SAME_VALUES] == values
    history = next(answer for call, answer in values if call == "GET metrics/get-history")
    assert [(m["step"], m["value"]) for m in history["metrics"]] == [(1, 0.5), (2, 0.5)]
