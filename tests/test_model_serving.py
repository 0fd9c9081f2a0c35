"""The generator as MLflow serves it: `mlflow models serve` (MLflow's scoring server) answers
images as uint8 arrays or as PNG files, and a request it cannot serve with HTTP 400 and the
reason, never a stack trace."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pytest
import requests
from omegaconf import DictConfig
from PIL import Image

from face_generation.families.dcgan import DCGANFamily
from face_generation.inference import generate
from face_generation.runtime.generator import load_generator
from face_generation.runtime.images import to_uint8
from face_generation.runtime.mlflow_model import (
    CHECKPOINT_ARTIFACT,
    MODEL_CODE,
    model_signature,
    requirements,
)
from face_generation.tracking.promote import promote
from face_generation.tracking.provenance import registered_model_name
from face_generation.tracking.run import TrackedRun
from tests.conftest import TrainedModels
from tests.faces import RESOLUTION
from tests.tracking_fixtures import MlflowServer, free_port

BAD_REQUESTS = [
    ([[-3, 1]], {}, "each n must be at least 1"),
    ([[2, 1]], {"format": "jpeg"}, "format='jpeg' is not an output format"),
]


def invocation(rows: list[list[int]], **params: str) -> dict[str, Any]:
    """The body of a POST /invocations: rows of (n, seed), and params such as format=png."""
    body: dict[str, Any] = {"dataframe_split": {"columns": ["n", "seed"], "data": rows}}
    return {**body, "params": params} if params else body


def decode_pngs(predictions: list[str]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(p)))) for p in predictions])


@pytest.fixture(scope="module")
def expected(trained: TrainedModels) -> np.ndarray:
    """What inference draws for n=3, seed=5 from the DCGAN checkpoint."""
    return to_uint8(generate(load_generator(trained.checkpoints["dcgan"]), 3, seed=5))


@pytest.fixture(scope="module")
def scoring_app(trained: TrainedModels, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """MLflow's scoring server app (what `mlflow models serve` runs) on the DCGAN's model."""
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    folder = tmp_path_factory.mktemp("served") / "generator"
    mlflow.pyfunc.save_model(
        folder,
        python_model=str(MODEL_CODE),
        artifacts={CHECKPOINT_ARTIFACT: str(trained.checkpoints["dcgan"])},
        signature=model_signature(DCGANFamily, RESOLUTION),
        pip_requirements=["torch"],  # skips inferring requirements in a subprocess
    )
    return TestClient(scoring_server.init(mlflow.pyfunc.load_model(str(folder))))


def test_the_scoring_server_answers_arrays_or_png_files(
    scoring_app: Any, expected: np.ndarray
) -> None:
    arrays = scoring_app.post("/invocations", json=invocation([[3, 5]]))
    assert arrays.status_code == 200
    assert np.array_equal(np.array(arrays.json()["predictions"], np.uint8), expected)
    pngs = scoring_app.post("/invocations", json=invocation([[3, 5]], format="png"))
    assert pngs.status_code == 200 and np.array_equal(
        decode_pngs(pngs.json()["predictions"]), expected
    )

    many = [[64, 1]]
    as_arrays = scoring_app.post("/invocations", json=invocation(many)).content
    as_pngs = scoring_app.post("/invocations", json=invocation(many, format="png")).content
    assert len(as_pngs) < len(as_arrays) / 2


@pytest.mark.parametrize(("rows", "params", "reason"), BAD_REQUESTS)
def test_a_bad_request_is_a_400_with_its_reason(
    scoring_app: Any, rows: list[list[int]], params: dict[str, str], reason: str
) -> None:
    answer = scoring_app.post("/invocations", json=invocation(rows, **params))
    assert answer.status_code == 400
    error = answer.json()
    assert error["error_code"] == "INVALID_PARAMETER_VALUE" and "stack_trace" not in error
    # MLflow puts the request's data first; the reason is the last line
    assert error["message"].splitlines()[-1].startswith("Error: ")
    assert reason in error["message"].splitlines()[-1]


@pytest.mark.slow
def test_mlflow_models_serve_serves_the_champion(
    trained: TrainedModels,
    tracking_cfg: DictConfig,
    mlflow_server: MlflowServer,
    expected: np.ndarray,
    tmp_path: Path,
) -> None:
    """The README's command: `mlflow models serve -m models:/<name>@champion --env-manager
    local` from the activated venv, against the project's MLflow server."""
    name = registered_model_name(tracking_cfg, "dcgan")
    with TrackedRun(tracking_cfg, "dcgan") as run:
        run.log_model(
            str(MODEL_CODE),
            "dcgan",  # training logs a model under its family's name
            model_signature(DCGANFamily, RESOLUTION),
            registered_model_name=name,
            artifacts={CHECKPOINT_ARTIFACT: str(trained.checkpoints["dcgan"])},
            pip_requirements=requirements(),
        )
    # The README's step before it: the embedded default's 10 test faces make no champion.
    assert promote(tracking_cfg, "dcgan") == run.model_version("dcgan")
    venv = Path(sys.executable).parent  # `. .venv/bin/activate`: MLflow starts uvicorn from PATH
    env = {
        **os.environ,
        "PATH": f"{venv}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
    }
    port = free_port()
    command = [
        *(str(venv / "mlflow"), "models", "serve", "-m", f"models:/{name}@champion"),
        *("--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)),
    ]
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_ping(server, url, tmp_path / "serve.log")
        images = requests.post(
            f"{url}/invocations", json=invocation([[3, 5]], format="png"), timeout=60
        )
        assert images.status_code == 200
        assert np.array_equal(decode_pngs(images.json()["predictions"]), expected)
        refused = requests.post(f"{url}/invocations", json=invocation([[-3, 1]]), timeout=60)
        assert (
            refused.status_code == 400 and "each n must be at least 1" in refused.json()["message"]
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()


def wait_for_ping(
    server: subprocess.Popen[bytes], url: str, log: Path, deadline_s: float = 300
) -> None:
    """Poll /ping until the scoring server answers (its model loaded), or fail with its log."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.25)  # polling interval, not synchronisation
    pytest.fail(f"`mlflow models serve` did not answer at {url}:\n{log.read_text()[-3000:]}")
